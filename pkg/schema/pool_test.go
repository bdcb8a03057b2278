package schema

import (
	"context"
	"runtime"
	"testing"
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
		pool, err := NewPool(ctx, tc.url, tc.min)
		if err != nil {
			t.Fatalf("NewPool(%q): %v", tc.url, err)
		}
		if got := pool.Config().MaxConns; got != tc.want {
			t.Errorf("NewPool(%q, %d): MaxConns %d, want %d", tc.url, tc.min, got, tc.want)
		}
		pool.Close()
	}
	if _, err := NewPool(ctx, "postgres://%zz", 12); err == nil {
		t.Error("NewPool of a malformed URL: no error")
	}
}
