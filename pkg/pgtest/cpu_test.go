package pgtest

import (
	"context"
	"testing"
	"time"
)

func TestStatCPU(t *testing.T) {
	t.Parallel()
	// A command name with spaces and parentheses; utime 250 and stime 50 ticks.
	line := []byte("4242 (postgres: notify x) (y)) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 100 0 0\n")
	got, err := statCPU(line)
	if err != nil {
		t.Fatal(err)
	}
	if want := 3 * time.Second; got != want {
		t.Errorf("statCPU = %v, want %v", got, want)
	}
	for _, bad := range []string{"4242 no name", "4242 (x) S 1 2", "4242 (x) S 1 2 3 4 5 6 7 8 9 10 x 50 0"} {
		if _, err := statCPU([]byte(bad)); err == nil {
			t.Errorf("statCPU(%q): no error", bad)
		}
	}
}

func TestBackendCPU(t *testing.T) {
	t.Parallel()
	db := New(t)
	ctx := context.Background()
	cpu, err := StartBackendCPU(ctx, db.Pool)
	if err != nil {
		t.Skipf("PostgreSQL's backends are not readable here: %v", err)
	}
	// Work for the backend only: a sum over ten million rows takes it well over 10 ms
	// (one tick of /proc's clock) on any machine.
	if _, err := db.Pool.Exec(ctx, "SELECT sum(i) FROM generate_series(1, 10000000) i"); err != nil {
		t.Fatal(err)
	}
	used, err := cpu.Used(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if used <= 0 {
		t.Errorf("Used = %v after a query that keeps a backend busy, want > 0", used)
	}
}
