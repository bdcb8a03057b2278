package server

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"notify/pkg/schema"
	"notify/pkg/tracing"
	notifyv1 "notify/proto/gen/notify/v1"
	"notify/services/producer/internal/outbox"
)

// MaxReplayIDs is the most notifications one Replay call handles.
const MaxReplayIDs = 1000

// Replay sends notifications again, by id or by the dead letters a filter selects.
//
// Each notification is replayed in its own transaction, holding its row lock: the status
// goes back to pending, replay_count goes up, an outbox row carries a SendTask{cause:
// "replay"} to the sender (so a replay accepted during a broker outage is sent when the
// broker is back), the replay is recorded in the replays table and the notification's dead
// letters are marked replayed. A concurrent replay of the same notification waits for the
// lock and then finds it in flight. The sender sends only the tokens that have not
// settled (see unsettledTokens), so nothing delivered is sent twice.
//
// A forced replay of a notification still in flight also sends the tokens that wait for a
// retry: in the same transaction they move from retrying to failed (forceRetriesSQL),
// which the sender sends again. Their retry, when it arrives, sends those the replay did
// not deliver once more: that is what force accepts.
//
// An error part-way leaves the notifications before it replayed; calling again is safe
// (they are in flight, hence skipped).
func (a *Admin) Replay(ctx context.Context, req *notifyv1.ReplayRequest) (*notifyv1.ReplayResponse, error) {
	sel, v := validateReplay(req)
	if len(v) > 0 {
		return nil, invalidArgument(v)
	}

	resp := &notifyv1.ReplayResponse{DryRun: req.GetDryRun()}
	ids := sel.ids
	if sel.deadLetters != nil {
		var err error
		ids, err = a.deadLetterNotifications(ctx, sel.deadLetters, sel.after, sel.limit+1)
		if err != nil {
			return nil, toStatus(ctx, a.log, "select dead letters", err)
		}
		if len(ids) > sel.limit {
			ids = ids[:sel.limit]
			resp.NextPageToken = ids[sel.limit-1].String()
		}
	}
	by := Caller(ctx)
	replayed := 0
	for _, id := range ids {
		r, err := a.replayOne(ctx, id, by, req.GetDryRun(), req.GetForce())
		if err != nil {
			return nil, toStatus(ctx, a.log, "replay", err, "notification_id", id, "replayed_before_error", replayed)
		}
		if r.GetOutcome() == notifyv1.ReplayOutcome_REPLAY_OUTCOME_REPLAYED {
			replayed++
		}
		resp.Results = append(resp.Results, r)
	}
	if replayed > 0 && !req.GetDryRun() && a.wake != nil {
		a.wake()
	}
	a.log.InfoContext(ctx, "replay", "by", by, "dry_run", req.GetDryRun(), "force", req.GetForce(),
		"notifications", len(ids), "replayed", replayed)
	return resp, nil
}

// replaySelection is what a valid ReplayRequest selects: notification ids, or a page of
// the notifications whose dead letters match a filter.
type replaySelection struct {
	ids         []uuid.UUID
	deadLetters *conditions // nil when ids are given
	after       *uuid.UUID  // the page token of a dead-letter selection
	limit       int         // the most notifications a dead-letter page selects
}

// validateReplay checks a ReplayRequest before anything is read or written, as
// validatePublish does for Publish, and says what it selects.
func validateReplay(req *notifyv1.ReplayRequest) (replaySelection, violations) {
	var v violations
	sel := replaySelection{limit: pageSize(req.GetPageSize(), MaxReplayIDs, MaxReplayIDs)}
	switch s := req.GetSelector().(type) {
	case nil:
		v.add("selector", "is required: one of notification_ids or dead_letters")
	case *notifyv1.ReplayRequest_NotificationIds:
		raw := s.NotificationIds.GetIds()
		switch {
		case len(raw) == 0:
			v.add("notification_ids.ids", "must not be empty")
		case len(raw) > MaxReplayIDs:
			v.add("notification_ids.ids", "has %d entries; at most %d per call", len(raw), MaxReplayIDs)
		}
		seen := make(map[uuid.UUID]int, len(raw))
		for i, r := range raw {
			id, err := uuid.Parse(r)
			field := fmt.Sprintf("notification_ids.ids[%d]", i)
			if err != nil {
				v.add(field, "must be a notification id (UUID)")
				continue
			}
			if j, dup := seen[id]; dup {
				v.add(field, "repeats notification_ids.ids[%d]", j)
			}
			seen[id] = i
			sel.ids = append(sel.ids, id)
		}
	case *notifyv1.ReplayRequest_DeadLetters:
		sel.deadLetters = &conditions{}
		validateDeadLetterFilter(&v, sel.deadLetters, "dead_letters.", s.DeadLetters)
		if tok := req.GetPageToken(); tok != "" {
			id, err := uuid.Parse(tok)
			if err != nil {
				v.add("page_token", "is not a token from a previous response")
			}
			sel.after = &id
		}
	}
	return sel, v
}

// deadLetterNotifications returns up to limit ids of notifications that have dead letters
// matching where, newest notification first (ids are UUIDv7, ordered by creation), after
// the id `after` when set.
func (a *Admin) deadLetterNotifications(ctx context.Context, where *conditions, after *uuid.UUID, limit int) ([]uuid.UUID, error) {
	where.add("notification_id IS NOT NULL")
	if after != nil {
		where.add("notification_id < ?", *after)
	}
	rows, err := a.pool.Query(ctx, `SELECT DISTINCT notification_id FROM dead_letters`+where.where()+`
		ORDER BY notification_id DESC LIMIT `+where.next(limit), where.args...)
	if err != nil {
		return nil, fmt.Errorf("select notifications of dead letters: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return nil, fmt.Errorf("select notifications of dead letters: %w", err)
	}
	return ids, nil
}

// replaySetSQL sets notification $1 pending for a replay, with a status event when its
// status changes.
var replaySetSQL = schema.ChangeStatusSQL("'"+schema.StatusPending+"'", ", replay_count = replay_count + 1, updated_at = now()", "n.id = $1")

// replayOne replays one notification (or, with dryRun, says what a replay would do).
func (a *Admin) replayOne(ctx context.Context, id uuid.UUID, by string, dryRun, force bool) (*notifyv1.ReplayResult, error) {
	res := &notifyv1.ReplayResult{NotificationId: id.String()}
	// A dry run reads without locking: it must not wait for, or hold up, the sender.
	lock := " FOR UPDATE"
	if dryRun {
		lock = ""
	}
	err := pgx.BeginFunc(ctx, a.pool, func(tx pgx.Tx) error {
		var status string
		var expired bool
		var request []byte
		var original *string // the Publish's trace, when it was traced
		err := tx.QueryRow(ctx, `SELECT status, expires_at <= now(), request, traceparent FROM notifications WHERE id = $1`+lock, id).
			Scan(&status, &expired, &request, &original)
		if errors.Is(err, pgx.ErrNoRows) {
			res.Outcome = notifyv1.ReplayOutcome_REPLAY_OUTCOME_NOT_FOUND
			return nil
		}
		if err != nil {
			return fmt.Errorf("read notification: %w", err)
		}
		inFlight := schema.InFlight(status)
		switch {
		case expired || status == schema.StatusExpired:
			res.Outcome = notifyv1.ReplayOutcome_REPLAY_OUTCOME_SKIPPED_EXPIRED
			return nil
		case status == schema.StatusDelivered:
			res.Outcome = notifyv1.ReplayOutcome_REPLAY_OUTCOME_SKIPPED_DELIVERED
			return nil
		case status == schema.StatusCancelled:
			res.Outcome = notifyv1.ReplayOutcome_REPLAY_OUTCOME_SKIPPED_CANCELLED
			return nil
		case status == schema.StatusScheduled:
			res.Outcome = notifyv1.ReplayOutcome_REPLAY_OUTCOME_SKIPPED_IN_FLIGHT
			return nil
		case inFlight && !force:
			res.Outcome = notifyv1.ReplayOutcome_REPLAY_OUTCOME_SKIPPED_IN_FLIGHT
			return nil
		}
		// Only a forced replay gets this far with a notification in flight; it sends the
		// tokens waiting for a retry too.
		n, err := unsettledTokens(ctx, tx, id, request, inFlight)
		if err != nil {
			return err
		}
		if n == 0 {
			res.Outcome = notifyv1.ReplayOutcome_REPLAY_OUTCOME_SKIPPED_DELIVERED
			return nil
		}
		res.Outcome, res.TokenCount = notifyv1.ReplayOutcome_REPLAY_OUTCOME_REPLAYED, n
		if dryRun {
			return nil
		}
		if inFlight {
			if _, err := tx.Exec(ctx, forceRetriesSQL, id); err != nil {
				return fmt.Errorf("take over retries: %w", err)
			}
		}
		if _, err := tx.Exec(ctx, replaySetSQL, id); err != nil {
			return fmt.Errorf("set pending: %w", err)
		}
		// The send task starts a trace of its own, linked to the original one.
		sctx, span := startReplay(ctx, id, original)
		err = outbox.EnqueueSend(sctx, tx, id, outbox.CauseReplay)
		tracing.End(span, err)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO replays (notification_id, replayed_by, token_count, forced)
			VALUES ($1, $2, $3, $4)`, id, by, n, inFlight); err != nil {
			return fmt.Errorf("record replay: %w", err)
		}
		if _, err := tx.Exec(ctx, `UPDATE dead_letters SET replayed_at = now(), replayed_by = $2
			WHERE notification_id = $1 AND replayed_at IS NULL`, id, by); err != nil {
			return fmt.Errorf("mark dead letters replayed: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("replay %s: %w", id, err)
	}
	return res, nil
}

// forceRetriesSQL moves the tokens of notification $1 that wait for a retry to failed,
// where the sender sends them again (no dead_letter_generation: nothing dead-lettered
// them, as in the re-drive job), and moves the counts with them. Their transient FCM error
// stays: it is the last thing that happened to them.
const forceRetriesSQL = `
WITH moved AS (
	UPDATE deliveries SET outcome = '` + schema.OutcomeFailed + `', dead_letter_generation = NULL, updated_at = now()
	WHERE notification_id = $1 AND outcome = '` + schema.OutcomeRetrying + `'
	RETURNING 1
)
UPDATE notifications SET retrying = retrying - (SELECT count(*) FROM moved), failed = failed + (SELECT count(*) FROM moved)
WHERE id = $1`

// unsettledTokens counts the tokens the sender will send when it gets the notification
// again (schema.Audience.CountUnsettled): for users and broadcasts, the active devices (of
// those users) whose token has no settled delivery; for raw tokens, the distinct tokens
// with no settled delivery (the sender does not require raw tokens to be registered).
// Failed tokens, and devices registered since the first send, are among them; with
// retrying, so are the tokens waiting for a retry (a forced replay moves them to failed:
// see forceRetriesSQL).
func unsettledTokens(ctx context.Context, tx pgx.Tx, id uuid.UUID, request []byte, retrying bool) (int64, error) {
	req, err := schema.DecodeRequest(request)
	if err != nil {
		return 0, err
	}
	count := schema.AudienceOf(req).CountUnsettled
	if retrying {
		count = schema.AudienceOf(req).CountUnsettledOrRetrying
	}
	query, args, err := count(id)
	if err != nil {
		return 0, err
	}
	var n int64
	if err := tx.QueryRow(ctx, query, args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("count unsettled tokens: %w", err)
	}
	return n, nil
}

// SpanReplay is the root span of a replayed notification's new trace: the replay's send
// task and everything the sender does with it belong to it. It links to the notification's
// original trace (its Publish) and to the Replay call.
const SpanReplay = "producer.replay"

func startReplay(ctx context.Context, id uuid.UUID, original *string) (context.Context, trace.Span) {
	links := []trace.Link{trace.LinkFromContext(ctx, attribute.String("notify.link", "replay_call"))}
	if original != nil {
		if sc := tracing.Remote(*original); sc.IsValid() {
			links = append(links, trace.Link{SpanContext: sc, Attributes: []attribute.KeyValue{attribute.String("notify.link", "original")}})
		}
	}
	return tracing.Tracer().Start(ctx, SpanReplay, trace.WithNewRoot(), trace.WithLinks(links...),
		trace.WithAttributes(attribute.String("notify.notification_id", id.String())))
}
