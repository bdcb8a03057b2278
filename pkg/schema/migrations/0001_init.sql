-- notify's schema. PostgreSQL is the source of truth for API keys, devices and their
-- tokens, notifications, per-token deliveries, the outbox and dead letters.

-- API keys: stored as a SHA-256 hash of the secret, never the secret itself.
CREATE TABLE api_keys (
    name         text PRIMARY KEY,
    role         text NOT NULL CHECK (role IN ('publisher', 'admin')),
    secret_hash  bytea NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    last_used_at timestamptz
);

-- Devices and their current FCM token, keyed by the app's device id (PUT semantics).
CREATE TABLE devices (
    device_id           text PRIMARY KEY,
    user_id             text NOT NULL,
    token               text NOT NULL,
    platform            text NOT NULL CHECK (platform IN ('android', 'ios', 'web')),
    active              boolean NOT NULL DEFAULT true,
    created_at          timestamptz NOT NULL DEFAULT now(),
    registered_at       timestamptz NOT NULL DEFAULT now(),
    last_seen_at        timestamptz NOT NULL DEFAULT now(),
    deactivated_at      timestamptz,
    deactivation_reason text,
    CHECK (active = (deactivated_at IS NULL))
);
-- An active token belongs to exactly one device; registering it elsewhere moves it.
CREATE UNIQUE INDEX devices_active_token ON devices (token) WHERE active;
-- Resolving user ids to their active tokens.
CREATE INDEX devices_user_active ON devices (user_id) WHERE active;
-- Broadcasts walk active devices in device_id order (keyset pagination).
CREATE INDEX devices_active_device_id ON devices (device_id) WHERE active;
-- The stale-token sweep.
CREATE INDEX devices_active_last_seen ON devices (greatest(registered_at, last_seen_at)) WHERE active;

-- Notifications as published. request is the PublishRequest in protobuf JSON.
CREATE TABLE notifications (
    id              uuid PRIMARY KEY,
    caller          text NOT NULL,
    idempotency_key text,
    type            text NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'retrying', 'delivered', 'failed', 'expired')),
    request         jsonb NOT NULL,
    expires_at      timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- Token counts by delivery outcome, kept in step with deliveries by the writers.
    total           bigint NOT NULL DEFAULT 0,
    delivered       bigint NOT NULL DEFAULT 0,
    invalid         bigint NOT NULL DEFAULT 0,
    retrying        bigint NOT NULL DEFAULT 0,
    failed          bigint NOT NULL DEFAULT 0,
    expired         bigint NOT NULL DEFAULT 0,
    replay_count    integer NOT NULL DEFAULT 0
);
-- Idempotency keys are unique per caller, forever (not a time window).
CREATE UNIQUE INDEX notifications_idempotency ON notifications (caller, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Admin listings (newest first, keyset on (created_at, id)).
CREATE INDEX notifications_created ON notifications (created_at DESC, id DESC);
CREATE INDEX notifications_status_created ON notifications (status, created_at DESC, id DESC);
CREATE INDEX notifications_type_created ON notifications (type, created_at DESC, id DESC);
-- The stuck-notification re-drive looks only at unfinished ones.
CREATE INDEX notifications_unfinished ON notifications (updated_at)
    WHERE status IN ('pending', 'retrying');

-- One row per token of a notification: what happened to it.
CREATE TABLE deliveries (
    notification_id uuid NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    token           text NOT NULL,
    device_id       text,
    user_id         text,
    outcome         text NOT NULL
                    CHECK (outcome IN ('pending', 'delivered', 'invalid', 'retrying', 'failed', 'expired')),
    attempts        integer NOT NULL DEFAULT 0,
    error_code      text,
    error_message   text,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (notification_id, token)
);
-- GetNotification filtered by outcome, and replay's "what is not delivered yet".
CREATE INDEX deliveries_notification_outcome ON deliveries (notification_id, outcome);

-- Transactional outbox: written in the same transaction as what it announces, moved to
-- RabbitMQ by the relay, deleted after a retention period.
CREATE TABLE outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    notification_id uuid,
    routing_key     text NOT NULL,
    message_type    text NOT NULL,
    body            bytea NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    published_at    timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;

-- Wake the relay when rows arrive (one notification per transaction, deduplicated by
-- PostgreSQL); it also polls, so a lost notification only delays.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('notify_outbox', '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- What could not be delivered, stored before anyone is alerted.
CREATE TABLE dead_letters (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The AMQP MessageId of the dead message: a redelivered one is stored once.
    message_id      text UNIQUE,
    notification_id uuid,
    reason          text NOT NULL,
    error_code      text,
    error_message   text,
    attempts        integer NOT NULL DEFAULT 0,
    token_count     integer NOT NULL DEFAULT 0,
    tokens          text[] NOT NULL DEFAULT '{}',
    message_type    text,
    message         bytea,
    headers         jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    alerted_at      timestamptz,
    replayed_at     timestamptz,
    replayed_by     text
);
CREATE INDEX dead_letters_unalerted ON dead_letters (id) WHERE alerted_at IS NULL;
CREATE INDEX dead_letters_created ON dead_letters (created_at DESC, id DESC);
CREATE INDEX dead_letters_reason_created ON dead_letters (reason, created_at DESC, id DESC);
CREATE INDEX dead_letters_notification ON dead_letters (notification_id);

-- Who replayed what, and when.
CREATE TABLE replays (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    notification_id uuid NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    replayed_by     text NOT NULL,
    token_count     bigint NOT NULL,
    forced          boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX replays_notification ON replays (notification_id, created_at DESC);
