package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"notify/pkg/fcm"
	"notify/pkg/rabbit"
)

// Raw broker baseline parameters: the figures DESIGN.md quotes were measured this way.
const (
	rawWindow      = 256  // publisher confirm window
	rawBodyBytes   = 100  // message size
	rawBatch       = 1000 // messages per Publish call (each call waits for its confirms)
	rawConsumers   = 2    // consumer goroutines, each acking one delivery at a time
	rawPrefetch    = 512
	rawWaitForDone = 30 * time.Second
)

// brokerBaseline is the raw RabbitMQ rate: publish with confirms and consume with manual acks
// on a scratch quorum queue, nothing else.
type brokerBaseline struct {
	Queue     string  `json:"queue"`
	Window    int     `json:"confirm_window"`
	BodyBytes int     `json:"body_bytes"`
	Published int64   `json:"published"`
	Consumed  int64   `json:"consumed"`
	Seconds   float64 `json:"seconds"`
	PerSecond float64 `json:"msgs_per_s"`
}

func rawBroker(ctx context.Context, st *stack, prog *progress) (brokerBaseline, error) {
	topo := rabbit.Topology{Name: st.rawTopology()}
	res := brokerBaseline{Queue: topo.SendQueue(), Window: rawWindow, BodyBytes: rawBodyBytes}

	connCtx, stopConns := context.WithCancel(context.WithoutCancel(ctx))
	var conns sync.WaitGroup
	defer func() { stopConns(); conns.Wait() }()
	open := func(role string, hooks rabbit.Hooks) (*rabbit.Conn, error) {
		// Separate connections, as in the services: TCP pushback on publishing must not slow acks.
		c := rabbit.NewConn(st.cfg.AMQPURL, st.log, rabbit.ConnOptions{Name: topo.Name + "." + role, Topology: &topo, Hooks: hooks})
		conns.Go(func() {
			if err := c.Run(connCtx); err != nil {
				st.log.Warn("raw broker connection", "err", err)
			}
		})
		readyCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		if err := c.Ready(readyCtx); err != nil {
			return nil, fmt.Errorf("connect to RabbitMQ: %w", err)
		}
		return c, nil
	}
	pubConn, err := open("pub", rabbit.Hooks{})
	if err != nil {
		return res, err
	}
	var consumed, lastAck atomic.Int64
	subConn, err := open("sub", rabbit.Hooks{Settled: func(_ *rabbit.Delivery, _ rabbit.Settlement, err error) {
		if err == nil { // the ack was sent
			consumed.Add(1)
			lastAck.Store(time.Now().UnixNano())
		}
	}})
	if err != nil {
		return res, err
	}

	consumer := rabbit.NewConsumer(subConn, topo.SendQueue(), func(context.Context, *rabbit.Delivery) error { return nil },
		rabbit.ConsumerOptions{Concurrency: rawConsumers, Prefetch: rawPrefetch})
	consCtx, stopConsumer := context.WithCancel(connCtx)
	consDone := make(chan error, 1)
	go func() { consDone <- consumer.Run(consCtx) }()
	defer func() {
		stopConsumer()
		if err := <-consDone; err != nil {
			st.log.Warn("raw broker consumer", "err", err)
		}
	}()

	pub := rabbit.NewPublisher(pubConn, topo.Exchange(), rabbit.PublisherOptions{Window: rawWindow})
	body := make([]byte, rawBodyBytes)
	var published atomic.Int64
	prog.set("baseline: raw broker", func() string {
		return fmt.Sprintf("published %d, consumed %d", published.Load(), consumed.Load())
	})

	start := time.Now()
	deadline := start.Add(st.cfg.BaselineDuration)
	msgs := make([]rabbit.Message, rawBatch)
	for batch := 0; time.Now().Before(deadline); batch++ {
		for i := range msgs {
			msgs[i] = rabbit.Message{RoutingKey: rabbit.SendKey, MessageID: strconv.Itoa(batch) + "-" + strconv.Itoa(i), Body: body}
		}
		if err := pub.Publish(ctx, msgs...); err != nil {
			return res, fmt.Errorf("raw broker publish: %w", err)
		}
		published.Add(rawBatch)
	}
	res.Published = published.Load()
	waitUntil := time.Now().Add(rawWaitForDone)
	for consumed.Load() < res.Published {
		if time.Now().After(waitUntil) || ctx.Err() != nil {
			return res, fmt.Errorf("raw broker: consumed %d of %d messages within %s", consumed.Load(), res.Published, rawWaitForDone)
		}
		time.Sleep(time.Millisecond)
	}
	res.Consumed = consumed.Load()
	elapsed := time.Unix(0, lastAck.Load()).Sub(start)
	res.Seconds = round(elapsed.Seconds(), 3)
	res.PerSecond = perSecond(res.Consumed, elapsed)
	return res, nil
}

// fcmBaseline is the raw FCM-edge rate: pkg/fcm's client alone (its tuned HTTP client),
// 500-token multicasts straight to the emulator, as many at once as the sender sends.
type fcmBaseline struct {
	Concurrency int     `json:"concurrent_multicasts"`
	Multicasts  int64   `json:"multicasts"`
	Tokens      int64   `json:"tokens"`
	Failed      int64   `json:"failed_tokens"`
	Seconds     float64 `json:"seconds"`
	PerSecond   float64 `json:"tokens_per_s"`
	// EmulatorDelivered is what the emulator counted, to check the client's own count.
	EmulatorDelivered int64 `json:"emulator_delivered"`
}

func rawFCM(ctx context.Context, st *stack, emu *emulator, prog *progress) (fcmBaseline, error) {
	res := fcmBaseline{Concurrency: st.cfg.FCMConcurrency}
	if err := emu.reset(ctx); err != nil {
		return res, err
	}
	client, err := fcm.New(ctx, fcm.Config{ProjectID: "notify-bench", Endpoint: st.emulatorURL + "/v1"})
	if err != nil {
		return res, err
	}
	msg := fcm.Message{Title: benchTitle, Body: benchBody, Data: map[string]string{"kind": "raw"},
		Priority: fcm.PriorityHigh, TTL: time.Hour}

	var multicasts, sent, failed, lastDone atomic.Int64
	prog.set("baseline: raw FCM edge", func() string {
		return fmt.Sprintf("%d tokens sent, %d failed", sent.Load(), failed.Load())
	})
	start := time.Now()
	deadline := start.Add(st.cfg.BaselineDuration)
	var wg sync.WaitGroup
	errs := make(chan error, res.Concurrency)
	for range res.Concurrency {
		wg.Go(func() {
			tokens := make([]string, fcm.MaxMulticast)
			for time.Now().Before(deadline) && ctx.Err() == nil {
				n := multicasts.Add(1)
				for i := range tokens {
					tokens[i] = deviceToken("raw", int(n)*fcm.MaxMulticast+i)
				}
				results, err := client.SendMulticast(ctx, msg, tokens)
				if err != nil && len(results) == 0 {
					errs <- fmt.Errorf("raw FCM multicast: %w", err)
					return
				}
				for _, r := range results {
					if r.Err != nil {
						failed.Add(1)
					} else {
						sent.Add(1)
					}
				}
				lastDone.Store(time.Now().UnixNano())
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := errors.Join(collect(errs)...); err != nil {
		return res, err
	}
	elapsed := time.Unix(0, lastDone.Load()).Sub(start)
	res.Multicasts, res.Tokens, res.Failed = multicasts.Load(), sent.Load(), failed.Load()
	res.Seconds = round(elapsed.Seconds(), 3)
	res.PerSecond = perSecond(res.Tokens, elapsed)
	s, err := emu.stats(ctx)
	if err != nil {
		return res, err
	}
	res.EmulatorDelivered = s.Delivered
	return res, emu.reset(ctx)
}

func collect[T any](c <-chan T) []T {
	var out []T
	for v := range c {
		out = append(out, v)
	}
	return out
}
