package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"notify/pkg/schema"
	notifyv1 "notify/proto/gen/notify/v1"
)

// Devices implements DeviceService.
type Devices struct {
	notifyv1.UnimplementedDeviceServiceServer
	pool *pgxpool.Pool
	log  *slog.Logger

	registered *prometheus.CounterVec
}

// NewDevices returns the DeviceService and registers its metrics.
func NewDevices(pool *pgxpool.Pool, log *slog.Logger, reg prometheus.Registerer) *Devices {
	d := &Devices{
		pool: pool,
		log:  log,
		registered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "notify_devices_registered_total", Help: "Device registrations by result (created, updated, reactivated).",
		}, []string{"result"}),
	}
	reg.MustRegister(d.registered)
	return d
}

// moveTokenSQL deactivates other devices holding the token: a token belongs to the device
// that registered it last (an app reinstalled under a new device id, a phone handed on).
const moveTokenSQL = `
UPDATE devices SET active = false, deactivated_at = now(), deactivation_reason = '` + schema.DeactivatedMoved + `'
WHERE token = ANY($1) AND active AND NOT (device_id = ANY($2))`

// upsertDevicesSQL registers devices with PUT semantics and reports, per device, whether it
// was new and whether it was inactive before (the CTE reads the state before the upsert).
const upsertDevicesSQL = `
WITH input AS (
	SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS t(device_id, user_id, token, platform)
), before AS (
	SELECT d.device_id, d.active FROM devices d JOIN input USING (device_id)
)
INSERT INTO devices AS d (device_id, user_id, token, platform)
SELECT device_id, user_id, token, platform FROM input
ON CONFLICT (device_id) DO UPDATE SET
	user_id = EXCLUDED.user_id, token = EXCLUDED.token, platform = EXCLUDED.platform,
	active = true, deactivated_at = NULL, deactivation_reason = NULL,
	registered_at = now(), last_seen_at = now()
RETURNING d.device_id, NOT EXISTS (SELECT 1 FROM before b WHERE b.device_id = d.device_id),
	EXISTS (SELECT 1 FROM before b WHERE b.device_id = d.device_id AND NOT b.active)`

type registration struct {
	created, reactivated int
	updated              int
}

// register upserts devices in one transaction. Two registrations racing for the same token
// can collide on the active-token index; the loser retries and wins the token.
func (s *Devices) register(ctx context.Context, deviceIDs, userIDs, tokens, platformNames []string) (registration, error) {
	var r registration
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		r = registration{}
		err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, moveTokenSQL, tokens, deviceIDs); err != nil {
				return fmt.Errorf("move tokens: %w", err)
			}
			rows, err := tx.Query(ctx, upsertDevicesSQL, deviceIDs, userIDs, tokens, platformNames)
			if err != nil {
				return fmt.Errorf("upsert devices: %w", err)
			}
			var id string
			var created, reactivated bool
			_, err = pgx.ForEachRow(rows, []any{&id, &created, &reactivated}, func() error {
				switch {
				case created:
					r.created++
				case reactivated:
					r.reactivated++
					r.updated++
				default:
					r.updated++
				}
				return nil
			})
			return err
		})
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "23505" {
			break
		}
	}
	return r, err
}

// RegisterDevice stores one device's token.
func (s *Devices) RegisterDevice(ctx context.Context, req *notifyv1.RegisterDeviceRequest) (*notifyv1.RegisterDeviceResponse, error) {
	var v violations
	validateDevice(&v, "", req.GetUserId(), req.GetDeviceId(), req.GetToken(), req.GetPlatform())
	if len(v) > 0 {
		return nil, invalidArgument(v)
	}
	r, err := s.register(ctx, []string{req.GetDeviceId()}, []string{req.GetUserId()}, []string{req.GetToken()},
		[]string{platforms[req.GetPlatform()]})
	if err != nil {
		return nil, toStatus(ctx, s.log, "register device", err, "device_id", req.GetDeviceId())
	}
	s.count(r)
	return &notifyv1.RegisterDeviceResponse{Created: r.created == 1, Reactivated: r.reactivated == 1}, nil
}

// RegisterDevices stores many devices' tokens in one transaction.
func (s *Devices) RegisterDevices(ctx context.Context, req *notifyv1.RegisterDevicesRequest) (*notifyv1.RegisterDevicesResponse, error) {
	b, v := validateRegisterDevices(req)
	if len(v) > 0 {
		return nil, invalidArgument(v)
	}
	r, err := s.register(ctx, b.deviceIDs, b.userIDs, b.tokens, b.platforms)
	if err != nil {
		return nil, toStatus(ctx, s.log, "register devices", err, "count", len(b.deviceIDs))
	}
	s.count(r)
	return &notifyv1.RegisterDevicesResponse{Created: int32(r.created), Updated: int32(r.updated)}, nil
}

// deviceBatch is a RegisterDevicesRequest as the columns register writes.
type deviceBatch struct {
	deviceIDs, userIDs, tokens, platforms []string
}

// validateRegisterDevices checks a RegisterDevicesRequest before anything is written, as
// validatePublish does for Publish, and returns the batch as columns.
func validateRegisterDevices(req *notifyv1.RegisterDevicesRequest) (deviceBatch, violations) {
	var v violations
	devices := req.GetDevices()
	switch {
	case len(devices) == 0:
		v.add("devices", "must not be empty")
	case len(devices) > MaxBatchDevices:
		v.add("devices", "has %d entries; at most %d per call", len(devices), MaxBatchDevices)
	}
	seenDevice := make(map[string]int, len(devices))
	seenToken := make(map[string]int, len(devices))
	n := len(devices)
	b := deviceBatch{make([]string, n), make([]string, n), make([]string, n), make([]string, n)}
	for i, d := range devices {
		prefix := fmt.Sprintf("devices[%d].", i)
		validateDevice(&v, prefix, d.GetUserId(), d.GetDeviceId(), d.GetToken(), d.GetPlatform())
		if j, dup := seenDevice[d.GetDeviceId()]; dup {
			v.add(prefix+"device_id", "repeats devices[%d].device_id", j)
		}
		if j, dup := seenToken[d.GetToken()]; dup {
			v.add(prefix+"token", "repeats devices[%d].token", j)
		}
		seenDevice[d.GetDeviceId()], seenToken[d.GetToken()] = i, i
		b.deviceIDs[i], b.userIDs[i], b.tokens[i], b.platforms[i] = d.GetDeviceId(), d.GetUserId(), d.GetToken(), platforms[d.GetPlatform()]
	}
	return b, v
}

func (s *Devices) count(r registration) {
	s.registered.WithLabelValues("created").Add(float64(r.created))
	s.registered.WithLabelValues("updated").Add(float64(r.updated - r.reactivated))
	s.registered.WithLabelValues("reactivated").Add(float64(r.reactivated))
}

// UnregisterDevice deactivates a device's token.
func (s *Devices) UnregisterDevice(ctx context.Context, req *notifyv1.UnregisterDeviceRequest) (*notifyv1.UnregisterDeviceResponse, error) {
	if req.GetDeviceId() == "" {
		var v violations
		v.add("device_id", "is required")
		return nil, invalidArgument(v)
	}
	tag, err := s.pool.Exec(ctx, `
		UPDATE devices SET active = false,
			deactivated_at = coalesce(deactivated_at, now()),
			deactivation_reason = coalesce(deactivation_reason, '`+schema.DeactivatedUnregistered+`')
		WHERE device_id = $1`, req.GetDeviceId())
	if err != nil {
		return nil, toStatus(ctx, s.log, "unregister device", err, "device_id", req.GetDeviceId())
	}
	return &notifyv1.UnregisterDeviceResponse{Found: tag.RowsAffected() > 0}, nil
}

// checkDeviceSQL answers whether the device has an active token for the user and records
// that the device was seen (at most once an hour, to keep a busy app's checks cheap).
const checkDeviceSQL = `
WITH d AS (
	SELECT device_id, last_seen_at FROM devices WHERE device_id = $1 AND user_id = $2 AND active
), seen AS (
	UPDATE devices SET last_seen_at = now() FROM d
	WHERE devices.device_id = d.device_id AND d.last_seen_at < now() - interval '1 hour'
)
SELECT EXISTS (SELECT 1 FROM d)`

// CheckDevice tells the app whether it must register again.
func (s *Devices) CheckDevice(ctx context.Context, req *notifyv1.CheckDeviceRequest) (*notifyv1.CheckDeviceResponse, error) {
	var v violations
	if req.GetUserId() == "" {
		v.add("user_id", "is required")
	}
	if req.GetDeviceId() == "" {
		v.add("device_id", "is required")
	}
	if len(v) > 0 {
		return nil, invalidArgument(v)
	}
	var registered bool
	if err := s.pool.QueryRow(ctx, checkDeviceSQL, req.GetDeviceId(), req.GetUserId()).Scan(&registered); err != nil {
		return nil, toStatus(ctx, s.log, "check device", err, "device_id", req.GetDeviceId())
	}
	return &notifyv1.CheckDeviceResponse{Registered: registered}, nil
}
