//! OMEMO 2 (`urn:xmpp:omemo:2`) wire format (XEP-0384 §"Protobuf"), proto2 with required fields:
//!
//! ```text
//! OMEMOMessage              { n=1, pn=2, dh_pub=3 (32 raw bytes), ciphertext=4 (optional) }
//! OMEMOAuthenticatedMessage { mac=1 (16 bytes), message=2 (an OMEMOMessage) }
//! OMEMOKeyExchange          { pk_id=1, spk_id=2, ik=3 (Ed25519), ek=4, message=5 (OMEMOAuthenticatedMessage) }
//! MAC = HMAC-SHA-256(mac_key, IK_initiator(Ed25519) ‖ IK_responder(Ed25519) ‖ OMEMOMessage)[..16]
//! ```
//! No version bytes.

use prost::Message;

use crate::{error::SessionError, keys::PublicKey};

/// Truncated MAC length.
pub const MAC_LEN: usize = 16;
/// Longest key element we accept (real ones are about 100 to 200 bytes).
pub const MAX_MESSAGE_LEN: usize = 4096;

// Declared optional: prost does not check proto2 `required` on decoding, so presence is checked by hand.
#[derive(Clone, PartialEq, Message)]
struct OmemoMessageProto {
    #[prost(uint32, optional, tag = "1")]
    n: Option<u32>,
    #[prost(uint32, optional, tag = "2")]
    pn: Option<u32>,
    #[prost(bytes = "vec", optional, tag = "3")]
    dh_pub: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "4")]
    ciphertext: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct AuthenticatedProto {
    #[prost(bytes = "vec", optional, tag = "1")]
    mac: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "2")]
    message: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct KeyExchangeProto {
    #[prost(uint32, optional, tag = "1")]
    pk_id: Option<u32>,
    #[prost(uint32, optional, tag = "2")]
    spk_id: Option<u32>,
    #[prost(bytes = "vec", optional, tag = "3")]
    ik: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "4")]
    ek: Option<Vec<u8>>,
    #[prost(message, optional, tag = "5")]
    message: Option<AuthenticatedProto>,
}

/// A parsed OMEMOAuthenticatedMessage with its OMEMOMessage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedMessage {
    /// The sender's ratchet key.
    pub ratchet_key: PublicKey,
    /// Message number in the sending chain.
    pub counter: u32,
    /// Length of the previous sending chain.
    pub previous_counter: u32,
    /// AES-256-CBC ciphertext.
    pub ciphertext: Vec<u8>,
    /// The serialized OMEMOMessage (what the MAC covers after the associated data).
    pub authenticated: Vec<u8>,
    /// The MAC.
    pub mac: [u8; MAC_LEN],
}

fn decode_err(what: &'static str) -> impl Fn(prost::DecodeError) -> SessionError {
    move |_| SessionError::Malformed(what)
}

impl AuthenticatedMessage {
    fn from_proto(p: AuthenticatedProto) -> Result<Self, SessionError> {
        let (Some(mac), Some(message)) = (p.mac, p.message) else {
            return Err(SessionError::Malformed("OMEMOAuthenticatedMessage lacks a field"));
        };
        let mac: [u8; MAC_LEN] =
            mac.as_slice().try_into().map_err(|_| SessionError::Malformed("MAC is not 16 bytes"))?;
        let m = OmemoMessageProto::decode(message.as_slice()).map_err(decode_err("OMEMOMessage protobuf"))?;
        let (Some(n), Some(pn), Some(dh_pub)) = (m.n, m.pn, m.dh_pub) else {
            return Err(SessionError::Malformed("OMEMOMessage lacks a field"));
        };
        Ok(Self {
            ratchet_key: PublicKey::from_slice(&dh_pub)?,
            counter: n,
            previous_counter: pn,
            ciphertext: m.ciphertext.unwrap_or_default(),
            authenticated: message,
            mac,
        })
    }

    /// Parses an OMEMOAuthenticatedMessage.
    pub fn parse(bytes: &[u8]) -> Result<Self, SessionError> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(SessionError::Malformed("message too long"));
        }
        Self::from_proto(AuthenticatedProto::decode(bytes).map_err(decode_err("OMEMOAuthenticatedMessage protobuf"))?)
    }

    /// Serializes an OMEMOMessage (what the MAC covers).
    pub fn encode_message(ratchet_key: &PublicKey, counter: u32, previous_counter: u32, ciphertext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::message_len(counter, previous_counter, ciphertext.len()));
        Self::write_message_head(&mut out, ratchet_key, counter, previous_counter, ciphertext.len());
        out.extend_from_slice(ciphertext);
        out
    }

    /// Wraps a serialized OMEMOMessage and its MAC.
    pub fn encode(message: Vec<u8>, mac: &[u8]) -> Vec<u8> {
        AuthenticatedProto { mac: Some(mac.to_vec()), message: Some(message) }.encode_to_vec()
    }

    /// The length of a serialized OMEMOMessage whose ciphertext has `ciphertext_len` bytes.
    pub fn message_len(counter: u32, previous_counter: u32, ciphertext_len: usize) -> usize {
        use prost::encoding::encoded_len_varint;
        (1 + encoded_len_varint(u64::from(counter)))
            + (1 + encoded_len_varint(u64::from(previous_counter)))
            + (1 + 1 + 32)
            + (1 + encoded_len_varint(ciphertext_len as u64) + ciphertext_len)
    }

    /// Appends an OMEMOMessage up to its ciphertext: fields 1 to 3, then the key and length of field 4 (a
    /// ciphertext of `ciphertext_len` bytes, which the caller appends). The bytes prost writes (fields in
    /// tag order).
    pub fn write_message_head(
        out: &mut Vec<u8>,
        ratchet_key: &PublicKey,
        counter: u32,
        previous_counter: u32,
        ciphertext_len: usize,
    ) {
        use prost::encoding::{encode_key, encode_varint, WireType};
        encode_key(1, WireType::Varint, out);
        encode_varint(u64::from(counter), out);
        encode_key(2, WireType::Varint, out);
        encode_varint(u64::from(previous_counter), out);
        encode_key(3, WireType::LengthDelimited, out);
        encode_varint(32, out);
        out.extend_from_slice(ratchet_key.as_bytes());
        encode_key(4, WireType::LengthDelimited, out);
        encode_varint(ciphertext_len as u64, out);
    }

    /// Appends an OMEMOAuthenticatedMessage up to its OMEMOMessage: the MAC field with [`MAC_LEN`] zero
    /// bytes, then the key and length of the message field (a message of `message_len` bytes, which the
    /// caller appends). Returns where the MAC goes, to be filled in once the message is there.
    pub fn write_head(out: &mut Vec<u8>, message_len: usize) -> usize {
        use prost::encoding::{encode_key, encode_varint, WireType};
        encode_key(1, WireType::LengthDelimited, out);
        encode_varint(MAC_LEN as u64, out);
        let mac_at = out.len();
        out.extend_from_slice(&[0; MAC_LEN]);
        encode_key(2, WireType::LengthDelimited, out);
        encode_varint(message_len as u64, out);
        mac_at
    }
}

/// A parsed OMEMOKeyExchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyExchange {
    /// The one-time pre-key used.
    pub pre_key_id: u32,
    /// The signed pre-key used.
    pub signed_pre_key_id: u32,
    /// The initiator's identity key (Ed25519).
    pub identity_key: [u8; 32],
    /// The initiator's ephemeral key.
    pub base_key: PublicKey,
    /// The first message.
    pub message: AuthenticatedMessage,
}

impl KeyExchange {
    /// Parses an OMEMOKeyExchange. Succeeds only when every field is there, so it doubles as the test of
    /// whether a key element is a key exchange.
    pub fn parse(bytes: &[u8]) -> Result<Self, SessionError> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(SessionError::Malformed("message too long"));
        }
        let p = KeyExchangeProto::decode(bytes).map_err(decode_err("OMEMOKeyExchange protobuf"))?;
        let (Some(pk_id), Some(spk_id), Some(ik), Some(ek), Some(message)) = (p.pk_id, p.spk_id, p.ik, p.ek, p.message)
        else {
            return Err(SessionError::Malformed("OMEMOKeyExchange lacks a field"));
        };
        Ok(Self {
            pre_key_id: pk_id,
            signed_pre_key_id: spk_id,
            identity_key: ik.as_slice().try_into().map_err(|_| SessionError::Malformed("ik is not 32 bytes"))?,
            base_key: PublicKey::from_slice(&ek)?,
            message: AuthenticatedMessage::from_proto(message)?,
        })
    }

    /// Serializes an OMEMOKeyExchange around an already serialized OMEMOAuthenticatedMessage. A message
    /// field is its length-delimited bytes on the wire, and prost writes fields in tag order: fields 1
    /// to 4, then `authenticated` as field 5 as it is (no decoding and encoding again).
    pub fn encode(
        pre_key_id: u32,
        signed_pre_key_id: u32,
        identity_key: &[u8; 32],
        base_key: &PublicKey,
        authenticated: &[u8],
    ) -> Vec<u8> {
        use prost::encoding::{encode_key, encode_varint, WireType};
        let mut out = KeyExchangeProto {
            pk_id: Some(pre_key_id),
            spk_id: Some(signed_pre_key_id),
            ik: Some(identity_key.to_vec()),
            ek: Some(base_key.as_bytes().to_vec()),
            message: None,
        }
        .encode_to_vec();
        encode_key(5, WireType::LengthDelimited, &mut out);
        encode_varint(authenticated.len() as u64, &mut out);
        out.extend_from_slice(authenticated);
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_heads_are_what_prost_writes() {
        let rk = PublicKey::from_bytes([3; 32]);
        for (n, pn) in [(0, 0), (1, 127), (128, 16_383), (16_384, u32::MAX), (u32::MAX, 1)] {
            for len in [0usize, 16, 48, 64, 127, 128, 300] {
                let ct: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let proto = OmemoMessageProto {
                    n: Some(n),
                    pn: Some(pn),
                    dh_pub: Some(vec![3; 32]),
                    ciphertext: Some(ct.clone()),
                };
                let m = AuthenticatedMessage::encode_message(&rk, n, pn, &ct);
                assert_eq!(m, proto.encode_to_vec());
                assert_eq!(m.len(), AuthenticatedMessage::message_len(n, pn, len));
                let mut a = Vec::new();
                let mac_at = AuthenticatedMessage::write_head(&mut a, m.len());
                a.extend_from_slice(&m);
                a[mac_at..mac_at + MAC_LEN].copy_from_slice(&[7; MAC_LEN]);
                assert_eq!(a, AuthenticatedMessage::encode(m, &[7; MAC_LEN]));
            }
        }
    }

    #[test]
    fn round_trips_and_truncations() {
        let rk = PublicKey::from_bytes([3; 32]);
        let m = AuthenticatedMessage::encode_message(&rk, 5, 4, &[9; 48]);
        let a = AuthenticatedMessage::encode(m.clone(), &[1; 16]);
        let parsed = AuthenticatedMessage::parse(&a).unwrap();
        assert_eq!((parsed.counter, parsed.previous_counter, parsed.ratchet_key), (5, 4, rk));
        assert_eq!(parsed.authenticated, m);
        let k = KeyExchange::encode(7, 2, &[4; 32], &PublicKey::from_bytes([5; 32]), &a);
        // The same bytes as encoding the nested message.
        let nested = KeyExchangeProto {
            pk_id: Some(7),
            spk_id: Some(2),
            ik: Some(vec![4; 32]),
            ek: Some(vec![5; 32]),
            message: Some(AuthenticatedProto::decode(a.as_slice()).unwrap()),
        };
        assert_eq!(k, nested.encode_to_vec());
        let pk = KeyExchange::parse(&k).unwrap();
        assert_eq!((pk.pre_key_id, pk.signed_pre_key_id, pk.identity_key), (7, 2, [4; 32]));
        assert_eq!(pk.message, parsed);
        assert!(KeyExchange::parse(&a).is_err(), "an authenticated message is no key exchange");
        for cut in 0..k.len() {
            assert!(KeyExchange::parse(&k[..cut]).is_err());
        }
        for cut in 0..a.len() {
            let _ = AuthenticatedMessage::parse(&a[..cut]);
        }
        let short_mac = AuthenticatedMessage::encode(m, &[1; 8]);
        assert!(matches!(AuthenticatedMessage::parse(&short_mac), Err(SessionError::Malformed(_))));
    }
}
