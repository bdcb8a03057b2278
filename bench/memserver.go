package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/semaphore"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"notify/pkg/delivery"
	"notify/pkg/envconfig"
	"notify/pkg/fcm"
	notifyv1 "notify/proto/gen/notify/v1"
)

// The in-memory push server is issue 11's yardstick: what a push server with no database and
// no broker moves on this machine, given the same one-token notifications, the same 32
// Publish clients and the same FCM stand-in as notify in the same run. It serves
// NotificationService.Publish and DeviceService.RegisterDevices from memory and sends through
// pkg/fcm exactly as the sender does (the real Firebase SDK, the sender's FCM settings read
// by the sender's own loader, the same bound on FCM requests in flight). It keeps nothing
// across a restart: it is a reference, not a service.
//
// It runs as a process of its own, so that its CPU is read from /proc like a service's and
// not mixed into the bench's: the bench binary re-executes itself with memserverEnv set.
// That is a hidden mode rather than a flag or a subcommand, so `bench -h` and the command
// line stay what they are; and it is the bench binary rather than a main package of its
// own, which the bench would have to build at run time (a toolchain, the module graph) and
// which -bin DIR would not carry from another commit.
const (
	memserverEnv    = "NOTIFY_BENCH_MEMSERVER" // "1": run as the in-memory push server
	memserverBinary = "memserver"              // its service name, CPU group and log
)

// memserverQueue bounds the notifications accepted and not yet being sent; Publish waits
// for room (back-pressure, as a full channel does in any in-memory server).
const memserverQueue = 65_536

// memserverTTL is the TTL of a notification that sets none: FCM's longest (4 weeks), the
// producer's limit too.
const memserverTTL = 28 * 24 * time.Hour

// memserverMain runs the in-memory push server until ctx ends: gRPC on GRPC_ADDR, GET
// /healthz and /stats on METRICS_ADDR, FCM as the sender's FCM_* variables say.
func memserverMain(ctx context.Context, getenv func(string) string, logOut io.Writer) error {
	log := slog.New(slog.NewJSONHandler(logOut, nil))
	env := envconfig.New(getenv)
	settings := delivery.LoadSettings(env)
	grpcAddr := env.String("GRPC_ADDR", "127.0.0.1:0")
	httpAddr := env.String("METRICS_ADDR", "127.0.0.1:0")
	if err := env.Err(); err != nil {
		return err
	}
	apps, err := fcm.NewApps(ctx, settings.Apps)
	if err != nil {
		return err
	}
	client, ok := apps.Client(fcm.DefaultApp)
	if !ok {
		return fmt.Errorf("no FCM app %q configured", fcm.DefaultApp)
	}
	srv := newMemServer(client, settings.MaxConcurrentSends)

	gl, err := net.Listen("tcp", grpcAddr)
	if err != nil {
		return fmt.Errorf("GRPC_ADDR: %w", err)
	}
	hl, err := net.Listen("tcp", httpAddr)
	if err != nil {
		gl.Close()
		return fmt.Errorf("METRICS_ADDR: %w", err)
	}
	log.Info("in-memory push server started", "grpc", gl.Addr().String(), "http", hl.Addr().String(),
		"fcm_endpoint", settings.FCM.Endpoint, "max_concurrent_sends", settings.MaxConcurrentSends)
	err = srv.serve(ctx, gl, hl)
	st := srv.stats()
	log.Info("in-memory push server stopped", "accepted", st.Accepted, "finished", st.Finished,
		"delivered_tokens", st.DeliveredTokens, "failed_tokens", st.FailedTokens)
	return err
}

// memServer is the in-memory push server.
type memServer struct {
	fcm   fcmSender
	queue chan *memNotification
	// slots bounds the FCM requests in flight as the sender's Deliverer does: maxConcurrent
	// multicasts' worth of requests (the SDK sends up to 50 of a multicast's at once), a
	// notification of n tokens taking min(n, 50) of them.
	slots *semaphore.Weighted

	mu   sync.Mutex
	keys map[string]string // idempotency key → notification id
	// byID holds every accepted notification and, once sent, its outcome: what a
	// GetNotification would read.
	byID map[string]*memNotification

	devMu   sync.RWMutex
	devices map[string]memDevice // by device id
	users   map[string][]string  // user id → tokens

	accepted, finished, delivered atomic.Int64 // notifications
	deliveredTokens, failedTokens atomic.Int64
	failMu                        sync.Mutex
	failures                      map[string]int64 // FCM error code → tokens
}

// fcmSender is what the server needs of FCM; *fcm.Client satisfies it.
type fcmSender interface {
	SendMulticast(ctx context.Context, m fcm.Message, tokens []string) ([]fcm.Result, error)
}

type memDevice struct{ user, token string }

// memNotification is one accepted notification and, once sent, its outcome.
type memNotification struct {
	id        string
	msg       fcm.Message
	tokens    []string
	expiresAt time.Time
	// Set by the goroutine that sends it, before finished is counted.
	delivered, failed int
	done              atomic.Bool
}

// memStats is what GET /stats answers: the bench polls it to know when every accepted
// notification is finished.
type memStats struct {
	Accepted        int64            `json:"accepted"`
	Finished        int64            `json:"finished"`
	Delivered       int64            `json:"delivered"` // notifications with every token delivered
	DeliveredTokens int64            `json:"delivered_tokens"`
	FailedTokens    int64            `json:"failed_tokens"`
	Failures        map[string]int64 `json:"failures,omitempty"`
}

func newMemServer(client fcmSender, maxConcurrentSends int) *memServer {
	return &memServer{
		fcm:      client,
		queue:    make(chan *memNotification, memserverQueue),
		slots:    semaphore.NewWeighted(int64(max(maxConcurrentSends, 1) * memRequestsPerMulticast)),
		keys:     map[string]string{},
		byID:     map[string]*memNotification{},
		devices:  map[string]memDevice{},
		users:    map[string][]string{},
		failures: map[string]int64{},
	}
}

// memRequestsPerMulticast is how many requests the SDK has in flight for one multicast, as
// in pkg/delivery.
const memRequestsPerMulticast = 50

func (s *memServer) stats() memStats {
	s.failMu.Lock()
	failures := maps.Clone(s.failures)
	s.failMu.Unlock()
	return memStats{Accepted: s.accepted.Load(), Finished: s.finished.Load(), Delivered: s.delivered.Load(),
		DeliveredTokens: s.deliveredTokens.Load(), FailedTokens: s.failedTokens.Load(), Failures: failures}
}

// serve runs the gRPC API on gl, /healthz and /stats on hl and the sending until ctx ends,
// then lets the calls and sends in flight finish.
func (s *memServer) serve(ctx context.Context, gl, hl net.Listener) error {
	// The producer's transport without TLS, authentication, limits or metrics: the same
	// concurrent streams and static flow-control windows (no bandwidth PING per call).
	gs := grpc.NewServer(grpc.MaxConcurrentStreams(256), grpc.StaticStreamWindowSize(1<<20), grpc.StaticConnWindowSize(4<<20))
	notifyv1.RegisterNotificationServiceServer(gs, memNotifications{memServer: s})
	notifyv1.RegisterDeviceServiceServer(gs, memDevices{memServer: s})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s.stats())
	})
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}

	g, gctx := errgroup.WithContext(ctx)
	sendCtx, stopSending := context.WithCancel(context.WithoutCancel(ctx))
	defer stopSending()
	sending := make(chan error, 1)
	go func() { sending <- s.run(sendCtx) }()
	g.Go(func() error { return gs.Serve(gl) })
	g.Go(func() error {
		if err := hs.Serve(hl); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		gs.GracefulStop()
		shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		return hs.Shutdown(shutCtx)
	})
	err := g.Wait()
	stopSending()
	return errors.Join(err, <-sending)
}

// run takes notifications off the queue and sends each on a goroutine of its own once it
// has its request slots, until ctx ends; then it waits for the sends in flight.
func (s *memServer) run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		var n *memNotification
		select {
		case <-ctx.Done():
			return nil
		case n = <-s.queue:
		}
		weight := int64(min(len(n.tokens), memRequestsPerMulticast))
		if weight == 0 {
			s.finish(n)
			continue
		}
		if err := s.slots.Acquire(ctx, weight); err != nil {
			return nil
		}
		wg.Go(func() {
			defer s.slots.Release(weight)
			s.send(ctx, n)
		})
	}
}

// send sends n to its tokens in multicasts of up to fcm.MaxMulticast, as the sender does,
// with what is left of its TTL, and records the outcome. Failures are not retried: the
// reference counts them, and the bench fails a run that has any.
func (s *memServer) send(ctx context.Context, n *memNotification) {
	remaining := time.Until(n.expiresAt)
	if remaining <= 0 {
		n.failed = len(n.tokens)
		s.fail("EXPIRED", int64(n.failed))
		s.finish(n)
		return
	}
	msg := n.msg
	msg.TTL = remaining
	for from := 0; from < len(n.tokens); from += fcm.MaxMulticast {
		part := n.tokens[from:min(from+fcm.MaxMulticast, len(n.tokens))]
		results, err := s.fcm.SendMulticast(ctx, msg, part)
		if err != nil && len(results) != len(part) {
			n.failed += len(part)
			s.fail(fcm.Code(err), int64(len(part)))
			continue
		}
		for _, r := range results {
			if r.Err != nil {
				n.failed++
				s.fail(fcm.Code(r.Err), 1)
			} else {
				n.delivered++
			}
		}
	}
	s.finish(n)
}

func (s *memServer) fail(code string, tokens int64) {
	s.failMu.Lock()
	s.failures[code] += tokens
	s.failMu.Unlock()
}

// finish records n's outcome: it is final from here on.
func (s *memServer) finish(n *memNotification) {
	s.deliveredTokens.Add(int64(n.delivered))
	s.failedTokens.Add(int64(n.failed))
	if n.failed == 0 {
		s.delivered.Add(1)
	}
	n.done.Store(true)
	s.finished.Add(1)
}

// memNotifications serves NotificationService: Publish only.
type memNotifications struct {
	notifyv1.UnimplementedNotificationServiceServer
	*memServer
}

// Publish checks the request as far as sending it needs, answers a known idempotency key
// with its id, resolves the users to their tokens and queues the notification.
func (s memNotifications) Publish(ctx context.Context, req *notifyv1.PublishRequest) (*notifyv1.PublishResponse, error) {
	if v := validateMemPublish(req); len(v) > 0 {
		return nil, invalidArgument(v)
	}
	ttl := memserverTTL
	if t := req.GetOptions().GetTtl(); t != nil {
		ttl = t.AsDuration()
	}
	n := &memNotification{id: uuid.NewString(), msg: fcm.FromRequest(req), expiresAt: time.Now().Add(ttl)}
	key := req.GetIdempotencyKey()
	s.mu.Lock()
	if id, ok := s.keys[key]; ok && key != "" {
		s.mu.Unlock()
		return &notifyv1.PublishResponse{NotificationId: id, Duplicate: true}, nil
	}
	if key != "" {
		s.keys[key] = n.id
	}
	s.byID[n.id] = n
	s.mu.Unlock()

	s.devMu.RLock()
	for _, u := range req.GetRecipients().GetUserIds().GetUserIds() {
		n.tokens = append(n.tokens, s.users[u]...)
	}
	s.devMu.RUnlock()

	s.accepted.Add(1)
	select {
	case s.queue <- n:
		return &notifyv1.PublishResponse{NotificationId: n.id}, nil
	case <-ctx.Done():
		// Not accepted after all: the key is free for the caller's retry.
		s.accepted.Add(-1)
		s.mu.Lock()
		delete(s.byID, n.id)
		if key != "" {
			delete(s.keys, key)
		}
		s.mu.Unlock()
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

// validateMemPublish checks what the real API requires of a notification to users:
// at least one user, each a non-empty id of at most 128 characters; a title, a body or
// data; a TTL, when set, above 0 and at most 28 days; a key of at most 128 characters.
func validateMemPublish(req *notifyv1.PublishRequest) []*errdetails.BadRequest_FieldViolation {
	var v []*errdetails.BadRequest_FieldViolation
	add := func(field, desc string) {
		v = append(v, &errdetails.BadRequest_FieldViolation{Field: field, Description: desc})
	}
	if len(req.GetIdempotencyKey()) > 128 {
		add("idempotency_key", "must be at most 128 characters")
	}
	users := req.GetRecipients().GetUserIds().GetUserIds()
	if len(users) == 0 {
		add("recipients.user_ids.user_ids", "the in-memory push server sends to users only: at least one is required")
	}
	for i, u := range users {
		if u == "" || len(u) > 128 {
			add(fmt.Sprintf("recipients.user_ids.user_ids[%d]", i), "must be 1 to 128 characters")
		}
	}
	c := req.GetContent()
	if c.GetTitle() == "" && c.GetBody() == "" && len(req.GetData()) == 0 {
		add("content", "needs a title or a body, unless data is set") // the producer's wording
	}
	if t := req.GetOptions().GetTtl(); t != nil {
		if d := t.AsDuration(); t.CheckValid() != nil || d <= 0 || d > memserverTTL {
			add("options.ttl", "must be more than 0 and at most 28 days")
		}
	}
	return v
}

func invalidArgument(v []*errdetails.BadRequest_FieldViolation) error {
	st := status.New(codes.InvalidArgument, "invalid notification")
	if withDetails, err := st.WithDetails(&errdetails.BadRequest{FieldViolations: v}); err == nil {
		st = withDetails
	}
	return st.Err()
}

// memDevices serves DeviceService: RegisterDevices only, into memory.
type memDevices struct {
	notifyv1.UnimplementedDeviceServiceServer
	*memServer
}

// RegisterDevices stores each device's user and token; a known device id moves to its new
// user and token.
func (s memDevices) RegisterDevices(_ context.Context, req *notifyv1.RegisterDevicesRequest) (*notifyv1.RegisterDevicesResponse, error) {
	var v []*errdetails.BadRequest_FieldViolation
	for i, d := range req.GetDevices() {
		if d.GetUserId() == "" || d.GetDeviceId() == "" || d.GetToken() == "" {
			v = append(v, &errdetails.BadRequest_FieldViolation{Field: fmt.Sprintf("devices[%d]", i),
				Description: "user_id, device_id and token are required"})
		}
	}
	if len(req.GetDevices()) == 0 {
		v = append(v, &errdetails.BadRequest_FieldViolation{Field: "devices", Description: "at least one device is required"})
	}
	if len(v) > 0 {
		return nil, invalidArgument(v)
	}
	resp := &notifyv1.RegisterDevicesResponse{}
	s.devMu.Lock()
	defer s.devMu.Unlock()
	for _, d := range req.GetDevices() {
		if old, ok := s.devices[d.GetDeviceId()]; ok {
			resp.Updated++
			tokens := s.users[old.user]
			for i, t := range tokens {
				if t == old.token {
					s.users[old.user] = append(tokens[:i:i], tokens[i+1:]...)
					break
				}
			}
		} else {
			resp.Created++
		}
		s.devices[d.GetDeviceId()] = memDevice{user: d.GetUserId(), token: d.GetToken()}
		s.users[d.GetUserId()] = append(s.users[d.GetUserId()], d.GetToken())
	}
	return resp, nil
}
