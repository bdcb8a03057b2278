package main

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	notifyv1 "notify/proto/gen/notify/v1"
)

// fanoutPoll is how often GetNotification is asked for the broadcast's counts; it bounds
// the precision of the end-to-end time.
const fanoutPoll = 50 * time.Millisecond

// fanoutResult is one broadcast to every registered device, timed from Publish until the
// database holds an outcome for the last token.
type fanoutResult struct {
	Registration registration `json:"registration"`
	// EarlierDevices were registered by earlier phases and are part of the audience.
	EarlierDevices int64 `json:"earlier_devices"`
	// HistoryDeliveries (of HistoryNotifications) were in the database when the broadcast
	// was planned: the statistics the planner worked from.
	HistoryDeliveries    int64   `json:"history_deliveries"`
	HistoryNotifications int64   `json:"history_notifications"`
	NotificationID       string  `json:"notification_id"`
	Seconds              float64 `json:"seconds"`
	PerSecond            float64 `json:"token_deliveries_per_s"`
	// FirstRecordSeconds is when the first outcome was seen recorded: Publish, relay,
	// sender start-up and the first chunk.
	FirstRecordSeconds float64 `json:"first_record_seconds"`
	Status             string  `json:"status"`
	Counts             counts  `json:"counts"`
	// Emulator is what FCM (the emulator) saw: one delivered request per token, or a
	// loss (fewer) or duplicates (more).
	EmulatorRequests  int64 `json:"emulator_requests"`
	EmulatorDelivered int64 `json:"emulator_delivered"`
	EmulatorFailed    int64 `json:"emulator_failed"`
}

// counts are a notification's token counts as GetNotification reports them.
type counts struct {
	Total, Delivered, Invalid, Retrying, Failed, Expired, Pending int64
}

func countsOf(c *notifyv1.DeliveryCounts) counts {
	return counts{c.GetTotal(), c.GetDelivered(), c.GetInvalid(), c.GetRetrying(), c.GetFailed(), c.GetExpired(), c.GetPending()}
}

// settled is how many tokens have a final outcome.
func (c counts) settled() int64 { return c.Delivered + c.Invalid + c.Failed + c.Expired }

func fanoutPhase(ctx context.Context, st *stack, emu *emulator, prog *progress, mark func(string), f *findings) (*fanoutResult, error) {
	n := st.cfg.FanoutDevices
	res := &fanoutResult{}
	// The broadcast goes to every active device: the earlier phases' devices are part of
	// its audience, and only the rest are registered here, so that it reaches exactly n.
	var active int64
	if err := st.pool.QueryRow(ctx, "SELECT count(*) FROM devices WHERE active").Scan(&active); err != nil {
		return nil, fmt.Errorf("count active devices: %w", err)
	}
	res.EarlierDevices = active
	var err error
	if res.Registration, err = registerDevices(ctx, st, "fanout", max(0, n-int(active)), prog); err != nil {
		return nil, err
	}
	// The broadcast is planned on fresh statistics, as autovacuum leaves them after a bulk
	// insert like the registrations, and on the database's history (see seedHistory).
	if err := st.analyze(ctx); err != nil {
		return nil, err
	}
	if err := st.pool.QueryRow(ctx, "SELECT count(*), count(DISTINCT notification_id) FROM deliveries").
		Scan(&res.HistoryDeliveries, &res.HistoryNotifications); err != nil {
		return nil, fmt.Errorf("count earlier deliveries: %w", err)
	}
	mark("fanout: register")
	if err := emu.reset(ctx); err != nil {
		return nil, err
	}

	conn, err := st.dial()
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	notifications := notifyv1.NewNotificationServiceClient(conn)
	admin := notifyv1.NewAdminServiceClient(conn)

	var settled atomic.Int64
	prog.set("fanout", func() string { return fmt.Sprintf("%d of %d tokens settled", settled.Load(), n) })
	start := time.Now()
	resp, err := notifications.Publish(ctx, &notifyv1.PublishRequest{
		IdempotencyKey: st.topology + "-broadcast",
		Type:           "bench.broadcast",
		Recipients:     &notifyv1.Recipients{Target: &notifyv1.Recipients_AllDevices{AllDevices: &notifyv1.AllDevices{}}},
		Content:        &notifyv1.Content{Title: benchTitle, Body: benchBody},
		Data:           map[string]string{"campaign": "bench"},
		Options:        &notifyv1.Options{Priority: notifyv1.Priority_PRIORITY_HIGH, Ttl: durationpb.New(time.Hour)},
	})
	if err != nil {
		return nil, fmt.Errorf("publish the broadcast: %w", err)
	}
	res.NotificationID = resp.GetNotificationId()

	deadline := start.Add(st.cfg.DrainTimeout)
	var done time.Time
	for {
		got, err := admin.GetNotification(ctx, &notifyv1.GetNotificationRequest{NotificationId: res.NotificationID, PageSize: 1})
		if err != nil {
			return nil, fmt.Errorf("GetNotification %s: %w", res.NotificationID, err)
		}
		now := time.Now()
		c := countsOf(got.GetNotification().GetCounts())
		settled.Store(c.settled())
		if c.settled() > 0 && res.FirstRecordSeconds == 0 {
			res.FirstRecordSeconds = round(now.Sub(start).Seconds(), 3)
		}
		if done.IsZero() && c.settled() >= int64(n) {
			done = now
		}
		s := got.GetNotification().GetStatus()
		final := s != notifyv1.NotificationStatus_NOTIFICATION_STATUS_PENDING && s != notifyv1.NotificationStatus_NOTIFICATION_STATUS_RETRYING
		if !done.IsZero() && final || now.After(deadline) {
			res.Counts, res.Status = c, statusName(s)
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(fanoutPoll):
		}
	}
	if !done.IsZero() {
		res.Seconds = round(done.Sub(start).Seconds(), 3)
		res.PerSecond = perSecond(res.Counts.Delivered, done.Sub(start))
	}
	mark("fanout: send")

	es, err := emu.stats(ctx)
	if err != nil {
		return nil, err
	}
	res.EmulatorRequests, res.EmulatorDelivered, res.EmulatorFailed = es.Requests, es.Delivered, es.failed()

	if done.IsZero() {
		f.fail(fmt.Sprintf("fan-out: only %d of %d tokens settled within %s (-drain-timeout)",
			res.Counts.settled(), n, st.cfg.DrainTimeout))
	}
	if c := res.Counts; c.Total != int64(n) || c.Delivered != int64(n) {
		f.fail(fmt.Sprintf("fan-out: the database holds %d delivered of %d tokens (resolved %d, invalid %d, retrying %d, failed %d, expired %d), status %s",
			c.Delivered, n, c.Total, c.Invalid, c.Retrying, c.Failed, c.Expired, res.Status))
	}
	switch {
	case done.IsZero():
		// Unfinished, reported above; what FCM got so far is in the results.
	case es.Delivered < int64(n):
		f.fail(fmt.Sprintf("fan-out: FCM (the emulator) received %d of %d tokens: %d LOST", es.Delivered, n, int64(n)-es.Delivered))
	case es.Delivered > int64(n):
		f.warn(fmt.Sprintf("fan-out: FCM (the emulator) received %d deliveries for %d tokens: %d sent twice", es.Delivered, n, es.Delivered-int64(n)))
	}
	if es.failed() > 0 {
		f.fail(fmt.Sprintf("fan-out: the emulator answered %d requests with errors %v", es.failed(), es.Failed))
	}
	return res, emu.reset(ctx)
}

func statusName(s notifyv1.NotificationStatus) string {
	name := s.String()
	const prefix = "NOTIFICATION_STATUS_"
	if len(name) > len(prefix) {
		return name[len(prefix):]
	}
	return name
}
