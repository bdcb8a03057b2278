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

// StatusEventsSQL returns the INSERT of one status event outbox row per row of changed, a
// relation with EventColumns' columns (without the alias) as they are after the change.
// Use it in the statement (or transaction) that changes the status, after the change has
// taken the notification's row lock: the events of one notification then get outbox ids
// in the order of its changes, which is the order the relay publishes them in.
//
// Each event row carries the notification's traceparent (its Publish call's trace, when it
// was traced): the relay publishes it with that trace context in the AMQP headers, so a
// subscriber that continues it joins the notification's trace.
func StatusEventsSQL(changed string) string {
	return `INSERT INTO outbox (notification_id, routing_key, message_type, body, traceparent)
	SELECT c.id, c.status || '.' || c.type, '` + StatusEventType + `',
		convert_to(json_build_object('notificationId', c.id, 'caller', c.caller, 'type', c.type, 'app', c.app, 'status', c.status,
			'counts', json_build_object('total', c.total, 'delivered', c.delivered, 'invalid', c.invalid,
				'retrying', c.retrying, 'failed', c.failed, 'expired', c.expired, 'skipped', c.skipped,
				'cancelled', c.cancelled),
			'time', now())::text, 'UTF8'),
		c.traceparent
	FROM ` + changed + ` c ORDER BY c.id`
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
