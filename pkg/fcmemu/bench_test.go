package fcmemu_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	firebase "firebase.google.com/go/v4"
	"firebase.google.com/go/v4/messaging"
	"google.golang.org/api/option"

	"notify/pkg/fcmemu"
)

// benchMessage is a typical notify message: a notification, a little data, Android options.
func benchMessage(token string) *messaging.Message {
	ttl := time.Hour
	return &messaging.Message{
		Token:        token,
		Notification: &messaging.Notification{Title: "Order shipped", Body: "Your order 1234 is on its way"},
		Data:         map[string]string{"notification_id": "0195f3b2-7c1a-7d4e-9a51-3f0c2b8e6d10", "type": "order.shipped"},
		Android:      &messaging.AndroidConfig{Priority: "high", TTL: &ttl, CollapseKey: "orders"},
	}
}

// discard is a ResponseWriter that keeps only the status.
type discard struct {
	h      http.Header
	status int
}

func (d *discard) Header() http.Header         { return d.h }
func (d *discard) Write(b []byte) (int, error) { return len(b), nil }
func (d *discard) WriteHeader(status int)      { d.status = status }

// BenchmarkServeHTTP measures the emulator's own cost per send, without the network.
func BenchmarkServeHTTP(b *testing.B) {
	emu := fcmemu.New(fcmemu.Config{})
	bodies := make([][]byte, 10_000)
	for i := range bodies {
		body, err := json.Marshal(map[string]any{"message": benchMessage(fmt.Sprintf("device-%05d", i))})
		if err != nil {
			b.Fatal(err)
		}
		bodies[i] = body
	}
	u, err := url.Parse("http://127.0.0.1/v1/projects/demo/messages:send")
	if err != nil {
		b.Fatal(err)
	}
	var bad atomic.Int64
	var next atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		w := &discard{h: http.Header{}}
		i := int(next.Add(1000))
		for pb.Next() {
			body := bodies[i%len(bodies)]
			i++
			r := &http.Request{
				Method:        http.MethodPost,
				URL:           u,
				Header:        http.Header{},
				Body:          io.NopCloser(bytes.NewReader(body)),
				ContentLength: int64(len(body)),
			}
			clear(w.h)
			emu.ServeHTTP(w, r)
			if w.status != http.StatusOK {
				bad.Add(1)
			}
		}
	})
	if n := bad.Load(); n > 0 {
		b.Fatalf("%d sends were not answered 200", n)
	}
}

// BenchmarkSendEachForMulticast measures the real SDK against the emulator over loopback,
// 500 tokens per operation, with the SDK's own HTTP client and with one that keeps enough
// idle connections for the SDK's 50 workers.
func BenchmarkSendEachForMulticast(b *testing.B) {
	tuned := &http.Client{Transport: &http.Transport{
		MaxIdleConns:        200,
		MaxIdleConnsPerHost: 200,
		IdleConnTimeout:     90 * time.Second,
	}}
	for _, bc := range []struct {
		name string
		opts []option.ClientOption
	}{
		{"sdk-client", []option.ClientOption{option.WithoutAuthentication()}},
		{"tuned-client", []option.ClientOption{option.WithHTTPClient(tuned)}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			emu := fcmemu.New(fcmemu.Config{})
			srv := httptest.NewServer(emu)
			defer srv.Close()
			ctx := context.Background()
			app, err := firebase.NewApp(ctx, &firebase.Config{ProjectID: "demo"},
				append([]option.ClientOption{option.WithEndpoint(srv.URL + "/v1")}, bc.opts...)...)
			if err != nil {
				b.Fatal(err)
			}
			client, err := app.Messaging(ctx)
			if err != nil {
				b.Fatal(err)
			}
			m := benchMessage("")
			msg := &messaging.MulticastMessage{Data: m.Data, Notification: m.Notification, Android: m.Android}
			msg.Tokens = make([]string, 500)
			for i := range msg.Tokens {
				msg.Tokens[i] = fmt.Sprintf("device-%03d", i)
			}
			b.ResetTimer()
			for b.Loop() {
				resp, err := client.SendEachForMulticast(ctx, msg)
				if err != nil {
					b.Fatal(err)
				}
				if resp.FailureCount > 0 {
					b.Fatalf("%d of 500 failed, first: %v", resp.FailureCount, firstError(resp))
				}
			}
			b.ReportMetric(float64(b.N*len(msg.Tokens))/b.Elapsed().Seconds(), "tokens/s")
		})
	}
}

func firstError(resp *messaging.BatchResponse) error {
	for _, r := range resp.Responses {
		if r.Error != nil {
			return r.Error
		}
	}
	return nil
}

// BenchmarkMessagesLog measures GET /emulator/messages of 5,000 requests, as make bench's
// latency phase reads its receipts, with and without the messages' payloads.
func BenchmarkMessagesLog(b *testing.B) {
	emu := fcmemu.New(fcmemu.Config{})
	const n = 5000
	w := &discard{h: http.Header{}}
	for i := range n {
		body, err := json.Marshal(map[string]any{"message": benchMessage(fmt.Sprintf("device-%05d", i))})
		if err != nil {
			b.Fatal(err)
		}
		r := httptest.NewRequest(http.MethodPost, "/v1/projects/demo/messages:send", bytes.NewReader(body))
		emu.ServeHTTP(w, r)
		if w.status != http.StatusOK {
			b.Fatalf("send %d: status %d", i, w.status)
		}
	}
	for _, query := range []string{"limit=5000", "limit=5000&payload=false"} {
		b.Run(query, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				rec := httptest.NewRecorder()
				emu.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/emulator/messages?"+query, nil))
				if rec.Code != http.StatusOK {
					b.Fatalf("status %d", rec.Code)
				}
				b.ReportMetric(float64(rec.Body.Len())/n, "bytes/message")
			}
		})
	}
}
