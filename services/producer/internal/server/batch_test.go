package server

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"notify/pkg/pgtest"
	notifyv1 "notify/proto/gen/notify/v1"
	"notify/services/producer/internal/apikey"
)

// summary is one PublishBatch result in a comparable form: the id (or "" for an error),
// duplicate, and an error's code and field paths.
type summary struct {
	ID        string
	Duplicate bool
	Code      codes.Code
	Fields    []string
}

func summarize(r *notifyv1.PublishResult) summary {
	if a := r.GetAccepted(); a != nil {
		return summary{ID: a.GetNotificationId(), Duplicate: a.GetDuplicate()}
	}
	st := status.FromProto(r.GetError())
	s := summary{Code: st.Code()}
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				s.Fields = append(s.Fields, v.GetField())
			}
		}
	}
	return s
}

func TestPublishBatch(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	a := serveAPI(t, db.Pool)
	ctx := context.Background()

	earlier := validRequest()
	earlier.IdempotencyKey = "k-earlier"
	first, err := a.pub.Publish(ctx, earlier)
	if err != nil {
		t.Fatal(err)
	}

	item := func(key string, modify func(*notifyv1.PublishRequest)) *notifyv1.PublishRequest {
		r := validRequest()
		r.IdempotencyKey = key
		modify(r)
		return r
	}
	same := func(*notifyv1.PublishRequest) {}
	req := &notifyv1.PublishBatchRequest{Requests: []*notifyv1.PublishRequest{
		item("k0", same), // 0 new
		item("k1", func(r *notifyv1.PublishRequest) { r.Data = map[string]string{"gcm.x": "1"} }), // 1 invalid
		item("k0", same),        // 2 duplicate of 0, same batch
		item("k-earlier", same), // 3 duplicate of an earlier call
		item("k4", func(r *notifyv1.PublishRequest) { r.Content.Title = "a\x00b" }), // 4 text PostgreSQL cannot store
		item("", same), // 5 new, no key
	}}
	resp, err := a.pub.PublishBatch(ctx, req)
	if err != nil {
		t.Fatalf("PublishBatch: %v", err)
	}
	if len(resp.GetResults()) != len(req.Requests) {
		t.Fatalf("%d results for %d requests", len(resp.GetResults()), len(req.Requests))
	}
	got := make([]summary, len(resp.GetResults()))
	for i, r := range resp.GetResults() {
		got[i] = summarize(r)
	}
	id0, id5 := got[0].ID, got[5].ID
	want := []summary{
		{ID: id0},
		{Code: codes.InvalidArgument, Fields: []string{"data[gcm.x]"}},
		{ID: id0, Duplicate: true},
		{ID: first.GetNotificationId(), Duplicate: true},
		{Code: codes.InvalidArgument, Fields: []string{"content.title"}},
		{ID: id5},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("results (-want +got):\n%s", diff)
	}
	if id0 == "" || id5 == "" || id0 == id5 {
		t.Errorf("new notifications got ids %q and %q, want two distinct ids", id0, id5)
	}
	if n, o := countRows(t, db.Pool); n != 3 || o != 3 {
		t.Errorf("rows: %d notifications, %d outbox; want 3 and 3 (the earlier call and two new)", n, o)
	}

	// Repeating the batch writes nothing new: every valid item is now a duplicate.
	again, err := a.pub.PublishBatch(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if s := summarize(again.GetResults()[0]); s.ID != id0 || !s.Duplicate {
		t.Errorf("repeated item 0 = %+v, want id %s duplicate", s, id0)
	}
	if n, _ := countRows(t, db.Pool); n != 4 { // item 5 has no key: written again
		t.Errorf("%d notifications after the repeat, want 4", n)
	}
}

func TestPublishBatchMalformed(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	s := NewNotifications(db.Pool, discard, prometheus.NewRegistry(), nil, GroupCommit{})
	ctx := context.Background()

	tooMany := &notifyv1.PublishBatchRequest{}
	for i := range MaxBatchRequests + 1 {
		r := validRequest()
		r.IdempotencyKey = strconv.Itoa(i)
		tooMany.Requests = append(tooMany.Requests, r)
	}
	big := validRequest()
	big.Recipients.Target = &notifyv1.Recipients_UserIds{UserIds: &notifyv1.UserIDs{}}
	for i := range 8000 {
		big.GetRecipients().GetUserIds().UserIds = append(big.GetRecipients().GetUserIds().UserIds, strings.Repeat("u", 100)+strconv.Itoa(i))
	}
	tooLarge := &notifyv1.PublishBatchRequest{Requests: []*notifyv1.PublishRequest{big, big, big, big, big, big}}
	for name, req := range map[string]*notifyv1.PublishBatchRequest{
		"empty": {}, "501 requests": tooMany, "over 4 MiB": tooLarge,
	} {
		_, err := s.PublishBatch(ctx, req)
		if diff := cmp.Diff([]string{"requests"}, badFields(t, err)); diff != "" {
			t.Errorf("%s: fields (-want +got):\n%s", name, diff)
		}
	}
	if n, o := countRows(t, db.Pool); n != 0 || o != 0 {
		t.Errorf("malformed batches wrote %d notifications, %d outbox rows", n, o)
	}
}

// PublishBatch applies Publish's role rule per request: ignore_preferences needs an admin
// key, and refuses only the requests that ask for it.
func TestPublishBatchIgnorePreferencesNeedsAdmin(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	s := NewNotifications(db.Pool, discard, prometheus.NewRegistry(), nil, GroupCommit{})
	overriding := validRequest()
	overriding.Options = &notifyv1.Options{IgnorePreferences: true}
	req := &notifyv1.PublishBatchRequest{Requests: []*notifyv1.PublishRequest{validRequest(), overriding}}

	publisher := WithRole(WithCaller(context.Background(), "orders"), apikey.RolePublisher)
	resp, err := s.PublishBatch(publisher, req)
	if err != nil {
		t.Fatal(err)
	}
	if got := []codes.Code{summarize(resp.Results[0]).Code, summarize(resp.Results[1]).Code}; !cmp.Equal(got, []codes.Code{codes.OK, codes.PermissionDenied}) {
		t.Errorf("publisher's results: codes %v, want OK and PERMISSION_DENIED", got)
	}
	if got := resp.Results[1].GetError().GetMessage(); got != ignorePreferencesDenied {
		t.Errorf("publisher's overriding request refused with %q, want %q", got, ignorePreferencesDenied)
	}
	admin := WithRole(WithCaller(context.Background(), "security"), apikey.RoleAdmin)
	if resp, err = s.PublishBatch(admin, req); err != nil {
		t.Fatal(err)
	}
	if r := resp.Results[1].GetAccepted(); r == nil {
		t.Errorf("admin's overriding request = %v, want accepted", resp.Results[1])
	}
	if n, _ := countRows(t, db.Pool); n != 3 {
		t.Errorf("%d notifications, want 3", n)
	}
}
