-- Cancel and the retry queue (issue 14): a token that waits for a retry when its
-- notification is cancelled is not sent again and ends with outcome 'cancelled', counted in
-- notifications.cancelled, so that a cancelled notification's counts add up and no token
-- stays 'retrying'. NotificationService.Cancel settles the waiting tokens in its
-- transaction; the retrier settles any that a send in flight put back.
--
-- NOT VALID: every existing row passed the narrower check (see 0008_a).
ALTER TABLE deliveries DROP CONSTRAINT deliveries_outcome_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_outcome_check
    CHECK (outcome IN ('pending', 'delivered', 'invalid', 'retrying', 'failed', 'expired', 'skipped_preference', 'cancelled'))
    NOT VALID;

ALTER TABLE notifications ADD COLUMN cancelled bigint NOT NULL DEFAULT 0;
