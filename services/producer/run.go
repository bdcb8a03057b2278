package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc/filters"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"notify/pkg/logging"
	"notify/pkg/metrics"
	"notify/pkg/rabbit"
	"notify/pkg/schema"
	"notify/pkg/tracing"
	notifyv1 "notify/proto/gen/notify/v1"
	"notify/services/producer/internal/apikey"
	"notify/services/producer/internal/jobs"
	"notify/services/producer/internal/outbox"
	"notify/services/producer/internal/server"
)

// run wires the producer together and runs it until ctx ends. Metrics and health are
// served at once, so /livez answers while the database is awaited and migrated; everything
// else starts after the migrations.
//
// Shutdown order matters: on ctx's end the gRPC server drains in-flight RPCs and the relay
// finishes its batch first; only then is the broker connection closed, so nothing the relay
// claimed is left half-published.
func run(ctx context.Context, getenv func(string) string) error {
	cfg, err := loadConfig(getenv)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	log := logging.New(os.Stderr, "producer", cfg.LogLevel)
	if cfg.GCPercent > 0 {
		debug.SetGCPercent(cfg.GCPercent)
	}
	logging.Starting(log, cfg.Settings)
	defer logging.Stopping(ctx, log, cfg.ShutdownTimeout)()
	// TLS files are checked before anything waits for the database, so a bad path fails fast.
	serverOpts, err := grpcServerOptions(cfg, log)
	if err != nil {
		return err
	}

	// Room for the relay's rounds (each holds a connection until the broker confirms), the
	// group commits, LISTEN and the API's own reads.
	pool, err := schema.NewPool(ctx, cfg.DatabaseURL, int32(cfg.OutboxConcurrency+cfg.PublishBatch.MaxCommits+4), log)
	if err != nil {
		return fmt.Errorf("DATABASE_URL: %w", err)
	}
	defer pool.Close()

	reg := metrics.NewRegistry()
	reg.MustRegister(metrics.NewPoolCollector(pool))
	topo := rabbit.NewTopology(cfg.Topology, nil)
	conn := rabbit.NewConn(cfg.AMQPURL, log, rabbit.ConnOptions{
		Name: "producer", Topology: &topo, DrainTimeout: cfg.ShutdownTimeout, Hooks: rabbit.NewMetrics(reg),
	})
	// The relay's window holds every batch its overlapping rounds have in flight.
	relayPub := rabbit.NewPublisher(conn, topo.Exchange(), rabbit.PublisherOptions{Window: cfg.OutboxConcurrency * cfg.OutboxBatchSize})
	// Status events go to the topic exchange <AMQP_TOPOLOGY>.events, not mandatory: with no
	// subscriber bound the broker drops them, which is not a failure.
	eventsPub := rabbit.NewPublisher(conn, topo.EventsExchange(), rabbit.PublisherOptions{
		Window: cfg.OutboxConcurrency * cfg.OutboxBatchSize, Optional: true,
	})
	logStatusEvents(ctx, pool, log, topo.EventsExchange())
	relay := outbox.NewRelay(pool, relayPub, log, reg, outbox.Options{
		Events:       eventsPub,
		BatchSize:    cfg.OutboxBatchSize,
		Concurrency:  cfg.OutboxConcurrency,
		PackSize:     cfg.OutboxPackSize,
		PollInterval: cfg.OutboxPollInterval,
		Retention:    cfg.OutboxRetention,
		Ready:        conn.Ready,
	})

	keys := apikey.NewVerifier(apikey.NewStore(pool), cfg.APIKeyCacheTTL, log)
	auth := server.NewAuth(keys, log, reg)
	periodic := []jobs.Job{
		jobs.StaleTokens(cfg.TokenStaleAfter, cfg.TokenSweepBatch, cfg.TokenSweepInterval, log, reg),
		jobs.Redrive(jobs.RedriveOptions{After: cfg.RedriveAfter, MaxRetryDelay: cfg.RetryMaxDelay, Batch: 100},
			cfg.RedriveInterval, log, reg),
	}
	if cfg.NotificationRetention > 0 {
		periodic = append(periodic, jobs.Retention(jobs.RetentionOptions{
			After: cfg.NotificationRetention, Batch: cfg.NotificationRetentionBatch,
		}, cfg.NotificationRetentionInterval, log, reg))
	} else {
		log.Info("NOTIFICATION_RETENTION=0: notifications are kept for ever")
	}
	runner := jobs.NewRunner(pool, log, reg, periodic...)

	// After the deadline (grpcServerOptions): authentication, the rate limit of the key it
	// names, then the text check every request passes before a handler runs.
	limits := server.NewRateLimit(cfg.Publish, reg)
	serverOpts = append(serverOpts, grpc.ChainUnaryInterceptor(auth.Unary(), limits.Unary()), grpc.ChainStreamInterceptor(auth.Stream()))
	if tracing.On(getenv) {
		// A server span per call (health checks aside), continuing the caller's traceparent;
		// not installed at all when tracing is off.
		serverOpts = append(serverOpts, grpc.StatsHandler(otelgrpc.NewServerHandler(
			otelgrpc.WithFilter(filters.Not(filters.HealthCheck())))))
	}
	api, err := newGRPCServer(cfg.GRPCAddr, cfg.ShutdownTimeout, log, reg, append(serverOpts, server.TextOptions()...)...)
	if err != nil {
		return err
	}
	apps := server.NewApps(cfg.Apps...)
	notifications := server.NewNotifications(pool, log, reg, relay.Wake, cfg.PublishBatch)
	notifications.SetApps(apps)
	devices := server.NewDevices(pool, log, reg)
	devices.SetApps(apps)
	admin := server.NewAdmin(pool, log, keys, relay.Wake)
	admin.SetApps(apps)
	notifyv1.RegisterNotificationServiceServer(api, notifications)
	notifyv1.RegisterDeviceServiceServer(api, devices)
	notifyv1.RegisterAdminServiceServer(api, admin)

	checks := []metrics.Check{
		{Name: "database", Func: pool.Ping},
		{Name: "rabbitmq", Func: conn.Check},
		{Name: "grpc", Func: api.Check},
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return metrics.NewServer(cfg.MetricsAddr, reg, log, checks...).Run(gctx) })
	// Served at once, answering UNAVAILABLE until Open below, so that a client of a producer
	// still waiting for its database or migrations is told so instead of left waiting for a
	// server that accepts connections and never answers.
	g.Go(func() error { return api.Run(gctx) })
	g.Go(func() error {
		if err := waitForDatabase(gctx, pool, log, 0); err != nil {
			if gctx.Err() != nil {
				return nil
			}
			return err
		}
		if cfg.MigrateOnStart {
			if _, err := schema.Migrate(gctx, pool, log); err != nil {
				if gctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("migrate database: %w", err)
			}
		} else if err := schema.Wait(gctx, pool, log, 2*time.Second); err != nil {
			if gctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("database schema (MIGRATE_ON_START=false): %w", err)
		}
		warnWithoutAdminKey(gctx, pool, log)

		stopConn := conn.Start(gctx)
		defer func() { _ = stopConn() }() // early returns; the explicit call below reports the error

		work, wctx := errgroup.WithContext(gctx)
		work.Go(func() error { return relay.Run(wctx) })
		work.Go(func() error { return keys.Run(wctx) })
		work.Go(func() error { return runner.Run(wctx) })
		work.Go(func() error { watchReadiness(wctx, checks, log, api.SetServing); return nil })
		api.Open()
		return errors.Join(work.Wait(), stopConn())
	})
	return g.Wait()
}

// readinessInterval is how often the gRPC health service re-evaluates the readiness checks.
const readinessInterval = time.Second

// watchReadiness runs the readiness checks every readinessInterval until ctx ends and
// reports the outcome to setServing, logging each change with its reason: gRPC clients and
// load balancers that use grpc.health.v1 then see what /readyz says.
func watchReadiness(ctx context.Context, checks []metrics.Check, log *slog.Logger, setServing func(bool)) {
	ready := false
	t := time.NewTicker(readinessInterval)
	defer t.Stop()
	for {
		err := metrics.Ready(ctx, checks)
		if ctx.Err() != nil {
			return
		}
		if now := err == nil; now != ready {
			if err != nil {
				log.Warn("not ready", "err", err)
			} else {
				log.Info("ready")
			}
			ready = now
		}
		setServing(err == nil)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// waitForDatabase waits for a database that starts together with the producer instead of
// failing at once, and says so in the log (first after a second, then every 10 s), so that a
// producer that is not ready is not also silent about why. The server waits as long as it
// takes (giveUp 0), as the sender, retrier and deadletter do: it is not ready meanwhile and
// answers UNAVAILABLE. `producer migrate`, a command someone or a Job waits on, gives up
// after giveUp. PostgreSQL refusing DATABASE_URL for good (a wrong password, no such role or
// database: schema.Refused) is returned at once, as schema.Wait does: no wait fixes it.
func waitForDatabase(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger, giveUp time.Duration) error {
	start := time.Now()
	var logged time.Time
	for {
		err := pool.Ping(ctx)
		if err == nil {
			return nil
		}
		if refused := schema.Refused(err); refused != nil {
			return refused
		}
		if (giveUp > 0 && time.Since(start) >= giveUp) || ctx.Err() != nil {
			return fmt.Errorf("DATABASE_URL: database not reachable: %w", err)
		}
		if time.Since(start) >= time.Second && time.Since(logged) >= 10*time.Second {
			attrs := []any{"err", err.Error(), "waited", time.Since(start).Round(time.Second)}
			if giveUp > 0 {
				attrs = append(attrs, "gives_up_in", (giveUp - time.Since(start)).Round(time.Second))
			}
			log.Warn("waiting for the database (DATABASE_URL)", attrs...)
			logged = time.Now()
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// warnWithoutAdminKey tells the operator how to make the first admin key: without one,
// nobody can use AdminService.
func warnWithoutAdminKey(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger) {
	var exists bool
	err := pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM api_keys WHERE role = 'admin' AND revoked_at IS NULL)").Scan(&exists)
	if err == nil && !exists {
		log.Warn("no active admin API key; create one with: producer keys create NAME --role admin (uses DATABASE_URL)")
	}
}

// logStatusEvents says at start when the database has status events turned off
// (schema.StatusEventsSetting), so that a team binding a queue to the events exchange and
// receiving nothing finds why in the producer's log. A database not reachable yet is left
// to the readiness checks.
func logStatusEvents(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger, exchange string) {
	var on bool
	if err := pool.QueryRow(ctx, schema.StatusEventsOnSQL).Scan(&on); err == nil && !on {
		log.Warn("status events are off in this database ("+schema.StatusEventsSetting+" = off): no status change is published",
			"exchange", exchange)
	}
}
