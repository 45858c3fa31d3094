-- Schema version 7: delta commits. A group send advances the sending chain of every recipient's
-- session; it stores that small step here instead of rewriting each whole record. A read applies the
-- step on top of the record; writing the whole record again deletes its step.
CREATE TABLE omemo_session_step (
    namespace INTEGER NOT NULL,
    jid TEXT NOT NULL,
    device_id INTEGER NOT NULL,
    step BLOB NOT NULL,
    PRIMARY KEY (namespace, jid, device_id)
) WITHOUT ROWID;
