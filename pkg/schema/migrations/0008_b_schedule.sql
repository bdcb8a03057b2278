-- Scheduled delivery and cancel (issue 14).
--
-- A notification published with options.send_at in the future is stored at once with
-- status 'scheduled', and its SendTask outbox row carries due_at: the relay does not claim
-- it before then. When the relay publishes a due row it moves the notification to
-- 'pending'. NotificationService.Cancel moves a scheduled or pending notification to
-- 'cancelled' (final): the sender checks before each chunk and sends nothing more.
--
-- NOT VALID: every existing row passed the narrower check (see 0008_a).
ALTER TABLE notifications DROP CONSTRAINT notifications_status_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_status_check
    CHECK (status IN ('scheduled', 'pending', 'retrying', 'delivered', 'failed', 'expired', 'cancelled'))
    NOT VALID;
ALTER TABLE notifications
    ADD COLUMN send_at      timestamptz, -- when it is to be sent; NULL: at once
    ADD COLUMN cancelled_at timestamptz,
    ADD COLUMN cancelled_by text;        -- the API key that cancelled it

ALTER TABLE outbox ADD COLUMN due_at timestamptz; -- not relayed before; NULL: at once

-- The relay claims rows that are due now in two index scans: the rows for now
-- (outbox_ready, in id order, as outbox_unpublished served before) and the scheduled rows
-- whose time has come (outbox_due, which also gives the next due time for the relay's
-- timer). Neither scan steps over scheduled rows that are not due, however many there are.
-- outbox is small (published rows are deleted after OUTBOX_RETENTION), so these are built
-- in the transaction.
DROP INDEX outbox_unpublished;
CREATE INDEX outbox_ready ON outbox (id) WHERE published_at IS NULL AND due_at IS NULL;
CREATE INDEX outbox_due ON outbox (due_at, id) WHERE published_at IS NULL AND due_at IS NOT NULL;
