-- notify:no-transaction
-- The admin listing by status (ListNotifications) keeps an index of its own only for the
-- statuses that are few: every notification is inserted pending and most end delivered, and
-- a full (status, created_at, id) index cost each of them an index entry at Publish and
-- another when it was delivered (no update of notifications is HOT: status is indexed).
-- The listing of the two common statuses is served by indexes that exist anyway:
--   - pending: notifications_unfinished, which holds only pending and retrying rows;
--   - delivered: notifications_retention, which holds the final rows in (created_at, id)
--     order, read backwards (or notifications_created, filtered: delivered rows are most).
-- ListNotifications writes the status as a literal, so that the planner can prove the
-- partial indexes' predicates from it (a placeholder in a generic plan cannot).
-- The retention job's scan of cancelled notifications uses the new index.
--
-- Built and dropped CONCURRENTLY: notifications is the large, always-written table.
CREATE INDEX CONCURRENTLY IF NOT EXISTS notifications_status_created_few
    ON notifications (status, created_at DESC, id DESC)
    WHERE status NOT IN ('pending', 'delivered');
DROP INDEX CONCURRENTLY IF EXISTS notifications_status_created;
