//! Entry points for the fuzz targets in `fuzz/` (and the stable corpus replay test). Each one feeds
//! arbitrary bytes to a parse path and checks what must hold for any input.

use crate::{
    ratchet::{SendState, SendStep, SessionRecord},
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
        assert!(matches!(KeyExchange::parse(&again), Ok(ref x) if *x == k));
    }
}

/// A stored session record: loading never panics, and a loaded record re-encodes to one that loads.
pub fn store_record(data: &[u8]) {
    // What a group send reads of a record never panics either; on a record in our own encoding it is
    // what the whole decode gives.
    let light = SendState::from_record_bytes(data, None);
    if let Ok(r) = SessionRecord::from_bytes(data) {
        let bytes = r.to_bytes();
        assert!(SessionRecord::from_bytes(&bytes).is_ok());
        if bytes == data {
            assert!(light.is_ok(), "the send-state reader refuses a record the whole decode loads");
            assert_same_send_state(light, r.send_state());
        }
    }
    // A stored send step (delta commit): it loads or is an error, and re-encodes in the current form
    // (the same bytes when it was in that form; a version-1 step as the same step), and applies to a
    // record only when it belongs to the record's sending chain and does not move it back.
    if let Ok(step) = SendStep::from_bytes(data) {
        let again = step.to_bytes();
        assert_eq!(again.len(), SendStep::ENCODED_LEN);
        assert!(SendStep::from_bytes(&again).is_ok_and(|s| s == step), "a re-encoded step reads back as another");
        if data.len() == SendStep::ENCODED_LEN {
            assert_eq!(again, data);
        }
    }
    if data.len() > SendStep::ENCODED_LEN {
        let (step, record) = data.split_at(SendStep::ENCODED_LEN);
        if let (Ok(step), Ok(mut r)) = (SendStep::from_bytes(step), SessionRecord::from_bytes(record)) {
            let before = r.sent_on_chain();
            let light = SendState::from_record_bytes(record, Some(&step.to_bytes()));
            if r.to_bytes() == record {
                let mut stepped = r.clone();
                assert_same_send_state(light, stepped.apply_step(&step).ok().and_then(|()| stepped.send_state()));
            }
            match r.apply_step(&step) {
                Ok(()) => {
                    assert_eq!(r.sent_on_chain(), Some(step.index()));
                    assert!(before <= Some(step.index()));
                    assert!(SessionRecord::from_bytes(&r.to_bytes()).is_ok());
                }
                Err(_) => assert_eq!(r.sent_on_chain(), before, "a refused step changes nothing"),
            }
        }
    }
}

/// The send-state reader and the whole decode agree: both a state (the same), or both none (the reader
/// may report an error where the whole decode found no session only for a step without one).
fn assert_same_send_state(light: Result<Option<SendState>, crate::StoreError>, whole: Option<SendState>) {
    let (read, agree) = match (&light, &whole) {
        (Ok(Some(a)), Some(b)) => (true, a.same_as(b)),
        (Ok(None) | Err(_), None) => (false, true),
        (read, _) => (matches!(read, Ok(Some(_))), false),
    };
    assert!(agree, "send state reader read a state: {read}, whole record has one: {}", whole.is_some());
}
