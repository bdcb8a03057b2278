package server

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"notify/pkg/schema"
	"notify/services/producer/internal/outbox"
)

// row is one notification ready to be written with its outbox row: what Publish and
// PublishBatch store.
type row struct {
	id        uuid.UUID
	caller    string
	key       string // idempotency key; "" for none
	typ       string
	request   []byte // the PublishRequest as JSON (schema.EncodeRequest)
	expiresAt time.Time
	// sendAt is options.send_at when it is in the future: the notification is stored
	// scheduled and its outbox row is not relayed before then. Zero: pending, sent at once.
	sendAt time.Time
	task   outbox.Row
	app    string // the app it is for, never "" (schema.AppOf)
}

// stored is what became of one row.
type stored struct {
	id        uuid.UUID // the notification's id: the row's own, or the earlier one with its key
	duplicate bool      // the key was used before (in an earlier call or earlier in the batch)
	inserted  bool      // this row was written (false for duplicates and failures)
	err       error     // this row's own failure; nothing of it was written
}

// querier is what storeRows needs from the database: a pool, a connection or a transaction.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// insertSQL writes a batch of notifications and their outbox rows in one statement, hence
// one transaction. A key used before inserts nothing (its row is not returned). Rows are
// inserted in (caller, key) order, so concurrent batches sharing keys take the unique
// index's locks in one order and never deadlock.
var insertSQL = `
WITH input AS (
	SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],
		$7::text[], $8::text[], $9::bytea[], $10::timestamptz[], $11::text[], $12::text[])
		AS t(id, caller, idempotency_key, type, request, expires_at, routing_key, message_type, body, send_at, app, traceparent)
), n AS (
	INSERT INTO notifications AS n (id, caller, idempotency_key, type, request, expires_at, send_at, status, app, traceparent)
	SELECT id, caller, idempotency_key, type, request::jsonb, expires_at, send_at,
		CASE WHEN send_at IS NULL THEN '` + schema.StatusPending + `' ELSE '` + schema.StatusScheduled + `' END, app, traceparent
	FROM input
	ORDER BY caller, idempotency_key
	ON CONFLICT (caller, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
	RETURNING ` + schema.EventColumns + `
), e AS (
	` + schema.StatusEventsSQL("n") + `
), o AS (
	INSERT INTO outbox (notification_id, routing_key, message_type, body, due_at, traceparent)
	SELECT input.id, input.routing_key, input.message_type, input.body, input.send_at, input.traceparent FROM input JOIN n USING (id)
	ORDER BY input.id
)
SELECT id FROM n`

// duplicatesSQL finds the notifications that hold idempotency keys. The rows that made
// ON CONFLICT skip are committed (it waited for them), so this later statement sees them.
const duplicatesSQL = `
SELECT n.caller, n.idempotency_key, n.id FROM notifications n
JOIN unnest($1::text[], $2::text[]) AS k(caller, idempotency_key) USING (caller, idempotency_key)`

// storeRows writes rows, each with its outbox row, and answers for each in order.
//
// All rows go in one statement. A repeated (caller, key) inside the batch is written once
// and answered with the first one's id, duplicate=true. When the statement fails because of
// one row's data (a constraint or a value PostgreSQL refuses), every row is written again on
// its own so that only the bad one fails. Any other failure (the database is unreachable,
// the connection broke) fails every row of the batch with that error.
func storeRows(ctx context.Context, db querier, rows []row) []stored {
	out := make([]stored, len(rows))
	// first[i] is the index of the row whose answer row i shares; i itself for a first use.
	first := make([]int, len(rows))
	seen := make(map[[2]string]int)
	var unique []int
	for i, r := range rows {
		first[i] = i
		if r.key != "" {
			k := [2]string{r.caller, r.key}
			if j, ok := seen[k]; ok {
				first[i] = j
				continue
			}
			seen[k] = i
		}
		unique = append(unique, i)
	}

	err := insertRows(ctx, db, rows, unique, out)
	if err != nil && len(unique) > 1 && rowError(err) {
		// One row spoils the statement: write each on its own to find it.
		err = nil
		for n, i := range unique {
			if e := insertRows(ctx, db, rows, []int{i}, out); e != nil {
				if !rowError(e) {
					// The database itself failed: the rows not yet written fail with it.
					for _, j := range unique[n:] {
						out[j] = stored{err: e}
					}
					break
				}
				out[i] = stored{err: e}
			}
		}
	}
	if err != nil {
		for _, i := range unique {
			out[i] = stored{err: err}
		}
	}
	for i, j := range first {
		if j != i {
			out[i] = stored{id: out[j].id, duplicate: out[j].err == nil, err: out[j].err}
		}
	}
	return out
}

// insertRows writes rows[idx...] in one statement and fills out[idx...]; an error means
// none of them was written.
func insertRows(ctx context.Context, db querier, rows []row, idx []int, out []stored) error {
	n := len(idx)
	var (
		ids, callers, types, requests, routingKeys, messageTypes = make([]string, n), make([]string, n),
			make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		keys      = make([]*string, n)
		expiresAt = make([]time.Time, n)
		sendAt    = make([]*time.Time, n)
		bodies    = make([][]byte, n)
		apps      = make([]string, n)
		traces    = make([]*string, n) // NULL when untraced
	)
	for k, i := range idx {
		r := &rows[i]
		ids[k], callers[k], types[k], requests[k] = r.id.String(), r.caller, r.typ, string(r.request)
		if r.key != "" {
			keys[k] = &r.key
		}
		expiresAt[k] = r.expiresAt
		if !r.sendAt.IsZero() {
			sendAt[k] = &r.sendAt
		}
		routingKeys[k], messageTypes[k], bodies[k] = r.task.RoutingKey, r.task.MessageType, r.task.Body
		apps[k] = r.app
		if r.task.Traceparent != "" {
			traces[k] = &r.task.Traceparent
		}
	}
	result, err := db.Query(ctx, insertSQL, ids, callers, keys, types, requests, expiresAt, routingKeys, messageTypes, bodies, sendAt, apps, traces)
	if err != nil {
		return fmt.Errorf("insert %d notifications: %w", n, err)
	}
	inserted, err := pgx.CollectRows(result, pgx.RowTo[uuid.UUID])
	if err != nil {
		return fmt.Errorf("insert %d notifications: %w", n, err)
	}
	written := make(map[uuid.UUID]bool, len(inserted))
	for _, id := range inserted {
		written[id] = true
	}

	// The rows not written had keys used before: answer with the existing ids.
	var dupCallers, dupKeys []string
	for _, i := range idx {
		if written[rows[i].id] {
			out[i] = stored{id: rows[i].id, inserted: true}
		} else {
			dupCallers, dupKeys = append(dupCallers, rows[i].caller), append(dupKeys, rows[i].key)
		}
	}
	if len(dupKeys) == 0 {
		return nil
	}
	result, err = db.Query(ctx, duplicatesSQL, dupCallers, dupKeys)
	if err != nil {
		return fmt.Errorf("look up %d duplicate keys: %w", len(dupKeys), err)
	}
	existing := make(map[[2]string]uuid.UUID, len(dupKeys))
	var caller, key string
	var id uuid.UUID
	_, err = pgx.ForEachRow(result, []any{&caller, &key, &id}, func() error {
		existing[[2]string{caller, key}] = id
		return nil
	})
	if err != nil {
		return fmt.Errorf("look up %d duplicate keys: %w", len(dupKeys), err)
	}
	for _, i := range idx {
		if written[rows[i].id] {
			continue
		}
		id, ok := existing[[2]string{rows[i].caller, rows[i].key}]
		if !ok {
			// Not written and no row holds its key: the key's row was deleted (retention)
			// between the insert and the look-up. The client may simply retry.
			out[i] = stored{err: fmt.Errorf("idempotency key %q: %w", rows[i].key, errKeyVanished)}
			continue
		}
		out[i] = stored{id: id, duplicate: true}
	}
	return nil
}

// errKeyVanished: a key's notification disappeared between the insert and the look-up.
var errKeyVanished = errors.New("the notification holding the key vanished; try again")

// rowError reports whether err is PostgreSQL refusing a row's data (data exception,
// integrity constraint violation, program limit exceeded such as a value too large), as
// opposed to the database or the connection failing.
func rowError(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	code := pgErr.SQLState()
	return strings.HasPrefix(code, "22") || strings.HasPrefix(code, "23") || strings.HasPrefix(code, "54")
}
