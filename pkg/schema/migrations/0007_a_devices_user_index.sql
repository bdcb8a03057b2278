-- notify:no-transaction
-- DeviceService.ListDevices (issue 14) lists a user's devices, active and deactivated,
-- newest first in keyset pages on (created_at, device_id). devices_user_active covers only
-- active devices; this index covers every device of a user, in the listing's order.
--
-- Built CONCURRENTLY: devices is written by every registration, and a plain CREATE INDEX
-- would block them for the length of the build.
CREATE INDEX CONCURRENTLY IF NOT EXISTS devices_user_created
    ON devices (user_id, created_at DESC, device_id DESC);
