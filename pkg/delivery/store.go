// Package delivery is the delivery code the sender and the retrier share: loading a
// notification, resolving its audience to tokens, sending chunks through FCM, recording
// every token's outcome, deactivating dead tokens, and handing what failed to the retry
// wait queues or to the dead-letter queue.
package delivery

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"notify/pkg/fcm"
	"notify/pkg/schema"
	notifyv1 "notify/proto/gen/notify/v1"
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
	// App is the app it is sent through (its request's app, "default" when it names none).
	App string
	// Generation is its replay_count when loaded: the generation of sending this process
	// works in. Tokens it dead-letters are recorded with it, and tokens dead-lettered in it
	// already are not sent again (see schema.DeadLetteredIn).
	Generation int
}

// app is the notification's app, DefaultApp when unset.
func (n *Notification) app() string { return cmp.Or(n.App, schema.DefaultApp) }

// Final reports whether the notification's status is final (nothing is in flight).
func (n *Notification) Final() bool { return schema.Final(n.Status) }

// Target is one token to send to, with the device it belongs to (empty for raw tokens
// that are not registered).
type Target struct {
	Token    string
	DeviceID string
	UserID   string
	// Muted: the device's user muted the notification's type; the target is recorded
	// skipped_preference and not sent.
	Muted bool
	// Unrecorded: when the audience page was read, the token had no delivery of the
	// notification at all (schema.Audience.UnsettledPage). Its outcome is then inserted
	// without looking for an earlier one (see recordSQL); a delivery written meanwhile
	// (another sender of the same task, the token met again on a later page after it moved
	// to another device) makes the insert fail, and the record is made again the long way.
	Unrecorded bool
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
	var status string
	var expiresAt time.Time
	var request []byte
	var gen int
	err = s.pool.QueryRow(ctx, "SELECT status, expires_at, request, replay_count FROM notifications WHERE id = $1", nid).
		Scan(&status, &expiresAt, &request, &gen)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("notification %s: %w", nid, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("load notification %s: %w", nid, err)
	}
	return decodeNotification(nid, status, expiresAt, request, gen)
}

// LoadMany reads the notifications with the given ids in one round trip and returns them
// by id as given. An id that is not a notification's (absent, or not a UUID) has no entry;
// one whose stored request cannot be decoded has a nil entry and its error in the returned
// map of errors. The error is for the round trip as a whole.
func (s *Store) LoadMany(ctx context.Context, ids []string) (map[string]*Notification, map[string]error, error) {
	found, bad := make(map[string]*Notification, len(ids)), map[string]error{}
	b := &pgx.Batch{}
	n := s.queueLoad(b, ids, nil, found, bad)
	if b.Len() == 0 {
		return found, bad, nil
	}
	if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
		return nil, nil, fmt.Errorf("load %d notifications: %w", n, err)
	}
	return found, bad, nil
}

// queueLoad queues LoadMany's statement for ids in b (none when no id is a UUID) and
// returns how many it loads; found and bad are filled in as b's results are read. The
// stored request of a notification known (by id as given) is not read nor decoded: it is
// its known one, with its row's status, expiry and generation.
func (s *Store) queueLoad(b *pgx.Batch, ids []string, known map[string]*Notification, found map[string]*Notification,
	bad map[string]error) int {
	uuids := make([]uuid.UUID, 0, len(ids))
	byUUID := make(map[uuid.UUID]string, len(ids))
	for _, id := range ids {
		if nid, err := uuid.Parse(id); err == nil {
			uuids = append(uuids, nid)
			byUUID[nid] = id
		}
	}
	if len(uuids) == 0 {
		return 0
	}
	skip := make([]uuid.UUID, 0, len(known))
	for _, n := range known {
		skip = append(skip, n.ID)
	}
	b.Queue(`SELECT id, status, expires_at, CASE WHEN id = ANY($2) THEN NULL ELSE request END, replay_count
		FROM notifications WHERE id = ANY($1)`, schema.UUIDs(uuids), schema.UUIDs(skip)).Query(func(rows pgx.Rows) error {
		var pgID pgtype.UUID // scanned without a round trip through text, unlike a uuid.UUID
		var status string
		var expiresAt time.Time
		var request []byte
		var gen int
		_, err := pgx.ForEachRow(rows, []any{&pgID, &status, &expiresAt, &request, &gen}, func() error {
			nid := uuid.UUID(pgID.Bytes)
			id := byUUID[nid]
			if k, ok := known[id]; ok && request == nil {
				n := *k
				n.Status, n.ExpiresAt, n.Generation = status, expiresAt, gen
				found[id] = &n
				return nil
			}
			n, err := decodeNotification(nid, status, expiresAt, request, gen)
			found[id] = n
			if err != nil {
				bad[id] = err
			}
			return nil
		})
		return err
	})
	return len(uuids)
}

// decodeNotification builds a Notification from its stored row.
func decodeNotification(id uuid.UUID, status string, expiresAt time.Time, request []byte, gen int) (*Notification, error) {
	req, err := schema.DecodeRequest(request)
	if err != nil {
		return nil, fmt.Errorf("notification %s: %w", id, err)
	}
	n := fromRequest(id, req)
	n.Status, n.ExpiresAt, n.Generation = status, expiresAt, gen
	return n, nil
}

// fromRequest is what a notification's request says of it: its audience, app and message.
func fromRequest(id uuid.UUID, req *notifyv1.PublishRequest) *Notification {
	return &Notification{ID: id, Audience: schema.AudienceOf(req), App: schema.AppOf(req), Message: fcm.FromRequest(req)}
}

// Audience returns up to limit targets of n that have no settled delivery yet (in n's
// generation: a token n's generation dead-lettered is settled), after the
// key `after` (a keyset cursor: device id, or token for raw tokens), and the cursor for the
// next page ("" when this was the last one). schema.Audience defines the query.
//
// The page is read with sequential scans and sorts off (schema.WalkIndexesSQL), in a read-only
// transaction of its own: planned from statistics taken before the devices were registered
// (a new installation's first broadcast, or one right after a bulk registration, before
// autovacuum analyzes devices), each page re-read and sorted every remaining device, and
// each device's "already settled?" probe scanned the deliveries written so far: a 100,000
// device broadcast went at 0.13× its usual speed. Walking the indexes is the plan the
// statistics give once they are current.
func (s *Store) Audience(ctx context.Context, n *Notification, after string, limit int) ([]Target, string, error) {
	query, args, err := n.Audience.UnsettledPage(n.ID, n.Generation, after, limit)
	if err != nil {
		return nil, "", fmt.Errorf("notification %s: %w", n.ID, err)
	}
	targets := make([]Target, 0, limit)
	var key string
	err = pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, schema.WalkIndexesSQL); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, query, args...)
		if err != nil {
			return err
		}
		var t Target
		_, err = pgx.ForEachRow(rows, []any{&key, &t.DeviceID, &t.UserID, &t.Token, &t.Muted, &t.Unrecorded}, func() error {
			targets = append(targets, t)
			return nil
		})
		return err
	})
	if err != nil {
		return nil, "", fmt.Errorf("resolve audience of %s: %w", n.ID, err)
	}
	if len(targets) < limit {
		key = ""
	}
	return targets, key, nil
}

// Page is one page of a notification's unsettled audience (see Audience).
type Page struct {
	Targets []Target
	Next    string // the cursor of the next page; "" when this was the last one
	Err     error  // this notification's audience could not be read (an unknown kind)
}

// FirstPages returns the first page of up to limit unsettled targets of each notification,
// in order, all in one round trip (a pipelined batch): a notification whose page has no
// next cursor has its whole unsettled audience in it. The audiences of users, the common
// small notification, are read by one statement for all of them (schema.UsersFirstPages);
// the others by one statement each. The error is for the round trip.
func (s *Store) FirstPages(ctx context.Context, ns []*Notification, limit int) ([]Page, error) {
	b := &pgx.Batch{}
	pages, err := queueFirstPages(b, ns, limit)
	if err != nil {
		return nil, err
	}
	if b.Len() == 0 {
		return pages, nil
	}
	if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("resolve the audiences of %d notifications: %w", len(ns), err)
	}
	return pages, nil
}

// queueFirstPages queues FirstPages' statements in b; the pages are filled in as b's
// results are read.
func queueFirstPages(b *pgx.Batch, ns []*Notification, limit int) ([]Page, error) {
	pages := make([]Page, len(ns))
	var users []int // the indexes in ns of the users audiences
	for i, n := range ns {
		pages[i].Targets = make([]Target, 0, 4)
		if n.Audience.Kind == schema.AudienceUsers {
			users = append(users, i)
			continue
		}
		query, args, err := n.Audience.UnsettledPage(n.ID, n.Generation, "", limit)
		if err != nil {
			pages[i].Err = fmt.Errorf("notification %s: %w", n.ID, err)
			continue
		}
		b.Queue(query, args...).Query(func(rows pgx.Rows) error {
			var key string
			var t Target
			_, err := pgx.ForEachRow(rows, []any{&key, &t.DeviceID, &t.UserID, &t.Token, &t.Muted, &t.Unrecorded}, func() error {
				pages[i].Targets = append(pages[i].Targets, t)
				return nil
			})
			if len(pages[i].Targets) == limit {
				pages[i].Next = key
			}
			return err
		})
	}
	if len(users) > 0 {
		ids, gens, audiences := make([]uuid.UUID, len(users)), make([]int, len(users)), make([]schema.Audience, len(users))
		for k, i := range users {
			ids[k], gens[k], audiences[k] = ns[i].ID, ns[i].Generation, ns[i].Audience
		}
		query, args, err := schema.UsersFirstPages(ids, gens, audiences, limit)
		if err != nil {
			return nil, err // a bug: every audience given is of users
		}
		b.Queue(query, args...).Query(func(rows pgx.Rows) error {
			var k int
			var key string
			var t Target
			_, err := pgx.ForEachRow(rows, []any{&k, &key, &t.DeviceID, &t.UserID, &t.Token, &t.Muted}, func() error {
				p := &pages[users[k-1]]
				p.Targets = append(p.Targets, t)
				if len(p.Targets) == limit {
					p.Next = key
				}
				return nil
			})
			return err
		})
	}
	return pages, nil
}

// Guess is a notification as a SendTask describes it before it is loaded: what the task's
// copy of its request says, in the generation the task was written in (NewGuess).
type Guess struct {
	ID string // the task's notification id
	n  *Notification
}

// NewGuess decodes the copy of its request a SendTask carries.
func NewGuess(id string, req *notifyv1.PublishRequest, generation int) Guess {
	nid, _ := uuid.Parse(id) // uuid.Nil when id is no UUID: no notification has it
	n := fromRequest(nid, req)
	n.Generation = generation
	return Guess{ID: id, n: n}
}

// Generation is the generation the task was written in.
func (g Guess) Generation() int { return g.n.Generation }

// LoadWithPages is LoadMany and FirstPages in one round trip, for notifications whose
// SendTask carried a copy of their request (guesses; ids may name others too, which are
// loaded as LoadMany loads them). A guessed notification is built from its guess and its
// row's status, expiry and generation, without reading its stored request. Its first page
// is read from the guess before its status is known, and is in pages by id only when the
// notification is still in the guessed generation; the caller discards the page of a
// notification it does not send (final, expired).
func (s *Store) LoadWithPages(ctx context.Context, ids []string, guesses []Guess, limit int) (found map[string]*Notification,
	bad map[string]error, pages map[string]Page, err error) {
	known := make(map[string]*Notification, len(guesses))
	var guessed []Guess
	var ns []*Notification
	for _, g := range guesses {
		if g.n != nil && g.n.ID != uuid.Nil {
			known[g.ID] = g.n
			guessed, ns = append(guessed, g), append(ns, g.n)
		}
	}
	b := &pgx.Batch{}
	found, bad = map[string]*Notification{}, map[string]error{}
	load := s.queueLoad(b, ids, known, found, bad)
	guessedPages, err := queueFirstPages(b, ns, limit)
	if err != nil {
		return nil, nil, nil, err
	}
	if b.Len() > 0 {
		if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
			return nil, nil, nil, fmt.Errorf("load %d notifications and their first pages: %w", load, err)
		}
	}
	pages = make(map[string]Page, len(ns))
	for i, g := range guessed {
		if got, ok := found[g.ID]; ok && got != nil && got.Generation == g.n.Generation {
			pages[g.ID] = guessedPages[i]
		}
	}
	return found, bad, pages, nil
}

// unsettledSQL selects the targets among tokens $2 still to be sent for notification $1 in
// generation $4, with their devices in the notification's app $3.
var unsettledSQL = `
SELECT t.token, coalesce(x.device_id, d.device_id, ''), coalesce(x.user_id, d.user_id, '')
FROM (SELECT DISTINCT token FROM unnest($2::text[]) AS token) t
LEFT JOIN deliveries x ON x.notification_id = $1 AND x.token = t.token
LEFT JOIN devices d ON d.token = t.token AND d.app = $3 AND d.active
WHERE x.outcome IS NULL OR x.outcome NOT IN ` + schema.FinalOutcomes + ` AND ` + schema.DeadLetteredIn("x", "$4::int") + ` IS NOT TRUE
ORDER BY t.token`

// Unsettled returns the targets among tokens that are still to be sent for n (not
// delivered, invalid, expired, skipped or cancelled, nor dead-lettered in n's generation),
// with their devices where registered. The retrier uses it so that a repeated retry message
// sends nothing twice and dead-letters nothing twice.
func (s *Store) Unsettled(ctx context.Context, n *Notification, tokens []string) ([]Target, error) {
	rows, err := s.pool.Query(ctx, unsettledSQL, n.ID, tokens, n.app(), int32(n.Generation))
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

// UnsettledMany is Unsettled for several notifications and token lists at once (ns[i]
// with tokens[i]), in one round trip (a pipelined batch).
func (s *Store) UnsettledMany(ctx context.Context, ns []*Notification, tokens [][]string) ([][]Target, error) {
	out := make([][]Target, len(ns))
	if len(ns) == 0 {
		return out, nil
	}
	b := &pgx.Batch{}
	for i, n := range ns {
		b.Queue(unsettledSQL, n.ID, tokens[i], n.app(), int32(n.Generation)).Query(func(rows pgx.Rows) error {
			var t Target
			_, err := pgx.ForEachRow(rows, []any{&t.Token, &t.DeviceID, &t.UserID}, func() error {
				out[i] = append(out[i], t)
				return nil
			})
			return err
		})
	}
	if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("read deliveries of %d notifications: %w", len(ns), err)
	}
	return out, nil
}

// recordSQL records the outcomes of any number of chunks in one statement: it writes
// the deliveries ($1..$8, one element per token), moves each notification's counts by the
// difference between the new outcomes and the ones they replace (read from the snapshot
// before the statement), and sets the status of the notifications $9 from their new counts
// where $10 says so (a final chunk) or where the sender is done with them (not pending or
// scheduled), with a status event for every status it changed. A token recorded failed
// (dead-lettered) gets its notification's generation $11 (deadLetterGeneration). Each notification's row is
// written once, counts and status together: a second UPDATE of the row (counts, then
// status) cost a second row version and a second entry in every index of notifications,
// as none of their updates is HOT (status and updated_at are indexed). It returns (id,
// status) of every notification of $9.
//
// The notifications are locked in id order and the deliveries written in (notification,
// token) order, so that concurrent calls take their locks in one order. Deliveries are
// written only for the notifications it locked: deliveries have no foreign key (see
// migration 0017_a), and the lock is what keeps a delivery from outliving its notification
// (the retention job deletes a notification's deliveries with it, under the same lock).
//
// A token whose earlier delivery the caller knows there is none of ($12: the audience page
// it was read from found none, Target.Unrecorded) is not looked for: a broadcast's chunks
// after the first (whose notification has deliveries) skip a primary-key probe per token
// that the page read made a moment before. Should a delivery have been written since (two
// senders of one task, the token met again on a later page), the plain INSERT fails on the
// primary key, nothing is written, and RecordMany records again with every token looked for.
//
// The deliveries a token already has are updated and the others inserted, by a plain
// INSERT: every writer of a notification's deliveries holds its row lock (RecordMany's
// lockSQL, Cancel, the re-drive), and inserts come from here only, so after lockSQL the
// snapshot's deliveries of the locked notifications are exactly what is committed. An
// INSERT ... ON CONFLICT cost each new delivery a speculative insertion: a second probe of
// the primary key and a second WAL record (its confirmation).
var recordSQL = `
WITH input AS (
	SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[], $7::text[], $8::text[], $12::bool[])
		AS t(notification_id, token, device_id, user_id, outcome, attempts, error_code, error_message, unrecorded)
), locked AS (
	SELECT n.id, n.status AS old_status, r.final, r.gen FROM notifications n
	JOIN unnest($9::uuid[], $10::bool[], $11::int[]) AS r(id, final, gen) ON r.id = n.id
	ORDER BY n.id FOR NO KEY UPDATE OF n
), old AS (
	-- One primary-key probe per token (OFFSET 0: not a join planned from stale statistics),
	-- of the notifications that have any delivery (one probe each): a new notification
	-- (a broadcast's first chunk, a user list's) has none to look for, token by token; nor
	-- has a token known to be unrecorded ($12).
	SELECT i.notification_id, i.token, x.outcome FROM input i
	JOIN (SELECT l.id FROM locked l WHERE EXISTS (SELECT 1 FROM deliveries d WHERE d.notification_id = l.id)) l
		ON l.id = i.notification_id
	CROSS JOIN LATERAL (
		SELECT d.outcome FROM deliveries d WHERE d.notification_id = i.notification_id AND d.token = i.token OFFSET 0) x
	WHERE NOT i.unrecorded
), inserted AS (
	INSERT INTO deliveries (notification_id, token, device_id, user_id, outcome, attempts, error_code, error_message,
		dead_letter_generation)
	SELECT notification_id, token, nullif(device_id, ''), nullif(user_id, ''), outcome, attempts,
		nullif(error_code, ''), nullif(error_message, ''), ` + deadLetterGeneration + `
	FROM input i
	WHERE notification_id IN (SELECT id FROM locked)
	  AND NOT EXISTS (SELECT 1 FROM old o WHERE o.notification_id = i.notification_id AND o.token = i.token)
	ORDER BY notification_id, token
), updated AS (
	UPDATE deliveries d SET
		outcome = i.outcome, attempts = i.attempts,
		error_code = nullif(i.error_code, ''), error_message = nullif(i.error_message, ''), updated_at = now(),
		device_id = coalesce(nullif(i.device_id, ''), d.device_id), user_id = coalesce(nullif(i.user_id, ''), d.user_id),
		dead_letter_generation = ` + deadLetterGeneration + `
	FROM old o JOIN input i USING (notification_id, token)
	WHERE d.notification_id = o.notification_id AND d.token = o.token
), delta AS (
	SELECT id, sum(n) AS total,
		coalesce(sum(n) FILTER (WHERE outcome = '` + schema.OutcomeDelivered + `'), 0) AS delivered,
		coalesce(sum(n) FILTER (WHERE outcome = '` + schema.OutcomeInvalid + `'), 0) AS invalid,
		coalesce(sum(n) FILTER (WHERE outcome = '` + schema.OutcomeRetrying + `'), 0) AS retrying,
		coalesce(sum(n) FILTER (WHERE outcome = '` + schema.OutcomeFailed + `'), 0) AS failed,
		coalesce(sum(n) FILTER (WHERE outcome = '` + schema.OutcomeExpired + `'), 0) AS expired,
		coalesce(sum(n) FILTER (WHERE outcome = '` + schema.OutcomeSkippedPreference + `'), 0) AS skipped,
		coalesce(sum(n) FILTER (WHERE outcome = '` + schema.OutcomeCancelled + `'), 0) AS cancelled
	FROM (
		SELECT notification_id AS id, outcome, 1 AS n FROM input
		UNION ALL
		SELECT notification_id, outcome, -1 FROM old
	) x GROUP BY id
), counted AS (
	SELECT l.id, l.old_status, l.final, coalesce(d.total, 0) AS total, coalesce(d.delivered, 0) AS delivered,
		coalesce(d.invalid, 0) AS invalid, coalesce(d.retrying, 0) AS retrying, coalesce(d.failed, 0) AS failed,
		coalesce(d.expired, 0) AS expired, coalesce(d.skipped, 0) AS skipped, coalesce(d.cancelled, 0) AS cancelled
	FROM locked l LEFT JOIN delta d USING (id)
), changed AS (
	UPDATE notifications n SET
		total = n.total + c.total, delivered = n.delivered + c.delivered, invalid = n.invalid + c.invalid,
		retrying = n.retrying + c.retrying, failed = n.failed + c.failed, expired = n.expired + c.expired,
		skipped = n.skipped + c.skipped, cancelled = n.cancelled + c.cancelled,
		status = CASE
			WHEN NOT c.final AND n.status IN ('` + schema.StatusPending + `', '` + schema.StatusScheduled + `') THEN n.status
			` + statusCases("n.", "c.") + ` END,
		updated_at = now()
	FROM counted c WHERE n.id = c.id
	RETURNING ` + schema.EventColumns + `, c.old_status
), e AS (
	` + schema.StatusEventsSQL("(SELECT * FROM changed WHERE status <> old_status)") + `
)
SELECT id, status FROM changed`

// deadLetterGeneration is the dead_letter_generation recordSQL writes with the outcome of
// input row i: its notification's generation ($11) for a token dead-lettered (failed),
// NULL for any other outcome. Only a failed token looks its generation up.
const deadLetterGeneration = `CASE WHEN i.outcome = '` + schema.OutcomeFailed +
	`' THEN (SELECT l.gen FROM locked l WHERE l.id = i.notification_id) END`

// lockSQL locks the notifications a record writes, in id order (recordSQL's order).
const lockSQL = `SELECT 1 FROM notifications WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE`

// interimLockSQL is lockSQL for a transaction of interim records (Record.Interim): when
// every notification it locked is pending, scheduled or cancelled, recordSQL keeps their
// status (a record that is not final changes no other), so the transaction writes
// deliveries, counts and token deactivations only, and it commits with synchronous_commit
// off. A broadcast's chunks all take their notification's row lock, and each held it
// through its commit's disk flush in turn: 2.8–6.2 s of lock waits per 100,000 tokens.
//
// What a PostgreSQL crash can lose is the last fraction of a second of such commits, and
// nothing was built on them: the sender acknowledges the task only after its synchronous
// Finish, whose flush writes every earlier commit's WAL too (WAL is one sequence); before
// that, the task goes back to the queue and its next sender sends what has no outcome. At
// worst a token is sent twice, and a dead-lettered one alerted twice, as after a sender
// crash. Any other status keeps the default, and so does a transaction without a row.
var interimLockSQL = `SELECT set_config('synchronous_commit',
	CASE WHEN bool_and(status IN ('` + schema.StatusPending + `', '` + schema.StatusScheduled + `', '` + schema.StatusCancelled + `'))
	THEN 'off' ELSE current_setting('synchronous_commit') END, true)
FROM (SELECT status FROM notifications WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE) l`

// statusCases are the WHEN branches of the status derived from a notification's counts:
// those of row (e.g. "n.") plus, when plus is not "", the changes in plus (e.g. "c."). A
// cancelled notification stays cancelled: chunks that were in flight when Cancel committed
// still record their outcomes, but do not revive it.
func statusCases(row, plus string) string {
	count := func(c string) string {
		if plus == "" {
			return row + c
		}
		return "(" + row + c + " + " + plus + c + ")"
	}
	return `WHEN ` + row + `status = '` + schema.StatusCancelled + `' THEN ` + row + `status
			WHEN ` + count("retrying") + ` > 0 THEN '` + schema.StatusRetrying + `'
			WHEN ` + count("failed") + ` > 0 THEN '` + schema.StatusFailed + `'
			WHEN ` + count("expired") + ` > 0 THEN '` + schema.StatusExpired + `'
			ELSE '` + schema.StatusDelivered + `'`
}

// deactivateSQL deactivates tokens FCM reported dead, with FCM's reason, in the app of the
// notification $3 they were sent for (the same token string in another app is another
// project's registration).
const deactivateSQL = `
UPDATE devices d SET active = false, deactivated_at = now(), deactivation_reason = i.reason
FROM unnest($1::text[], $2::text[], $3::uuid[]) AS i(token, reason, notification_id)
JOIN notifications n ON n.id = i.notification_id
WHERE d.token = i.token AND d.app = n.app AND d.active`

// statusSQL is the notification's status derived from its counts (see statusCases). Status
// writes go through schema.ChangeStatusSQL, which writes a status event with every change.
var statusSQL = "CASE " + statusCases("", "") + " END"

// Record writes a chunk's outcomes atomically in one round trip (a pipelined batch is one
// implicit transaction): the deliveries, the notification's counts, the deactivation of
// dead tokens and, unless the sender is still working through the notification (status
// pending), its status.
func (s *Store) Record(ctx context.Context, id uuid.UUID, outcomes []Outcome) error {
	_, err := s.RecordMany(ctx, []Record{{ID: id, Outcomes: outcomes}})
	return err
}

// RecordFinal is Record for the last chunk the sender sends of a notification: it also
// sets the final status from the counts, in the same transaction, and returns it. It saves
// small notifications a second commit.
func (s *Store) RecordFinal(ctx context.Context, id uuid.UUID, outcomes []Outcome) (string, error) {
	statuses, err := s.RecordMany(ctx, []Record{{ID: id, Outcomes: outcomes, Final: true}})
	if err != nil {
		return "", err
	}
	return statuses[0], nil
}

// Record is one chunk's outcomes, for RecordMany.
type Record struct {
	ID       uuid.UUID
	Outcomes []Outcome
	// Final is set for the sender's last chunk of the notification (see RecordFinal); it
	// may have no outcomes (an audience with nobody left to send to).
	Final bool
	// Interim is set for a sender's chunk that is neither final nor the last word on its
	// tokens' task: the sender commits synchronously (Finish) after its last chunk and only
	// then acknowledges the task (Chunk.Interim). A transaction of interim records only,
	// whose notifications are all pending, scheduled or cancelled (so that it changes no
	// status and writes no status event), commits without waiting for its WAL to reach the
	// disk; see interimLockSQL.
	Interim bool
	// Generation is the generation of sending the outcomes belong to (the notification's
	// replay_count as loaded): recorded with the tokens dead-lettered, which no task of the
	// same generation sends again (schema.DeadLetteredIn).
	Generation int
}

// RecordMany records several chunks (of several notifications, or several chunks of one)
// as Record and RecordFinal do, all in one transaction and one round trip, and returns the
// status of each Final record ("" for the others, and for a notification that no longer
// exists: its outcomes are not written). Either every record is written or none.
// The outcomes of every record go in one statement (recordSQL), planned and run once for
// the whole group; a token named twice for one notification is recorded as its last
// outcome, as if the records had been written one after the other. The dead tokens are
// deactivated in token order, so that two concurrent calls lock rows in the same order.
func (s *Store) RecordMany(ctx context.Context, recs []Record) ([]string, error) {
	a := newRecordArgs(recs)
	status := make(map[uuid.UUID]string, len(a.notifications))

	err := s.recordBatch(ctx, a, status)
	if err != nil && slices.Contains(a.unrecorded, true) && isDeliveryConflict(err) {
		// A token read as unrecorded got a delivery before this record (see recordSQL):
		// nothing was written; record again, looking for every token's delivery.
		clear(status)
		a.unrecorded = make([]bool, len(a.ids))
		err = s.recordBatch(ctx, a, status)
	}
	if err != nil {
		if len(recs) == 1 {
			return nil, fmt.Errorf("record %d outcomes of %s: %w", len(a.ids), recs[0].ID, err)
		}
		return nil, fmt.Errorf("record %d outcomes of %d chunks: %w", len(a.ids), len(recs), err)
	}
	statuses := make([]string, len(recs))
	for i, r := range recs {
		if r.Final {
			statuses[i] = status[r.ID]
		}
	}
	return statuses, nil
}

// isDeliveryConflict reports whether err is a duplicate key of deliveries' primary key.
func isDeliveryConflict(err error) bool {
	pe, ok := errors.AsType[*pgconn.PgError](err)
	return ok && pe.Code == "23505" /* unique_violation */ && pe.ConstraintName == "deliveries_pkey"
}

// newRecordArgs lays the records out as recordSQL's arrays (see RecordMany): a token named
// twice for one notification keeps its last outcome, and the notifications are in id order.
func newRecordArgs(recs []Record) recordArgs {
	type key struct {
		id    uuid.UUID
		token string
	}
	last := map[key]int{} // index in a's token arrays of a token's latest outcome
	a := recordArgs{interim: len(recs) > 0}
	final := map[uuid.UUID]bool{}
	gen := map[uuid.UUID]int{}
	for _, r := range recs {
		a.interim = a.interim && r.Interim && !r.Final
		final[r.ID] = final[r.ID] || r.Final
		gen[r.ID] = max(gen[r.ID], r.Generation)
		for _, o := range r.Outcomes {
			k := key{r.ID, o.Token}
			if j, ok := last[k]; ok {
				a.devices[j], a.users[j], a.results[j] = o.DeviceID, o.UserID, o.Outcome
				a.attempts[j], a.codes[j], a.messages[j] = int32(o.Attempts), o.ErrorCode, o.ErrorMessage
				a.unrecorded[j] = a.unrecorded[j] && o.Unrecorded
				continue
			}
			last[k] = len(a.ids)
			a.ids, a.tokens, a.devices, a.users = append(a.ids, r.ID), append(a.tokens, o.Token), append(a.devices, o.DeviceID), append(a.users, o.UserID)
			a.results, a.attempts = append(a.results, o.Outcome), append(a.attempts, int32(o.Attempts))
			a.codes, a.messages = append(a.codes, o.ErrorCode), append(a.messages, o.ErrorMessage)
			a.unrecorded = append(a.unrecorded, o.Unrecorded)
		}
	}
	a.notifications = make([]uuid.UUID, 0, len(final))
	for id := range final {
		a.notifications = append(a.notifications, id)
	}
	slices.SortFunc(a.notifications, func(x, y uuid.UUID) int { return bytes.Compare(x[:], y[:]) })
	a.finals, a.gens = make([]bool, len(a.notifications)), make([]int32, len(a.notifications))
	for i, id := range a.notifications {
		a.finals[i], a.gens[i] = final[id], int32(gen[id])
	}
	return a
}

// recordArgs are recordSQL's arrays: one element per token outcome (ids to unrecorded,
// $1–$8 and $12) and one per notification, in id order (notifications, finals, gens: $9–$11).
type recordArgs struct {
	ids                             []uuid.UUID
	tokens, devices, users, results []string
	attempts                        []int32
	codes, messages                 []string
	unrecorded                      []bool
	notifications                   []uuid.UUID
	finals                          []bool
	gens                            []int32
	interim                         bool // every record is interim (Record.Interim): see interimLockSQL
}

// sqlArgs are recordSQL's arguments, $1 to $12.
func (a recordArgs) sqlArgs() []any {
	return []any{schema.UUIDs(a.ids), a.tokens, a.devices, a.users, a.results, a.attempts, a.codes, a.messages,
		schema.UUIDs(a.notifications), a.finals, a.gens, a.unrecorded}
}

// recordBatch runs RecordMany's transaction (one round trip) for a and puts the status of
// each notification written in status.
func (s *Store) recordBatch(ctx context.Context, a recordArgs, status map[uuid.UUID]string) error {
	b := &pgx.Batch{}
	// The notifications are locked by a statement of their own before recordSQL: a
	// statement reads from the snapshot it starts with, so recordSQL's own lock would wait
	// for a concurrent record of the same token (a redelivered task, a retry racing a
	// late chunk) and then compute the counts' difference from the outcome that record
	// replaced, counting the token twice. After this lock, recordSQL's snapshot holds
	// whatever the other record committed.
	lock := lockSQL
	if a.interim {
		lock = interimLockSQL
	}
	b.Queue(lock, schema.UUIDs(a.notifications))
	b.Queue(recordSQL, a.sqlArgs()...).
		Query(func(rows pgx.Rows) error {
			var id pgtype.UUID
			var st string
			_, err := pgx.ForEachRow(rows, []any{&id, &st}, func() error {
				status[id.Bytes] = st
				return nil
			})
			return err
		})
	var dead []int
	for i, o := range a.results {
		if o == schema.OutcomeInvalid {
			dead = append(dead, i)
		}
	}
	if len(dead) > 0 {
		slices.SortFunc(dead, func(x, y int) int { return strings.Compare(a.tokens[x], a.tokens[y]) })
		dt, reasons, dids := make([]string, len(dead)), make([]string, len(dead)), make([]uuid.UUID, len(dead))
		for k, i := range dead {
			dt[k], reasons[k], dids[k] = a.tokens[i], a.codes[i], a.ids[i]
		}
		b.Queue(deactivateSQL, dt, reasons, schema.UUIDs(dids))
	}
	return s.pool.SendBatch(ctx, b).Close()
}

// Finish sets a notification's status from its counts once the sender has sent to its
// whole audience, and returns it.
func (s *Store) Finish(ctx context.Context, id uuid.UUID) (string, error) {
	var status string
	err := s.pool.QueryRow(ctx, schema.ChangeStatusSQL(statusSQL, ", updated_at = now()", "n.id = $1"), id).Scan(&id, &status)
	if err != nil {
		return "", fmt.Errorf("finish notification %s: %w", id, err)
	}
	return status, nil
}

// Cancelled returns which of the notifications ids were cancelled
// (NotificationService.Cancel). The sender and the retrier ask before sending any chunk: one
// primary-key read per notification, in one round trip per group of chunks.
func (s *Store) Cancelled(ctx context.Context, ids []uuid.UUID) (map[uuid.UUID]bool, error) {
	rows, err := s.pool.Query(ctx, `SELECT id FROM notifications WHERE id = ANY($1) AND status = '`+schema.StatusCancelled+`'`, schema.UUIDs(ids))
	if err != nil {
		return nil, fmt.Errorf("read cancellations of %d notifications: %w", len(ids), err)
	}
	cancelled, err := pgx.CollectRows(rows, pgx.RowTo[pgtype.UUID])
	if err != nil {
		return nil, fmt.Errorf("read cancellations of %d notifications: %w", len(ids), err)
	}
	out := make(map[uuid.UUID]bool, len(cancelled))
	for _, id := range cancelled {
		out[id.Bytes] = true
	}
	return out, nil
}

// expireSQL expires the in-flight notifications among $1, with their status events.
var expireSQL = schema.ChangeStatusSQL("'"+schema.StatusExpired+"'", ", updated_at = now()",
	"n.id = ANY($1) AND n.status IN "+schema.InFlightStatuses)

// ExpireMany is Expire for several notifications in one statement.
func (s *Store) ExpireMany(ctx context.Context, ids []uuid.UUID) error {
	if _, err := s.pool.Exec(ctx, expireSQL, schema.UUIDs(ids)); err != nil {
		return fmt.Errorf("expire %d notifications: %w", len(ids), err)
	}
	return nil
}

// Expire marks a notification whose TTL passed before the sender reached it.
func (s *Store) Expire(ctx context.Context, id uuid.UUID) error {
	if _, err := s.pool.Exec(ctx, expireSQL, schema.UUIDs([]uuid.UUID{id})); err != nil {
		return fmt.Errorf("expire notification %s: %w", id, err)
	}
	return nil
}
