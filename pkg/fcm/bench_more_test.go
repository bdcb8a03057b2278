package fcm

import (
	"strings"
	"testing"
	"time"
)

// BenchmarkMulticastBuild builds the SDK request for a 500-token chunk, once per chunk as
// the sender does, for a plain message and for one using every option (image, TTL, a
// collapse key long enough to be digested for APNs and Web Push).
func BenchmarkMulticastBuild(b *testing.B) {
	now := time.Unix(1_700_000_000, 0)
	toks := tokens("device-", MaxMulticast)
	for _, tc := range []struct {
		name string
		m    Message
	}{
		{"plain", Message{Title: "Sale", Body: "50% off today", Data: map[string]string{"id": "42"}}},
		{"all-options", Message{
			Title: "Your order shipped", Body: "Parcel 42 is on its way", ImageURL: "https://cdn.example.com/p/42.png",
			Data:     map[string]string{"order_id": "42", "notification_id": "0195f3b2-7c1a-7d4e-9a51-3f0c2b8e6d10"},
			Priority: PriorityHigh, TTL: 90 * time.Minute, CollapseKey: "order-" + strings.Repeat("x", 80),
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if mm := tc.m.multicast(toks, now); len(mm.Tokens) != MaxMulticast { //nolint:staticcheck // SA1019, see multicast
					b.Fatal("tokens lost")
				}
			}
		})
	}
}
