package envconfig_test

import (
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"notify/pkg/envconfig"
	"notify/pkg/logging"
)

func getenv(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

// secretFile writes contents to a new file and returns its path.
func secretFile(t *testing.T, contents string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(path, []byte(contents), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestReader(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	unreadable := filepath.Join(dir, "missing")
	empty := secretFile(t, "\n")
	tests := []struct {
		name    string
		vars    map[string]string
		read    func(r *envconfig.Reader) any
		want    any
		wantErr []string // each must appear, one per line, in this order
		notWant []string // must not appear in the error (secrets)
	}{
		{
			name: "string default",
			read: func(r *envconfig.Reader) any { return r.String("X", "def") },
			want: "def",
		},
		{
			name: "string set",
			vars: map[string]string{"X": "v"},
			read: func(r *envconfig.Reader) any { return r.String("X", "def") },
			want: "v",
		},
		{
			name: "int default",
			read: func(r *envconfig.Reader) any { return r.Int("N", 4, 1, 8) },
			want: 4,
		},
		{
			name: "int at its bounds",
			vars: map[string]string{"LO": "1", "HI": "8"},
			read: func(r *envconfig.Reader) any { return []int{r.Int("LO", 4, 1, 8), r.Int("HI", 4, 1, 8)} },
			want: []int{1, 8},
		},
		{
			name:    "int out of bounds",
			vars:    map[string]string{"LO": "0", "HI": "9"},
			read:    func(r *envconfig.Reader) any { return []int{r.Int("LO", 4, 1, 8), r.Int("HI", 4, 1, 8)} },
			wantErr: []string{"LO: 0 is outside 1..8", "HI: 9 is outside 1..8"},
		},
		{
			name:    "int not a number",
			vars:    map[string]string{"N": "many"},
			read:    func(r *envconfig.Reader) any { return r.Int("N", 4, 1, 8) },
			wantErr: []string{`N: "many" is not an integer`},
		},
		{
			name: "GOGC unset: the services' default, for run to set",
			read: func(r *envconfig.Reader) any { return r.GCPercent() },
			want: envconfig.DefaultGOGC,
		},
		{
			name: "GOGC set: left to the Go runtime, which read it",
			vars: map[string]string{"GOGC": "150"},
			read: func(r *envconfig.Reader) any { return r.GCPercent() },
			want: 0,
		},
		{
			name: "GOGC off",
			vars: map[string]string{"GOGC": "off"},
			read: func(r *envconfig.Reader) any { return r.GCPercent() },
			want: 0,
		},
		{
			name:    "GOGC the runtime would ignore",
			vars:    map[string]string{"GOGC": "300%"},
			read:    func(r *envconfig.Reader) any { return r.GCPercent() },
			wantErr: []string{`GOGC: want a percentage (e.g. 300) or off, got "300%"`},
		},
		{
			name: "duration default",
			read: func(r *envconfig.Reader) any { return r.Duration("D", 10*time.Second, time.Millisecond) },
			want: 10 * time.Second,
		},
		{
			name: "duration in days and in Go syntax",
			vars: map[string]string{"A": "270d", "B": "1h30m", "C": "0d"},
			read: func(r *envconfig.Reader) any {
				return []time.Duration{r.Duration("A", 0, 0), r.Duration("B", 0, 0), r.Duration("C", time.Hour, 0)}
			},
			want: []time.Duration{270 * 24 * time.Hour, 90 * time.Minute, 0},
		},
		{
			name: "duration bounds",
			vars: map[string]string{"LOW": "500ms", "HIGH": "6m", "NEG": "-1s", "OK": "5m"},
			read: func(r *envconfig.Reader) any {
				r.Duration("LOW", 0, time.Second)
				r.DurationBetween("HIGH", 0, 0, 5*time.Minute)
				r.Duration("NEG", 0, 0)
				return r.DurationBetween("OK", 0, 0, 5*time.Minute)
			},
			wantErr: []string{
				"LOW: 500ms is below the minimum 1s",
				"HIGH: 6m is above the maximum 5m0s",
				"NEG: -1s is below the minimum 0s",
			},
		},
		{
			name: "duration syntax",
			vars: map[string]string{"A": "soon", "B": "3 days", "C": "1.5d"},
			read: func(r *envconfig.Reader) any {
				return []time.Duration{r.Duration("A", 0, 0), r.Duration("B", 0, 0), r.Duration("C", 0, 0)}
			},
			wantErr: []string{`A: invalid duration "soon"`, `B: invalid duration "3 days"`, `C: invalid duration "1.5d"`},
		},
		{
			name: "addr",
			vars: map[string]string{"A": ":9100"},
			read: func(r *envconfig.Reader) any { return []string{r.Addr("A", "x"), r.Addr("B", "127.0.0.1:1")} },
			want: []string{":9100", "127.0.0.1:1"},
		},
		{
			name:    "addr without port",
			vars:    map[string]string{"A": "localhost"},
			read:    func(r *envconfig.Reader) any { return r.Addr("A", "") },
			wantErr: []string{`A: "localhost" is not host:port`},
		},
		{
			name: "addr with a port out of range or not a number",
			vars: map[string]string{"A": "127.0.0.1:99999", "B": ":abc", "C": "[::1]:-1", "D": "[::1]:65535"},
			read: func(r *envconfig.Reader) any {
				return []string{r.Addr("A", ""), r.Addr("B", ""), r.Addr("C", ""), r.Addr("D", "")}
			},
			wantErr: []string{
				`A: "127.0.0.1:99999": the port must be a number from 0 to 65535`,
				`B: ":abc": the port must be a number from 0 to 65535`,
				`C: "[::1]:-1": the port must be a number from 0 to 65535`,
			},
		},
		{
			name: "log level",
			vars: map[string]string{"LOG_LEVEL": "DEBUG"},
			read: func(r *envconfig.Reader) any { return r.LogLevel() },
			want: slog.LevelDebug,
		},
		{
			name:    "bad log level",
			vars:    map[string]string{"LOG_LEVEL": "loud"},
			read:    func(r *envconfig.Reader) any { return r.LogLevel() },
			wantErr: []string{"LOG_LEVEL: want debug, info, warn or error"},
		},
		{
			name: "secret default",
			read: func(r *envconfig.Reader) any { return r.Secret("TOKEN", "def") },
			want: "def",
		},
		{
			name: "secret from the variable",
			vars: map[string]string{"TOKEN": "xoxb-1"},
			read: func(r *envconfig.Reader) any { return r.Secret("TOKEN", "") },
			want: "xoxb-1",
		},
		{
			name: "secret from a file, trailing newline trimmed",
			vars: map[string]string{"TOKEN_FILE": secretFile(t, "xoxb-2\n")},
			read: func(r *envconfig.Reader) any { return r.Secret("TOKEN", "def") },
			want: "xoxb-2",
		},
		{
			name: "secret from a file written on Windows",
			vars: map[string]string{"TOKEN_FILE": secretFile(t, "xoxb-3\r\n")},
			read: func(r *envconfig.Reader) any { return r.Secret("TOKEN", "") },
			want: "xoxb-3",
		},
		{
			name:    "secret set twice",
			vars:    map[string]string{"TOKEN": "hunter2", "TOKEN_FILE": secretFile(t, "hunter3")},
			read:    func(r *envconfig.Reader) any { return r.Secret("TOKEN", "") },
			wantErr: []string{"TOKEN: set either TOKEN or TOKEN_FILE, not both"},
			notWant: []string{"hunter2", "hunter3"},
		},
		{
			name:    "secret file unreadable",
			vars:    map[string]string{"TOKEN_FILE": unreadable},
			read:    func(r *envconfig.Reader) any { return r.Secret("TOKEN", "def") },
			wantErr: []string{"TOKEN_FILE: open " + unreadable + ": no such file or directory"},
		},
		{
			name:    "secret file empty",
			vars:    map[string]string{"TOKEN_FILE": empty},
			read:    func(r *envconfig.Reader) any { return r.Secret("TOKEN", "def") },
			wantErr: []string{"TOKEN_FILE: " + empty + " is empty"},
		},
		{
			name: "connection defaults",
			read: func(r *envconfig.Reader) any { return []string{r.DatabaseURL(), r.AMQPURL()} },
			want: []string{envconfig.DefaultDatabaseURL, envconfig.DefaultAMQPURL},
		},
		{
			name: "connection URLs from files",
			vars: map[string]string{
				"DATABASE_URL_FILE": secretFile(t, "postgres://u:p@db:5432/notify\n"),
				"AMQP_URL_FILE":     secretFile(t, "amqps://u:p@mq/vhost\n"),
			},
			read: func(r *envconfig.Reader) any { return []string{r.DatabaseURL(), r.AMQPURL()} },
			want: []string{"postgres://u:p@db:5432/notify", "amqps://u:p@mq/vhost"},
		},
		{
			name: "keyword/value database string",
			vars: map[string]string{"DATABASE_URL": "host=db user=notify password=x dbname=notify"},
			read: func(r *envconfig.Reader) any { return r.DatabaseURL() },
			want: "host=db user=notify password=x dbname=notify",
		},
		{
			name: "bad connection URLs, without their passwords",
			vars: map[string]string{
				"DATABASE_URL": "postgres://u:hunter2@db:notaport/notify",
				"AMQP_URL":     "http://guest:hunter3@mq/",
			},
			read:    func(r *envconfig.Reader) any { return []string{r.DatabaseURL(), r.AMQPURL()} },
			wantErr: []string{"DATABASE_URL: not a valid URL (invalid port)", "AMQP_URL: want a URL starting with amqp:// or amqps://"},
			notWant: []string{"hunter2", "hunter3", "notaport"},
		},
		{
			name:    "both DATABASE_URL and DATABASE_URL_FILE",
			vars:    map[string]string{"DATABASE_URL": "postgres://db/x", "DATABASE_URL_FILE": secretFile(t, "postgres://db/y")},
			read:    func(r *envconfig.Reader) any { return r.DatabaseURL() },
			wantErr: []string{"DATABASE_URL: set either DATABASE_URL or DATABASE_URL_FILE, not both"},
		},
		{
			name: "http URL",
			vars: map[string]string{"HOOK_FILE": secretFile(t, "https://hooks.example/T/B/secret\n")},
			read: func(r *envconfig.Reader) any { return []string{r.HTTPURL("HOOK", ""), r.HTTPURL("API", "")} },
			want: []string{"https://hooks.example/T/B/secret", ""},
		},
		{
			name: "bad http URLs, without their secrets",
			vars: map[string]string{
				"NOSCHEME": "hooks.example/T/B/secret",
				"ESCAPE":   "https://hooks.example/%zz/secret",
				"NOHOST":   "https:///secret",
			},
			read: func(r *envconfig.Reader) any {
				return []string{r.HTTPURL("NOSCHEME", ""), r.HTTPURL("ESCAPE", ""), r.HTTPURL("NOHOST", "")}
			},
			wantErr: []string{
				"NOSCHEME: want a URL starting with http:// or https://",
				"ESCAPE: not a valid URL (invalid URL escape)",
				"NOHOST: the URL has no host",
			},
			notWant: []string{"secret", "%zz"},
		},
		{
			name: "own rules",
			read: func(r *envconfig.Reader) any {
				r.Errorf("SLACK_CHANNEL", "required with %s", "SLACK_BOT_TOKEN")
				r.Check("A", nil)
				r.Check("B", os.ErrInvalid)
				return nil
			},
			wantErr: []string{"SLACK_CHANNEL: required with SLACK_BOT_TOKEN", "B: invalid argument"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := envconfig.New(getenv(tt.vars))
			got := tt.read(r)
			err := r.Err()
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				if diff := cmp.Diff(tt.want, got); diff != "" {
					t.Errorf("value mismatch (-want +got):\n%s", diff)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error, want %q", tt.wantErr)
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != len(tt.wantErr) {
				t.Fatalf("error has %d lines, want %d:\n%v", len(lines), len(tt.wantErr), err)
			}
			for i, want := range tt.wantErr {
				if !strings.Contains(lines[i], want) {
					t.Errorf("error line %d = %q, want it to contain %q", i, lines[i], want)
				}
			}
			for _, s := range tt.notWant {
				if strings.Contains(err.Error(), s) {
					t.Errorf("error reveals %q:\n%v", s, err)
				}
			}
		})
	}
}

func TestParseDuration(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    time.Duration
		wantErr bool
	}{
		{"10s", 10 * time.Second, false},
		{"1d", 24 * time.Hour, false},
		{"270d", 270 * 24 * time.Hour, false},
		{"36500d", 36500 * 24 * time.Hour, false},
		{"36501d", 0, true},
		{"-1d", 0, true},
		{"d", 0, true},
		{"1d12h", 0, true},
		{"", 0, true},
	}
	for _, tt := range tests {
		got, err := envconfig.ParseDuration(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v, error %t", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestNames(t *testing.T) {
	t.Parallel()
	type config struct{ URL, Token string }
	load := func(getenv func(string) string) (config, error) {
		e := envconfig.New(getenv)
		c := config{URL: e.DatabaseURL(), Token: e.Secret("TOKEN", "")}
		e.LogLevel()
		e.String("TOKEN", "") // read twice, listed once
		return c, e.Err()
	}
	want := []string{"DATABASE_URL", "DATABASE_URL_FILE", "TOKEN", "TOKEN_FILE", "LOG_LEVEL"}
	if diff := cmp.Diff(want, envconfig.Names(load)); diff != "" {
		t.Errorf("Names mismatch (-want +got):\n%s", diff)
	}
}

// TestSettings: the start log shows every variable's effective value, defaults included,
// durations in seconds, and none of the secrets: not a password in a URL, not a token, not a
// webhook's path, not the contents of a *_FILE.
func TestSettings(t *testing.T) {
	t.Parallel()
	webhook := secretFile(t, "https://hooks.slack.com/services/T0/B0/webhook-secret\n")
	e := envconfig.New(getenv(map[string]string{
		"DATABASE_URL":           "postgres://notify:db-secret@db.example:5432/notify?sslmode=require",
		"SLACK_BOT_TOKEN":        "xoxb-token-secret",
		"SLACK_WEBHOOK_URL_FILE": webhook,
		"SEND_WORKERS":           "8",
		"RETRY_BASE_DELAY":       "90s",
		"LOG_LEVEL":              "debug",
	}))
	e.DatabaseURL()
	e.AMQPURL()
	e.Secret("SLACK_BOT_TOKEN", "")
	e.HTTPURL("SLACK_WEBHOOK_URL", "")
	e.Int("SEND_WORKERS", 4, 1, 256)
	e.Int("SEND_PREFETCH", 16, 1, 1000)
	e.Duration("RETRY_BASE_DELAY", 10*time.Second, 0)
	e.Duration("SHUTDOWN_TIMEOUT", 30*time.Second, 0)
	e.String("AMQP_TOPOLOGY", "notify")
	e.String("AMQP_TOPOLOGY", "notify") // read twice, shown once
	e.LogLevel()
	if err := e.Err(); err != nil {
		t.Fatal(err)
	}

	var out strings.Builder
	logging.New(&out, "test", slog.LevelInfo).Info("starting", "settings", e.Settings())
	var line struct {
		Settings map[string]any `json:"settings"`
	}
	if err := json.Unmarshal([]byte(out.String()), &line); err != nil {
		t.Fatalf("%v in %s", err, out.String())
	}
	want := map[string]any{
		"DATABASE_URL":           "postgres://notify:xxxxx@db.example:5432/notify?sslmode=require",
		"AMQP_URL":               "amqp://guest:xxxxx@127.0.0.1:5672/",
		"SLACK_BOT_TOKEN":        "[redacted]",
		"SLACK_WEBHOOK_URL_FILE": webhook,
		"SLACK_WEBHOOK_URL":      "https://hooks.slack.com/[redacted]",
		"SEND_WORKERS":           8.0,
		"SEND_PREFETCH":          16.0,
		"RETRY_BASE_DELAY":       90.0,
		"SHUTDOWN_TIMEOUT":       30.0,
		"AMQP_TOPOLOGY":          "notify",
		"LOG_LEVEL":              "DEBUG",
	}
	if diff := cmp.Diff(want, line.Settings); diff != "" {
		t.Errorf("settings (-want +got):\n%s", diff)
	}
	for _, secret := range []string{"db-secret", "token-secret", "webhook-secret", "services/T0"} {
		if strings.Contains(out.String(), secret) {
			t.Errorf("the start log shows a secret (%s): %s", secret, out.String())
		}
	}
}
