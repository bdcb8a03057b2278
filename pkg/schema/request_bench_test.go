package schema_test

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"notify/pkg/schema"
	notifyv1 "notify/proto/gen/notify/v1"
)

// BenchmarkRequestCodec: what storing a Publish request as protobuf JSON costs (EncodeRequest
// at every Publish, DecodeRequest when the sender, the admin API or a replay reads it), for
// a request the size of the bench's, beside binary protobuf for scale.
func BenchmarkRequestCodec(b *testing.B) {
	req := &notifyv1.PublishRequest{
		IdempotencyKey: "bench-20261130-17-4242",
		Type:           "bench.publish",
		Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_UserIds{UserIds: &notifyv1.UserIDs{
			UserIds: []string{"user-publish-000042", "user-publish-000043"},
		}}},
		Content: &notifyv1.Content{Title: "Your table is ready", Body: "Table 12 is waiting for you at the front desk."},
		Data:    map[string]string{"order_id": "4242"},
		Options: &notifyv1.Options{Priority: notifyv1.Priority_PRIORITY_HIGH, Ttl: durationpb.New(time.Hour)},
	}
	stored, err := schema.EncodeRequest(req)
	if err != nil {
		b.Fatal(err)
	}
	wire, err := proto.Marshal(req)
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		fn   func() error
	}{
		{"EncodeRequest", func() error { _, err := schema.EncodeRequest(req); return err }},
		{"DecodeRequest", func() error { _, err := schema.DecodeRequest(stored); return err }},
		{"proto.Marshal", func() error { _, err := proto.Marshal(req); return err }},
		{"proto.Unmarshal", func() error { return proto.Unmarshal(wire, &notifyv1.PublishRequest{}) }},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := c.fn(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
