-- omemo-muc session store, schema version 1.
CREATE TABLE omemo_account (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    jid TEXT NOT NULL,
    device_id INTEGER NOT NULL,
    identity_private BLOB NOT NULL,
    next_pre_key_id INTEGER NOT NULL,
    next_signed_pre_key_id INTEGER NOT NULL
);
CREATE TABLE omemo_signed_pre_key (
    id INTEGER PRIMARY KEY,
    private BLOB NOT NULL,
    public BLOB NOT NULL,
    signature BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE omemo_pre_key (
    id INTEGER PRIMARY KEY,
    private BLOB NOT NULL,
    public BLOB NOT NULL
);
CREATE TABLE omemo_session (
    namespace INTEGER NOT NULL,
    jid TEXT NOT NULL,
    device_id INTEGER NOT NULL,
    record BLOB NOT NULL,
    PRIMARY KEY (namespace, jid, device_id)
) WITHOUT ROWID;
CREATE TABLE omemo_identity (
    jid TEXT NOT NULL,
    device_id INTEGER NOT NULL,
    identity_key BLOB NOT NULL,
    PRIMARY KEY (jid, device_id)
) WITHOUT ROWID;
CREATE TABLE omemo_trust (
    jid TEXT NOT NULL,
    identity_key BLOB NOT NULL,
    level INTEGER NOT NULL,
    PRIMARY KEY (jid, identity_key)
) WITHOUT ROWID;
CREATE TABLE omemo_device (
    namespace INTEGER NOT NULL,
    jid TEXT NOT NULL,
    device_id INTEGER NOT NULL,
    active INTEGER NOT NULL,
    PRIMARY KEY (namespace, jid, device_id)
) WITHOUT ROWID;
