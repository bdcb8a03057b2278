-- Tracing (issue 15): the W3C traceparent of the trace a row belongs to, NULL when the
-- writer was not traced (tracing is off by default, and then nothing is written here).
--
-- outbox.traceparent: the context of the call that wrote the row (each Publish of a group
-- commit its own); the relay carries it in the message's AMQP headers, so the sender
-- continues that trace. notifications.traceparent: the Publish that created it, for a
-- replay's link to the original trace (outbox rows are deleted after OUTBOX_RETENTION)
-- and for a re-drive, which continues it.
--
-- Nullable without a default: adding them rewrites no table.
ALTER TABLE outbox ADD COLUMN traceparent text;
ALTER TABLE notifications ADD COLUMN traceparent text;
