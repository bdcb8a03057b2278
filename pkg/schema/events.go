package schema

// StatusEventType is the outbox message_type of a status event (notify.bus.v1.StatusEvent).
// In the outbox its body is the event in protobuf JSON, built by SQL in the transaction of
// the change; the relay publishes it as binary protobuf to the events exchange with routing
// key "<status>.<type>". The relay reads StatusEventsSQL's shape without protojson and
// leaves anything else to protojson (the producer's outbox eventBody): a key added here
// goes there too, or every event takes the slow path (its tests fail until then).
const StatusEventType = "notify.bus.v1.StatusEvent"

// EventColumns are the columns of notifications (alias n) a status event is built from, in
// the order StatusEventsSQL reads them.
const EventColumns = "n.id, n.caller, n.type, n.app, n.status, n.total, n.delivered, n.invalid, n.retrying, n.failed, n.expired, n.skipped, n.cancelled, n.traceparent"

// StatusEventsSetting is the PostgreSQL setting that turns status events off for a
// database whose notify has no subscriber: ALTER DATABASE notify SET notify.status_events =
// off. Every statement that changes a status reads it (StatusEventsSQL), in every service,
// so one switch covers every replica; a session takes the database's value when it
// connects. Unset, or anything but off, the events are written.
//
// Status events are two of a small notification's three outbox rows (pending, then its
// final status; the SendTask is the third), each inserted with four index entries, claimed,
// published with a confirm and deleted. With no queue bound to the events exchange the
// broker drops them, and all of that is spent for nothing. make bench -phases sustain with
// -status-events on and off, three pairs: PostgreSQL 0.416, 0.498, 0.492 → 0.335, 0.419,
// 0.441 CPU ms per notification; the whole machine 1.43, 1.63, 1.59 → 1.24, 1.51, 1.61.
const StatusEventsSetting = "notify.status_events"

// statusEventsOnSQL is true unless StatusEventsSetting is off (current_setting with
// missing_ok is NULL when it is not set). As an uncorrelated subquery it is read once per
// statement.
const statusEventsOnSQL = `(SELECT current_setting('` + StatusEventsSetting + `', true)) IS DISTINCT FROM 'off'`

// StatusEventsOnSQL is a query of whether this session writes status events.
const StatusEventsOnSQL = "SELECT " + statusEventsOnSQL

// StatusEventsSQL returns the INSERT of one status event outbox row per row of changed, a
// relation with EventColumns' columns (without the alias) as they are after the change.
// Use it in the statement (or transaction) that changes the status, after the change has
// taken the notification's row lock: the events of one notification then get outbox ids
// in the order of its changes, which is the order the relay publishes them in.
//
// Each event row carries the notification's traceparent (its Publish call's trace, when it
// was traced): the relay publishes it with that trace context in the AMQP headers, so a
// subscriber that continues it joins the notification's trace.
//
// It inserts nothing when StatusEventsSetting is off.
func StatusEventsSQL(changed string) string {
	return `INSERT INTO outbox (notification_id, routing_key, message_type, body, traceparent)
	SELECT c.id, c.status || '.' || c.type, '` + StatusEventType + `',
		convert_to(json_build_object('notificationId', c.id, 'caller', c.caller, 'type', c.type, 'app', c.app, 'status', c.status,
			'counts', json_build_object('total', c.total, 'delivered', c.delivered, 'invalid', c.invalid,
				'retrying', c.retrying, 'failed', c.failed, 'expired', c.expired, 'skipped', c.skipped,
				'cancelled', c.cancelled),
			'time', now())::text, 'UTF8'),
		c.traceparent
	FROM ` + changed + ` c WHERE ` + statusEventsOnSQL + ` ORDER BY c.id`
}

// ChangeStatusSQL returns one statement that sets the status of the notifications where
// selects (a predicate over notifications n) to set (an SQL expression over their columns;
// extra adds assignments such as ", updated_at = now()"), locking them in id order, and
// writes a status event for each one whose status it changed. It returns (id, status) of
// every notification it updated.
func ChangeStatusSQL(set, extra, where string) string {
	return `WITH old AS (
	SELECT n.id, n.status AS old_status FROM notifications n WHERE ` + where + ` ORDER BY n.id FOR UPDATE
), up AS (
	UPDATE notifications n SET status = ` + set + extra + ` FROM old WHERE n.id = old.id
	RETURNING ` + EventColumns + `, old.old_status
), e AS (
	` + StatusEventsSQL("(SELECT * FROM up WHERE status <> old_status)") + `
)
SELECT id, status FROM up`
}
