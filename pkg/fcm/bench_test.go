package fcm

import (
	"fmt"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"

	"notify/pkg/fcmemu"
)

// BenchmarkSendMulticast sends 500-token multicasts to the in-process emulator with our
// tuned HTTP client and with the one the SDK builds for itself, one or several multicasts
// at a time (the sender runs FCM_MAX_CONCURRENT_SENDS of them). The figure to read is
// tokens/s.
func BenchmarkSendMulticast(b *testing.B) {
	for _, client := range []string{"tuned", "sdk-default"} {
		for _, concurrent := range []int{1, 4} {
			b.Run(fmt.Sprintf("client=%s/multicasts=%d", client, concurrent), func(b *testing.B) {
				srv := httptest.NewServer(fcmemu.New(fcmemu.Config{}))
				defer srv.Close()
				var c *Client
				if client == "tuned" {
					c = emulatorClient(b, srv.URL, Config{})
				} else {
					var err error
					if c, err = newClient(b.Context(), "demo", srv.URL+"/v1", nil); err != nil {
						b.Fatal(err)
					}
				}
				toks := tokens("device-", MaxMulticast)
				m := Message{Title: "Sale", Body: "50% off today", Data: map[string]string{"id": "42"}, Priority: PriorityHigh}

				b.ResetTimer()
				var next atomic.Int64
				var wg sync.WaitGroup
				for range concurrent {
					wg.Go(func() {
						for next.Add(1) <= int64(b.N) {
							res, err := c.SendMulticast(b.Context(), m, toks)
							if err != nil {
								b.Error(err)
								return
							}
							for _, r := range res {
								if r.Err != nil {
									b.Error(r.Err)
									return
								}
							}
						}
					})
				}
				wg.Wait()
				b.ReportMetric(float64(b.N*MaxMulticast)/b.Elapsed().Seconds(), "tokens/s")
			})
		}
	}
}
