// Package outbox moves committed outbox rows to RabbitMQ.
package outbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"notify/pkg/logging"
	"notify/pkg/rabbit"
	"notify/pkg/schema"
	"notify/pkg/sendpack"
)

// publisher is all the relay needs from RabbitMQ; *rabbit.Publisher satisfies it.
type publisher interface {
	Publish(ctx context.Context, msgs ...rabbit.Message) error
}

// Options tune the relay; zero values take the defaults.
type Options struct {
	BatchSize    int           // rows claimed per round (default 500)
	PollInterval time.Duration // a round at least this often, for rows no Wake announced (default 1s)
	// Retention is how long published rows are kept, marked published_at, before
	// housekeeping deletes them; 0 (the default) deletes them in the round that publishes
	// them. Nothing reads published rows: keeping them only helps someone inspecting the
	// outbox, and costs a second write per row (the mark, then the delete).
	Retention time.Duration
	// Ready, when set, blocks until the broker connection is up (rabbit.Conn.Ready), so
	// that no round claims rows while the broker is unreachable and shutdown never waits
	// for a broker that is down.
	Ready func(ctx context.Context) error
	// Events publishes status events (notify.bus.v1.StatusEvent rows) to the events
	// exchange; nil publishes them with the relay's own publisher (tests).
	Events publisher
	// RoundTimeout bounds one round (claim, publish, delete or mark); default 30s.
	RoundTimeout time.Duration
	// Concurrency is how many rounds may run at once while a backlog lasts (default 2):
	// one round claims and publishes while another waits for its confirms and commits.
	Concurrency int
	// PackSize is how many send tasks of a round one message to the packed send queue may
	// carry (sendpack); 0 or 1 publishes every task on its own. A round with a single send
	// task publishes it on its own whatever the size, so a lone notification waits for
	// nothing.
	PackSize int
}

// Relay moves committed outbox rows to RabbitMQ.
//
// Each round claims up to BatchSize unpublished rows with FOR UPDATE SKIP LOCKED (so any
// number of producer replicas relay side by side without sending a row twice), publishes
// them with windowed publisher confirms, and deletes exactly the confirmed ones in the same
// transaction. Delivery is at-least-once: a crash between the broker's confirm and
// the commit republishes the batch, so consumers dedupe on MessageId ("outbox-<id>").
//
// The relay runs a round when it is woken — in process by Wake, which the producer calls
// after each Publish commit, and through LISTEN/NOTIFY on NotifyChannel by replays and
// re-drives committed in any replica — at least every PollInterval as a fallback (rows a
// replica committed and could not relay before it crashed), and keeps going while rows
// remain: a round that claimed a full batch wakes another of the Concurrency round loops,
// so under a backlog rounds overlap (SKIP LOCKED keeps their rows apart), one waiting for
// the broker's confirms and its commit while the next claims and publishes. A published
// row is deleted in the transaction that claimed it (or, with a Retention, marked
// published and deleted once it is older).
type Relay struct {
	pool *pgxpool.Pool
	pub  publisher
	log  *slog.Logger
	opts Options
	wake chan struct{}

	// What fails again and again while the database or the broker is down is logged once
	// at first, then every repeatEvery, then once when it works again.
	roundFailed, listenLost *logging.Repeat

	published prometheus.Counter
	failures  prometheus.Counter
	lag       prometheus.Histogram
	backlog   prometheus.Gauge
}

// repeatEvery is how often a failure that goes on is logged again (see logging.Repeat).
const repeatEvery = 30 * time.Second

// NewRelay returns a relay and registers its metrics.
func NewRelay(pool *pgxpool.Pool, pub publisher, log *slog.Logger, reg prometheus.Registerer, opts Options) *Relay {
	if opts.BatchSize <= 0 {
		opts.BatchSize = 500
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = time.Second
	}
	if opts.RoundTimeout <= 0 {
		opts.RoundTimeout = 30 * time.Second
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = 2
	}
	r := &Relay{
		pool: pool, pub: pub, log: log, opts: opts, wake: make(chan struct{}, 1),
		roundFailed: logging.NewRepeat(log, "outbox round failed; retrying", "outbox rounds succeed again", repeatEvery),
		listenLost:  logging.NewRepeat(log, "outbox listener lost; polling until it is back", "outbox listener back", repeatEvery),
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "notify_outbox_published_total", Help: "Outbox rows published to RabbitMQ and confirmed.",
		}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "notify_outbox_publish_failures_total", Help: "Outbox rows whose publish failed (retried next round).",
		}),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "notify_outbox_relay_lag_seconds",
			Help:    "Time from an outbox row's commit to its confirmed publish.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
		backlog: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "notify_outbox_backlog", Help: "Outbox rows due and not yet published (sampled; scheduled rows count from their time).",
		}),
	}
	reg.MustRegister(r.published, r.failures, r.lag, r.backlog)
	return r
}

// Wake asks for a round soon; it never blocks, and wake-ups that arrive while a round is
// due anyway are merged.
func (r *Relay) Wake() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Run relays until ctx ends; the rounds in progress are finished first.
func (r *Relay) Run(ctx context.Context) error {
	go r.listen(ctx)
	g, gctx := errgroup.WithContext(ctx)
	for i := range r.opts.Concurrency {
		g.Go(func() error { return r.loop(gctx, i == 0) })
	}
	return g.Wait()
}

// loop runs rounds until ctx ends. The first loop also samples the backlog and, with a
// Retention, deletes old published rows.
func (r *Relay) loop(ctx context.Context, first bool) error {
	poll := time.NewTicker(r.opts.PollInterval)
	defer poll.Stop()
	var housekeeping <-chan time.Time
	if first {
		if r.opts.Retention > 0 {
			t := time.NewTicker(time.Minute)
			defer t.Stop()
			housekeeping = t.C
		}
		r.sampleBacklog(ctx)
	}

	for {
		if r.opts.Ready != nil {
			if err := r.opts.Ready(ctx); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("outbox relay: broker connection: %w", err)
			}
		}
		// Rounds run on a context that outlives ctx (bounded by RoundTimeout), so a claimed
		// batch is settled (published and settled, or rolled back) rather than abandoned
		// half-way.
		roundCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.opts.RoundTimeout)
		n, next, err := r.round(roundCtx)
		cancel()
		if err != nil {
			r.roundFailed.Fail(err)
		} else {
			r.roundFailed.OK()
		}
		if ctx.Err() != nil {
			return nil
		}
		if err == nil && n == r.opts.BatchSize {
			r.Wake() // more rows are waiting: another loop may take the next batch alongside
			continue
		}
		var pause, due <-chan time.Time
		if err != nil {
			pause = time.After(r.opts.PollInterval)
		} else if next.ok {
			due = time.After(max(time.Until(next.at), 0))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-pause:
		case <-due:
		case <-r.wake:
		case <-poll.C:
			if first {
				r.sampleBacklog(ctx)
			}
		case <-housekeeping:
			r.deletePublished(ctx)
		}
	}
}

type row struct {
	id             int64
	notificationID *uuid.UUID
	scheduled      bool // a scheduled row (due_at set) that has come due
	routingKey     string
	messageType    string
	body           []byte
	createdAt      time.Time
	traceparent    *string // the trace of the call that wrote it; nil untraced
}

// starts reports whether the round that claimed o starts its notification rather than
// publishing o: a scheduled send task that has come due (readySQL).
func (o row) starts() bool { return o.scheduled && o.notificationID != nil }

// claimSQL claims rows that are due, oldest first, in two index scans that never step over
// scheduled rows not due yet: first the scheduled rows whose due_at has come (outbox_due),
// then the rows for now (outbox_ready), each in id order.
//
// A status event is claimed only when no earlier event of its notification is unpublished
// (outbox_unpublished_notification): events are written under the notification's row lock,
// so their ids follow the order of its changes, and an event whose predecessor is held by
// another relay (or was refused by the broker) waits for it to be published. Events of one
// notification are therefore published one round after another, in order, however many
// relays run; a round that published one wakes the relay for the next. That check is an
// index probe on the notification (outbox_unpublished_notification), whatever the planner
// believes: "p.id + 0" keeps it from reading p.id < o.id as a range of the primary key. It
// did exactly that when the outbox's statistics were taken while it was empty (reltuples 0,
// as after every drained backlog until autovacuum analyzes again): every event claimed
// re-read every earlier row, live or dead, and claims on a 100,000-row backlog ran for the
// whole 30 s round timeout (make bench: the stall after PublishBatch).
//
// The batch limit is a plain LIMIT $1 on each scan and on the whole: the scans are pulled
// lazily, so the rows for now fill only what the scheduled rows left, and only the rows
// returned are locked. The planner then knows it reads a batch, not a tenth of the outbox
// (its guess for a computed limit); with that guess a backlog of ~80,000 rows pushed the
// claim's estimated cost past jit_above_cost, and every claim spent 75–135 ms compiling
// (measured on a 100,000-row backlog) to run a 2–15 ms plan.
var claimSQL = `

WITH due AS (
	SELECT id, notification_id, routing_key, message_type, body, created_at, true AS scheduled, traceparent FROM outbox
	WHERE published_at IS NULL AND due_at IS NOT NULL AND due_at <= now()
	ORDER BY due_at, id LIMIT $1 FOR UPDATE SKIP LOCKED
), ready AS (
	SELECT id, notification_id, routing_key, message_type, body, created_at, false AS scheduled, traceparent FROM outbox o
	WHERE published_at IS NULL AND due_at IS NULL
	  AND (message_type <> '` + schema.StatusEventType + `' OR NOT EXISTS (
		SELECT 1 FROM outbox p WHERE p.notification_id = o.notification_id AND p.published_at IS NULL
		  AND p.message_type = '` + schema.StatusEventType + `' AND p.id + 0 < o.id))
	ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
)
SELECT * FROM due UNION ALL SELECT * FROM ready LIMIT $1`

// nextDueSQL finds when the next scheduled row falls due: the first entry of outbox_due
// after now (scheduled rows already due are the claim's). It runs once per round, so it
// must stay a probe of that index whatever the statistics say: it runs in the round's
// transaction, batched with the claim (no sequential scan), and asks for outbox_due's own
// order, which no other index gives without a sort. As min(due_at) on its own, planned for
// a drained outbox, it read the whole table every round, and with sequential scans off it
// walked outbox_unpublished_notification instead (make bench's sustain phase, 5,000
// notifications: 100-270 buffers and 0.8-2.6 ms a call).
const nextDueSQL = `SELECT extract(epoch FROM due_at - now())::float8 FROM outbox
	WHERE published_at IS NULL AND due_at IS NOT NULL AND due_at > now()
	ORDER BY due_at, id LIMIT 1`

// claimSettingsSQL makes the claim walk its indexes, whatever the statistics say. outbox is
// a queue, nearly empty whenever it is analyzed, and the claim's plan is made once per
// connection and kept (pgx caches the prepared statement, PostgreSQL its generic plan):
// planned for an empty queue, the claim read the whole table, and for each status event
// the whole table again (its hold-back probe), quadratic in the backlog a burst left.
// Measured with auto_explain in make bench's pipeline phase (6,000 one-token
// notifications): 600-800 ms and ~90,000 buffer reads per claim of an 800-row backlog;
// PostgreSQL's CPU per notification 3.1 ms with that plan, 0.58 ms with the indexes.
//
// Sorts are off too: each scan must read its index in the order it claims, stopping at the
// batch. Custom-planned for a backlog written after the outbox was analyzed empty (a
// connection's first claims), the rows for now were read through
// outbox_unpublished_notification, every unpublished row, and sorted by id (9,015 buffers
// and 44 ms for a 2,000-row backlog, against 2,008 and 8 ms in outbox_ready's order), and
// the scheduled rows due through a bitmap scan of all of them and a sort.
//
// The round commits without waiting for its WAL to reach the disk (synchronous_commit off,
// for this transaction only), unless it starts scheduled notifications (syncCommitSQL).
// What such a round writes is only that rows were published: a PostgreSQL crash that loses
// it (the last few hundred milliseconds of WAL at most) brings those rows back, and they are
// published again, as after a relay that dies between the broker's confirm and its commit
// (consumers dedupe on MessageId). Nothing else can have built on it durably: any later
// transaction that commits waits for the WAL up to its own commit, which includes this one,
// and a round that claims the next event of a notification comes after it in the WAL. A
// round that starts scheduled notifications writes their status change and a new event,
// which no relay could publish twice under one MessageId; it waits for the disk as before.
// The wait was most of a small round's time (BenchmarkRelayOnce, rounds of 20 rows, no
// broker: 1,752-2,652 rows/s and 43-50 µs of PostgreSQL CPU per row with it, 6,842-17,665
// rows/s and 27-33 µs without).
const claimSettingsSQL = schema.WalkIndexesSQL + ", set_config('synchronous_commit', 'off', true)"

// syncCommitSQL makes a round that starts scheduled notifications wait for the disk at commit.
const syncCommitSQL = "SELECT set_config('synchronous_commit', 'on', true)"

// startSQL moves the notifications whose scheduled send task has come due from scheduled
// to pending, writing their pending event, in the round that claimed the task. One that
// was cancelled meanwhile stays cancelled (Cancel holds its row lock, and this waits for it).
var startSQL = schema.ChangeStatusSQL("'"+schema.StatusPending+"'", ", updated_at = now()",
	"n.id = ANY($1) AND n.status = '"+schema.StatusScheduled+"'")

// readySQL makes the started notifications' send tasks rows for now, which the next round
// publishes (outbox_ready), their lag counted from their due time. The task is not
// published in the round that starts its notification: the sender could then record the
// notification's outcome before that round commits, from scheduled straight to its final
// status, and its pending event would never be written.
const readySQL = "UPDATE outbox SET due_at = NULL, created_at = due_at WHERE id = ANY($1)"

// pack replaces the send tasks among *tasks (idx: the batch index of each one's row) by
// packs of up to PackSize (sendpack), and returns the batch indexes of the rows each
// message of the new *tasks carries. A lone send task, and any other task, keeps its own
// message.
func (r *Relay) pack(tasks *[]rabbit.Message, idx []int) [][]int {
	var packable, alone []int // indexes into *tasks
	for i, m := range *tasks {
		if sendpack.Packable(m) {
			packable = append(packable, i)
		} else {
			alone = append(alone, i)
		}
	}
	if r.opts.PackSize < 2 || len(packable) < 2 {
		return singles(idx)
	}
	var msgs []rabbit.Message
	var rows [][]int
	for chunk := range slices.Chunk(packable, r.opts.PackSize) {
		if len(chunk) < 2 { // the last one, alone
			alone = append(alone, chunk...)
			continue
		}
		members := make([]rabbit.Message, len(chunk))
		memberRows := make([]int, len(chunk))
		for k, i := range chunk {
			members[k], memberRows[k] = (*tasks)[i], idx[i]
		}
		m, err := sendpack.Pack(sendpack.ID(members), members)
		if err != nil {
			// Only a bug builds a task a pack cannot carry: its tasks go on their own.
			r.log.Error("cannot pack send tasks; publishing them one by one", "err", err)
			alone = append(alone, chunk...)
			continue
		}
		msgs, rows = append(msgs, m), append(rows, memberRows)
	}
	for _, i := range alone {
		msgs, rows = append(msgs, (*tasks)[i]), append(rows, []int{idx[i]})
	}
	*tasks = msgs
	return rows
}

// singles returns each batch index of idx as the only row of its message.
func singles(idx []int) [][]int {
	out := make([][]int, len(idx))
	for i, j := range idx {
		out[i] = []int{j}
	}
	return out
}

// RelayOnce runs one round and returns how many rows it claimed.
func (r *Relay) RelayOnce(ctx context.Context) (int, error) {
	n, _, err := r.round(ctx)
	return n, err
}

// nextDue is when the next scheduled row falls due, if there is one (ok), on this
// process's clock: the database's wait from its now(), counted from when the claim was
// sent, so a skew between the clocks does not matter.
type nextDue struct {
	at time.Time
	ok bool
}

// round runs one round: it claims, publishes and settles rows, and returns how many it
// claimed and when the next scheduled row falls due. The relay sleeps until then (or until
// it is woken or polls), so a scheduled notification leaves within moments of its time,
// from whichever replica's timer fires first (the others find the row claimed or
// published).
//
// A round is two round trips to the database, whatever it claims: the transaction's BEGIN,
// the claim's settings, the claim and the next due time in one batch, and, once the broker
// has confirmed what was published, the delete (or mark) of the confirmed rows, the start of
// scheduled notifications and the COMMIT in another. Any failure, of the publish, the
// delete or the commit, rolls the transaction back: its rows stay for a later round. A
// failed statement of the settling batch makes PostgreSQL skip the rest of it, COMMIT
// included, so nothing of a failed round is committed.
func (r *Relay) round(ctx context.Context) (int, nextDue, error) {
	var next nextDue
	conn, err := r.pool.Acquire(ctx)
	if err != nil {
		return 0, next, fmt.Errorf("claim outbox rows: %w", err)
	}
	// A connection released with its transaction still open (a rollback that failed too) is
	// closed by the pool, never reused.
	defer conn.Release()
	batch, tx, err := r.claim(ctx, conn.Conn(), &next)
	if err != nil {
		_ = tx.Rollback(ctx) // the claim's error is the one to report
		return 0, next, fmt.Errorf("claim outbox rows: %w", err)
	}
	if len(batch) == 0 {
		if err := tx.Commit(ctx); err != nil {
			return 0, next, fmt.Errorf("end a round that claimed nothing: %w", err)
		}
		return 0, next, nil
	}

	// wake is set when this round leaves rows for the next one (the next status event of a
	// notification, the event a started notification wrote). The wake-up is sent after the
	// commit: sent before it, another loop could run its round, find the rows still
	// uncommitted, and consume the wake-up, leaving them until the next poll.
	wake := false
	spans := relaySpans{} // the traced rows' spans, ended once the round is settled
	failed := map[int]bool{}
	err = r.settle(ctx, tx, batch, spans, failed, &wake)
	if err != nil {
		_ = tx.Rollback(ctx) // the round's error is the one to report
	}
	spans.end(failed, err)
	if err == nil && wake {
		r.Wake()
	}
	return len(batch), next, err
}

// settle publishes the claimed batch and, once the broker has confirmed it, deletes (or
// marks) the confirmed rows, starts the notifications of the scheduled send tasks among
// them (which it does not publish: readySQL) and commits tx, in one round trip. It sets failed for the rows not published, which stay, and wake when
// the round leaves rows for the next one. On an error tx is left to be rolled back.
func (r *Relay) settle(ctx context.Context, tx pgx.Tx, batch []row, spans relaySpans, failed map[int]bool, wake *bool) error {
	var tasks, events []rabbit.Message
	var taskIdx, eventIdx []int
	for i, o := range batch {
		if o.starts() {
			continue // started below, published by the next round (readySQL)
		}
		m := rabbit.Message{
			RoutingKey:  o.routingKey,
			MessageID:   "outbox-" + strconv.FormatInt(o.id, 10),
			Type:        o.messageType,
			ContentType: "application/protobuf",
			Body:        o.body,
		}
		spans.start(ctx, i, o, &m)
		if o.messageType != schema.StatusEventType {
			tasks, taskIdx = append(tasks, m), append(taskIdx, i)
			continue
		}
		body, err := eventBody(o.body)
		if err != nil {
			// Only a bug writes an event the relay cannot read; it stays for a fixed relay.
			r.log.Error("undecodable status event in the outbox", "outbox_id", o.id, "err", err)
			failed[i] = true
			continue
		}
		m.Body = body
		events, eventIdx = append(events, m), append(eventIdx, i)
	}
	taskRows := r.pack(&tasks, taskIdx)
	var pubErr error
	for _, group := range []struct {
		pub  publisher
		msgs []rabbit.Message
		rows [][]int // the batch indexes of each message's rows
	}{{r.pub, tasks, taskRows}, {r.opts.Events, events, singles(eventIdx)}} {
		if len(group.msgs) == 0 {
			continue
		}
		if group.pub == nil {
			group.pub = r.pub
		}
		err := group.pub.Publish(ctx, group.msgs...)
		if err == nil {
			continue
		}
		var pe *rabbit.PublishError
		if !errors.As(err, &pe) {
			return fmt.Errorf("publish %d outbox rows: %w", len(group.msgs), err)
		}
		for _, f := range pe.Failed {
			for _, i := range group.rows[f.Index] {
				failed[i] = true
			}
			r.failures.Add(float64(len(group.rows[f.Index])))
		}
		pubErr = errors.Join(pubErr, err)
	}
	if len(events) > 0 {
		*wake = true // the next event of the same notifications may be waiting for these
	}
	ids := make([]int64, 0, len(batch))
	var started []uuid.UUID
	var startedRows []int64
	now := time.Now()
	for i, o := range batch {
		switch {
		case failed[i]:
		case o.starts():
			started, startedRows = append(started, *o.notificationID), append(startedRows, o.id)
		default:
			ids = append(ids, o.id)
			r.lag.Observe(now.Sub(o.createdAt).Seconds())
		}
	}

	var b pgx.Batch
	if len(ids) > 0 {
		done := "DELETE FROM outbox WHERE id = ANY($1)"
		if r.opts.Retention > 0 {
			done = "UPDATE outbox SET published_at = now() WHERE id = ANY($1)"
		}
		b.Queue(done, ids)
	}
	if len(started) > 0 {
		b.Queue(syncCommitSQL)
		b.Queue(startSQL, started)
		b.Queue(readySQL, startedRows)
		*wake = true // their send tasks and status events are rows to relay now
	}
	b.Queue("COMMIT")
	if err := commitBatch(ctx, tx, &b); err != nil {
		return fmt.Errorf("settle %d published outbox rows (%d scheduled notifications started): %w", len(ids), len(started), err)
	}
	r.published.Add(float64(len(ids)))
	if pubErr != nil {
		// The confirmed rows are settled; the rest stay for the next round.
		r.log.Warn("some outbox rows were not published", "published", len(ids), "failed", len(failed), "err", pubErr)
	}
	return nil
}

// commitBatch sends b, whose last statement is COMMIT, in tx and reports whether the
// commit happened. A statement that fails makes PostgreSQL skip the rest of the batch and
// leaves the transaction aborted, for the caller to roll back.
func commitBatch(ctx context.Context, tx pgx.Tx, b *pgx.Batch) error {
	res := tx.SendBatch(ctx, b)
	defer res.Close() //nolint:errcheck // the error is returned by the explicit Close below
	var tag pgconn.CommandTag
	for range b.Len() {
		var err error
		if tag, err = res.Exec(); err != nil {
			return err
		}
	}
	if err := res.Close(); err != nil {
		return err
	}
	if tag.String() != "COMMIT" {
		return pgx.ErrTxCommitRollback
	}
	return nil
}

// claim begins the round's transaction on conn, claims a batch of rows in it and reads
// when the next scheduled row falls due into next, in one round trip. The transaction is
// returned whatever happened, to be rolled back on an error (it is closed already if the
// BEGIN itself failed).
func (r *Relay) claim(ctx context.Context, conn *pgx.Conn, next *nextDue) ([]row, pgx.Tx, error) {
	var b pgx.Batch
	b.BeginTx(pgx.TxOptions{})
	b.Queue(claimSettingsSQL)
	b.Queue(claimSQL, r.opts.BatchSize)
	b.Queue(nextDueSQL)
	sent := time.Now()
	res := conn.SendBatch(ctx, &b)
	tx := res.Tx()
	batch, err := readClaim(res, sent, next)
	if cerr := res.Close(); err == nil {
		err = cerr
	}
	return batch, tx, err
}

// readClaim reads the results of claim's batch.
func readClaim(res pgx.BatchResults, sent time.Time, next *nextDue) ([]row, error) {
	for range 2 { // BEGIN and the settings
		if _, err := res.Exec(); err != nil {
			return nil, err
		}
	}
	rows, err := res.Query()
	if err != nil {
		return nil, err
	}
	batch, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
		var o row
		err := r.Scan(&o.id, &o.notificationID, &o.routingKey, &o.messageType, &o.body, &o.createdAt, &o.scheduled, &o.traceparent)
		return o, err
	})
	if err != nil {
		return nil, err
	}
	var seconds float64
	switch err := res.QueryRow().Scan(&seconds); {
	case err == nil:
		*next = nextDue{at: sent.Add(time.Duration(seconds * float64(time.Second))), ok: true}
	case !errors.Is(err, pgx.ErrNoRows):
		return nil, err
	}
	return batch, nil
}

// listen turns NOTIFYs on the outbox channel (sent by the rare writers other than Publish:
// replays and re-drives, see EnqueueSend) into wake-ups, reconnecting as needed.
func (r *Relay) listen(ctx context.Context) {
	for ctx.Err() == nil {
		err := r.listenOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		r.listenLost.Fail(err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (r *Relay) listenOnce(ctx context.Context) error {
	pooled, err := r.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	// A LISTENing connection must not go back to the pool: take it out for good.
	conn := pooled.Hijack()
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+NotifyChannel); err != nil {
		return err
	}
	r.listenLost.OK()
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return err
		}
		r.Wake()
	}
}

func (r *Relay) sampleBacklog(ctx context.Context) {
	var n int64
	if err := r.pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE published_at IS NULL
		AND (due_at IS NULL OR due_at <= now())`).Scan(&n); err == nil {
		r.backlog.Set(float64(n))
	}
}

// deletePublished removes published rows older than the retention, in slices so a large
// backlog never holds long locks.
func (r *Relay) deletePublished(ctx context.Context) {
	for ctx.Err() == nil {
		tag, err := r.pool.Exec(ctx, `
			DELETE FROM outbox WHERE id IN (
				SELECT id FROM outbox WHERE published_at < now() - $1::interval LIMIT 5000)`,
			r.opts.Retention.String())
		if err != nil {
			r.log.Warn("delete published outbox rows", "err", err)
			return
		}
		if tag.RowsAffected() < 5000 {
			return
		}
	}
}
