package server

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"notify/pkg/pgtest"
	notifyv1 "notify/proto/gen/notify/v1"
)

// TestDeadlineBoundsEveryCall: with the server's deadline, a Publish or RegisterDevice
// stuck behind a lock, or waiting for a connection from an exhausted pool, ends with
// UNAVAILABLE and RetryInfo at the server's bound although the client would wait an hour. The
// device write is abandoned; a Publish may still be committed by its group-commit batch
// (which never follows one caller's context), so a client retrying with the same
// idempotency key gets exactly one notification.
func TestDeadlineBoundsEveryCall(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := t.Context()
	cfg, err := pgxpool.ParseConfig(db.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 2
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)

	const bound = 500 * time.Millisecond
	s := grpc.NewServer(append([]grpc.ServerOption{grpc.ChainUnaryInterceptor(Deadline(bound))}, TextOptions()...)...)
	notifyv1.RegisterNotificationServiceServer(s, NewNotifications(pool, discard, prometheus.NewRegistry(), nil, GroupCommit{}))
	notifyv1.RegisterDeviceServiceServer(s, NewDevices(pool, discard, prometheus.NewRegistry()))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	pub, dev := notifyv1.NewNotificationServiceClient(conn), notifyv1.NewDeviceServiceClient(conn)

	stuck := validRequest()
	stuck.Type, stuck.IdempotencyKey = "stuck.publish", "stuck-1"
	patient, cancel := context.WithTimeout(ctx, time.Hour)
	defer cancel()
	calls := map[string]func() error{
		"Publish": func() error {
			_, err := pub.Publish(patient, stuck)
			return err
		},
		"RegisterDevice": func() error {
			_, err := dev.RegisterDevice(patient, &notifyv1.RegisterDeviceRequest{UserId: "u", DeviceId: "stuck",
				Token: "tok-stuck", Platform: notifyv1.Platform_PLATFORM_ANDROID})
			return err
		},
	}
	expectCutOff := func(what string) {
		t.Helper()
		for name, call := range calls {
			start := time.Now()
			err := call()
			if status.Code(err) != codes.Unavailable || !hasRetryInfo(err) {
				t.Errorf("%s, %s: %v, want UNAVAILABLE with RetryInfo", what, name, err)
			}
			if took := time.Since(start); took < bound || took > time.Minute {
				t.Errorf("%s, %s: ended after %s, want the server's %s", what, name, took, bound)
			}
		}
	}

	// Behind a lock on the tables they write (held by another session, through db.Pool).
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE notifications, devices IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	expectCutOff("tables locked")
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}

	// Waiting for a connection: every one of the pool's is taken.
	var held []*pgxpool.Conn
	for range cfg.MaxConns {
		c, err := pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	expectCutOff("pool exhausted")
	for _, c := range held {
		c.Release()
	}

	var devices int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM devices WHERE device_id = 'stuck'`).Scan(&devices); err != nil {
		t.Fatal(err)
	}
	if devices != 0 {
		t.Errorf("%d devices written by calls cut off, want none", devices)
	}
	// The same calls pass once nothing holds them up, and the Publish retried with its key
	// is stored once.
	for name, call := range calls {
		if err := call(); err != nil {
			t.Errorf("%s with nothing in the way: %v", name, err)
		}
	}
	var notifications int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM notifications WHERE type = 'stuck.publish'`).Scan(&notifications); err != nil {
		t.Fatal(err)
	}
	if notifications != 1 {
		t.Errorf("%d notifications for one idempotency key after calls cut off and a retry, want 1", notifications)
	}
}

func hasRetryInfo(err error) bool {
	for _, d := range status.Convert(err).Details() {
		if _, ok := d.(*errdetails.RetryInfo); ok {
			return true
		}
	}
	return false
}
