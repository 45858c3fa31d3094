-- Schema version 6: session-completion and heartbeat replies owed to devices whose messages we read
-- while catching up from an archive; they are sent once the catch-up ends (XEP-0384).
CREATE TABLE omemo_reply_due (
    namespace INTEGER NOT NULL,
    jid TEXT NOT NULL,
    device INTEGER NOT NULL,
    PRIMARY KEY (namespace, jid, device)
);
