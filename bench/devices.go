package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	notifyv1 "notify/proto/gen/notify/v1"
)

// The notification every phase sends: short, like most real ones.
const (
	benchTitle = "Your order shipped"
	benchBody  = "Parcel 4711 is on its way and arrives tomorrow"
)

// tokenLength is the length of the bench's device tokens: FCM registration tokens are
// about 150–165 characters, and their size matters to the database's indexes and to every
// HTTP request.
const tokenLength = 152

// deviceToken returns the i-th token of a phase: unique, deterministic, FCM-sized, and
// free of the emulator's failure prefixes (it starts with "bench").
func deviceToken(phase string, i int) string {
	t := fmt.Sprintf("bench-%s-%09d:", phase, i)
	return t + strings.Repeat("x", max(0, tokenLength-len(t)))
}

func deviceID(phase string, i int) string { return fmt.Sprintf("bench-%s-device-%09d", phase, i) }
func userID(phase string, i int) string   { return fmt.Sprintf("bench-%s-user-%09d", phase, i) }

// registration is how fast devices were registered through RegisterDevices.
type registration struct {
	Devices   int     `json:"devices"`
	Batch     int     `json:"batch"`
	Clients   int     `json:"concurrent_calls"`
	Seconds   float64 `json:"seconds"`
	PerSecond float64 `json:"devices_per_s"`
	Created   int64   `json:"created"`
}

// registerDevices registers n devices of phase (device i belongs to user i and has token i)
// for the app "default", in batches, several calls at once, and fails on the first error.
func registerDevices(ctx context.Context, st *stack, phase string, n int, prog *progress) (registration, error) {
	return registerAppDevices(ctx, st, "", phase, n, prog)
}

// registerAppDevices is registerDevices for the devices of app ("" is "default").
func registerAppDevices(ctx context.Context, st *stack, app, phase string, n int, prog *progress) (registration, error) {
	return registerVia(ctx, st, st.dial, app, phase, n, prog)
}

// registerVia is registerAppDevices through the server dial connects to.
func registerVia(ctx context.Context, st *stack, dial func() (*grpc.ClientConn, error), app, phase string, n int, prog *progress) (registration, error) {
	res := registration{Devices: n, Batch: st.cfg.RegisterBatch, Clients: st.cfg.RegisterClients}
	conn, err := dial()
	if err != nil {
		return res, err
	}
	defer conn.Close()
	client := notifyv1.NewDeviceServiceClient(conn)

	var next, done, created atomic.Int64
	prog.set(phase+": registering devices", func() string {
		return fmt.Sprintf("%d of %d", done.Load(), n)
	})
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var once sync.Once
	var firstErr error
	start := time.Now()
	for range res.Clients {
		wg.Go(func() {
			for {
				from := int(next.Add(int64(res.Batch))) - res.Batch
				if from >= n || ctx.Err() != nil {
					return
				}
				to := min(from+res.Batch, n)
				req := &notifyv1.RegisterDevicesRequest{Devices: make([]*notifyv1.Device, 0, to-from)}
				for i := from; i < to; i++ {
					req.Devices = append(req.Devices, &notifyv1.Device{
						UserId: userID(phase, i), DeviceId: deviceID(phase, i), Token: deviceToken(phase, i),
						Platform: notifyv1.Platform_PLATFORM_ANDROID, App: app,
					})
				}
				callCtx, cancelCall := context.WithTimeout(ctx, time.Minute)
				resp, err := client.RegisterDevices(callCtx, req)
				cancelCall()
				if err != nil {
					once.Do(func() {
						firstErr = fmt.Errorf("RegisterDevices of %s devices %d..%d: %w", phase, from, to-1, err)
						cancel()
					})
					return
				}
				created.Add(int64(resp.GetCreated()))
				done.Add(int64(to - from))
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return res, firstErr
	}
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	elapsed := time.Since(start)
	res.Seconds = round(elapsed.Seconds(), 3)
	res.PerSecond = perSecond(int64(n), elapsed)
	res.Created = created.Load()
	if res.Created != int64(n) {
		return res, fmt.Errorf("RegisterDevices created %d of %d new %s devices", res.Created, n, phase)
	}
	return res, nil
}
