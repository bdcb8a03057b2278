package server

import (
	"context"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"

	"notify/pkg/pgtest"
	notifyv1 "notify/proto/gen/notify/v1"
	"notify/services/producer/internal/apikey"
)

// smallRequest is the common notification, as bench publishes it: one user, a title and
// body, one data entry, priority and TTL.
func smallRequest(i int) *notifyv1.PublishRequest {
	return &notifyv1.PublishRequest{
		IdempotencyKey: "bench-publish-" + strconv.Itoa(i),
		Type:           "bench.publish",
		Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_UserIds{UserIds: &notifyv1.UserIDs{
			UserIds: []string{"user-" + strconv.Itoa(i)},
		}}},
		Content: &notifyv1.Content{Title: "Your table is ready", Body: "Ana replied to your comment"},
		Data:    map[string]string{"order_id": strconv.Itoa(i)},
		Options: &notifyv1.Options{Priority: notifyv1.Priority_PRIORITY_HIGH, Ttl: durationpb.New(time.Hour)},
	}
}

// BenchmarkCheckText: the text check every request passes, on a small Publish request.
//
//	cd services/producer && go test -run x -bench CheckText -benchmem ./internal/server/
func BenchmarkCheckText(b *testing.B) {
	req := smallRequest(1)
	ok := func(context.Context, any) (any, error) { return nil, nil }
	info := &grpc.UnaryServerInfo{FullMethod: "/notify.v1.NotificationService/Publish"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := checkText(context.Background(), req, info, ok); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkInterceptors: what a Publish passes through before its handler, in run's order
// (the metrics, the deadline, authentication, the rate limit, the text check), with a
// handler that does nothing.
//
//	cd services/producer && go test -run x -bench Interceptors -benchmem ./internal/server/
func BenchmarkInterceptors(b *testing.B) {
	reg := prometheus.NewRegistry()
	metrics := grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram())
	reg.MustRegister(metrics)
	auth := NewAuth(fakeKeys{"pub-secret": {Name: "orders", Role: apikey.RolePublisher}}, discard, reg)
	limits := NewRateLimit(Limits{PerKey: 1e9, Burst: 1e9}, reg)
	chain := []grpc.UnaryServerInterceptor{metrics.UnaryServerInterceptor(), Deadline(30 * time.Second), auth.Unary(), limits.Unary(), checkText}
	handler := func(context.Context, any) (any, error) { return &notifyv1.PublishResponse{}, nil }
	for i := len(chain) - 1; i >= 0; i-- {
		next, ic := handler, chain[i]
		handler = func(ctx context.Context, req any) (any, error) {
			return ic(ctx, req, &grpc.UnaryServerInfo{FullMethod: "/notify.v1.NotificationService/Publish"}, next)
		}
	}
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer pub-secret"))
	req := smallRequest(1)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := handler(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPublishBatch: PublishBatch calls of 500 small requests against real PostgreSQL,
// 4 at once as the bench's batch phase makes them. It reports, per notification, the CPU
// milliseconds of this process (cpu-ms/op: PublishBatch without gRPC) and of PostgreSQL's
// backends (pg-cpu-ms/op):
//
//	cd services/producer && go test -run x -bench PublishBatch -benchtime 20x ./internal/server/
func BenchmarkPublishBatch(b *testing.B) {
	db := pgtest.New(b)
	s := NewNotifications(db.Pool, discard, prometheus.NewRegistry(), nil, GroupCommit{})
	ctx := WithCaller(context.Background(), "bench")
	var seq atomic.Int64
	b.SetParallelism(4 / max(1, runtime.GOMAXPROCS(0)))
	b.ResetTimer()
	pgCPU, pgErr := pgtest.StartBackendCPU(ctx, db.Pool)
	cpu0 := processCPU()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req := &notifyv1.PublishBatchRequest{Requests: make([]*notifyv1.PublishRequest, 500)}
			for i := range req.Requests {
				req.Requests[i] = smallRequest(int(seq.Add(1)))
			}
			resp, err := s.PublishBatch(ctx, req)
			if err != nil {
				b.Error(err)
				return
			}
			for _, r := range resp.GetResults() {
				if r.GetAccepted() == nil {
					b.Errorf("not accepted: %v", r.GetError())
					return
				}
			}
		}
	})
	b.StopTimer()
	cpu := processCPU() - cpu0
	n := float64(b.N * 500)
	b.ReportMetric(n/b.Elapsed().Seconds(), "notifications/s")
	b.ReportMetric(float64(cpu.Microseconds())/1000/n, "cpu-ms/op")
	if pgErr == nil {
		if used, err := pgCPU.Used(ctx); err == nil {
			b.ReportMetric(float64(used.Microseconds())/1000/n, "pg-cpu-ms/op")
		}
	}
}
