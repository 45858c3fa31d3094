-- Schema version 3: what we sent (to recognise reflections of our own messages, also from MAM after a
-- restart), and which stanza-ids we processed (to recognise duplicates).
CREATE TABLE omemo_ledger (
    room TEXT NOT NULL,
    origin_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    plaintext_hash BLOB NOT NULL,
    plaintext BLOB,
    sent_at INTEGER NOT NULL,
    PRIMARY KEY (room, origin_id)
) WITHOUT ROWID;
CREATE INDEX omemo_ledger_by_id ON omemo_ledger (room, message_id);
CREATE TABLE omemo_seen (
    room TEXT NOT NULL,
    stanza_id TEXT NOT NULL,
    PRIMARY KEY (room, stanza_id)
) WITHOUT ROWID;
