-- Per-user notification preferences (issue 14): the notification types a user muted.
-- Publish by user ids and broadcasts skip the devices of a user who muted the
-- notification's type (outcome skipped_preference, counted in notifications.skipped, never
-- sent) unless the request sets ignore_preferences.
CREATE TABLE preferences (
    user_id     text PRIMARY KEY,
    muted_types text[] NOT NULL DEFAULT '{}',
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The outcome list grows by one. NOT VALID: every existing row passed the narrower check, so
-- the new one needs no scan of the (large) table under its exclusive lock; new and updated
-- rows are checked as always.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_outcome_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_outcome_check
    CHECK (outcome IN ('pending', 'delivered', 'invalid', 'retrying', 'failed', 'expired', 'skipped_preference'))
    NOT VALID;

ALTER TABLE notifications ADD COLUMN skipped bigint NOT NULL DEFAULT 0;
