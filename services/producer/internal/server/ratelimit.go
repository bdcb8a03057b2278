package server

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"

	notifyv1 "notify/proto/gen/notify/v1"
	"notify/services/producer/internal/apikey"
)

// Limits are the default publish rate limits of API keys, per producer replica
// (PUBLISH_RATE_PER_KEY, PUBLISH_RATE_PER_ADMIN_KEY, PUBLISH_BURST_PER_KEY). A key's own
// limit (apikey.Limit, set at its creation) takes precedence. A rate of 0 is unlimited.
type Limits struct {
	PerKey      int // notifications per second a publisher key may publish
	PerAdminKey int // the same for an admin key
	Burst       int // how many a key may publish at once after a pause
}

// RateLimit keeps one token bucket per API key, in this process, so that one caller cannot
// starve the others: a call to NotificationService or DeviceService takes its cost from
// the bucket of the key making it, and a call that finds too little there is refused with
// RESOURCE_EXHAUSTED and a google.rpc.RetryInfo saying when the bucket will hold enough. A
// refused call writes nothing and takes nothing from the bucket. AdminService, health and
// reflection are not limited.
//
// The cost of a call (cost): one per notification for NotificationService, so Publish costs
// 1 and a batch one per item; one per call for DeviceService, whatever the number of
// devices in a RegisterDevices call (device registrations become one write, never FCM
// traffic). A call costing more than the burst could never find its cost in the bucket; it
// passes on a full bucket instead and is charged in full, the bucket going into debt for
// the rest, so the key's later calls wait until the debt is refilled. Buckets are per
// replica: with N producers behind a load balancer a key gets up to N times its rate.
type RateLimit struct {
	limits Limits
	now    func() time.Time

	mu      sync.Mutex
	buckets map[string]*bucket // by key name; keys are few (made by admins), so never evicted

	refused *prometheus.CounterVec
}

// NewRateLimit returns the rate limiter and registers its metric.
func NewRateLimit(l Limits, reg prometheus.Registerer) *RateLimit {
	r := &RateLimit{
		limits: l, now: time.Now, buckets: map[string]*bucket{},
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "notify_rate_limited_total",
			Help: "Calls refused with RESOURCE_EXHAUSTED by the per-API-key publish rate limit, by key.",
		}, []string{"key"}),
	}
	reg.MustRegister(r.refused)
	return r
}

// Unary is the unary server interceptor. It must run after Auth, which names the key.
func (r *RateLimit) Unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if requiredRole(info.FullMethod) != apikey.RolePublisher {
			return handler(ctx, req)
		}
		if delay, err := r.take(ctx, info.FullMethod, req); err != nil {
			// The gRPC retry policy's pushback: clients that retry RESOURCE_EXHAUSTED by
			// policy wait this long, as RetryInfo tells the others.
			_ = grpc.SetTrailer(ctx, metadata.Pairs("grpc-retry-pushback-ms", strconv.FormatInt(delay.Milliseconds(), 10)))
			return nil, err
		}
		return handler(ctx, req)
	}
}

// take takes the call's cost from its key's bucket, or returns the RESOURCE_EXHAUSTED
// answer and how long the client should wait.
func (r *RateLimit) take(ctx context.Context, fullMethod string, req any) (time.Duration, error) {
	name, perSecond, burst := r.limitOf(ctx)
	if perSecond == 0 {
		return 0, nil
	}
	delay := r.bucket(name).take(r.now(), perSecond, burst, cost(fullMethod, req))
	if delay == 0 {
		return 0, nil
	}
	r.refused.WithLabelValues(name).Inc()
	// Whole milliseconds, rounded up: a client that waits exactly this long finds the tokens.
	delay = delay.Round(time.Millisecond) + time.Millisecond
	st := status.New(codes.ResourceExhausted, fmt.Sprintf(
		"rate limit exceeded: this API key may publish %d notifications per second (burst %d) on this server; retry after %s",
		perSecond, burst, delay))
	if d, err := st.WithDetails(
		&errdetails.RetryInfo{RetryDelay: durationpb.New(delay)},
		&errdetails.QuotaFailure{Violations: []*errdetails.QuotaFailure_Violation{{
			Subject:     "api_key:" + name,
			Description: fmt.Sprintf("%d notifications per second, burst %d, per producer replica", perSecond, burst),
		}}},
	); err == nil {
		st = d
	}
	return delay, st.Err()
}

// limitOf is the name, rate and burst that apply to the call's key: the key's own limit
// where it has one, else its role's default. A call without a key (no authentication, in
// tests) is limited as a publisher named by its caller.
func (r *RateLimit) limitOf(ctx context.Context) (name string, perSecond, burst int) {
	k, ok := keyFrom(ctx)
	if !ok {
		return Caller(ctx), r.limits.PerKey, max(r.limits.Burst, 1)
	}
	perSecond, burst = r.limits.PerKey, r.limits.Burst
	if k.Role == apikey.RoleAdmin {
		perSecond = r.limits.PerAdminKey
	}
	if k.Limit.PerSecond != nil {
		perSecond = *k.Limit.PerSecond
	}
	if k.Limit.Burst != nil {
		burst = *k.Limit.Burst
	}
	return k.Name, perSecond, max(burst, 1)
}

// bucket returns the key's bucket.
func (r *RateLimit) bucket(name string) *bucket {
	r.mu.Lock()
	defer r.mu.Unlock()
	b, ok := r.buckets[name]
	if !ok {
		b = &bucket{}
		r.buckets[name] = b
	}
	return b
}

// bucket is one key's token bucket. Its mutex makes a take one step: a call charged in
// several reservations (more than the burst) is never interleaved with another call's
// reservation, which a refusal could then not give back in full.
type bucket struct {
	mu  sync.Mutex
	lim *rate.Limiter
}

// take takes n tokens at now from the bucket, made to the rate and burst given (a key's
// limit can only change when it is made again under the same name; following it costs
// nothing), and returns 0; or, when the bucket holds too little, takes nothing and returns
// how long until it holds enough.
//
// n more than the burst is charged in full on a full bucket: the burst first, which must
// be there now, then the rest in reservations of at most the burst that are kept. A
// rate.Limiter grants those at once (ReserveN with no deadline) by letting its tokens go
// negative, and until they are refilled every later reservation has a delay, that is, the
// key's next calls are refused with the time the debt takes to refill.
func (b *bucket) take(now time.Time, perSecond, burst, n int) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.lim == nil:
		b.lim = rate.NewLimiter(rate.Limit(perSecond), burst)
	case b.lim.Limit() != rate.Limit(perSecond):
		b.lim.SetLimitAt(now, rate.Limit(perSecond))
	}
	if b.lim.Burst() != burst {
		b.lim.SetBurstAt(now, burst)
	}
	first := b.lim.ReserveN(now, min(n, burst))
	if delay := first.DelayFrom(now); delay > 0 {
		first.CancelAt(now) // the last reservation, so all of it is given back
		return delay
	}
	for rest := n - burst; rest > 0; rest -= burst {
		b.lim.ReserveN(now, min(rest, burst))
	}
	return 0
}

// cost is what a call takes from its key's bucket: for NotificationService, one per
// notification (a request carrying a list of messages, such as a batch, costs one per
// item, at least 1); for every other limited service, 1.
func cost(fullMethod string, req any) int {
	if !strings.HasPrefix(fullMethod, "/"+notifyv1.NotificationService_ServiceDesc.ServiceName+"/") {
		return 1
	}
	switch r := req.(type) { // the hot requests, without reflection
	case *notifyv1.PublishRequest:
		return 1
	case *notifyv1.PublishBatchRequest:
		return max(1, min(len(r.GetRequests()), math.MaxInt32))
	}
	m, ok := req.(proto.Message)
	if !ok {
		return 1
	}
	n := 1
	m.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.IsList() && fd.Kind() == protoreflect.MessageKind {
			n = max(n, min(v.List().Len(), math.MaxInt32))
		}
		return true
	})
	return n
}

type keyKey struct{}

// withKey returns a context that carries the API key making the call (Auth sets it).
func withKey(ctx context.Context, k apikey.Key) context.Context {
	return context.WithValue(ctx, keyKey{}, &k)
}

// keyFrom returns the API key making the call, if Auth named one.
func keyFrom(ctx context.Context) (apikey.Key, bool) {
	if k, ok := ctx.Value(keyKey{}).(*apikey.Key); ok {
		return *k, true
	}
	return apikey.Key{}, false
}
