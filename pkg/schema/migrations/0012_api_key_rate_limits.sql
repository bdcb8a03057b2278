-- Per-key overrides of the producer's publish rate limit (PUBLISH_RATE_PER_KEY,
-- PUBLISH_BURST_PER_KEY, PUBLISH_RATE_PER_ADMIN_KEY): NULL takes the default of the key's
-- role; publish_rate 0 means unlimited. Both are per producer replica.
ALTER TABLE api_keys
    ADD COLUMN publish_rate  integer CHECK (publish_rate >= 0),
    ADD COLUMN publish_burst integer CHECK (publish_burst >= 1);
