-- Schema version 5: invitation tokens already used (single use), kept until they expire.
CREATE TABLE omemo_spent_token (
    nonce BLOB PRIMARY KEY NOT NULL,
    expires_at INTEGER NOT NULL
);
