package outbox

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"notify/pkg/pgtest"
	"notify/pkg/rabbit"
	"notify/pkg/rabbit/rabbittest"
	"notify/pkg/testenv"
)

// noopPublisher confirms everything at once: the relay's database work alone.
type noopPublisher struct{}

func (noopPublisher) Publish(context.Context, ...rabbit.Message) error { return nil }

// BenchmarkRelayOnce relays an outbox filled beforehand, one RelayOnce round after another
// (claim with SKIP LOCKED, publish, mark), with a publisher that confirms at once (the
// database side alone) and with a real RabbitMQ publisher (window 256, the producer's).
// Every iteration is one row; the figures to read are rows/s and the CPU per row of this
// process and of the test database's PostgreSQL backends, and db-writes/round, the round
// trips to the database per round (countingPool). Rounds of 20 rows are what a relay
// behind a steady stream of Publish calls runs. Run with e.g. -benchtime 20000x.
func BenchmarkRelayOnce(b *testing.B) {
	for _, tc := range []struct {
		publisher string
		batch     int
	}{
		{"noop", 20},
		{"noop", 100},
		{"noop", 500},
		{"rabbitmq", 100},
		{"rabbitmq", 500},
	} {
		b.Run(fmt.Sprintf("publisher=%s/batch=%d", tc.publisher, tc.batch), func(b *testing.B) {
			var pub publisher = noopPublisher{}
			if tc.publisher == "rabbitmq" {
				amqpURL := testenv.AMQPURL(b)
				topo := rabbittest.Topology(b, amqpURL, "outbox-bench", rabbit.NewTopology("", nil))
				conn := rabbittest.StartConn(b, amqpURL, rabbit.ConnOptions{Name: topo.Name, Topology: &topo})
				pub = rabbit.NewPublisher(conn, topo.Exchange(), rabbit.PublisherOptions{})
			}
			db := pgtest.New(b)
			ctx := context.Background()
			// Rows as Publish writes them: a SendTask of about 60 bytes.
			if _, err := db.Pool.Exec(ctx, `INSERT INTO outbox (notification_id, routing_key, message_type, body)
				SELECT gen_random_uuid(), 'send', 'notify.bus.v1.SendTask', decode(repeat('ab', 60), 'hex')
				FROM generate_series(1, $1)`, b.N); err != nil {
				b.Fatal(err)
			}
			if _, err := db.Pool.Exec(ctx, "ANALYZE outbox"); err != nil {
				b.Fatal(err)
			}
			pool, writes := countingPool(b, db.URL)
			r := NewRelay(pool, pub, discard, prometheus.NewRegistry(), Options{BatchSize: tc.batch})

			cpu0, pg0 := processCPU(b), backendCPU(b, db.Pool)
			writes.Store(0)
			b.ResetTimer()
			relayed, rounds := 0, 0
			for relayed < b.N {
				n, err := r.RelayOnce(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if n == 0 {
					b.Fatalf("RelayOnce claimed nothing with %d of %d rows relayed", relayed, b.N)
				}
				relayed += n
				rounds++
			}
			b.StopTimer()
			cpu, pg := processCPU(b)-cpu0, backendCPU(b, db.Pool)-pg0
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "rows/s")
			b.ReportMetric(float64(writes.Load())/float64(rounds), "db-writes/round")
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-us/row")
			b.ReportMetric(float64(pg.Microseconds())/float64(b.N), "pg-cpu-us/row")
			var left int
			if err := db.Pool.QueryRow(ctx, "SELECT count(*) FROM outbox WHERE published_at IS NULL").Scan(&left); err != nil || left != 0 {
				b.Fatalf("%d rows left unpublished (%v)", left, err)
			}
		})
	}
}

// countingPool is a pool on url whose connections count their writes to PostgreSQL: pgx
// writes a statement, or a batch of them, in one write and then waits for the answer, so
// writes per round are the round's round trips to the database. Its one connection is open
// before it is returned, so that its start is not counted in a benchmark's CPU.
func countingPool(b *testing.B, url string) (*pgxpool.Pool, *atomic.Int64) {
	b.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		b.Fatal(err)
	}
	writes := new(atomic.Int64)
	dial := cfg.ConnConfig.DialFunc
	cfg.ConnConfig.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return countingConn{c, writes}, nil
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	if err := pool.Ping(context.Background()); err != nil {
		b.Fatal(err)
	}
	return pool, writes
}

type countingConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// BenchmarkRelayRun relays an outbox filled beforehand with Run, as the producer runs it
// (batches of 500, a real RabbitMQ publisher with a window of one batch per round loop), with
// one round loop and with overlapping rounds. Every iteration is one row; the figure to read
// is rows/s, from Run's start until the last row is marked published. Run with e.g.
// -benchtime 20000x.
func BenchmarkRelayRun(b *testing.B) {
	for _, concurrency := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("concurrency=%d", concurrency), func(b *testing.B) {
			amqpURL := testenv.AMQPURL(b)
			topo := rabbittest.Topology(b, amqpURL, "outbox-bench", rabbit.NewTopology("", nil))
			conn := rabbittest.StartConn(b, amqpURL, rabbit.ConnOptions{Name: topo.Name, Topology: &topo})
			const batch = 500
			pub := rabbit.NewPublisher(conn, topo.Exchange(), rabbit.PublisherOptions{Window: concurrency * batch})
			db := pgtest.New(b)
			ctx := context.Background()
			if _, err := db.Pool.Exec(ctx, `INSERT INTO outbox (notification_id, routing_key, message_type, body)
				SELECT gen_random_uuid(), 'send', 'notify.bus.v1.SendTask', decode(repeat('ab', 60), 'hex')
				FROM generate_series(1, $1)`, b.N); err != nil {
				b.Fatal(err)
			}
			if _, err := db.Pool.Exec(ctx, "ANALYZE outbox"); err != nil {
				b.Fatal(err)
			}
			r := NewRelay(db.Pool, pub, discard, prometheus.NewRegistry(), Options{BatchSize: batch, Concurrency: concurrency, PollInterval: time.Hour})

			runCtx, cancel := context.WithCancel(ctx)
			done := make(chan error, 1)
			b.ResetTimer()
			go func() { done <- r.Run(runCtx) }()
			r.Wake()
			for testutil.ToFloat64(r.published) < float64(b.N) {
				time.Sleep(time.Millisecond)
			}
			b.StopTimer()
			cancel()
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "rows/s")
			var left int
			if err := db.Pool.QueryRow(ctx, "SELECT count(*) FROM outbox WHERE published_at IS NULL").Scan(&left); err != nil || left != 0 {
				b.Fatalf("%d rows left unpublished (%v)", left, err)
			}
		})
	}
}
