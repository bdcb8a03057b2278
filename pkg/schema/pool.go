package schema

import (
	"context"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"

	"notify/pkg/envconfig"
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

// DatabaseURL reads DATABASE_URL (envconfig.Reader.DatabaseURL) and parses it as NewPool
// will (pgxpool.ParseConfig: a keyword/value string, sslmode and its certificate files,
// pool_* settings), so that what only the driver refuses is reported with every other bad
// variable at start rather than alone once the service starts. The message leaves out the
// value pgx quotes: it masks passwords, but a URL's other parts may be secrets too.
func DatabaseURL(r *envconfig.Reader) string {
	v := r.DatabaseURL()
	if v == "" || r.Refused("DATABASE_URL", "DATABASE_URL_FILE") {
		return v // refused already, or unreadable
	}
	if _, err := pgxpool.ParseConfig(v); err != nil {
		msg := err.Error()
		if rest, ok := strings.CutPrefix(msg, "cannot parse `"); ok {
			msg = "cannot parse it"
			if i := strings.LastIndex(rest, "`: "); i >= 0 {
				msg = rest[i+len("`: "):]
			}
		}
		r.Errorf("DATABASE_URL", "%s", msg)
	}
	return v
}
