package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/timestamppb"

	"notify/pkg/schema"
	notifyv1 "notify/proto/gen/notify/v1"
)

// Devices implements DeviceService.
type Devices struct {
	notifyv1.UnimplementedDeviceServiceServer
	pool *pgxpool.Pool
	log  *slog.Logger
	apps Apps

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
	for _, r := range []string{"created", "updated", "reactivated"} {
		d.registered.WithLabelValues(r)
	}
	return d
}

// SetApps sets the apps devices may be registered for (by default only "default"); call it
// before serving.
func (s *Devices) SetApps(apps Apps) { s.apps = apps }

// moveTokenSQL deactivates other devices of the same app holding the token: a token belongs
// to the device that registered it last (an app reinstalled under a new device id, a phone
// handed on). Devices of the batch itself ($2, $3: device ids and apps) are left alone: the
// upsert gives each its own token.
const moveTokenSQL = `
UPDATE devices d SET active = false, deactivated_at = now(), deactivation_reason = '` + schema.DeactivatedMoved + `'
FROM unnest($1::text[], $3::text[]) AS i(token, app)
WHERE d.token = i.token AND d.app = i.app AND d.active
  AND (d.app, d.device_id) NOT IN (SELECT * FROM unnest($3::text[], $2::text[]))`

// upsertDevicesSQL registers devices with PUT semantics and reports, per device, whether it
// was new and whether it was inactive before (the CTE reads the state before the upsert).
// A device is an installation of one app: (app, device_id) is its key, so the same device
// id registered for two apps is two devices.
const upsertDevicesSQL = `
WITH input AS (
	SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS t(device_id, user_id, token, platform, app)
), before AS (
	SELECT d.app, d.device_id, d.active FROM devices d JOIN input USING (app, device_id)
)
INSERT INTO devices AS d (device_id, user_id, token, platform, app)
SELECT device_id, user_id, token, platform, app FROM input
ON CONFLICT (app, device_id) DO UPDATE SET
	user_id = EXCLUDED.user_id, token = EXCLUDED.token, platform = EXCLUDED.platform,
	active = true, deactivated_at = NULL, deactivation_reason = NULL,
	registered_at = now(), last_seen_at = now()
RETURNING d.device_id, NOT EXISTS (SELECT 1 FROM before b WHERE b.app = d.app AND b.device_id = d.device_id),
	EXISTS (SELECT 1 FROM before b WHERE b.app = d.app AND b.device_id = d.device_id AND NOT b.active)`

type registration struct {
	created, reactivated int
	updated              int
}

// register upserts devices in one transaction. Two registrations racing for the same token
// can collide on the active-token index; the loser retries and wins the token.
func (s *Devices) register(ctx context.Context, deviceIDs, userIDs, tokens, platformNames, apps []string) (registration, error) {
	var r registration
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		r = registration{}
		err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, moveTokenSQL, tokens, deviceIDs, apps); err != nil {
				return fmt.Errorf("move tokens: %w", err)
			}
			rows, err := tx.Query(ctx, upsertDevicesSQL, deviceIDs, userIDs, tokens, platformNames, apps)
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
	s.apps.check(&v, "app", req.GetApp())
	if len(v) > 0 {
		return nil, invalidArgument(v)
	}
	if err := permitApp(ctx, s.log, req.GetApp()); err != nil {
		return nil, err
	}
	r, err := s.register(ctx, []string{req.GetDeviceId()}, []string{req.GetUserId()}, []string{req.GetToken()},
		[]string{platforms[req.GetPlatform()]}, []string{cmp.Or(req.GetApp(), schema.DefaultApp)})
	if err != nil {
		return nil, toStatus(ctx, s.log, "register device", err, "device_id", req.GetDeviceId())
	}
	s.count(r)
	return &notifyv1.RegisterDeviceResponse{Created: r.created == 1, Reactivated: r.reactivated == 1}, nil
}

// RegisterDevices stores many devices' tokens in one transaction.
func (s *Devices) RegisterDevices(ctx context.Context, req *notifyv1.RegisterDevicesRequest) (*notifyv1.RegisterDevicesResponse, error) {
	b, v := validateRegisterDevices(req)
	for i, d := range req.GetDevices() {
		s.apps.check(&v, fmt.Sprintf("devices[%d].app", i), d.GetApp())
	}
	if len(v) > 0 {
		return nil, invalidArgument(v)
	}
	for _, app := range slices.Compact(slices.Sorted(slices.Values(b.apps))) {
		if err := permitApp(ctx, s.log, app); err != nil {
			return nil, err
		}
	}
	r, err := s.register(ctx, b.deviceIDs, b.userIDs, b.tokens, b.platforms, b.apps)
	if err != nil {
		return nil, toStatus(ctx, s.log, "register devices", err, "count", len(b.deviceIDs))
	}
	s.count(r)
	return &notifyv1.RegisterDevicesResponse{Created: int32(r.created), Updated: int32(r.updated)}, nil
}

// deviceBatch is a RegisterDevicesRequest as the columns register writes.
type deviceBatch struct {
	deviceIDs, userIDs, tokens, platforms, apps []string
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
	type appKey struct{ app, key string }
	seenDevice := make(map[appKey]int, len(devices))
	seenToken := make(map[appKey]int, len(devices))
	n := len(devices)
	b := deviceBatch{make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)}
	for i, d := range devices {
		prefix := fmt.Sprintf("devices[%d].", i)
		validateDevice(&v, prefix, d.GetUserId(), d.GetDeviceId(), d.GetToken(), d.GetPlatform())
		app := cmp.Or(d.GetApp(), schema.DefaultApp)
		if j, dup := seenDevice[appKey{app, d.GetDeviceId()}]; dup {
			v.add(prefix+"device_id", "repeats devices[%d].device_id (of the same app)", j)
		}
		if j, dup := seenToken[appKey{app, d.GetToken()}]; dup {
			v.add(prefix+"token", "repeats devices[%d].token (of the same app)", j)
		}
		seenDevice[appKey{app, d.GetDeviceId()}], seenToken[appKey{app, d.GetToken()}] = i, i
		b.deviceIDs[i], b.userIDs[i], b.tokens[i], b.platforms[i] = d.GetDeviceId(), d.GetUserId(), d.GetToken(), platforms[d.GetPlatform()]
		b.apps[i] = app
	}
	return b, v
}

func (s *Devices) count(r registration) {
	s.registered.WithLabelValues("created").Add(float64(r.created))
	s.registered.WithLabelValues("updated").Add(float64(r.updated - r.reactivated))
	s.registered.WithLabelValues("reactivated").Add(float64(r.reactivated))
}

// deviceRequest validates the app and device id an UnregisterDevice or CheckDevice names, and
// whether the caller's key may act for the app; userID is checked when required. The ids
// have RegisterDevice's limits.
func (s *Devices) deviceRequest(ctx context.Context, app, deviceID string, userID *string) error {
	var v violations
	if userID != nil {
		v.required("user_id", *userID, MaxUserIDLen)
	}
	v.required("device_id", deviceID, MaxDeviceIDLen)
	s.apps.check(&v, "app", app)
	if len(v) > 0 {
		return invalidArgument(v)
	}
	return permitApp(ctx, s.log, app)
}

// UnregisterDevice deactivates a device's token.
func (s *Devices) UnregisterDevice(ctx context.Context, req *notifyv1.UnregisterDeviceRequest) (*notifyv1.UnregisterDeviceResponse, error) {
	if err := s.deviceRequest(ctx, req.GetApp(), req.GetDeviceId(), nil); err != nil {
		return nil, err
	}
	tag, err := s.pool.Exec(ctx, `
		UPDATE devices SET active = false,
			deactivated_at = coalesce(deactivated_at, now()),
			deactivation_reason = coalesce(deactivation_reason, '`+schema.DeactivatedUnregistered+`')
		WHERE app = $1 AND device_id = $2`, cmp.Or(req.GetApp(), schema.DefaultApp), req.GetDeviceId())
	if err != nil {
		return nil, toStatus(ctx, s.log, "unregister device", err, "device_id", req.GetDeviceId())
	}
	return &notifyv1.UnregisterDeviceResponse{Found: tag.RowsAffected() > 0}, nil
}

// checkDeviceSQL answers whether the app's device has an active token for the user and
// records that the device was seen (at most once an hour, to keep a busy app's checks cheap).
const checkDeviceSQL = `
WITH d AS (
	SELECT app, device_id, last_seen_at FROM devices WHERE app = $1 AND device_id = $2 AND user_id = $3 AND active
), seen AS (
	UPDATE devices SET last_seen_at = now() FROM d
	WHERE devices.app = d.app AND devices.device_id = d.device_id AND d.last_seen_at < now() - interval '1 hour'
)
SELECT EXISTS (SELECT 1 FROM d)`

// CheckDevice tells the app whether it must register again.
func (s *Devices) CheckDevice(ctx context.Context, req *notifyv1.CheckDeviceRequest) (*notifyv1.CheckDeviceResponse, error) {
	userID := req.GetUserId()
	if err := s.deviceRequest(ctx, req.GetApp(), req.GetDeviceId(), &userID); err != nil {
		return nil, err
	}
	var registered bool
	err := s.pool.QueryRow(ctx, checkDeviceSQL, cmp.Or(req.GetApp(), schema.DefaultApp), req.GetDeviceId(), userID).Scan(&registered)
	if err != nil {
		return nil, toStatus(ctx, s.log, "check device", err, "device_id", req.GetDeviceId())
	}
	return &notifyv1.CheckDeviceResponse{Registered: registered}, nil
}

// ListDevices lists a user's devices newest first (keyset pagination on created_at, app,
// device_id, served by the index devices_user_created_app). The cursor's id is
// "app/device_id" (an app name has no "/").
func (s *Devices) ListDevices(ctx context.Context, req *notifyv1.ListDevicesRequest) (*notifyv1.ListDevicesResponse, error) {
	var v violations
	v.required("user_id", req.GetUserId(), MaxUserIDLen)
	if req.GetPageSize() < 0 {
		v.add("page_size", "must not be negative")
	}
	s.apps.check(&v, "app", req.GetApp())
	after, paged, err := parseCursor(req.GetPageToken())
	afterApp, afterDevice, withApp := strings.Cut(after.id, "/")
	if err != nil {
		v.add("page_token", "is not a token from a previous response")
	}
	if len(v) > 0 {
		return nil, invalidArgument(v)
	}
	var where conditions
	where.add("user_id = ?", req.GetUserId())
	if req.GetApp() != "" {
		if err := permitApp(ctx, s.log, req.GetApp()); err != nil {
			return nil, err
		}
		where.add("app = ?", req.GetApp())
	} else if apps, limited := keyApps(ctx); limited {
		// A key limited to some apps sees only their devices (and tokens).
		where.add("app = ANY(?)", apps)
	}
	if req.GetActiveOnly() {
		where.add("active")
	}
	if paged {
		if withApp {
			where.add("(created_at, app, device_id) < (?, ?, ?)", after.at, afterApp, afterDevice)
		} else {
			// A token of a producer from before migration 0015 (a rolling upgrade): its id is
			// the device id alone; only devices registered at the same instant may be
			// listed twice or not at all across that one page.
			where.add("(created_at, device_id) < (?, ?)", after.at, after.id)
		}
	}
	limit := pageSize(req.GetPageSize(), 50, MaxListPageSize)
	rows, err := s.pool.Query(ctx, `
		SELECT device_id, token, platform, active, coalesce(deactivation_reason, ''),
			created_at, registered_at, last_seen_at, deactivated_at, app
		FROM devices`+where.where()+`
		ORDER BY created_at DESC, app DESC, device_id DESC LIMIT `+where.next(limit+1), where.args...)
	if err != nil {
		return nil, toStatus(ctx, s.log, "list devices", err, "user_id", req.GetUserId())
	}
	var list []*notifyv1.Device
	var (
		d                         notifyv1.Device
		platform                  string
		created, registered, seen time.Time
		deactivated               *time.Time
	)
	_, err = pgx.ForEachRow(rows, []any{&d.DeviceId, &d.Token, &platform, &d.Active, &d.DeactivationReason,
		&created, &registered, &seen, &deactivated, &d.App}, func() error {
		dev := &notifyv1.Device{
			UserId: req.GetUserId(), DeviceId: d.DeviceId, Token: d.Token, Platform: platformValues[platform],
			Active: d.Active, DeactivationReason: d.DeactivationReason, App: d.App,
			CreateTime: timestamppb.New(created), RegisterTime: timestamppb.New(registered), LastSeenTime: timestamppb.New(seen),
		}
		if deactivated != nil {
			dev.DeactivateTime = timestamppb.New(*deactivated)
		}
		list = append(list, dev)
		return nil
	})
	if err != nil {
		return nil, toStatus(ctx, s.log, "list devices", err, "user_id", req.GetUserId())
	}
	resp := &notifyv1.ListDevicesResponse{}
	if len(list) > limit {
		list = list[:limit]
		last := list[limit-1]
		resp.NextPageToken = cursor{at: last.GetCreateTime().AsTime(), id: last.GetApp() + "/" + last.GetDeviceId()}.String()
	}
	resp.Devices = list
	return resp, nil
}
