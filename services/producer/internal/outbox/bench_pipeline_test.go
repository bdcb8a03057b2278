package outbox

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"notify/pkg/pgtest"
	"notify/pkg/rabbit"
	"notify/pkg/rabbit/rabbittest"
	"notify/pkg/schema"
	"notify/pkg/testenv"
)

// BenchmarkRelayPipeline relays the outbox a small-notification pipeline leaves: every
// iteration is one notification whose send task and `pending` status event are in the
// outbox beforehand, written as PublishBatch writes them (500 events, then their 500 tasks,
// per transaction), and whose final status event a stand-in sender writes once its task is
// confirmed (one INSERT per group of up to 100, as the batched sender commits), so the
// relay moves three rows per notification and holds each final event back until the
// pending one before it is published. The outbox's statistics are those of a drained
// outbox (analyzed when empty), as they are in production after every backlog until
// autovacuum analyzes the table again. Run with the producer's settings (batches of 500,
// real RabbitMQ, a window of one batch per round loop) at several concurrencies, deleting
// published rows (the default) and marking them (OUTBOX_RETENTION set; the later delete by
// housekeeping is not part of the figure).
//
// Figures: rows/s from Run's start until every row is published, and CPU milliseconds per
// row of this process (the relay, its AMQP client and the stand-in sender's inserts) and of
// this database's PostgreSQL backends (read from /proc; backends that exit during the run,
// such as autovacuum workers, are missed). On a shared machine CPU per row is steadier
// than rows/s. Run with e.g. -benchtime 20000x.
func BenchmarkRelayPipeline(b *testing.B) {
	for _, tc := range []struct {
		concurrency int
		retention   time.Duration
	}{{1, 0}, {2, 0}, {4, 0}, {2, time.Hour}} {
		settle := "delete"
		if tc.retention > 0 {
			settle = "mark"
		}
		concurrency := tc.concurrency
		b.Run(fmt.Sprintf("concurrency=%d/settle=%s", concurrency, settle), func(b *testing.B) {
			amqpURL := testenv.AMQPURL(b)
			topo := rabbittest.Topology(b, amqpURL, "outbox-bench", rabbit.NewTopology("", nil))
			conn := rabbittest.StartConn(b, amqpURL, rabbit.ConnOptions{Name: topo.Name, Topology: &topo})
			const batch = 500
			window := concurrency * batch
			db := pgtest.New(b)
			ctx := context.Background()
			// Statistics as a drained outbox leaves them until autovacuum analyzes again:
			// taken when every row was gone (reltuples 0).
			for _, sql := range []string{
				"INSERT INTO outbox (routing_key, message_type, body) SELECT 'send', 'x', '' FROM generate_series(1, 300)",
				"DELETE FROM outbox", "ANALYZE outbox",
			} {
				if _, err := db.Pool.Exec(ctx, sql); err != nil {
					b.Fatal(err)
				}
			}
			if _, err := db.Pool.Exec(ctx, `
				WITH n AS (SELECT i, gen_random_uuid() AS id FROM generate_series(0, $1 - 1) i),
				r AS (
					SELECT i / 500 AS b, 0 AS k, i, id, 'pending.t' AS routing_key, '`+schema.StatusEventType+`' AS message_type,
						convert_to(json_build_object('notificationId', id, 'caller', 'bench', 'type', 't', 'status', 'pending',
							'counts', json_build_object('total', 1), 'time', now())::text, 'UTF8') AS body FROM n
					UNION ALL
					SELECT i / 500, 1, i, id, 'send', 'notify.bus.v1.SendTask', convert_to(id::text, 'UTF8') FROM n
				)
				INSERT INTO outbox (notification_id, routing_key, message_type, body)
				SELECT id, routing_key, message_type, body FROM r ORDER BY b, k, i`, b.N); err != nil {
				b.Fatal(err)
			}
			tasks := &finalEvents{
				pub:  rabbit.NewPublisher(conn, topo.Exchange(), rabbit.PublisherOptions{Window: window}),
				pool: db.Pool,
				ids:  make(chan uuid.UUID, b.N),
			}
			events := rabbit.NewPublisher(conn, topo.EventsExchange(), rabbit.PublisherOptions{Window: window, Optional: true})
			r := NewRelay(db.Pool, tasks, discard, prometheus.NewRegistry(), Options{
				BatchSize: batch, Concurrency: concurrency, PollInterval: 100 * time.Millisecond, Events: events,
				Retention: tc.retention,
			})

			runCtx, cancel := context.WithCancel(ctx)
			senderDone := make(chan error, 1)
			go func() { senderDone <- tasks.write(runCtx, r.Wake) }()
			done := make(chan error, 1)
			cpu0, pg0 := processCPU(b), backendCPU(b, db.Pool)
			b.ResetTimer()
			go func() { done <- r.Run(runCtx) }()
			r.Wake()
			rows := 3 * b.N
			deadline := time.Now().Add(10*time.Minute + time.Duration(rows)*time.Millisecond)
			for testutil.ToFloat64(r.published) < float64(rows) {
				if time.Now().After(deadline) {
					b.Fatalf("%v of %d rows published by the deadline", testutil.ToFloat64(r.published), rows)
				}
				time.Sleep(time.Millisecond)
			}
			b.StopTimer()
			cpu, pg := processCPU(b)-cpu0, backendCPU(b, db.Pool)-pg0
			cancel()
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			if err := <-senderDone; err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(rows)/b.Elapsed().Seconds(), "rows/s")
			b.ReportMetric(float64(cpu.Microseconds())/1000/float64(rows), "cpu-ms/row")
			b.ReportMetric(float64(pg.Microseconds())/1000/float64(rows), "pg-cpu-ms/row")
			var left int
			if err := db.Pool.QueryRow(ctx, "SELECT count(*) FROM outbox WHERE published_at IS NULL").Scan(&left); err != nil || left != 0 {
				b.Fatalf("%d rows left unpublished (%v)", left, err)
			}
		})
	}
}

// finalEvents publishes send tasks and, once they are confirmed, writes each one's final
// status event the way the batched sender does: one INSERT per group.
type finalEvents struct {
	pub  publisher
	pool *pgxpool.Pool
	ids  chan uuid.UUID
}

func (f *finalEvents) Publish(ctx context.Context, msgs ...rabbit.Message) error {
	if err := f.pub.Publish(ctx, msgs...); err != nil {
		return err
	}
	for _, m := range msgs {
		id, err := uuid.ParseBytes(m.Body)
		if err != nil {
			return err
		}
		f.ids <- id
	}
	return nil
}

// write inserts the final events of the notifications whose tasks were published, up to
// 100 per statement, and wakes the relay after each commit, until ctx ends.
func (f *finalEvents) write(ctx context.Context, wake func()) error {
	var group []uuid.UUID
	for {
		select {
		case <-ctx.Done():
			return nil
		case id := <-f.ids:
			group = append(group[:0], id)
		}
	collect:
		for len(group) < 100 {
			select {
			case id := <-f.ids:
				group = append(group, id)
			case <-time.After(2 * time.Millisecond):
				break collect
			}
		}
		if _, err := f.pool.Exec(ctx, `INSERT INTO outbox (notification_id, routing_key, message_type, body)
			SELECT id, 'delivered.t', '`+schema.StatusEventType+`',
				convert_to(json_build_object('notificationId', id, 'caller', 'bench', 'type', 't', 'status', 'delivered',
					'counts', json_build_object('total', 1, 'delivered', 1), 'time', now())::text, 'UTF8')
			FROM unnest($1::uuid[]) AS id ORDER BY id`, group); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		wake()
	}
}

// processCPU returns the CPU time (user and system) this process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// backendCPU returns the CPU time the PostgreSQL backends connected to pool's database have
// used so far (utime and stime from /proc/<pid>/stat; PostgreSQL runs on this machine).
func backendCPU(b *testing.B, pool *pgxpool.Pool) time.Duration {
	rows, err := pool.Query(context.Background(), "SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
	if err != nil {
		b.Fatal(err)
	}
	defer rows.Close()
	var total time.Duration
	for rows.Next() {
		var pid int
		if err := rows.Scan(&pid); err != nil {
			b.Fatal(err)
		}
		stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			b.Skipf("PostgreSQL backends' CPU is not readable here: %v", err)
		}
		// Fields after the command name (which may hold spaces) are space separated; utime
		// and stime are the 14th and 15th fields of the line.
		fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
		for _, f := range fields[11:13] {
			ticks, err := strconv.ParseInt(f, 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			total += time.Duration(ticks) * time.Second / 100 // USER_HZ is 100 on Linux
		}
	}
	if err := rows.Err(); err != nil {
		b.Fatal(err)
	}
	return total
}
