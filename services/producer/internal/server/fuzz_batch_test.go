package server

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	notifyv1 "notify/proto/gen/notify/v1"
)

// recordingDB stands in for PostgreSQL under PublishBatch: it records the idempotency key
// of every row it is asked to write and refuses each statement as PostgreSQL refuses a
// row's data, so that PublishBatch answers every item on its own.
type recordingDB struct {
	mu      sync.Mutex
	written map[string]bool
}

func (d *recordingDB) Query(_ context.Context, _ string, args ...any) (pgx.Rows, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, a := range args {
		if keys, ok := a.([]*string); ok {
			for _, k := range keys {
				if k != nil {
					d.written[*k] = true
				}
			}
		}
	}
	return nil, &pgconn.PgError{Code: "22000", Message: "refused by the fuzz target's database"}
}

// FuzzPublishBatch: PublishBatch answers every refused item with INVALID_ARGUMENT (or
// PERMISSION_DENIED for an option a publisher may not use), never INTERNAL, and sends
// exactly the admitted items to the database: a refused item writes nothing. A refused
// call (no items, too many) writes nothing at all.
func FuzzPublishBatch(f *testing.F) {
	f.Add("comment.created", "New comment", "Ana replied", "post_id", "42", "u1", uint8(1), uint8(0), false)
	f.Add("alert", "\x00", "bad\xff\xfeutf8", "from", "x", "", uint8(3), uint8(2), true)
	f.Add("type with spaces", "t", "b", "google.sent_time", "1", "\x00", uint8(2), uint8(1), false)
	f.Add("a", "", "", "", "", "t1", uint8(0), uint8(3), true)
	f.Add("ok", "t", "b", "k", "v", "u", uint8(255), uint8(0), false)
	f.Fuzz(func(t *testing.T, typ, title, body, key, value, recipient string, count, bad uint8, ignorePrefs bool) {
		db := &recordingDB{written: map[string]bool{}}
		s := NewNotifications(nil, discard, prometheus.NewRegistry(), nil, GroupCommit{})
		s.db = db
		// Items alternate between the fuzzed request and a valid one, so batches mix
		// refused and admitted items; count 0 and counts over the maximum are whole-call
		// refusals.
		n := int(count) * 3 // 0 to 765, over MaxBatchRequests
		req := &notifyv1.PublishBatchRequest{}
		for i := range n {
			item := &notifyv1.PublishRequest{
				IdempotencyKey: fmt.Sprintf("item-%d", i),
				Type:           "fuzz.valid",
				Recipients:     toUsers("u1"),
				Content:        &notifyv1.Content{Title: "t"},
				Options:        &notifyv1.Options{Ttl: durationpb.New(MaxTTL)},
			}
			if i%int(bad%4+1) == 0 {
				item.Type = typ
				item.Content = &notifyv1.Content{Title: title, Body: body}
				item.Data = map[string]string{key: value}
				item.Recipients = toUsers(recipient)
				item.Options.IgnorePreferences = ignorePrefs
			}
			req.Requests = append(req.Requests, item)
		}

		resp, err := s.PublishBatch(context.Background(), req)
		if n == 0 || n > MaxBatchRequests {
			checkServed(t, req, err)
			if err == nil {
				t.Fatalf("a batch of %d accepted", n)
			}
			if len(db.written) > 0 {
				t.Fatalf("a refused batch of %d wrote %d rows", n, len(db.written))
			}
			return
		}
		if err != nil {
			if n*200 < MaxBatchBytes { // small enough that only the size rule could refuse it
				t.Fatalf("batch of %d refused as a whole: %v", n, err)
			}
			checkServed(t, req, err)
			return
		}
		if len(resp.GetResults()) != n {
			t.Fatalf("%d results for %d requests", len(resp.GetResults()), n)
		}
		for i, item := range req.GetRequests() {
			var v violations
			nameBadText(&v, "", item.ProtoReflect())
			v = append(v, validatePublish(item)...)
			refused := len(v) > 0 || item.GetOptions().GetIgnorePreferences() // not an admin
			written := db.written[item.GetIdempotencyKey()]
			if refused == written {
				t.Fatalf("item %d: refused=%v but written=%v (%v)", i, refused, written, v)
			}
			if !refused {
				continue
			}
			st := resp.GetResults()[i].GetError()
			want := codes.InvalidArgument
			if len(v) == 0 {
				want = codes.PermissionDenied
			}
			if st == nil || codes.Code(st.GetCode()) != want {
				t.Fatalf("item %d refused with %v, want %s: %v", i, codes.Code(st.GetCode()), want, v)
			}
		}
	})
}
