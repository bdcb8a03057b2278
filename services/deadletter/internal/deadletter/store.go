package deadletter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"notify/pkg/schema"
)

// Store writes dead_letters rows.
type Store struct {
	pool *pgxpool.Pool
}

// NewStore returns a Store on pool.
func NewStore(pool *pgxpool.Pool) *Store { return &Store{pool: pool} }

// Saved is what Save did.
type Saved struct {
	// New is false when a row with the letter's key already existed (a redelivery).
	New bool
	// MarkedFailed is true when the letter's notification was never sent and went from
	// pending to failed.
	MarkedFailed bool
	// Bare is true when the database refused the letter's values and only its raw message
	// was stored (see Save).
	Bare bool
}

const insertSQL = `
INSERT INTO dead_letters (message_id, notification_id, reason, error_code, error_message,
                          attempts, token_count, tokens, message_type, message, headers)
VALUES ($1, $2, $3, NULLIF($4, ''), NULLIF($5, ''), $6, $7, $8, NULLIF($9, ''), $10, $11)
ON CONFLICT (message_id) DO NOTHING`

// markFailedSQL fails a notification whose send task was dead-lettered by the broker. Only
// a pending one: retrying means some tokens were sent, and a final status stays final.
var markFailedSQL = schema.ChangeStatusSQL("'"+schema.StatusFailed+"'", ", updated_at = now()",
	"n.id = $1 AND n.status = '"+schema.StatusPending+"'")

// Save stores l once per key, and for a never-sent SendTask fails its notification, in one
// transaction: a redelivered message changes nothing. When the database refuses the
// letter's values as invalid (a data exception, which retrying cannot fix), Save stores a
// bare row instead (key, reason and raw message, with the database's complaint as the error
// message), so that such a message is never requeued forever.
func (s *Store) Save(ctx context.Context, l Letter) (Saved, error) {
	saved, err := s.save(ctx, l)
	var pgErr *pgconn.PgError
	if err == nil || !errors.As(err, &pgErr) || pgErr.SQLState()[:2] != "22" {
		return saved, err
	}
	bare := Letter{
		Key:          clean(l.Key),
		Reason:       clean(l.Reason),
		ErrorMessage: clean(fmt.Sprintf("stored bare, the database refused the letter: %v", err)),
		MessageType:  clean(l.MessageType),
		Message:      l.Message,
	}
	saved, err = s.save(ctx, bare)
	saved.Bare = true
	return saved, err
}

func (s *Store) save(ctx context.Context, l Letter) (Saved, error) {
	var headers []byte
	if l.Headers != nil {
		var err error
		if headers, err = json.Marshal(l.Headers); err != nil {
			return Saved{}, fmt.Errorf("encode headers: %w", err)
		}
	}
	var notificationID any
	if l.NotificationID != "" {
		notificationID = l.NotificationID
	}
	tokens := l.Tokens
	if tokens == nil {
		tokens = []string{}
	}
	var saved Saved
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, insertSQL, l.Key, notificationID, l.Reason, l.ErrorCode, l.ErrorMessage,
			l.Attempts, len(l.Tokens), tokens, l.MessageType, l.Message, headers)
		if err != nil {
			return fmt.Errorf("insert dead letter %s: %w", l.Key, err)
		}
		saved.New = tag.RowsAffected() == 1
		if !saved.New || !l.NeverSent || l.NotificationID == "" {
			return nil
		}
		if tag, err = tx.Exec(ctx, markFailedSQL, l.NotificationID); err != nil {
			return fmt.Errorf("mark notification %s failed: %w", l.NotificationID, err)
		}
		saved.MarkedFailed = tag.RowsAffected() == 1
		return nil
	})
	if err != nil {
		return Saved{}, err
	}
	return saved, nil
}

// Check returns nil when the database answers and is at the schema version this binary
// knows (see schema.Check): the producer owns the schema; this service never migrates.
func (s *Store) Check(ctx context.Context) error { return schema.Check(ctx, s.pool) }
