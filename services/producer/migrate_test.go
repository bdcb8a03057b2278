package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"notify/pkg/pgtest"
	"notify/pkg/schema"
)

func TestMigrateCommand(t *testing.T) {
	t.Parallel()
	db := pgtest.NewEmpty(t)
	getenv := env(map[string]string{"DATABASE_URL": db.URL, "LOG_LEVEL": "warn"})
	migrate := func(args ...string) (code int, stdout, stderr string) {
		var out, errOut bytes.Buffer
		code = runMigrate(context.Background(), args, getenv, &out, &errOut)
		return code, out.String(), errOut.String()
	}
	ms, err := schema.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	countState := func(out, state string) int {
		n := 0
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[1] == state {
				n++
			}
		}
		return n
	}

	code, out, stderr := migrate("status")
	if code != 3 || countState(out, "pending") != len(ms) || !strings.Contains(stderr, "pending") {
		t.Errorf("status of an empty database = %d\n%s%s; want 3 and every migration pending", code, out, stderr)
	}
	if code, _, stderr := migrate("up"); code != 0 || !strings.Contains(stderr, schema.Latest()) {
		t.Fatalf("up = %d, %s; want 0 and the version reached", code, stderr)
	}
	code, out, stderr = migrate("status")
	if code != 0 || countState(out, "applied") != len(ms) || !strings.Contains(stderr, "up to date") {
		t.Errorf("status after up = %d\n%s%s; want 0 and every migration applied", code, out, stderr)
	}
	if code, _, stderr := migrate("up"); code != 0 {
		t.Errorf("up again = %d, %s; want 0", code, stderr)
	}

	const future = "9000_from_a_newer_release"
	if _, err := db.Pool.Exec(context.Background(), "INSERT INTO schema_migrations (version) VALUES ($1)", future); err != nil {
		t.Fatal(err)
	}
	for _, sub := range []string{"up", "status"} {
		code, out, stderr := migrate(sub)
		if code != 4 || !strings.Contains(stderr, future) || !strings.Contains(stderr, schema.Latest()) {
			t.Errorf("%s on a newer database = %d, %s; want 4 and both versions named", sub, code, stderr)
		}
		if sub == "status" && !strings.Contains(out, "newer than this binary") {
			t.Errorf("status does not mark %s as newer:\n%s", future, out)
		}
	}

	for _, args := range [][]string{nil, {"down"}, {"up", "now"}} {
		if code, _, stderr := migrate(args...); code != 2 || !strings.Contains(stderr, "Usage:") {
			t.Errorf("migrate %q = %d, %s; want 2 and the usage", args, code, stderr)
		}
	}
	if code, out, _ := migrate("--help"); code != 0 || !strings.Contains(out, "producer migrate up") {
		t.Errorf("migrate --help = %d, %s; want 0 and the usage on stdout", code, out)
	}
}
