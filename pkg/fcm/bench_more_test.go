package fcm

import (
	"fmt"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"notify/pkg/fcmemu"
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

// BenchmarkSendSmall sends the common small notification, to one and to three tokens, one
// multicast at a time and 64 at once (as a sender batch does), and reports this process's
// CPU per multicast (cpu-us/op: user + system time, the SDK and net/http included). The
// emulator runs in this process unless FCM_BENCH_ENDPOINT names one running on its own
// (e.g. bin/fcm-emulator's http://127.0.0.1:9099/v1), which leaves only the client's CPU in
// the figure.
func BenchmarkSendSmall(b *testing.B) {
	endpoint := os.Getenv("FCM_BENCH_ENDPOINT")
	if endpoint == "" {
		srv := httptest.NewServer(fcmemu.New(fcmemu.Config{}))
		defer srv.Close()
		endpoint = srv.URL + "/v1"
	}
	c, err := New(b.Context(), Config{ProjectID: "demo", Endpoint: endpoint})
	if err != nil {
		b.Fatal(err)
	}
	m := Message{Title: "Your table is ready", Body: "Table 12, by the window", Data: map[string]string{"id": "42"}, Priority: PriorityHigh}
	for _, n := range []int{1, 3} {
		for _, concurrent := range []int{1, 64} {
			toks := tokens("device-", n)
			b.Run(fmt.Sprintf("tokens=%d/multicasts=%d", n, concurrent), func(b *testing.B) {
				b.ReportAllocs()
				cpu0 := processCPU()
				var next atomic.Int64
				var wg sync.WaitGroup
				for range concurrent {
					wg.Go(func() {
						for next.Add(1) <= int64(b.N) {
							res, err := c.SendMulticast(b.Context(), m, toks)
							if err != nil || res[n-1].Err != nil {
								b.Errorf("SendMulticast: %v, %+v", err, res)
								return
							}
						}
					})
				}
				wg.Wait()
				b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(b.N), "cpu-us/op")
			})
		}
	}
}

// processCPU is the user + system CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
