package sender

import (
	"context"
	"io"
	"log/slog"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"notify/pkg/delivery"
	"notify/pkg/fcm"
	"notify/pkg/pgtest"
	"notify/pkg/rabbit"
	"notify/pkg/rabbit/rabbittest"
	"notify/pkg/testenv"
	busv1 "notify/proto/gen/notify/bus/v1"
)

// countingFCM delivers every token at once and counts the multicasts: FCM's cost left out.
type countingFCM struct{ tokens atomic.Int64 }

func (f *countingFCM) SendMulticast(_ context.Context, _ fcm.Message, tokens []string) ([]fcm.Result, error) {
	out := make([]fcm.Result, len(tokens))
	for i, t := range tokens {
		out[i] = fcm.Result{Token: t, MessageID: "m"}
	}
	f.tokens.Add(int64(len(tokens)))
	return out, nil
}

// countingPusher sends through a real client and counts the tokens it sent.
type countingPusher struct {
	*fcm.Client
	counts *countingFCM
}

func (p countingPusher) SendMulticast(ctx context.Context, m fcm.Message, tokens []string) ([]fcm.Result, error) {
	res, err := p.Client.SendMulticast(ctx, m, tokens)
	p.counts.tokens.Add(int64(len(tokens)))
	return res, err
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkSmallNotifications drains a send queue of one-token notifications (a user with
// one device each) through the sender's handler and consumer as run.go wires them, against
// real PostgreSQL and RabbitMQ and an FCM that answers at once. Every iteration is one
// notification; the figures to read are notifications/s and the sender process's CPU
// milliseconds per notification (cpu-ms/op: user + system time of this process, which
// runs nothing else meanwhile), and PostgreSQL's (pg-cpu-ms/op: its backends serving the
// test database; RabbitMQ's CPU is in neither). Run with e.g. -benchtime 5000x; with
// FCM_BENCH_ENDPOINT set to an emulator running on its own, the sends are real HTTP requests
// through pkg/fcm and the SDK, as in the pipeline.
func BenchmarkSmallNotifications(b *testing.B) {
	ctx := context.Background()
	amqpURL := testenv.AMQPURL(b)
	db := pgtest.New(b)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	topo := rabbittest.Topology(b, amqpURL, "sender-bench", rabbit.NewTopology("", []time.Duration{time.Second}))
	conn := rabbittest.StartConn(b, amqpURL, rabbit.ConnOptions{Name: topo.Name, Topology: &topo})

	n := b.N
	ids := make([]uuid.UUID, n)
	for i := range ids {
		ids[i] = uuid.New()
	}
	if _, err := db.Pool.Exec(ctx, `
		INSERT INTO devices (device_id, user_id, token, platform)
		SELECT 'dev-' || i, 'user-' || i, 'tok-' || i || '-' || repeat('x', 140), 'android' FROM generate_series(1, $1) i`, n); err != nil {
		b.Fatal(err)
	}
	if _, err := db.Pool.Exec(ctx, `
		INSERT INTO notifications (id, caller, type, request, expires_at)
		SELECT id, 'bench', 'bench', jsonb_build_object('type', 'bench', 'recipients',
			jsonb_build_object('userIds', jsonb_build_object('userIds', jsonb_build_array('user-' || i))),
			'content', jsonb_build_object('title', 'Your table is ready', 'body', 'Table 12, by the window')),
			now() + interval '1 hour'
		FROM unnest($1::uuid[]) WITH ORDINALITY AS t(id, i)`, ids); err != nil {
		b.Fatal(err)
	}
	if _, err := db.Pool.Exec(ctx, "ANALYZE"); err != nil {
		b.Fatal(err)
	}
	pub := rabbit.NewPublisher(conn, topo.Exchange(), rabbit.PublisherOptions{Window: 256})
	msgs := make([]rabbit.Message, n)
	for i, id := range ids {
		body, err := proto.Marshal(&busv1.SendTask{NotificationId: id.String(), Cause: "publish"})
		if err != nil {
			b.Fatal(err)
		}
		msgs[i] = rabbit.Message{RoutingKey: rabbit.SendKey, MessageID: "bench-" + id.String(),
			Type: "notify.bus.v1.SendTask", ContentType: "application/protobuf", Body: body}
	}
	for i := 0; i < n; i += 1000 {
		if err := pub.Publish(ctx, msgs[i:min(i+1000, n)]...); err != nil {
			b.Fatal(err)
		}
	}

	// With FCM_BENCH_ENDPOINT (e.g. bin/fcm-emulator's http://127.0.0.1:9099/v1), every
	// notification goes through the real FCM client to that emulator, and cpu-ms/op includes
	// the HTTP requests.
	fake := &countingFCM{}
	var push delivery.Pusher = fake
	if endpoint := os.Getenv("FCM_BENCH_ENDPOINT"); endpoint != "" {
		c, err := fcm.New(ctx, fcm.Config{ProjectID: "demo", Endpoint: endpoint})
		if err != nil {
			b.Fatal(err)
		}
		push = countingPusher{c, fake}
	}
	store := delivery.NewStore(db.Pool)
	d := delivery.NewDeliverer(store, push, pub, topo, log, prometheus.NewRegistry(),
		delivery.Options{MaxAttempts: 3, MaxConcurrentSends: 4})
	h := NewHandler(store, d, log, prometheus.NewRegistry(), 8)
	consumer := newBenchConsumer(conn, topo.SendQueue(), h)

	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	b.ResetTimer()
	pgCPU, pgErr := pgtest.StartBackendCPU(ctx, db.Pool)
	cpu0 := cpuTime()
	go func() { done <- consumer.Run(runCtx) }()
	for fake.tokens.Load() < int64(n) {
		time.Sleep(time.Millisecond)
	}
	// The last outcomes are committed before their acks; wait for every status.
	for {
		var left int
		if err := db.Pool.QueryRow(ctx, "SELECT count(*) FROM notifications WHERE status = 'pending'").Scan(&left); err != nil {
			b.Fatal(err)
		}
		if left == 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	b.StopTimer()
	cpu := cpuTime() - cpu0
	var pgUsed time.Duration
	if pgErr == nil {
		pgUsed, pgErr = pgCPU.Used(ctx)
	}
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "notifications/s")
	b.ReportMetric(float64(cpu.Microseconds())/1000/float64(n), "cpu-ms/op")
	if pgErr == nil {
		b.ReportMetric(float64(pgUsed.Microseconds())/1000/float64(n), "pg-cpu-ms/op")
	} else {
		b.Logf("PostgreSQL's CPU not measured: %v", pgErr)
	}
	var delivered int
	if err := db.Pool.QueryRow(ctx, "SELECT count(*) FROM notifications WHERE status = 'delivered'").Scan(&delivered); err != nil || delivered != n {
		b.Fatalf("%d of %d notifications delivered (%v)", delivered, n, err)
	}
}

// newBenchConsumer consumes the queue with h as run.go does (SEND_WORKERS and prefetch at
// their defaults).
func newBenchConsumer(conn *rabbit.Conn, queue string, h *Handler) *rabbit.Consumer {
	return rabbit.NewBatchConsumer(conn, queue, h.HandleBatch, rabbit.ConsumerOptions{Concurrency: 4, BatchSize: 64})
}
