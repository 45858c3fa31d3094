//! Entry points for the fuzz targets in `fuzz/` (and the stable corpus replay test). Each one feeds
//! arbitrary bytes to a parse path and checks what must hold for any input.

use crate::{
    ratchet::SessionRecord,
    wire::v0_3::{PreKeySignalMessage, SignalMessage},
};

/// A key element as a SignalMessage and as a PreKeySignalMessage: errors are fine, panics are not, and
/// whatever parses re-encodes to a message that parses to the same fields.
pub fn ratchet_message(data: &[u8]) {
    if let Ok(m) = SignalMessage::parse(data) {
        let mut again =
            SignalMessage::encode_unauthenticated(&m.ratchet_key, m.counter, m.previous_counter, &m.ciphertext);
        again.extend_from_slice(&m.mac);
        let m2 = SignalMessage::parse(&again);
        assert!(matches!(m2, Ok(ref x) if x.counter == m.counter && x.ratchet_key == m.ratchet_key));
    }
    if let Ok(k) = PreKeySignalMessage::parse(data) {
        assert_eq!(PreKeySignalMessage::parse(&k.encode()).ok(), Some(k));
    }
}

/// A stored session record: loading never panics, and a loaded record re-encodes to one that loads.
pub fn store_record(data: &[u8]) {
    if let Ok(r) = SessionRecord::from_bytes(data) {
        let bytes = r.to_bytes();
        assert!(SessionRecord::from_bytes(&bytes).is_ok());
    }
}
