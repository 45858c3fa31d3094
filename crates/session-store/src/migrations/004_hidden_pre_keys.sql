-- Schema version 4: pre-keys consumed during MAM catch-up are hidden (not published), not deleted,
-- until catch-up ends: two senders may have used the same pre-key while we were offline.
ALTER TABLE omemo_pre_key ADD COLUMN hidden INTEGER NOT NULL DEFAULT 0;
