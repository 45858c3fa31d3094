-- Schema version 8: every session gets an integer id, and its step (schema 7) is keyed by that id
-- instead of by the text key (namespace, JID, device). A group send writes one step per recipient
-- device: with an integer key each write is a short search of integers, and the rows are smaller.
-- AUTOINCREMENT: an id is never given out twice, so a step can never be read with another session than
-- the one it was written for. A record written again keeps its id (an upsert), and sessions are never
-- deleted; the store deletes a session's step whenever it writes the whole record.
CREATE TABLE omemo_session_v8 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace INTEGER NOT NULL,
    jid TEXT NOT NULL,
    device_id INTEGER NOT NULL,
    record BLOB NOT NULL,
    UNIQUE (namespace, jid, device_id)
);
INSERT INTO omemo_session_v8 (namespace, jid, device_id, record)
    SELECT namespace, jid, device_id, record FROM omemo_session ORDER BY namespace, jid, device_id;
CREATE TABLE omemo_session_step_v8 (
    session INTEGER PRIMARY KEY,
    step BLOB NOT NULL
);
-- Steps without a session were never read (schema 7 applies a step only on top of a record): dropped.
INSERT INTO omemo_session_step_v8 (session, step)
    SELECT s.id, t.step FROM omemo_session_step t JOIN omemo_session_v8 s USING (namespace, jid, device_id);
DROP TABLE omemo_session_step;
DROP TABLE omemo_session;
ALTER TABLE omemo_session_v8 RENAME TO omemo_session;
ALTER TABLE omemo_session_step_v8 RENAME TO omemo_session_step;
