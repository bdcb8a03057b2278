-- notify:no-transaction
-- A device is an app installation, so its identity is (app, device_id), as a token is unique
-- per app (0006). With device_id alone as the key, the staff app registering the device id
-- the customer app already used on the same phone (iOS's identifierForVendor is the same for
-- every app of one vendor) moved the device to the staff app, and the customer app's
-- notifications stopped. Now they are two devices; UnregisterDevice and CheckDevice name the
-- app.
--
-- The new key's index is built CONCURRENTLY (devices is written by every registration), then
-- swapped in by one ALTER TABLE, which only takes its lock for the swap. Run again after an
-- interruption, the index is built again and swapped in again: same result.
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS devices_app_device_id ON devices (app, device_id);
ALTER TABLE devices DROP CONSTRAINT devices_pkey,
    ADD CONSTRAINT devices_pkey PRIMARY KEY USING INDEX devices_app_device_id;
-- ListDevices pages a user's devices on (created_at, app, device_id), unique again.
CREATE INDEX CONCURRENTLY IF NOT EXISTS devices_user_created_app
    ON devices (user_id, created_at DESC, app DESC, device_id DESC);
DROP INDEX CONCURRENTLY IF EXISTS devices_user_created;
