package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"notify/pkg/pgtest"
	notifyv1 "notify/proto/gen/notify/v1"
)

func TestToStatus(t *testing.T) {
	t.Parallel()
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel2()
	live := context.Background()
	pg := func(code string) error { return fmt.Errorf("store notification: %w", &pgconn.PgError{Code: code}) }

	tests := []struct {
		name string
		ctx  context.Context
		err  error
		want codes.Code
	}{
		{"the call was canceled", canceled, fmt.Errorf("query: %w", context.Canceled), codes.Canceled},
		{"the call's deadline passed", expired, fmt.Errorf("query: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{"the call's deadline passed, error from below", expired, pg("08006"), codes.DeadlineExceeded},
		{"connection failure", live, pg("08006"), codes.Unavailable},
		{"cannot connect now", live, pg("57P03"), codes.Unavailable},
		{"admin shutdown", live, pg("57P01"), codes.Unavailable},
		{"too many connections", live, pg("53300"), codes.Unavailable},
		{"serialization failure", live, pg("40001"), codes.Unavailable},
		{"deadlock", live, pg("40P01"), codes.Unavailable},
		{"connection refused", live, &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, codes.Unavailable},
		{"connection reset", live, fmt.Errorf("read: %w", syscall.ECONNRESET), codes.Unavailable},
		{"connection lost mid-reply", live, fmt.Errorf("receive message: %w", io.ErrUnexpectedEOF), codes.Unavailable},
		{"conn closed", live, pgconn.ErrConnClosed, codes.Unavailable},
		{"a timeout below, not the call's", live, fmt.Errorf("acquire: %w", context.DeadlineExceeded), codes.Unavailable},
		{"unique violation (a bug)", live, pg("23505"), codes.Internal},
		{"syntax error (a bug)", live, pg("42601"), codes.Internal},
		{"anything else", live, errors.New("boom"), codes.Internal},
	}
	for _, tt := range tests {
		err := toStatus(tt.ctx, discard, "op", tt.err)
		st := status.Convert(err)
		if st.Code() != tt.want {
			t.Errorf("%s: code %s, want %s", tt.name, st.Code(), tt.want)
		}
		if tt.want == codes.Unavailable && retryDelayOf(err) <= 0 {
			t.Errorf("%s: UNAVAILABLE without RetryInfo", tt.name)
		}
	}
}

func retryDelayOf(err error) time.Duration {
	for _, d := range status.Convert(err).Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration()
		}
	}
	return 0
}

// tcpProxy forwards connections to a server until it is cut: then it closes every open
// connection and every new one at once, as a database that went away does.
type tcpProxy struct {
	lis    net.Listener
	target string

	mu    sync.Mutex
	down  bool
	conns map[net.Conn]bool
}

func newTCPProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{lis: lis, target: target, conns: map[net.Conn]bool{}}
	go p.serve()
	t.Cleanup(func() {
		lis.Close()
		p.cut()
	})
	return p
}

func (p *tcpProxy) serve() {
	for {
		c, err := p.lis.Accept()
		if err != nil {
			return
		}
		go p.forward(c)
	}
}

func (p *tcpProxy) forward(c net.Conn) {
	p.mu.Lock()
	down := p.down
	p.mu.Unlock()
	if down {
		c.Close()
		return
	}
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	if p.down {
		p.mu.Unlock()
		c.Close()
		up.Close()
		return
	}
	p.conns[c], p.conns[up] = true, true
	p.mu.Unlock()
	go func() { _, _ = io.Copy(up, c); up.Close() }()
	_, _ = io.Copy(c, up)
	c.Close()
}

// cut closes every connection and refuses new ones until restore.
func (p *tcpProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}

func (p *tcpProxy) restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = false
}

// TestPublishWhileDatabaseUnreachable: with PostgreSQL cut off, Publish (and the other
// RPCs) answer UNAVAILABLE with retry info, never INTERNAL; a client that keeps retrying
// with the same idempotency key gets its notification once PostgreSQL is back, exactly
// once.
func TestPublishWhileDatabaseUnreachable(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	u, err := url.Parse(db.URL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := newTCPProxy(t, u.Host)
	u.Host = proxy.lis.Addr().String()
	pool, err := pgxpool.New(context.Background(), u.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	a := serveAPI(t, pool)
	call := func(f func(ctx context.Context) error) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return f(ctx)
	}
	req := validRequest()
	req.IdempotencyKey = "order-42"

	// Connections in the pool before the cut, so the cut breaks open connections too.
	if err := call(func(ctx context.Context) error {
		_, err := a.pub.Publish(ctx, &notifyv1.PublishRequest{Type: "warm.up", Recipients: toUsers("u0"),
			Content: &notifyv1.Content{Title: "t"}})
		return err
	}); err != nil {
		t.Fatal(err)
	}

	proxy.cut()
	for i := range 3 { // open connections break, then new ones are refused
		err := call(func(ctx context.Context) error { _, err := a.pub.Publish(ctx, req); return err })
		if status.Code(err) != codes.Unavailable || retryDelayOf(err) <= 0 {
			t.Fatalf("Publish %d with the database cut off: %v, want UNAVAILABLE with retry info", i, err)
		}
	}
	for name, f := range map[string]func(ctx context.Context) error{
		"RegisterDevice": func(ctx context.Context) error {
			_, err := a.dev.RegisterDevice(ctx, &notifyv1.RegisterDeviceRequest{UserId: "u1", DeviceId: "d1", Token: "tok-1",
				Platform: notifyv1.Platform_PLATFORM_ANDROID})
			return err
		},
		"ListNotifications": func(ctx context.Context) error {
			_, err := a.admin.ListNotifications(ctx, &notifyv1.ListNotificationsRequest{})
			return err
		},
	} {
		if err := call(f); status.Code(err) != codes.Unavailable {
			t.Errorf("%s with the database cut off: %v, want UNAVAILABLE", name, err)
		}
	}

	proxy.restore()
	// The client's retry policy: same request, same key, until it is accepted.
	var resp *notifyv1.PublishResponse
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := call(func(ctx context.Context) (err error) { resp, err = a.pub.Publish(ctx, req); return err })
		if err == nil {
			break
		}
		if status.Code(err) != codes.Unavailable || time.Now().After(deadline) {
			t.Fatalf("Publish after the database came back: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	again, err := a.pub.Publish(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if !again.GetDuplicate() || again.GetNotificationId() != resp.GetNotificationId() {
		t.Errorf("retry after success = %v, want the same id %s as a duplicate", again, resp.GetNotificationId())
	}
	var notifications, outbox int
	if err := db.Pool.QueryRow(context.Background(), `SELECT count(*), (SELECT count(*) FROM outbox o
		WHERE o.notification_id = $1 AND o.message_type <> 'notify.bus.v1.StatusEvent') FROM notifications WHERE idempotency_key = $2`,
		resp.GetNotificationId(), req.GetIdempotencyKey()).Scan(&notifications, &outbox); err != nil {
		t.Fatal(err)
	}
	if notifications != 1 || outbox != 1 {
		t.Errorf("%d notifications and %d outbox rows for the key, want exactly 1 and 1", notifications, outbox)
	}
}
