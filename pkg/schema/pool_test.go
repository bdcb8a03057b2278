package schema

import (
	"context"
	"log/slog"
	"runtime"
	"strings"
	"testing"

	"notify/pkg/envconfig"
)

// TestNewPoolSize: the pool has room for what the service keeps busy, unless
// DATABASE_URL says otherwise; pgx's default stays when it is the larger.
func TestNewPoolSize(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		url  string
		min  int32
		want int32
	}{
		{"postgres://u:p@127.0.0.1:1/db", 12, max(12, int32(max(4, runtime.NumCPU())))},
		{"postgres://u:p@127.0.0.1:1/db?sslmode=disable", 1, int32(max(4, runtime.NumCPU()))},
		{"postgres://u:p@127.0.0.1:1/db?pool_max_conns=3", 12, 3},
		{"host=127.0.0.1 port=1 dbname=db pool_max_conns=5", 12, 5},
	} {
		pool, err := NewPool(ctx, tc.url, tc.min, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatalf("NewPool(%q): %v", tc.url, err)
		}
		if got := pool.Config().MaxConns; got != tc.want {
			t.Errorf("NewPool(%q, %d): MaxConns %d, want %d", tc.url, tc.min, got, tc.want)
		}
		pool.Close()
	}
	if _, err := NewPool(ctx, "postgres://%zz", 12, slog.New(slog.DiscardHandler)); err == nil {
		t.Error("NewPool of a malformed URL: no error")
	}
}

// TestDatabaseURL: what only the driver refuses in DATABASE_URL is reported with the other
// variables at start, not after them by the pool (it was "DATABASE_URL: cannot parse
// `garbage`: …", alone, once every other variable was right), and without quoting the value.
func TestDatabaseURL(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		url, wantErr string
		notWant      []string
	}{
		{"postgres://u:p@db:5432/notify?sslmode=disable", "", nil},
		{"host=db user=notify password=x dbname=notify", "", nil},
		{"garbage hunter2", "DATABASE_URL: failed to parse as keyword/value (invalid keyword/value)", []string{"hunter2", "cannot parse"}},
		{"postgres://u:hunter2@db/notify?sslmode=verify&sslpassword=hunter3", "DATABASE_URL: failed to configure TLS (sslmode is invalid)",
			[]string{"hunter2", "hunter3", "xxxxx"}},
		{"postgres://db/notify?pool_max_conns=many", "DATABASE_URL: cannot parse pool_max_conns", nil},
		// envconfig's own check comes first and is not repeated.
		{"postgres://u:hunter2@db:notaport/notify", "DATABASE_URL: not a valid URL (invalid port)", []string{"hunter2", "failed"}},
	} {
		e := envconfig.New(func(k string) string { return map[string]string{"DATABASE_URL": tc.url}[k] })
		if got := DatabaseURL(e); got != tc.url {
			t.Errorf("DatabaseURL = %q, want %q", got, tc.url)
		}
		err := e.Err()
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("%q: %v, want no error", tc.url, err)
		case tc.wantErr != "" && (err == nil || !strings.HasPrefix(err.Error(), tc.wantErr) || strings.Count(err.Error(), "DATABASE_URL") != 1):
			t.Errorf("%q: %v, want one error starting %q", tc.url, err, tc.wantErr)
		}
		for _, s := range tc.notWant {
			if err != nil && strings.Contains(err.Error(), s) {
				t.Errorf("%q: %v shows %q", tc.url, err, s)
			}
		}
	}
}
