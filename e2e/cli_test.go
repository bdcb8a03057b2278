package e2e

import (
	"bytes"
	"context"
	"errors"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"notify/pkg/testenv"
)

// TestServiceCommandLines runs every service binary with --help (-h, -help, help),
// --version and typos: the first two answer and exit 0; a typo is refused with the usage and exit code 2 and never
// starts the service.
func TestServiceCommandLines(t *testing.T) {
	bin := binaries(t)
	tests := []struct {
		args       []string
		wantCode   int
		wantStdout []string
		wantStderr []string
	}{
		{args: []string{"--help"}, wantStdout: []string{"Usage:", "--version", "LOG_LEVEL"}},
		{args: []string{"-h"}, wantStdout: []string{"Usage:"}},
		{args: []string{"-help"}, wantStdout: []string{"Usage:"}},
		{args: []string{"help"}, wantStdout: []string{"Usage:"}},
		{args: []string{"healthcheck", "help"}, wantStdout: []string{"Usage:"}},
		{args: []string{"--version"}, wantStdout: []string{runtime.Version()}},
		{args: []string{"--hlep"}, wantCode: 2, wantStderr: []string{"unknown flag: --hlep\n", "Usage:"}},
		{args: []string{"serve"}, wantCode: 2, wantStderr: []string{`unknown command "serve"`, "Usage:"}},
	}
	for _, service := range services {
		for _, tt := range tests {
			t.Run(service+" "+strings.Join(tt.args, " "), func(t *testing.T) {
				t.Parallel()
				// Were the service to start by mistake, it would find nothing to connect to
				// and fail (exit 1) instead of using the developer's broker and database.
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()
				cmd := exec.CommandContext(ctx, filepath.Join(bin, service), tt.args...)
				cmd.Env = append(os.Environ(), "DATABASE_URL=postgres://nobody@127.0.0.1:1/none", "AMQP_URL=amqp://nobody@127.0.0.1:1/",
					"GRPC_ADDR=127.0.0.1:0", "METRICS_ADDR=127.0.0.1:0", "FCM_EMULATOR_ADDR=127.0.0.1:0", "FCM_ENDPOINT=http://127.0.0.1:1/v1")
				var stdout, stderr bytes.Buffer
				cmd.Stdout, cmd.Stderr = &stdout, &stderr
				err := cmd.Run()
				code := 0
				var ee *exec.ExitError
				if errors.As(err, &ee) {
					code = ee.ExitCode()
				} else if err != nil {
					t.Fatal(err)
				}
				if code != tt.wantCode {
					t.Errorf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.wantCode, stdout.String(), stderr.String())
				}
				if !strings.HasPrefix(stdout.String()+stderr.String(), service+" ") && !strings.HasPrefix(stdout.String()+stderr.String(), service+":") {
					t.Errorf("output does not start with the service's name\nstdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
				}
				for _, s := range tt.wantStdout {
					if !strings.Contains(stdout.String(), s) {
						t.Errorf("stdout does not contain %q:\n%s", s, stdout.String())
					}
				}
				for _, s := range tt.wantStderr {
					if !strings.Contains(stderr.String(), s) {
						t.Errorf("stderr does not contain %q:\n%s", s, stderr.String())
					}
				}
				if strings.Contains(stderr.String(), `"level"`) {
					t.Errorf("the service logged, so it started:\n%s", stderr.String())
				}
			})
		}
	}
}

// TestServicesStopWhenPostgreSQLRefusesDatabaseURL starts every service that uses the
// database with a wrong password for the real role notify: each exits 1 at once with an
// error naming DATABASE_URL and PostgreSQL's reason, where it used to log "waiting for the
// database … (SQLSTATE 28P01)" as a warning and wait for ever.
func TestServicesStopWhenPostgreSQLRefusesDatabaseURL(t *testing.T) {
	bin := binaries(t)
	u, err := url.Parse(testenv.DatabaseURL(t))
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(u.User.Username(), "wrongpw")
	for _, service := range []string{"producer", "sender", "retrier", "deadletter"} {
		t.Run(service, func(t *testing.T) {
			t.Parallel()
			// Far longer than a refused connection takes: had it waited, it would be killed.
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, filepath.Join(bin, service))
			cmd.Env = append(os.Environ(), "DATABASE_URL="+u.String(), "AMQP_URL=amqp://nobody@127.0.0.1:1/",
				"GRPC_ADDR=127.0.0.1:0", "METRICS_ADDR=127.0.0.1:0", "FCM_ENDPOINT=http://127.0.0.1:1/v1")
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 || ctx.Err() != nil {
				t.Fatalf("%s: %v (ctx %v), want exit code 1 before ctx ends\nstderr:\n%s", service, err, ctx.Err(), stderr.String())
			}
			if !strings.Contains(stderr.String(), "DATABASE_URL: PostgreSQL refuses the connection") || !strings.Contains(stderr.String(), "28P01") {
				t.Errorf("stderr:\n%s\nwant the error naming DATABASE_URL, with the SQLSTATE", stderr.String())
			}
			if strings.Contains(stderr.String(), "wrongpw") {
				t.Errorf("stderr quotes the password:\n%s", stderr.String())
			}
		})
	}
}
