//! Entry points for the fuzz targets in `fuzz/` (and the stable corpus replay test). Each one feeds
//! arbitrary bytes to a parse path and checks what must hold for any input.

use crate::{
    ratchet::SessionRecord,
    wire::{
        v0_3::{PreKeySignalMessage, SignalMessage},
        v2::{AuthenticatedMessage, KeyExchange},
    },
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
    // OMEMO 2: OMEMOAuthenticatedMessage and OMEMOKeyExchange.
    if let Ok(m) = AuthenticatedMessage::parse(data) {
        let again = AuthenticatedMessage::encode(
            AuthenticatedMessage::encode_message(&m.ratchet_key, m.counter, m.previous_counter, &m.ciphertext),
            &m.mac,
        );
        let m2 = AuthenticatedMessage::parse(&again);
        assert!(matches!(m2, Ok(ref x) if x.counter == m.counter && x.ciphertext == m.ciphertext));
    }
    if let Ok(k) = KeyExchange::parse(data) {
        let inner = AuthenticatedMessage::encode(k.message.authenticated.clone(), &k.message.mac);
        let again = KeyExchange::encode(k.pre_key_id, k.signed_pre_key_id, &k.identity_key, &k.base_key, &inner);
        assert!(matches!(again.as_deref().map(KeyExchange::parse), Ok(Ok(ref x)) if *x == k));
    }
}

/// A stored session record: loading never panics, and a loaded record re-encodes to one that loads.
pub fn store_record(data: &[u8]) {
    if let Ok(r) = SessionRecord::from_bytes(data) {
        let bytes = r.to_bytes();
        assert!(SessionRecord::from_bytes(&bytes).is_ok());
    }
}
