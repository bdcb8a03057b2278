package sender

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"notify/pkg/delivery"
	"notify/pkg/fcm"
	"notify/pkg/pgtest"
	"notify/pkg/rabbit"
	busv1 "notify/proto/gen/notify/bus/v1"
	notifyv1 "notify/proto/gen/notify/v1"
)

// firstSendFCM is fakeFCM that notes the round trips made before its first multicast.
type firstSendFCM struct {
	fakeFCM
	trips  *pgtest.RoundTrips
	before atomic.Int64
}

func (f *firstSendFCM) SendMulticast(ctx context.Context, m fcm.Message, tokens []string) ([]fcm.Result, error) {
	f.before.CompareAndSwap(-1, f.trips.N())
	return f.fakeFCM.SendMulticast(ctx, m, tokens)
}

// TestSmallNotificationsWithRequestCopies: small notifications whose SendTasks carry a copy
// of their request (as Publish writes them) are loaded with their first pages in one round
// trip, which is all that precedes their multicasts (no pacing here); a task without a copy,
// or one whose notification has been replayed since the task was written, has its page
// read the usual way, in a second round trip. Every one is delivered to all its devices.
func TestSmallNotificationsWithRequestCopies(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	pool, trips := db.CountedPool(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	fake := &firstSendFCM{fakeFCM: fakeFCM{tokens: map[string]int{}}, trips: trips}
	store := delivery.NewStore(pool)
	d := delivery.NewDeliverer(store, fake, &recordingPublisher{}, rabbit.NewTopology("test", []time.Duration{time.Second}), log,
		prometheus.NewRegistry(), delivery.Options{MaxAttempts: 3, MaxConcurrentSends: 4})
	h := NewHandler(store, d, log, prometheus.NewRegistry(), 3)
	e := &batchEnv{pool: db.Pool}

	type task struct {
		user       string
		devices    int
		copy       bool
		generation int32 // the task's; the notification is in generation 0
	}
	for _, tc := range []struct {
		name  string
		tasks []task
		trips int64
	}{
		{"all with copies", []task{{"a", 2, true, 0}, {"b", 1, true, 0}, {"c", 3, true, 0}}, 1},
		{"one without", []task{{"d", 2, true, 0}, {"e", 1, false, 0}}, 2},
		{"one from another generation", []task{{"f", 2, true, 0}, {"g", 2, true, 1}}, 2},
	} {
		var ds []*rabbit.Delivery
		ids := map[string]string{}
		for _, tk := range tc.tasks {
			id := e.notification(t, tk.user, tk.devices, time.Hour)
			ids[tk.user] = id
			task := &busv1.SendTask{NotificationId: id, Cause: "publish", Generation: tk.generation}
			if tk.copy {
				task.Request = &notifyv1.PublishRequest{Type: "t", Content: &notifyv1.Content{Title: "hi"},
					Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_UserIds{UserIds: &notifyv1.UserIDs{UserIds: []string{tk.user}}}}}
			}
			body, err := proto.Marshal(task)
			if err != nil {
				t.Fatal(err)
			}
			ds = append(ds, &rabbit.Delivery{MessageID: "task-" + id, Type: "notify.bus.v1.SendTask", Body: body})
		}
		trips.Reset()
		fake.before.Store(-1)
		errs := h.HandleBatch(ctx, ds)
		for i, err := range errs {
			if err != nil {
				t.Fatalf("%s: task %d: %v", tc.name, i, err)
			}
		}
		if got := fake.before.Load(); got != tc.trips {
			t.Errorf("%s: %d round trips before the first multicast, want %d", tc.name, got, tc.trips)
		}
		for _, tk := range tc.tasks {
			status, delivered := e.status(t, ids[tk.user])
			if status != "delivered" || delivered != tk.devices {
				t.Errorf("%s: user %s: %s with %d delivered, want delivered to %d", tc.name, tk.user, status, delivered, tk.devices)
			}
			for i := 1; i <= tk.devices; i++ {
				if n := fake.tokens[fmt.Sprintf("%s-tok-%d", tk.user, i)]; n != 1 {
					t.Errorf("%s: token %s-tok-%d sent %d times, want once", tc.name, tk.user, i, n)
				}
			}
		}
	}
}
