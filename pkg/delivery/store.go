// Package delivery is the delivery code the sender and the retrier share: loading a
// notification, resolving its audience to tokens, sending chunks through FCM, recording
// every token's outcome, deactivating dead tokens, and handing what failed to the retry
// wait queues or to the dead-letter queue.
package delivery

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"notify/pkg/fcm"
	"notify/pkg/schema"
)

// ErrNotFound means no notification has the id a message names: the message is
// dead-lettered, never retried.
var ErrNotFound = errors.New("notification not found")

// Notification is what delivery needs of a stored notification.
type Notification struct {
	ID        uuid.UUID
	Status    string
	ExpiresAt time.Time
	Audience  schema.Audience
	Message   fcm.Message
}

// Final reports whether the notification's status is final (nothing is in flight).
func (n *Notification) Final() bool {
	return n.Status == schema.StatusDelivered || n.Status == schema.StatusFailed || n.Status == schema.StatusExpired
}

// Target is one token to send to, with the device it belongs to (empty for raw tokens
// that are not registered).
type Target struct {
	Token    string
	DeviceID string
	UserID   string
	// Muted: the device's user muted the notification's type; the target is recorded
	// skipped_preference and not sent.
	Muted bool
}

// Outcome is what happened to one target in one attempt.
type Outcome struct {
	Target
	Outcome      string // one of the schema.Outcome constants
	Attempts     int
	ErrorCode    string
	ErrorMessage string
}

// Store reads and writes notifications, devices and deliveries in PostgreSQL.
type Store struct {
	pool *pgxpool.Pool
}

// NewStore returns a store on pool.
func NewStore(pool *pgxpool.Pool) *Store { return &Store{pool: pool} }

// Load reads a notification; ErrNotFound when there is none with that id.
func (s *Store) Load(ctx context.Context, id string) (*Notification, error) {
	nid, err := uuid.Parse(id)
	if err != nil {
		return nil, fmt.Errorf("notification id %q: %w", id, ErrNotFound)
	}
	n := &Notification{ID: nid}
	var request []byte
	err = s.pool.QueryRow(ctx, "SELECT status, expires_at, request FROM notifications WHERE id = $1", nid).
		Scan(&n.Status, &n.ExpiresAt, &request)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("notification %s: %w", nid, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("load notification %s: %w", nid, err)
	}
	req, err := schema.DecodeRequest(request)
	if err != nil {
		return nil, fmt.Errorf("notification %s: %w", nid, err)
	}
	n.Audience = schema.AudienceOf(req)
	n.Message = fcm.FromRequest(req)
	return n, nil
}

// Audience returns up to limit targets of n that have no settled delivery yet, after the
// key `after` (a keyset cursor: device id, or token for raw tokens), and the cursor for the
// next page ("" when this was the last one). schema.Audience defines the query.
func (s *Store) Audience(ctx context.Context, n *Notification, after string, limit int) ([]Target, string, error) {
	query, args, err := n.Audience.UnsettledPage(n.ID, after, limit)
	if err != nil {
		return nil, "", fmt.Errorf("notification %s: %w", n.ID, err)
	}
	rows, err := s.pool.Query(ctx, query, args...)
	if err != nil {
		return nil, "", fmt.Errorf("resolve audience of %s: %w", n.ID, err)
	}
	targets := make([]Target, 0, limit)
	var key string
	var t Target
	_, err = pgx.ForEachRow(rows, []any{&key, &t.DeviceID, &t.UserID, &t.Token, &t.Muted}, func() error {
		targets = append(targets, t)
		return nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("resolve audience of %s: %w", n.ID, err)
	}
	if len(targets) < limit {
		key = ""
	}
	return targets, key, nil
}

// Unsettled returns the targets among tokens that are still to be sent for n (not
// delivered, invalid or expired), with their devices where registered. The retrier uses it
// so that a repeated retry message sends nothing twice.
func (s *Store) Unsettled(ctx context.Context, n *Notification, tokens []string) ([]Target, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT t.token, coalesce(x.device_id, d.device_id, ''), coalesce(x.user_id, d.user_id, '')
		FROM (SELECT DISTINCT token FROM unnest($2::text[]) AS token) t
		LEFT JOIN deliveries x ON x.notification_id = $1 AND x.token = t.token
		LEFT JOIN devices d ON d.token = t.token AND d.active
		WHERE x.outcome IS NULL OR x.outcome NOT IN `+schema.FinalOutcomes+`
		ORDER BY t.token`, n.ID, tokens)
	if err != nil {
		return nil, fmt.Errorf("read deliveries of %s: %w", n.ID, err)
	}
	var targets []Target
	var t Target
	_, err = pgx.ForEachRow(rows, []any{&t.Token, &t.DeviceID, &t.UserID}, func() error {
		targets = append(targets, t)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read deliveries of %s: %w", n.ID, err)
	}
	return targets, nil
}

// recordSQL upserts a chunk's outcomes and moves the notification's counts by the
// difference between the new outcomes and the ones they replace (read from the snapshot
// before the statement), all in one statement.
const recordSQL = `
WITH input AS (
	SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::int[], $7::text[], $8::text[])
		AS t(token, device_id, user_id, outcome, attempts, error_code, error_message)
), old AS (
	-- One primary-key probe per token (OFFSET 0: not a join planned from stale statistics).
	SELECT x.outcome FROM input i CROSS JOIN LATERAL (
		SELECT d.outcome FROM deliveries d WHERE d.notification_id = $1 AND d.token = i.token OFFSET 0) x
), up AS (
	INSERT INTO deliveries AS d (notification_id, token, device_id, user_id, outcome, attempts, error_code, error_message)
	SELECT $1, token, nullif(device_id, ''), nullif(user_id, ''), outcome, attempts,
		nullif(error_code, ''), nullif(error_message, '')
	FROM input
	ON CONFLICT (notification_id, token) DO UPDATE SET
		outcome = EXCLUDED.outcome, attempts = EXCLUDED.attempts,
		error_code = EXCLUDED.error_code, error_message = EXCLUDED.error_message, updated_at = now(),
		device_id = coalesce(EXCLUDED.device_id, d.device_id), user_id = coalesce(EXCLUDED.user_id, d.user_id)
	RETURNING 1
), delta AS (
	SELECT outcome, sum(n) AS n FROM (
		SELECT outcome, 1 AS n FROM input
		UNION ALL
		SELECT outcome, -1 FROM old
	) x GROUP BY outcome
)
UPDATE notifications SET
	total     = total + (SELECT count(*) FROM input) - (SELECT count(*) FROM old),
	delivered = delivered + coalesce((SELECT n FROM delta WHERE outcome = '` + schema.OutcomeDelivered + `'), 0),
	invalid   = invalid   + coalesce((SELECT n FROM delta WHERE outcome = '` + schema.OutcomeInvalid + `'), 0),
	retrying  = retrying  + coalesce((SELECT n FROM delta WHERE outcome = '` + schema.OutcomeRetrying + `'), 0),
	failed    = failed    + coalesce((SELECT n FROM delta WHERE outcome = '` + schema.OutcomeFailed + `'), 0),
	expired   = expired   + coalesce((SELECT n FROM delta WHERE outcome = '` + schema.OutcomeExpired + `'), 0),
	skipped   = skipped   + coalesce((SELECT n FROM delta WHERE outcome = '` + schema.OutcomeSkippedPreference + `'), 0),
	updated_at = now()
WHERE id = $1`

// deactivateSQL deactivates tokens FCM reported dead, with FCM's reason.
const deactivateSQL = `
UPDATE devices d SET active = false, deactivated_at = now(), deactivation_reason = i.reason
FROM unnest($1::text[], $2::text[]) AS i(token, reason)
WHERE d.token = i.token AND d.active`

// statusSQL is the notification's status derived from its counts.
const statusSQL = `CASE WHEN retrying > 0 THEN '` + schema.StatusRetrying + `' WHEN failed > 0 THEN '` + schema.StatusFailed + `'
	WHEN expired > 0 THEN '` + schema.StatusExpired + `' ELSE '` + schema.StatusDelivered + `' END`

// Record writes a chunk's outcomes atomically in one round trip (a pipelined batch is one
// implicit transaction): the deliveries, the notification's counts, the deactivation of
// dead tokens and, unless the sender is still working through the notification (status
// pending), its status.
func (s *Store) Record(ctx context.Context, id uuid.UUID, outcomes []Outcome) error {
	_, err := s.record(ctx, id, outcomes, false)
	return err
}

// RecordFinal is Record for the last chunk the sender sends of a notification: it also
// sets the final status from the counts, in the same transaction, and returns it. It saves
// small notifications a second commit.
func (s *Store) RecordFinal(ctx context.Context, id uuid.UUID, outcomes []Outcome) (string, error) {
	return s.record(ctx, id, outcomes, true)
}

func (s *Store) record(ctx context.Context, id uuid.UUID, outcomes []Outcome, final bool) (string, error) {
	n := len(outcomes)
	tokens, devices, users, results := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	attempts := make([]int32, n)
	codes, messages := make([]string, n), make([]string, n)
	var deadTokens, deadReasons []string
	for i, o := range outcomes {
		tokens[i], devices[i], users[i], results[i] = o.Token, o.DeviceID, o.UserID, o.Outcome
		attempts[i], codes[i], messages[i] = int32(o.Attempts), o.ErrorCode, o.ErrorMessage
		if o.Outcome == schema.OutcomeInvalid {
			deadTokens = append(deadTokens, o.Token)
			deadReasons = append(deadReasons, o.ErrorCode)
		}
	}
	b := &pgx.Batch{}
	b.Queue(recordSQL, id, tokens, devices, users, results, attempts, codes, messages)
	if len(deadTokens) > 0 {
		b.Queue(deactivateSQL, deadTokens, deadReasons)
	}
	var status string
	if final {
		b.Queue(`UPDATE notifications SET status = `+statusSQL+`, updated_at = now() WHERE id = $1 RETURNING status`, id).
			QueryRow(func(row pgx.Row) error { return row.Scan(&status) })
	} else {
		b.Queue(`UPDATE notifications SET status = `+statusSQL+` WHERE id = $1 AND status <> '`+schema.StatusPending+`'`, id)
	}
	if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
		return "", fmt.Errorf("record %d outcomes of %s: %w", n, id, err)
	}
	return status, nil
}

// Finish sets a notification's status from its counts once the sender has sent to its
// whole audience, and returns it.
func (s *Store) Finish(ctx context.Context, id uuid.UUID) (string, error) {
	var status string
	err := s.pool.QueryRow(ctx, `UPDATE notifications SET status = `+statusSQL+`, updated_at = now()
		WHERE id = $1 RETURNING status`, id).Scan(&status)
	if err != nil {
		return "", fmt.Errorf("finish notification %s: %w", id, err)
	}
	return status, nil
}

// Expire marks a notification whose TTL passed before the sender reached it.
func (s *Store) Expire(ctx context.Context, id uuid.UUID) error {
	if _, err := s.pool.Exec(ctx, `UPDATE notifications SET status = '`+schema.StatusExpired+`', updated_at = now()
		WHERE id = $1 AND status IN `+schema.InFlightStatuses, id); err != nil {
		return fmt.Errorf("expire notification %s: %w", id, err)
	}
	return nil
}
