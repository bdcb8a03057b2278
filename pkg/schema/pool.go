package schema

import (
	"context"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
)

// NewPool opens the connection pool of DATABASE_URL with room for at least minConns
// connections, unless the URL sets pool_max_conns itself. pgx's own default, the larger
// of 4 and the number of CPUs, is smaller than what a service keeps busy at once (the
// producer's relay rounds each hold a connection until the broker confirms, beside its
// group commits; the sender's workers, each with its round trips): callers then queued
// for a connection while PostgreSQL had work to spare (make bench's 1,000/s phase: 60 of
// the producer's 330 acquires waited, 2.8 s in all, in 7 s). Connections are opened as
// they are needed, so an idle service holds few.
func NewPool(ctx context.Context, databaseURL string, minConns int32) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, err
	}
	if !strings.Contains(databaseURL, "pool_max_conns") {
		cfg.MaxConns = max(cfg.MaxConns, minConns)
	}
	return pgxpool.NewWithConfig(ctx, cfg)
}
