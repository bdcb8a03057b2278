package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/status"

	notifyv1 "notify/proto/gen/notify/v1"
)

// batchSize is how many requests one PublishBatch call carries: the API's maximum.
const batchSize = 500

// batchResult is the PublishBatch phase: clients sending full batches as fast as they are
// answered, until the phase's notifications are all accepted.
type batchResult struct {
	Clients       int            `json:"clients"`
	Notifications int            `json:"notifications"`
	Calls         int64          `json:"calls"`
	Seconds       float64        `json:"seconds"`
	Accepted      int64          `json:"accepted"`
	PerSecond     float64        `json:"accepted_per_s"`
	CallLatency   distribution   `json:"call_latency"`
	Errors        map[string]int `json:"errors"`
	// Refused counts requests answered with an error result inside a successful call.
	Refused int64 `json:"refused"`

	Relay  drain `json:"relay"`
	Sender drain `json:"sender"`
}

// batchPhase publishes cfg.BatchNotifications notifications (the Publish phase's kind: two
// users without devices each) in PublishBatch calls of 500 from cfg.BatchClients clients,
// then waits for the relay and the sender to finish them.
func batchPhase(ctx context.Context, st *stack, prog *progress) (*batchResult, error) {
	cfg := st.cfg
	calls := (cfg.BatchNotifications + batchSize - 1) / batchSize
	res := &batchResult{Clients: cfg.BatchClients, Notifications: calls * batchSize, Errors: map[string]int{}}
	clients := make([]notifyv1.NotificationServiceClient, cfg.BatchClients)
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

	var accepted, refused, failed atomic.Int64
	prog.set("publish batch", func() string {
		return fmt.Sprintf("%d accepted, %d refused, %d calls failed; outbox backlog %d, pending notifications %d",
			accepted.Load(), refused.Load(), failed.Load(), backlog.outbox.Load(), backlog.pending.Load())
	})
	jobs := make(chan int, calls)
	for i := range calls {
		jobs <- i
	}
	close(jobs)
	type clientResult struct {
		latencies []time.Duration
		errors    map[string]int
	}
	results := make([]clientResult, len(clients))
	start := time.Now()
	var wg sync.WaitGroup
	for c, client := range clients {
		wg.Go(func() {
			r := &results[c]
			r.errors = map[string]int{}
			for call := range jobs {
				if ctx.Err() != nil {
					return
				}
				req := &notifyv1.PublishBatchRequest{Requests: make([]*notifyv1.PublishRequest, batchSize)}
				for i := range req.Requests {
					req.Requests[i] = publishRequest(st.topology+"-batch", call, i)
					req.Requests[i].Type = "bench.batch"
				}
				t0 := time.Now()
				callCtx, cancel := context.WithTimeout(ctx, time.Minute)
				resp, err := client.PublishBatch(callCtx, req)
				cancel()
				if err != nil {
					failed.Add(1)
					r.errors[status.Code(err).String()]++
					continue
				}
				r.latencies = append(r.latencies, time.Since(t0))
				for _, item := range resp.GetResults() {
					if item.GetAccepted() != nil {
						accepted.Add(1)
					} else {
						refused.Add(1)
						r.errors["item "+status.FromProto(item.GetError()).Code().String()]++
					}
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
	for _, r := range results {
		all = append(all, r.latencies...)
		for code, n := range r.errors {
			res.Errors[code] += n
		}
	}
	res.Calls = int64(len(all))
	res.CallLatency = summarize(all)
	res.Accepted, res.Refused = accepted.Load(), refused.Load()
	res.Seconds = round(lastCall.Sub(start).Seconds(), 3)
	res.PerSecond = perSecond(res.Accepted, lastCall.Sub(start))

	prog.set("publish batch: draining", func() string {
		return fmt.Sprintf("outbox backlog %d, pending notifications %d", backlog.outbox.Load(), backlog.pending.Load())
	})
	res.Relay, res.Sender, err = backlog.drain(ctx, cfg.DrainTimeout, res.Accepted, start, lastCall)
	return res, err
}
