package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	notifyv1 "notify/proto/gen/notify/v1"
)

// sustainResult is the maximum sustained rate phase: one-token notifications published as
// fast as Publish accepts them, timed until the last one's outcome is in PostgreSQL. It is
// what the whole pipeline can move, and the phase the CPU cost per notification is read
// from. The reference phase is the same against the in-memory push server, timed until its
// last FCM answer.
type sustainResult struct {
	Registration  registration   `json:"registration"`
	Clients       int            `json:"clients"`
	Notifications int            `json:"notifications"`
	Accepted      int64          `json:"accepted"`
	Errors        map[string]int `json:"errors"`
	// PublishSeconds is the first call to the last answer; PublishPerSecond the rate
	// Publish accepted them at.
	PublishSeconds   float64 `json:"publish_seconds"`
	PublishPerSecond float64 `json:"publish_per_s"`
	// Seconds is the first call to the last outcome in PostgreSQL; PerSecond the rate
	// sustained end to end. When not Finished (the drain timeout passed), they are the
	// time waited and the rate of the notifications finished by then.
	Seconds   float64 `json:"seconds"`
	PerSecond float64 `json:"per_s"`
	Finished  bool    `json:"finished"`
	// Delivered is how many of them the database holds DELIVERED; EmulatorDelivered what
	// FCM (the emulator) received.
	Delivered         int64 `json:"delivered"`
	EmulatorDelivered int64 `json:"emulator_delivered"`
	// CPUMSPerNotification is each component's CPU time over the phase (publishing to the
	// last outcome) divided by the notifications.
	CPUMSPerNotification map[string]float64 `json:"cpu_ms_per_notification"`
}

// sustainPoll is how often the phase reads how many of its notifications are finished.
const sustainPoll = 50 * time.Millisecond

func sustainPhase(ctx context.Context, st *stack, emu *emulator, prog *progress, cpu *cpuTracker, f *findings) (*sustainResult, error) {
	return oneTokenPhase(ctx, st, emu, prog, cpu, f, oneTokenTarget{
		phase:   phaseSustain,
		dial:    st.dial,
		prepare: st.analyze,
		unfinished: func(ctx context.Context) (int64, error) {
			// The unfinished ones are counted, not the finished: the partial index
			// notifications_unfinished holds exactly them, so the poll reads the backlog, not
			// every notification of the phase; that count, 20 times a second, was charged to
			// PostgreSQL's CPU per notification as if notify had spent it.
			var unfinished int64
			if err := st.pool.QueryRow(ctx, `SELECT count(*) FROM notifications
				WHERE status IN ('pending', 'retrying') AND type = 'bench.sustain'`).Scan(&unfinished); err != nil {
				return 0, fmt.Errorf("count unfinished notifications: %w", err)
			}
			return unfinished, nil
		},
		delivered: func(ctx context.Context) (int64, error) {
			var n int64
			if err := st.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE status = 'delivered') FROM notifications
				WHERE type = 'bench.sustain'`).Scan(&n); err != nil {
				return 0, fmt.Errorf("read the sustain phase's notifications: %w", err)
			}
			return n, nil
		},
	})
}

// oneTokenTarget is what a one-token phase publishes to (notify's producer, or the in-memory
// push server) and how it learns that a notification is finished.
type oneTokenTarget struct {
	// phase names the phase's devices, users, notification type, marks and findings.
	phase string
	dial  func() (*grpc.ClientConn, error)
	// prepare, when set, runs once the devices are registered.
	prepare func(context.Context) error
	// unfinished counts the accepted notifications without a final outcome.
	unfinished func(context.Context) (int64, error)
	// delivered counts the phase's notifications that ended delivered.
	delivered func(context.Context) (int64, error)
}

// oneTokenPhase registers cfg.SustainNotifications devices, one per user, publishes a
// notification to each user as fast as cfg.PublishClients clients get them accepted, and
// times it from the first call until every accepted one is finished. Lost, failed and
// unfinished notifications are findings.
func oneTokenPhase(ctx context.Context, st *stack, emu *emulator, prog *progress, cpu *cpuTracker, f *findings, t oneTokenTarget) (*sustainResult, error) {
	cfg := st.cfg
	n := cfg.SustainNotifications
	res := &sustainResult{Clients: cfg.PublishClients, Notifications: n, Errors: map[string]int{}}
	var err error
	if res.Registration, err = registerVia(ctx, st, t.dial, "", t.phase, n, prog); err != nil {
		return nil, err
	}
	if t.prepare != nil {
		if err := t.prepare(ctx); err != nil {
			return nil, err
		}
	}
	if err := emu.reset(ctx); err != nil {
		return nil, err
	}
	clients := make([]notifyv1.NotificationServiceClient, cfg.PublishClients)
	for i := range clients {
		conn, err := t.dial()
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		clients[i] = notifyv1.NewNotificationServiceClient(conn)
	}
	cpu.mark(t.phase + ": register")

	var next, accepted, failed, finished atomic.Int64
	prog.set(t.phase, func() string {
		return fmt.Sprintf("%d of %d accepted (%d failed), %d finished", accepted.Load(), n, failed.Load(), finished.Load())
	})
	start := time.Now()
	errs := make([]map[string]int, len(clients))
	var wg sync.WaitGroup
	for c, client := range clients {
		errs[c] = map[string]int{}
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				callCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
				_, err := client.Publish(callCtx, oneUserRequest(st.topology, t.phase, i))
				cancel()
				if err != nil {
					failed.Add(1)
					errs[c][status.Code(err).String()]++
					continue
				}
				accepted.Add(1)
			}
		})
	}

	// Count finished notifications while publishing and after, until all are finished.
	deadline := time.Now().Add(cfg.DrainTimeout)
	published := make(chan struct{})
	var lastAnswer time.Time
	go func() { wg.Wait(); lastAnswer = time.Now(); close(published) }()
	var done time.Time
	for {
		unfinished, err := t.unfinished(ctx)
		if err != nil {
			<-published
			return nil, err
		}
		finished.Store(max(accepted.Load()-unfinished, 0))
		select {
		case <-published:
			// Every call is answered, so every accepted notification is counted.
			if unfinished == 0 {
				done = time.Now()
			}
		default:
		}
		if !done.IsZero() || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		time.Sleep(sustainPoll)
	}
	<-published
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	cpu.mark(t.phase + ": publish → last outcome")

	res.Accepted = accepted.Load()
	for _, e := range errs {
		for code, k := range e {
			res.Errors[code] += k
		}
	}
	res.PublishSeconds = round(lastAnswer.Sub(start).Seconds(), 3)
	res.PublishPerSecond = perSecond(res.Accepted, lastAnswer.Sub(start))
	if res.Finished = !done.IsZero(); res.Finished {
		res.Seconds = round(done.Sub(start).Seconds(), 3)
		res.PerSecond = perSecond(res.Accepted, done.Sub(start))
	} else {
		// What was finished when the bench stopped waiting: the rate it got to.
		res.Seconds = round(time.Since(start).Seconds(), 3)
		res.PerSecond = perSecond(finished.Load(), time.Since(start))
		f.fail(fmt.Sprintf("%s: %d of %d accepted notifications finished within %s", t.phase, finished.Load(), res.Accepted, cfg.DrainTimeout))
	}
	if res.Accepted > 0 {
		p := cpu.phases[len(cpu.phases)-1]
		res.CPUMSPerNotification = map[string]float64{}
		for g, s := range p.CPU {
			res.CPUMSPerNotification[g] = round(s*1000/float64(res.Accepted), 3)
		}
	}

	if res.Delivered, err = t.delivered(ctx); err != nil {
		return nil, err
	}
	es, err := emu.stats(ctx)
	if err != nil {
		return nil, err
	}
	res.EmulatorDelivered = es.Delivered
	if k := sumErrors(res.Errors); k > 0 {
		f.fail(fmt.Sprintf("%s: %d of %d Publish calls failed: %v", t.phase, k, n, res.Errors))
	}
	if res.Finished && res.Delivered != res.Accepted {
		f.fail(fmt.Sprintf("%s: %d of %d notifications DELIVERED", t.phase, res.Delivered, res.Accepted))
	}
	switch {
	case es.Delivered < res.Delivered:
		f.fail(fmt.Sprintf("%s: FCM (the emulator) received %d deliveries for %d notifications DELIVERED: LOST", t.phase, es.Delivered, res.Delivered))
	case es.Delivered > res.Accepted:
		f.warn(fmt.Sprintf("%s: FCM (the emulator) received %d deliveries for %d notifications: sent twice", t.phase, es.Delivered, res.Accepted))
	}
	if es.failed() > 0 {
		f.fail(fmt.Sprintf("%s: the emulator answered %d requests with errors %v", t.phase, es.failed(), es.Failed))
	}
	return res, emu.reset(ctx)
}
