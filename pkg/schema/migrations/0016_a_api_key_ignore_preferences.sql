-- A per-key permission (issue 14): a publisher key created with allow_ignore_preferences
-- may set Publish's options.ignore_preferences (security messages that must reach users
-- who muted their type). Admin keys always may; other keys get PERMISSION_DENIED.
ALTER TABLE api_keys ADD COLUMN allow_ignore_preferences boolean NOT NULL DEFAULT false;
