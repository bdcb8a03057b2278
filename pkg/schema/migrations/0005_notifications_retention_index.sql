-- notify:no-transaction
-- The retention job (NOTIFICATION_RETENTION) walks final notifications oldest first, in
-- keyset batches on (created_at, id), and deletes those whose TTL has also passed. This
-- index holds exactly its candidates, in its order, with expires_at to decide without
-- reading the table: the job's scan never steps over unfinished notifications, and it stops
-- after one batch. Its predicate must stay the job's list of final statuses
-- (schema.FinalStatuses), or PostgreSQL cannot use it for the job's query.
--
-- Built CONCURRENTLY: notifications is the large, always-written table, and a plain CREATE
-- INDEX would block every Publish for the length of the build. See schema.Migration for
-- how an interrupted build is handled.
CREATE INDEX CONCURRENTLY IF NOT EXISTS notifications_retention
    ON notifications (created_at, id) INCLUDE (expires_at)
    WHERE status IN ('delivered', 'failed', 'expired');
