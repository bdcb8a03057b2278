-- The outbox trigger's NOTIFY serialised every committing transaction on PostgreSQL's
-- notification queue lock (measured with pgbench: the Publish statement ran at 1.0–2.0k/s
-- with it, 3.5–3.9k/s without). The producer now wakes its own relay in process after a
-- commit that wrote outbox rows; the relay's polling (OUTBOX_POLL_INTERVAL) picks up rows
-- another replica wrote and could not relay (it crashed right after committing).
DROP TRIGGER outbox_notify ON outbox;
DROP FUNCTION outbox_notify();
