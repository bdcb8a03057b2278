package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/status"

	notifyv1 "notify/proto/gen/notify/v1"
)

const (
	// latencyWorkers bound the Publish calls in flight; when all are busy the generator
	// falls behind its schedule, which MaxLagMS reports.
	latencyWorkers = 64
	latencyConns   = 8
	// emulatorLog is how many received requests the emulator keeps (fcmemu.DefaultMessageLog);
	// the bench reads them before that many newer ones push them out.
	emulatorLog   = 10_000
	fetchEvery    = emulatorLog / 2
	receiptPoll   = 250 * time.Millisecond
	receiptWindow = 30 * time.Second // after the last Publish, for the last receipts
)

// latencyResult is the fixed-rate phase: notifications to single users, each with its own
// token, timed from the Publish call to the emulator's receipt of the token's request.
type latencyResult struct {
	Registration  registration `json:"registration"`
	TargetRate    int          `json:"target_per_s"`
	Notifications int          `json:"notifications"`
	Seconds       float64      `json:"seconds"`
	AchievedRate  float64      `json:"achieved_per_s"`
	// MaxLagMS is the furthest a call started behind its schedule (all workers busy).
	MaxLagMS       float64        `json:"max_schedule_lag_ms"`
	Errors         map[string]int `json:"errors"`
	PublishLatency distribution   `json:"publish_latency"`
	// EndToEnd is Publish call start → the emulator receiving the token's request (both
	// read from this machine's clock).
	EndToEnd distribution `json:"publish_to_fcm"`
	Received int          `json:"received"`
	// Unmatched were received (per the emulator's counters) but left its message log before
	// the bench read their time: not lost, but not in EndToEnd.
	Unmatched int `json:"unmatched"`
	// DeliveredPerSecond is what the pipeline sustained: receipts from the first call to
	// the last receipt. Below the target rate, a backlog grew and latency with it.
	DeliveredPerSecond float64 `json:"delivered_per_s"`
	Missing            int     `json:"missing"`
	Duplicates         int64   `json:"duplicates"`
}

func latencyPhase(ctx context.Context, st *stack, emu *emulator, prog *progress, mark func(string), f *findings) (*latencyResult, error) {
	cfg := st.cfg
	n := int(float64(cfg.LatencyRate) * cfg.LatencyDuration.Seconds())
	res := &latencyResult{TargetRate: cfg.LatencyRate, Notifications: n, Errors: map[string]int{}}
	var err error
	if res.Registration, err = registerDevices(ctx, st, "latency", n, prog); err != nil {
		return nil, err
	}
	if err := st.analyze(ctx); err != nil {
		return nil, err
	}
	mark("latency: register")
	if err := emu.reset(ctx); err != nil {
		return nil, err
	}

	clients := make([]notifyv1.NotificationServiceClient, latencyConns)
	for i := range clients {
		conn, err := st.dial()
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		clients[i] = notifyv1.NewNotificationServiceClient(conn)
	}

	// Every published token's call start, read by the receipt collector.
	started := make([]atomic.Int64, n) // unix nanoseconds; 0: not published (yet, or failed)
	tokenIndex := make(map[string]int, n)
	for i := range n {
		tokenIndex[deviceToken("latency", i)] = i
	}
	rc := newReceipts(emu, tokenIndex)
	collectCtx, stopCollecting := context.WithCancel(ctx)
	collected := make(chan error, 1)
	go func() { collected <- rc.collect(collectCtx) }()
	defer stopCollecting()

	var sent, failed atomic.Int64
	prog.set("latency", func() string {
		return fmt.Sprintf("%d of %d published (%d failed), %d received by FCM", sent.Load(), n, failed.Load(), rc.count())
	})
	interval := time.Second / time.Duration(cfg.LatencyRate)
	start := time.Now().Add(10 * time.Millisecond)
	jobs := make(chan int, n)
	type workerResult struct {
		latencies []time.Duration
		errors    map[string]int
		maxLag    time.Duration
	}
	results := make([]workerResult, latencyWorkers)
	var wg sync.WaitGroup
	for w := range latencyWorkers {
		wg.Go(func() {
			r := &results[w]
			r.errors = map[string]int{}
			client := clients[w%len(clients)]
			for i := range jobs {
				t0 := time.Now()
				r.maxLag = max(r.maxLag, t0.Sub(start.Add(time.Duration(i)*interval)))
				callCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
				_, err := client.Publish(callCtx, oneUserRequest(st.topology, "latency", i))
				cancel()
				if err != nil {
					failed.Add(1)
					r.errors[status.Code(err).String()]++
					continue
				}
				// Recorded after the call returns, but as the call's start: a receipt that
				// arrives first waits in the collector until this is set.
				started[i].Store(t0.UnixNano())
				r.latencies = append(r.latencies, time.Since(t0))
				sent.Add(1)
			}
		})
	}
	// Open loop: the i-th call is due at start + i·interval, whatever earlier calls do.
	for i := range n {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(d):
			}
		}
		if ctx.Err() != nil {
			break
		}
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	lastCall := time.Now()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	res.Seconds = round(lastCall.Sub(start).Seconds(), 3)
	res.AchievedRate = perSecond(sent.Load(), lastCall.Sub(start))
	var publish []time.Duration
	var maxLag time.Duration
	for _, r := range results {
		publish = append(publish, r.latencies...)
		for code, k := range r.errors {
			res.Errors[code] += k
		}
		maxLag = max(maxLag, r.maxLag)
	}
	res.PublishLatency = summarize(publish)
	res.MaxLagMS = ms(maxLag)

	// Wait for the last receipts, then read what is left in the emulator's log.
	want := sent.Load()
	prog.set("latency: waiting for FCM", func() string {
		return fmt.Sprintf("%d of %d received by FCM", rc.delivered.Load(), want)
	})
	deadline := time.Now().Add(receiptWindow)
	for rc.delivered.Load() < want && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(receiptPoll)
	}
	stopCollecting()
	if err := <-collected; err != nil {
		return nil, err
	}
	if err := rc.fetch(ctx); err != nil {
		return nil, err
	}
	mark("latency: publish")

	var e2e []time.Duration
	var unreceived []string
	var lastReceipt time.Time
	for tok, i := range tokenIndex {
		t0 := started[i].Load()
		if t0 == 0 {
			continue // the Publish failed; counted in Errors
		}
		at, ok := rc.at[tok]
		if !ok {
			unreceived = append(unreceived, tok)
			continue
		}
		e2e = append(e2e, at.Sub(time.Unix(0, t0)))
		if at.After(lastReceipt) {
			lastReceipt = at
		}
	}
	res.EndToEnd = summarize(e2e)
	res.Received = len(e2e)
	if !lastReceipt.IsZero() {
		res.DeliveredPerSecond = perSecond(int64(res.Received), lastReceipt.Sub(start))
	}

	// A token missing from the log may still have been received: ask the emulator.
	stats, err := emu.tokenStats(ctx, unreceived)
	if err != nil {
		return nil, err
	}
	for _, tok := range unreceived {
		switch s := stats[tok]; {
		case s.Delivered > 0:
			res.Unmatched++
		default:
			res.Missing++
		}
	}
	es, err := emu.stats(ctx)
	if err != nil {
		return nil, err
	}
	res.Duplicates = max(0, es.Delivered-want)

	// Every outcome must also be in the database: wait for the sender to finish them all.
	backlog, err := watchBacklogs(ctx, st)
	if err != nil {
		return nil, err
	}
	drainErr := backlog.waitDrained(ctx, st.cfg.DrainTimeout)
	backlog.stop()
	if drainErr != nil {
		f.fail("latency: " + drainErr.Error())
	}
	var delivered, tokens int64
	if err := st.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE status = 'delivered'), coalesce(sum(delivered), 0)
		FROM notifications WHERE type = 'bench.latency'`).Scan(&delivered, &tokens); err != nil {
		return nil, fmt.Errorf("read the latency phase's notifications: %w", err)
	}
	if delivered != want || tokens != want {
		f.fail(fmt.Sprintf("latency: the database holds %d of %d notifications DELIVERED, %d tokens delivered", delivered, want, tokens))
	}

	if failedCalls := failed.Load(); failedCalls > 0 {
		f.fail(fmt.Sprintf("latency: %d of %d Publish calls failed: %v", failedCalls, n, res.Errors))
	}
	if res.Missing > 0 {
		f.fail(fmt.Sprintf("latency: %d of %d accepted notifications never reached FCM (the emulator) within %s of the last Publish: LOST",
			res.Missing, want, receiptWindow))
	}
	if es.failed() > 0 {
		f.fail(fmt.Sprintf("latency: the emulator answered %d requests with errors %v", es.failed(), es.Failed))
	}
	if res.Duplicates > 0 {
		f.warn(fmt.Sprintf("latency: FCM (the emulator) received %d more deliveries than notifications: sent twice", res.Duplicates))
	}
	if res.Unmatched > 0 {
		f.warn(fmt.Sprintf("latency: %d receipts left the emulator's message log before the bench read them; they are not in the percentiles", res.Unmatched))
	}
	if maxLag > time.Second {
		f.warn(fmt.Sprintf("latency: the load generator fell %s behind schedule; the rate was not held", maxLag.Round(time.Millisecond)))
	}
	return res, emu.reset(ctx)
}

// receipts reads the emulator's message log often enough that nothing leaves it unread
// (every fetchEvery new requests), and keeps each bench token's first successful receipt.
type receipts struct {
	emu       *emulator
	tokens    map[string]int
	delivered atomic.Int64 // the emulator's delivered counter at the last poll

	mu          sync.Mutex
	at          map[string]time.Time
	lastFetchAt int64 // the emulator's request counter at the last fetch
}

func newReceipts(emu *emulator, tokens map[string]int) *receipts {
	return &receipts{emu: emu, tokens: tokens, at: make(map[string]time.Time, len(tokens))}
}

func (r *receipts) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.at)
}

// collect polls the emulator's counters until ctx ends and fetches its log when enough new
// requests arrived.
func (r *receipts) collect(ctx context.Context) error {
	t := time.NewTicker(receiptPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		s, err := r.emu.stats(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return fmt.Errorf("emulator stats: %w", err)
		}
		r.delivered.Store(s.Delivered)
		r.mu.Lock()
		due := s.Requests-r.lastFetchAt >= fetchEvery
		r.mu.Unlock()
		if due {
			if err := r.fetch(ctx); err != nil && ctx.Err() == nil {
				return err
			}
		}
	}
}

// fetch reads the emulator's log since the last fetch and records receipts not seen before.
func (r *receipts) fetch(ctx context.Context) error {
	s, err := r.emu.stats(ctx)
	if err != nil {
		return fmt.Errorf("emulator stats: %w", err)
	}
	r.mu.Lock()
	// Only what arrived since the last fetch (and a little more), to keep the emulator's
	// work for the bench small.
	limit := int(min(emulatorLog, s.Requests-r.lastFetchAt+100))
	r.mu.Unlock()
	msgs, err := r.emu.messages(ctx, limit)
	if err != nil {
		return fmt.Errorf("emulator messages: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lastFetchAt = s.Requests
	for _, m := range msgs {
		if m.Status != http.StatusOK {
			continue
		}
		if _, ours := r.tokens[m.Token]; !ours {
			continue
		}
		if prev, seen := r.at[m.Token]; !seen || m.ReceivedAt.Before(prev) {
			r.at[m.Token] = m.ReceivedAt
		}
	}
	return nil
}

// tokenStats asks the emulator for the stats of the given tokens, a few at a time.
func (e *emulator) tokenStats(ctx context.Context, tokens []string) (map[string]struct{ Delivered int64 }, error) {
	out := map[string]struct{ Delivered int64 }{}
	const perRequest = 50
	for i := 0; i < len(tokens); i += perRequest {
		q := url.Values{}
		for _, t := range tokens[i:min(i+perRequest, len(tokens))] {
			q.Add("token", t)
		}
		var s struct {
			Tokens map[string]struct {
				Delivered int64 `json:"delivered"`
			} `json:"tokens"`
		}
		if err := doJSON(ctx, e.hc, http.MethodGet, e.base+"/emulator/stats?"+q.Encode(), nil, nil, &s); err != nil {
			return nil, err
		}
		for t, v := range s.Tokens {
			out[t] = struct{ Delivered int64 }{v.Delivered}
		}
	}
	return out, nil
}
