package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	notifyv1 "notify/proto/gen/notify/v1"
)

// publishUsers is how many distinct users the Publish phase addresses. They have no devices:
// the phase measures the API, the outbox, the relay and the sender's per-notification work,
// and leaves FCM traffic to the fan-out and latency phases.
const publishUsers = 1000

// publishResult is the Publish phase: N clients calling Publish as fast as it answers.
type publishResult struct {
	Clients       int            `json:"clients"`
	WarmupSeconds float64        `json:"warmup_seconds"`
	Seconds       float64        `json:"seconds"`
	Accepted      int64          `json:"accepted"`
	PerSecond     float64        `json:"accepted_per_s"`
	Latency       distribution   `json:"latency"`
	Errors        map[string]int `json:"errors"`
	// Total counts every accepted call, warm-up included: the rows the pipeline must move.
	Total int64 `json:"total_accepted"`

	Relay  drain `json:"relay"`
	Sender drain `json:"sender"`
}

// drain is how a downstream stage kept up with a phase: when its backlog reached zero,
// counted from the phase's first call, and the largest backlog seen. The relay's items are
// outbox rows (a notification writes its send task and, with status events on, an event
// for each status it takes: three rows for one delivered), the sender's notifications.
type drain struct {
	Items      int64   `json:"items"`
	Seconds    float64 `json:"seconds"`
	PerSecond  float64 `json:"per_s"`
	MaxBacklog int64   `json:"max_backlog"`
	// AfterLastCallSeconds is how long after the phase's last call the backlog emptied.
	AfterLastCallSeconds float64 `json:"after_last_call_seconds"`
	Drained              bool    `json:"drained"`
}

func publishPhase(ctx context.Context, st *stack, prog *progress) (*publishResult, error) {
	cfg := st.cfg
	res := &publishResult{Clients: cfg.PublishClients, WarmupSeconds: cfg.Warmup.Seconds(), Errors: map[string]int{}}
	clients := make([]notifyv1.NotificationServiceClient, cfg.PublishClients)
	for i := range clients {
		conn, err := st.dial()
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		clients[i] = notifyv1.NewNotificationServiceClient(conn)
	}

	backlog, err := watchBacklogs(ctx, st)
	if err != nil {
		return nil, err
	}
	defer backlog.stop()

	var accepted, failed atomic.Int64
	prog.set("publish", func() string {
		return fmt.Sprintf("%d accepted, %d failed; outbox backlog %d, pending notifications %d",
			accepted.Load(), failed.Load(), backlog.outbox.Load(), backlog.pending.Load())
	})
	start := time.Now()
	measureFrom := start.Add(cfg.Warmup)
	end := measureFrom.Add(cfg.PublishDuration)
	type clientResult struct {
		latencies []time.Duration
		errors    map[string]int
		last      time.Time
	}
	results := make([]clientResult, len(clients))
	var wg sync.WaitGroup
	for c, client := range clients {
		wg.Go(func() {
			r := &results[c]
			r.errors = map[string]int{}
			for seq := 0; ctx.Err() == nil; seq++ {
				t0 := time.Now()
				if !t0.Before(end) {
					return
				}
				req := publishRequest(st.topology, c, seq)
				callCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
				_, err := client.Publish(callCtx, req)
				cancel()
				t1 := time.Now()
				if err != nil {
					failed.Add(1)
					if t0.After(measureFrom) {
						r.errors[status.Code(err).String()]++
					}
					continue
				}
				accepted.Add(1)
				if !t0.Before(measureFrom) {
					r.latencies = append(r.latencies, t1.Sub(t0))
					r.last = t1
				}
			}
		})
	}
	wg.Wait()
	lastCall := time.Now()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}

	var all []time.Duration
	var last time.Time
	for _, r := range results {
		all = append(all, r.latencies...)
		for code, n := range r.errors {
			res.Errors[code] += n
		}
		if r.last.After(last) {
			last = r.last
		}
	}
	res.Accepted = int64(len(all))
	res.Seconds = round(last.Sub(measureFrom).Seconds(), 3)
	res.PerSecond = perSecond(res.Accepted, last.Sub(measureFrom))
	res.Latency = summarize(all)
	res.Total = accepted.Load()

	// Every accepted notification must go through the relay and the sender before the next
	// phase starts, or that phase would measure this one's leftovers.
	prog.set("publish: draining", func() string {
		return fmt.Sprintf("outbox backlog %d, pending notifications %d", backlog.outbox.Load(), backlog.pending.Load())
	})
	res.Relay, res.Sender, err = backlog.drain(ctx, cfg.DrainTimeout, res.Total, start, lastCall)
	return res, err
}

// publishRequest is the c-th client's seq-th notification: to two of the phase's users, with
// an idempotency key as a careful caller would send.
func publishRequest(run string, c, seq int) *notifyv1.PublishRequest {
	n := c*1_000_003 + seq
	return &notifyv1.PublishRequest{
		IdempotencyKey: run + "-" + strconv.Itoa(c) + "-" + strconv.Itoa(seq),
		Type:           "bench.publish",
		Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_UserIds{UserIds: &notifyv1.UserIDs{
			UserIds: []string{userID("publish", n%publishUsers), userID("publish", (n+1)%publishUsers)},
		}}},
		Content: &notifyv1.Content{Title: benchTitle, Body: benchBody},
		Data:    map[string]string{"order_id": strconv.Itoa(n)},
		Options: &notifyv1.Options{Priority: notifyv1.Priority_PRIORITY_HIGH, Ttl: durationpb.New(time.Hour)},
	}
}

// oneUserRequest is the i-th notification of a phase that sends each to one user of its
// own (latency, sustain): one token, a key unique to the run.
func oneUserRequest(topology, phase string, i int) *notifyv1.PublishRequest {
	return &notifyv1.PublishRequest{
		IdempotencyKey: topology + "-" + phase + "-" + strconv.Itoa(i),
		Type:           "bench." + phase,
		Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_UserIds{UserIds: &notifyv1.UserIDs{
			UserIds: []string{userID(phase, i)},
		}}},
		Content: &notifyv1.Content{Title: benchTitle, Body: benchBody},
		Data:    map[string]string{"order_id": strconv.Itoa(i)},
		Options: &notifyv1.Options{Priority: notifyv1.Priority_PRIORITY_HIGH, Ttl: durationpb.New(time.Hour)},
	}
}

// backlogs polls the bench database for the two backlogs a Publish leaves behind: outbox
// rows not yet relayed, and notifications not yet finished by the sender.
type backlogs struct {
	pool *pgxpool.Pool
	// firstID is the outbox's last id when the watch began (see rowsWritten).
	firstID         int64
	outbox, pending atomic.Int64
	relay, sender   stage
	cancel          context.CancelFunc
	done            chan struct{}

	mu  sync.Mutex
	err error
}

// stage tracks one backlog: its peak, and since when it has been empty.
type stage struct {
	mu         sync.Mutex
	max        int64
	emptySince time.Time // zero while the backlog is not empty
	seen       time.Time // the latest reading
}

func (s *stage) observe(n int64, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.max, s.seen = max(s.max, n), at
	switch {
	case n > 0:
		s.emptySince = time.Time{}
	case s.emptySince.IsZero():
		s.emptySince = at
	}
}

// drainedSince reports whether a reading taken after from found the backlog empty.
func (s *stage) drainedSince(from time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.emptySince.IsZero() && s.seen.After(from)
}

// result is the stage's drain of items that arrived from start to lastCall. A backlog
// already empty at the first reading after lastCall counts as drained at lastCall (it kept
// up to within one polling interval).
func (s *stage) result(items int64, start, lastCall time.Time) drain {
	drained := s.drainedSince(lastCall)
	s.mu.Lock()
	defer s.mu.Unlock()
	d := drain{Items: items, MaxBacklog: s.max, Drained: drained}
	if drained {
		done := s.emptySince
		if done.Before(lastCall) {
			done = lastCall
		}
		d.Seconds = round(done.Sub(start).Seconds(), 3)
		d.PerSecond = perSecond(items, done.Sub(start))
		d.AfterLastCallSeconds = round(done.Sub(lastCall).Seconds(), 3)
	}
	return d
}

// backlogPoll is how often the backlogs are read: it bounds the precision of drain times.
const backlogPoll = 50 * time.Millisecond

// outboxIDSQL reads the last id the outbox handed out (0 before its first row). Every row
// takes its id from the identity's sequence, one each and none cached, so the rows written
// between two readings are the difference (a rolled-back insert would count too: none is in
// a phase without failures).
const outboxIDSQL = `SELECT coalesce(pg_sequence_last_value(pg_get_serial_sequence('outbox', 'id')::regclass), 0)`

// watchBacklogs starts reading the backlogs every backlogPoll until stop.
func watchBacklogs(ctx context.Context, st *stack) (*backlogs, error) {
	var first int64
	if err := st.pool.QueryRow(ctx, outboxIDSQL).Scan(&first); err != nil {
		return nil, fmt.Errorf("read the outbox's last id: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	b := &backlogs{pool: st.pool, firstID: first, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(b.done)
		t := time.NewTicker(backlogPoll)
		defer t.Stop()
		for {
			var outbox, pending int64
			err := st.pool.QueryRow(ctx, `SELECT
				(SELECT count(*) FROM outbox WHERE published_at IS NULL),
				(SELECT count(*) FROM notifications WHERE status IN ('pending', 'retrying'))`).Scan(&outbox, &pending)
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				b.mu.Lock()
				b.err = fmt.Errorf("read backlogs: %w", err)
				b.mu.Unlock()
			} else {
				now := time.Now()
				b.outbox.Store(outbox)
				b.pending.Store(pending)
				b.relay.observe(outbox, now)
				b.sender.observe(pending, now)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return b, nil
}

// rowsWritten is how many rows were written to the outbox since the watch began: once both
// backlogs are drained, the rows the relay moved for the phase.
func (b *backlogs) rowsWritten(ctx context.Context) (int64, error) {
	var last int64
	if err := b.pool.QueryRow(ctx, outboxIDSQL).Scan(&last); err != nil {
		return 0, fmt.Errorf("read the outbox's last id: %w", err)
	}
	return last - b.firstID, nil
}

// drain waits until both backlogs are empty (waitDrained) and returns how the relay kept up
// with the rows written meanwhile and the sender with the phase's notifications, the
// phase's calls having run from start to lastCall.
func (b *backlogs) drain(ctx context.Context, timeout time.Duration, notifications int64, start, lastCall time.Time) (relay, sender drain, err error) {
	err = b.waitDrained(ctx, timeout)
	rows, rerr := b.rowsWritten(ctx)
	return b.relay.result(rows, start, lastCall), b.sender.result(notifications, start, lastCall), errors.Join(err, rerr)
}

// waitDrained waits until both backlogs have been read empty after now.
func (b *backlogs) waitDrained(ctx context.Context, timeout time.Duration) error {
	from := time.Now()
	deadline := from.Add(timeout)
	for !b.relay.drainedSince(from) || !b.sender.drainedSince(from) {
		if time.Now().After(deadline) {
			b.mu.Lock()
			defer b.mu.Unlock()
			return errors.Join(fmt.Errorf("not drained within %s: outbox backlog %d, pending notifications %d",
				timeout, b.outbox.Load(), b.pending.Load()), b.err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backlogPoll):
		}
	}
	return nil
}

func (b *backlogs) stop() {
	b.cancel()
	<-b.done
}
