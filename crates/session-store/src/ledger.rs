//! The ledger of messages we sent (for reflections) and the stanza-ids we processed (for duplicates).

use std::fmt;

/// One message we sent into a room (or to a peer: `room` is then the peer's bare JID).
#[derive(Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// The room's bare JID.
    pub room: String,
    /// XEP-0359 origin-id.
    pub origin_id: String,
    /// The stanza's `id` (equal to the origin-id for our own stanzas; kept apart for servers that
    /// rewrite ids).
    pub message_id: String,
    /// SHA-256 of the plaintext.
    pub plaintext_hash: [u8; 32],
    /// The plaintext itself, for clients that keep no history of their own (optional).
    pub plaintext: Option<Vec<u8>>,
    /// When it was sent, seconds since the Unix epoch.
    pub sent_at: u64,
}

impl fmt::Debug for LedgerEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { room: _, origin_id, message_id, plaintext_hash: _, plaintext, sent_at } = self;
        f.debug_struct("LedgerEntry")
            .field("origin_id", origin_id)
            .field("message_id", message_id)
            .field("plaintext_kept", &plaintext.is_some())
            .field("sent_at", sent_at)
            .finish_non_exhaustive()
    }
}

impl LedgerEntry {
    /// SHA-256 of a plaintext, as the ledger keeps it.
    pub fn hash(plaintext: &[u8]) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        Sha256::digest(plaintext).into()
    }
}
