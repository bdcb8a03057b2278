-- The outbox trigger's NOTIFY serialised every committing transaction on PostgreSQL's
-- notification queue lock (measured with pgbench: the Publish statement ran at 1.0–2.0k/s
-- with it, 3.5–3.9k/s without). Publish now wakes its own producer's relay in process after
-- the commit; the rare other writers of the outbox (replays, re-drives) still NOTIFY
-- notify_outbox in their transactions, which every replica's relay LISTENs to; and the
-- relay's polling (OUTBOX_POLL_INTERVAL) picks up rows of a replica that crashed right
-- after committing.
DROP TRIGGER outbox_notify ON outbox;
DROP FUNCTION outbox_notify();
