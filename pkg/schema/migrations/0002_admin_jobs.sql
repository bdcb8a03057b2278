-- Indexes for the admin API and the producer's periodic jobs (issue 5).

-- The stuck-notification re-drive asks, per candidate, "is an outbox row for it still
-- waiting to be published?"; outbox_unpublished is keyed by id only.
CREATE INDEX outbox_unpublished_notification ON outbox (notification_id) WHERE published_at IS NULL;

-- Replay marks a notification's dead letters replayed; ListDeadLetters and replay by filter
-- with replayed=false look only at the ones not replayed yet.
CREATE INDEX dead_letters_unreplayed ON dead_letters (notification_id) WHERE replayed_at IS NULL;
