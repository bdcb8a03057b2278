package e2e

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	notifyv1 "notify/proto/gen/notify/v1"
)

// A PublishBatch of 500 with three invalid requests: the 497 are delivered, each to its
// token exactly once; the three are reported with their bad fields and nothing of them is
// written or sent.
func TestPublishBatchDeliversTheValidAndReportsTheInvalid(t *testing.T) {
	s := newStack(t)
	s.start("fcm-emulator", nil)
	// Published outbox rows are kept, so the test can count the tasks the batch wrote.
	s.start("producer", map[string]string{"OUTBOX_RETENTION": "1h"})
	s.start("sender", nil)
	notifications, _, _ := s.clients()

	invalid := map[int]string{ // request index → the field it gets wrong
		7:   "data[gcm.x]",
		250: "content.title",
		499: "recipients",
	}
	req := &notifyv1.PublishBatchRequest{}
	for i := range 500 {
		r := &notifyv1.PublishRequest{
			IdempotencyKey: fmt.Sprintf("batch-%03d", i),
			Type:           "e2e.batch",
			Recipients:     &notifyv1.Recipients{Target: &notifyv1.Recipients_Tokens{Tokens: &notifyv1.Tokens{Tokens: []string{fmt.Sprintf("batch-tok-%03d", i)}}}},
			Content:        &notifyv1.Content{Title: "Your table is ready", Body: fmt.Sprintf("guest %d", i)},
		}
		switch invalid[i] {
		case "data[gcm.x]":
			r.Data = map[string]string{"gcm.x": "reserved"}
		case "content.title":
			r.Content.Title = "a\x00b" // PostgreSQL cannot store it; refused for this request only
		case "recipients":
			r.Recipients = nil
		}
		req.Requests = append(req.Requests, r)
	}
	resp, err := notifications.PublishBatch(ctxT(t), req)
	if err != nil {
		t.Fatalf("PublishBatch: %v", err)
	}
	if len(resp.GetResults()) != 500 {
		t.Fatalf("%d results, want 500", len(resp.GetResults()))
	}
	ids := map[string]bool{}
	for i, r := range resp.GetResults() {
		field, bad := invalid[i]
		if !bad {
			if a := r.GetAccepted(); a == nil || a.GetDuplicate() || a.GetNotificationId() == "" {
				t.Errorf("result %d = %v, want a new notification", i, r)
			}
			ids[r.GetAccepted().GetNotificationId()] = true
			continue
		}
		st := status.FromProto(r.GetError())
		var fields []string
		for _, d := range st.Details() {
			if br, ok := d.(*errdetails.BadRequest); ok {
				for _, v := range br.GetFieldViolations() {
					fields = append(fields, v.GetField())
				}
			}
		}
		if r.GetError() == nil || st.Code() != codes.InvalidArgument || len(fields) != 1 || fields[0] != field {
			t.Errorf("result %d = %v (fields %v), want INVALID_ARGUMENT naming %s", i, r, fields, field)
		}
	}
	if len(ids) != 497 {
		t.Fatalf("%d distinct ids for the 497 valid requests", len(ids))
	}

	waitFor(t, 2*time.Minute, "the 497 notifications to be delivered", func() bool {
		var delivered int
		if err := s.db.Pool.QueryRow(ctxT(t), "SELECT count(*) FROM notifications WHERE status = 'delivered'").Scan(&delivered); err != nil {
			t.Fatal(err)
		}
		return delivered == 497
	})
	var notifications2, outbox int
	if err := s.db.Pool.QueryRow(ctxT(t), "SELECT (SELECT count(*) FROM notifications), (SELECT count(*) FROM outbox WHERE "+notStatusEvent+")").Scan(&notifications2, &outbox); err != nil {
		t.Fatal(err)
	}
	if notifications2 != 497 || outbox != 497 {
		t.Errorf("database: %d notifications, %d outbox rows; want 497 each", notifications2, outbox)
	}
	st := s.emulatorStats(true)
	if st.Requests != 497 || len(st.Tokens) != 497 {
		t.Errorf("emulator got %d requests for %d tokens, want 497 for 497", st.Requests, len(st.Tokens))
	}
	for i := range invalid {
		if _, sent := st.Tokens[fmt.Sprintf("batch-tok-%03d", i)]; sent {
			t.Errorf("the token of invalid request %d was sent to", i)
		}
	}
	for tok, ts := range st.Tokens {
		if ts.Received != 1 {
			t.Errorf("token %s received %d times, want once", tok, ts.Received)
		}
	}
}
