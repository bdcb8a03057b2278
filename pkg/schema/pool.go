package schema

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
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
//
// Once the pool has connected, PostgreSQL refusing its new connections for good (Refused:
// a password rotated under a running service) is logged on log as an error naming
// DATABASE_URL; the service keeps running on the connections it has and its callers keep
// trying, as for any database error. Only a service that has not started stops on it (Wait).
func NewPool(ctx context.Context, databaseURL string, minConns int32, log *slog.Logger) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, err
	}
	if !strings.Contains(databaseURL, "pool_max_conns") {
		cfg.MaxConns = max(cfg.MaxConns, minConns)
	}
	cfg.ConnConfig.Tracer = &refusals{log: log}
	return pgxpool.NewWithConfig(ctx, cfg)
}

// RefusedError is PostgreSQL refusing to let DATABASE_URL's role into its database for a
// reason that waiting does not fix: a wrong password, or a role that does not exist (both
// 28P01 under password authentication, which does not tell them apart; 28000 under trust
// authentication, or when pg_hba.conf has no entry for the client), a database that does
// not exist (3D000), or a role without CONNECT on it (42501). pgx stops trying a URL's
// other hosts on the same codes but 28000.
type RefusedError struct {
	Err error // the driver's connect error, naming the user, the database and PostgreSQL's reason
}

func (e *RefusedError) Error() string {
	return "DATABASE_URL: PostgreSQL refuses the connection, which waiting does not fix: " + e.Err.Error()
}

func (e *RefusedError) Unwrap() error { return e.Err }

// Refused returns err as a *RefusedError when it is PostgreSQL refusing DATABASE_URL at
// connect for good (see RefusedError), and nil for anything else, in particular what
// waiting does fix: no server listening yet (connection refused), one starting up or
// shutting down (57P03, 57P01), no connection slot free (53300). Only errors of connecting
// count: a query's "permission denied" (42501) is not DATABASE_URL's fault.
func Refused(err error) error {
	if r, ok := errors.AsType[*RefusedError](err); ok {
		return r
	}
	pgErr, isPg := errors.AsType[*pgconn.PgError](err)
	connectErr, connecting := errors.AsType[*pgconn.ConnectError](err)
	if !connecting || !isPg {
		return nil
	}
	switch pgErr.Code {
	case "28P01", // invalid_password (also a role that does not exist, under password authentication)
		"28000", // invalid_authorization_specification: no such role (trust), no pg_hba.conf entry
		"3D000", // invalid_catalog_name: no such database
		"42501": // insufficient_privilege: no CONNECT on the database
		return &RefusedError{Err: connectErr} // not what the caller was doing: it names what to fix
	}
	return nil
}

// refusalLogEvery is how often a pool says, while it lasts, that PostgreSQL refuses it.
const refusalLogEvery = 30 * time.Second

// refusals is the pool's pgx.ConnectTracer: it logs PostgreSQL refusing new connections
// for good once the pool has connected (at start, Wait reports it and the service stops),
// at once and then every refusalLogEvery while it lasts, and when connections are accepted
// again.
type refusals struct {
	log *slog.Logger

	mu        sync.Mutex
	connected bool      // a connection succeeded: the service is past its start
	refusing  bool      // the last connection was refused for good
	logged    time.Time // when the refusal was last logged
}

// TraceQueryStart is a no-op: pgx takes a connect tracer only as a query tracer too.
func (r *refusals) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	return ctx
}

// TraceQueryEnd is a no-op.
func (r *refusals) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// TraceConnectStart is a no-op.
func (r *refusals) TraceConnectStart(ctx context.Context, _ pgx.TraceConnectStartData) context.Context {
	return ctx
}

// TraceConnectEnd notes the outcome of a connection attempt and logs what changed.
func (r *refusals) TraceConnectEnd(_ context.Context, data pgx.TraceConnectEndData) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if data.Err == nil {
		if r.refusing {
			r.log.Info("DATABASE_URL: PostgreSQL accepts new connections again")
		}
		r.connected, r.refusing = true, false
		return
	}
	refused := Refused(data.Err)
	if refused == nil || !r.connected {
		return // waiting fixes it, or the start reports it
	}
	if !r.refusing || time.Since(r.logged) >= refusalLogEvery {
		r.log.Error("DATABASE_URL: PostgreSQL refuses new connections; running on those open, and trying again", "err", data.Err.Error())
		r.logged = time.Now()
	}
	r.refusing = true
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
