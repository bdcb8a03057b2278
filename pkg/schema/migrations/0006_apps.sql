-- Several Firebase apps (issue 13). Every existing row belongs to the app "default", the
-- app the FCM_* variables define, so a one-app deployment sees no change.

-- Devices belong to an app; a token is unique per app (the same token string under two
-- Firebase projects is two registrations). device_id stays the primary key: unique across
-- apps.
ALTER TABLE devices ADD COLUMN app text NOT NULL DEFAULT 'default';
DROP INDEX devices_active_token;
CREATE UNIQUE INDEX devices_active_token ON devices (app, token) WHERE active;
-- Audiences are one app's devices: by user, or all of them in device_id order.
DROP INDEX devices_user_active;
CREATE INDEX devices_user_active ON devices (app, user_id) WHERE active;
DROP INDEX devices_active_device_id;
CREATE INDEX devices_active_device_id ON devices (app, device_id) WHERE active;

-- A notification is sent through one app (also in request, as PublishRequest.app).
ALTER TABLE notifications ADD COLUMN app text NOT NULL DEFAULT 'default';

-- An API key may be limited to some apps; NULL means every app.
ALTER TABLE api_keys ADD COLUMN apps text[];

-- The send budget every sender and retrier shares, one row per app: a GCRA schedule.
-- next_at is when the last reserved send is due; a reservation of n sends moves it on by
-- n / (rate_per_minute * factor) minutes. factor is the share of the app's rate in force:
-- halved on a 429 (at most once per Retry-After), recovering additively with time.
CREATE TABLE fcm_budgets (
    app          text PRIMARY KEY,
    next_at      timestamptz NOT NULL DEFAULT now(),
    factor       double precision NOT NULL DEFAULT 1 CHECK (factor > 0 AND factor <= 1),
    factor_at    timestamptz NOT NULL DEFAULT now(),
    throttled_at timestamptz
);
