//! OMEMO 0.3 / libsignal v3 wire format.
//!
//! ```text
//! SignalMessage       = 0x33 ‖ proto{ ratchet_key=1 (0x05‖32), counter=2, previous_counter=3, ciphertext=4 } ‖ MAC[8]
//! PreKeySignalMessage = 0x33 ‖ proto{ pre_key_id=1, base_key=2, identity_key=3, message=4 (a SignalMessage),
//!                                      registration_id=5 (not written), signed_pre_key_id=6 }
//! MAC = HMAC-SHA-256(mac_key, sender_identity(33) ‖ receiver_identity(33) ‖ 0x33 ‖ proto)[..8]
//! ```

use prost::Message;

use crate::{error::SessionError, keys::PublicKey};

/// The version byte: current version 3 in both nibbles.
pub const VERSION_BYTE: u8 = 0x33;
/// Truncated MAC length.
pub const MAC_LEN: usize = 8;
/// Longest key element we accept, far above any real message (a ratchet message carries 32 or 48 bytes
/// of key material). Bounds work done on hostile input.
pub const MAX_MESSAGE_LEN: usize = 4096;

#[derive(Clone, PartialEq, Message)]
struct SignalMessageProto {
    #[prost(bytes = "vec", optional, tag = "1")]
    ratchet_key: Option<Vec<u8>>,
    #[prost(uint32, optional, tag = "2")]
    counter: Option<u32>,
    #[prost(uint32, optional, tag = "3")]
    previous_counter: Option<u32>,
    #[prost(bytes = "vec", optional, tag = "4")]
    ciphertext: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct PreKeySignalMessageProto {
    #[prost(uint32, optional, tag = "1")]
    pre_key_id: Option<u32>,
    #[prost(bytes = "vec", optional, tag = "2")]
    base_key: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "3")]
    identity_key: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "4")]
    message: Option<Vec<u8>>,
    #[prost(uint32, optional, tag = "5")]
    registration_id: Option<u32>,
    #[prost(uint32, optional, tag = "6")]
    signed_pre_key_id: Option<u32>,
}

/// A parsed SignalMessage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalMessage {
    /// The sender's current ratchet key.
    pub ratchet_key: PublicKey,
    /// Message number in the sending chain.
    pub counter: u32,
    /// Length of the sender's previous sending chain.
    pub previous_counter: u32,
    /// AES-256-CBC ciphertext.
    pub ciphertext: Vec<u8>,
    /// `0x33 ‖ proto`: what the MAC covers after the identities.
    pub authenticated: Vec<u8>,
    /// The truncated MAC.
    pub mac: [u8; MAC_LEN],
}

fn check_version(bytes: &[u8]) -> Result<&[u8], SessionError> {
    match bytes.split_first() {
        None => Err(SessionError::Malformed("empty message")),
        Some((&v, rest)) if v >> 4 == 3 => Ok(rest),
        Some((&v, _)) => Err(SessionError::UnsupportedVersion(v)),
    }
}

impl SignalMessage {
    /// Parses `0x33 ‖ proto ‖ mac`.
    pub fn parse(bytes: &[u8]) -> Result<Self, SessionError> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(SessionError::Malformed("message too long"));
        }
        check_version(bytes)?;
        if bytes.len() < 1 + MAC_LEN {
            return Err(SessionError::Malformed("message too short"));
        }
        let (authenticated, mac) = bytes.split_at(bytes.len() - MAC_LEN);
        let proto = SignalMessageProto::decode(&authenticated[1..])
            .map_err(|_| SessionError::Malformed("SignalMessage protobuf"))?;
        let (Some(rk), Some(counter), Some(ct)) = (proto.ratchet_key, proto.counter, proto.ciphertext) else {
            return Err(SessionError::Malformed("SignalMessage lacks a field"));
        };
        let mut m = [0u8; MAC_LEN];
        m.copy_from_slice(mac);
        Ok(Self {
            ratchet_key: PublicKey::deserialize(&rk)?,
            counter,
            previous_counter: proto.previous_counter.unwrap_or(0),
            ciphertext: ct,
            authenticated: authenticated.to_vec(),
            mac: m,
        })
    }

    /// Builds `0x33 ‖ proto` (the MAC is appended by the caller).
    pub fn encode_unauthenticated(
        ratchet_key: &PublicKey,
        counter: u32,
        previous_counter: u32,
        ciphertext: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::HEAD_MAX + ciphertext.len() + MAC_LEN);
        Self::write_head(&mut out, ratchet_key, counter, previous_counter, ciphertext.len());
        out.extend_from_slice(ciphertext);
        out
    }

    /// The most bytes [`SignalMessage::write_head`] appends.
    pub const HEAD_MAX: usize = 1 + (1 + 1 + 33) + 2 * (1 + 5) + (1 + 5);

    /// Appends `0x33 ‖ proto` up to the ciphertext: fields 1 to 3, then the key and length of field 4 (a
    /// ciphertext of `ciphertext_len` bytes, which the caller appends, followed by the MAC). The bytes
    /// prost writes (fields in tag order); a send writes each key element into one buffer this way.
    pub fn write_head(
        out: &mut Vec<u8>,
        ratchet_key: &PublicKey,
        counter: u32,
        previous_counter: u32,
        ciphertext_len: usize,
    ) {
        use prost::encoding::{encode_key, encode_varint, WireType};
        out.push(VERSION_BYTE);
        let ratchet_key = ratchet_key.serialize();
        encode_key(1, WireType::LengthDelimited, out);
        encode_varint(ratchet_key.len() as u64, out);
        out.extend_from_slice(&ratchet_key);
        encode_key(2, WireType::Varint, out);
        encode_varint(u64::from(counter), out);
        encode_key(3, WireType::Varint, out);
        encode_varint(u64::from(previous_counter), out);
        encode_key(4, WireType::LengthDelimited, out);
        encode_varint(ciphertext_len as u64, out);
    }
}

/// A parsed PreKeySignalMessage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreKeySignalMessage {
    /// The one-time pre-key used (OMEMO requires one; libsignal allows none).
    pub pre_key_id: Option<u32>,
    /// The signed pre-key used.
    pub signed_pre_key_id: u32,
    /// The initiator's ephemeral (base) key.
    pub base_key: PublicKey,
    /// The initiator's identity key.
    pub identity_key: PublicKey,
    /// The embedded SignalMessage bytes.
    pub message: Vec<u8>,
}

impl PreKeySignalMessage {
    /// Parses `0x33 ‖ proto`. Succeeds only when every required field is there, so it doubles as the test
    /// of whether a key element is a key exchange at all.
    pub fn parse(bytes: &[u8]) -> Result<Self, SessionError> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(SessionError::Malformed("message too long"));
        }
        let body = check_version(bytes)?;
        let proto = PreKeySignalMessageProto::decode(body)
            .map_err(|_| SessionError::Malformed("PreKeySignalMessage protobuf"))?;
        let (Some(spk), Some(base), Some(ik), Some(msg)) =
            (proto.signed_pre_key_id, proto.base_key, proto.identity_key, proto.message)
        else {
            return Err(SessionError::Malformed("PreKeySignalMessage lacks a field"));
        };
        Ok(Self {
            pre_key_id: proto.pre_key_id,
            signed_pre_key_id: spk,
            base_key: PublicKey::deserialize(&base)?,
            identity_key: PublicKey::deserialize(&ik)?,
            message: msg,
        })
    }

    /// Serializes `0x33 ‖ proto` (registration id not written, as python-omemo does).
    pub fn encode(&self) -> Vec<u8> {
        let proto = PreKeySignalMessageProto {
            pre_key_id: self.pre_key_id,
            base_key: Some(self.base_key.serialize().to_vec()),
            identity_key: Some(self.identity_key.serialize().to_vec()),
            message: Some(self.message.clone()),
            registration_id: None,
            signed_pre_key_id: Some(self.signed_pre_key_id),
        };
        let mut out = Vec::with_capacity(1 + proto.encoded_len());
        out.push(VERSION_BYTE);
        let _ = proto.encode(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn truncated_and_garbage_inputs_are_errors() {
        let rk = PublicKey::from_bytes([9; 32]);
        let mut msg = SignalMessage::encode_unauthenticated(&rk, 3, 2, &[1; 32]);
        msg.extend_from_slice(&[0xAA; MAC_LEN]);
        let parsed = SignalMessage::parse(&msg);
        assert!(matches!(&parsed, Ok(m) if m.counter == 3 && m.previous_counter == 2 && m.ratchet_key == rk));
        for cut in 0..msg.len() {
            // Never a panic; short prefixes are errors.
            let _ = SignalMessage::parse(&msg[..cut]);
        }
        assert!(SignalMessage::parse(&[]).is_err());
        assert!(matches!(SignalMessage::parse(&[0x22, 0, 0]), Err(SessionError::UnsupportedVersion(0x22))));
        assert!(PreKeySignalMessage::parse(&msg).is_err(), "a SignalMessage is no key exchange");
        assert!(SignalMessage::parse(&vec![0x33; MAX_MESSAGE_LEN + 1]).is_err());
    }

    #[test]
    fn the_head_is_what_prost_writes() {
        let rk = PublicKey::from_bytes([9; 32]);
        for (counter, previous) in [(0, 0), (1, 127), (128, 16_383), (16_384, u32::MAX), (u32::MAX, 1)] {
            for len in [0usize, 16, 48, 127, 128, 300] {
                let ct: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let proto = SignalMessageProto {
                    ratchet_key: Some(rk.serialize().to_vec()),
                    counter: Some(counter),
                    previous_counter: Some(previous),
                    ciphertext: Some(ct.clone()),
                };
                let mut theirs = vec![VERSION_BYTE];
                proto.encode(&mut theirs).unwrap();
                assert_eq!(SignalMessage::encode_unauthenticated(&rk, counter, previous, &ct), theirs);
                let mut head = Vec::new();
                SignalMessage::write_head(&mut head, &rk, counter, previous, len);
                assert!(head.len() <= SignalMessage::HEAD_MAX);
            }
        }
    }

    #[test]
    fn prekey_message_round_trip() {
        let m = PreKeySignalMessage {
            pre_key_id: Some(u32::MAX),
            signed_pre_key_id: 7,
            base_key: PublicKey::from_bytes([1; 32]),
            identity_key: PublicKey::from_bytes([2; 32]),
            message: vec![0x33, 1, 2, 3],
        };
        let enc = m.encode();
        assert_eq!(PreKeySignalMessage::parse(&enc).ok(), Some(m));
        for cut in 0..enc.len() {
            assert!(PreKeySignalMessage::parse(&enc[..cut]).is_err());
        }
    }
}
