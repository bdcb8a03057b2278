package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	notifyv1 "notify/proto/gen/notify/v1"
)

// benchKeyName is the admin API key the bench creates in its own database.
const benchKeyName = "bench-admin"

// authenticate makes every later call carry an admin API key when the producer requires
// one. It asks the producer a harmless question without a key: refused as UNAUTHENTICATED,
// the bench creates an admin key through the bootstrap path an operator uses for the first
// one (`producer keys create NAME --role admin`, straight into DATABASE_URL) and sends it as
// "authorization: Bearer <key>" from then on (stack.dial). It reports whether a key is used.
func authenticate(ctx context.Context, st *stack) (bool, error) {
	if err := probe(ctx, st); status.Code(err) != codes.Unauthenticated {
		if err != nil {
			return false, fmt.Errorf("probe the producer: %w", err)
		}
		return false, nil
	}
	cmd := exec.CommandContext(ctx, filepath.Join(st.cfg.BinDir, "producer"), "keys", "create", benchKeyName, "--role", "admin")
	cmd.Env = append(os.Environ(), "DATABASE_URL="+st.dbURL)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return false, fmt.Errorf("the producer requires API keys, and `producer keys create %s --role admin` failed: %w: %s",
			benchKeyName, err, strings.TrimSpace(stderr.String()))
	}
	secret := strings.TrimSpace(stdout.String())
	if secret == "" || strings.ContainsAny(secret, " \n") {
		return false, fmt.Errorf("`producer keys create` printed %q, want the secret alone", secret)
	}
	st.apiKey = secret

	if err := probe(ctx, st); err != nil {
		return false, fmt.Errorf("the producer refuses the bench's new admin key: %w", err)
	}
	// The fan-out phase reads counts through AdminService, which needs the admin role.
	conn, err := st.dial()
	if err != nil {
		return false, err
	}
	defer conn.Close()
	callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = notifyv1.NewAdminServiceClient(conn).GetNotification(callCtx,
		&notifyv1.GetNotificationRequest{NotificationId: "00000000-0000-0000-0000-000000000000"})
	if status.Code(err) != codes.NotFound {
		return false, fmt.Errorf("AdminService with the bench's new admin key: got %v, want NotFound", err)
	}
	return true, nil
}

// probe makes one cheap call with the stack's current credentials.
func probe(ctx context.Context, st *stack) error {
	conn, err := st.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = notifyv1.NewDeviceServiceClient(conn).CheckDevice(ctx,
		&notifyv1.CheckDeviceRequest{UserId: "bench-probe", DeviceId: "bench-probe"})
	return err
}
