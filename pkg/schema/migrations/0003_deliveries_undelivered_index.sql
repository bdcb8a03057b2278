-- Per-token lookups of a broadcast that has just started (the sender's "already settled?"
-- probe, the upsert's "what was there before?") must use the primary key. PostgreSQL's
-- statistics know nothing of a notification that is minutes old, and with a full
-- (notification_id, outcome) index it picked that index and filtered every row of the
-- notification for each token: quadratic in the audience (measured: one 500-token lookup
-- 3.5 s at 18,500 rows). Filtering by outcome is wanted only for what is not delivered
-- (GetNotification's outcome filter, replay's count); delivered rows are served by the
-- primary key, which orders them by token as GetNotification pages.
DROP INDEX deliveries_notification_outcome;
CREATE INDEX deliveries_notification_undelivered ON deliveries (notification_id, outcome)
    WHERE outcome <> 'delivered';
