//! Persistence of session records and key pairs: explicit `to_bytes()` / `from_bytes()` through a private
//! protobuf schema. Our state types implement no `Serialize`.

use std::collections::VecDeque;

use prost::Message;
use zeroize::Zeroize;

use crate::{
    error::StoreError,
    keys::{KeyPair, PrivateKey, PublicKey},
    namespace::Namespace,
    ratchet::{
        keys::{ChainKey, MessageKeySeed, RootKey},
        PendingKeyExchange, ReceiverChain, SendState, SendStep, SessionRecord, SessionState, MAX_ARCHIVED_STATES,
        MAX_SKIPPED_KEYS,
    },
};

#[derive(Clone, PartialEq, Message)]
#[prost(skip_debug)]
struct ChainProto {
    #[prost(bytes = "vec", tag = "1")]
    ratchet: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    key: Vec<u8>,
    #[prost(uint32, tag = "3")]
    index: u32,
}

#[derive(Clone, PartialEq, Message)]
#[prost(skip_debug)]
struct SkippedProto {
    #[prost(bytes = "vec", tag = "1")]
    ratchet: Vec<u8>,
    #[prost(uint32, tag = "2")]
    counter: u32,
    #[prost(bytes = "vec", tag = "3")]
    seed: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
#[prost(skip_debug)]
struct PendingProto {
    #[prost(uint32, optional, tag = "1")]
    pre_key_id: Option<u32>,
    #[prost(uint32, tag = "2")]
    signed_pre_key_id: u32,
}

#[derive(Clone, PartialEq, Message)]
#[prost(skip_debug)]
struct StateProto {
    #[prost(bytes = "vec", tag = "1")]
    remote_identity: Vec<u8>,
    #[prost(bool, tag = "2")]
    initiator: bool,
    #[prost(bytes = "vec", tag = "3")]
    base_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    root: Vec<u8>,
    #[prost(bytes = "vec", tag = "5")]
    sender_private: Vec<u8>,
    #[prost(bytes = "vec", tag = "6")]
    sender_public: Vec<u8>,
    #[prost(bytes = "vec", tag = "7")]
    sender_chain: Vec<u8>,
    #[prost(uint32, tag = "8")]
    sender_index: u32,
    #[prost(uint32, tag = "9")]
    previous_counter: u32,
    #[prost(message, optional, tag = "10")]
    receiver: Option<ChainProto>,
    #[prost(message, optional, tag = "11")]
    previous_receiver: Option<ChainProto>,
    #[prost(message, repeated, tag = "12")]
    skipped: Vec<SkippedProto>,
    #[prost(message, optional, tag = "13")]
    pending: Option<PendingProto>,
    /// Namespace code (absent = 0 = OMEMO 0.3, as records of schema 1 were).
    #[prost(uint32, tag = "14")]
    ns: u32,
    #[prost(bytes = "vec", optional, tag = "15")]
    remote_identity_ed25519: Option<Vec<u8>>,
    #[prost(uint32, tag = "16")]
    received_since_send: u32,
    #[prost(uint32, tag = "17")]
    sent_since_receive: u32,
    /// The private key of the next sending ratchet while the sending half of a DH step waits.
    #[prost(bytes = "vec", optional, tag = "18")]
    next_ratchet: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
#[prost(skip_debug)]
struct RecordProto {
    #[prost(message, optional, tag = "1")]
    current: Option<StateProto>,
    #[prost(message, repeated, tag = "2")]
    archived: Vec<StateProto>,
}

impl Drop for StateProto {
    fn drop(&mut self) {
        self.root.zeroize();
        self.sender_private.zeroize();
        self.sender_chain.zeroize();
        self.next_ratchet.zeroize();
    }
}
impl Drop for ChainProto {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}
impl Drop for SkippedProto {
    fn drop(&mut self) {
        self.seed.zeroize();
    }
}

/// Record protos hold secrets: their `Debug` names the type only.
macro_rules! redacted_debug {
    ($($t:ty),*) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($t), "(<redacted>)"))
            }
        }
    )*};
}
redacted_debug!(ChainProto, SkippedProto, PendingProto, StateProto, RecordProto);

fn arr(v: &[u8], what: &'static str) -> Result<[u8; 32], StoreError> {
    v.try_into().map_err(|_| StoreError::Corrupt(what))
}

fn chain_to(c: &ReceiverChain) -> ChainProto {
    ChainProto { ratchet: c.ratchet.as_bytes().to_vec(), key: c.chain.key.to_vec(), index: c.chain.index }
}

fn chain_from(p: &ChainProto) -> Result<ReceiverChain, StoreError> {
    Ok(ReceiverChain {
        ratchet: PublicKey::from_bytes(arr(&p.ratchet, "receiver ratchet key")?),
        chain: ChainKey { key: arr(&p.key, "receiver chain key")?, index: p.index },
    })
}

fn state_to(s: &SessionState) -> StateProto {
    StateProto {
        received_since_send: s.received_since_send,
        sent_since_receive: s.sent_since_receive,
        next_ratchet: s.next_ratchet.as_ref().map(|k| k.as_bytes().to_vec()),
        ns: s.ns.code().into(),
        remote_identity_ed25519: s.remote_identity_ed25519.map(|k| k.to_vec()),
        remote_identity: s.remote_identity.as_bytes().to_vec(),
        initiator: s.initiator,
        base_key: s.base_key.as_bytes().to_vec(),
        root: s.root.0.to_vec(),
        sender_private: s.sender_ratchet.private.as_bytes().to_vec(),
        sender_public: s.sender_ratchet.public.as_bytes().to_vec(),
        sender_chain: s.sender_chain.key.to_vec(),
        sender_index: s.sender_chain.index,
        previous_counter: s.previous_counter,
        receiver: s.receiver.as_ref().map(chain_to),
        previous_receiver: s.previous_receiver.as_ref().map(chain_to),
        skipped: s
            .skipped
            .iter()
            .map(|(r, k)| SkippedProto { ratchet: r.as_bytes().to_vec(), counter: k.counter, seed: k.seed.to_vec() })
            .collect(),
        pending: s
            .pending
            .as_ref()
            .map(|p| PendingProto { pre_key_id: p.pre_key_id, signed_pre_key_id: p.signed_pre_key_id }),
    }
}

/// A stored state's namespace code, checked: an OMEMO 2 state must carry the peer's Ed25519 key.
fn namespace_of(code: u32, has_ed25519: bool) -> Result<Namespace, StoreError> {
    let ns = u8::try_from(code).ok().and_then(Namespace::from_code).ok_or(StoreError::Corrupt("namespace"))?;
    if ns == Namespace::Twomemo && !has_ed25519 {
        return Err(StoreError::Corrupt("OMEMO 2 session without Ed25519 identity"));
    }
    Ok(ns)
}

fn state_from(p: &StateProto) -> Result<SessionState, StoreError> {
    if p.skipped.len() > MAX_SKIPPED_KEYS {
        return Err(StoreError::Corrupt("too many skipped keys"));
    }
    let private = PrivateKey::from_bytes(arr(&p.sender_private, "sender ratchet private key")?);
    let public = PublicKey::from_bytes(arr(&p.sender_public, "sender ratchet public key")?);
    let mut skipped = VecDeque::with_capacity(p.skipped.len());
    for k in &p.skipped {
        skipped.push_back((
            PublicKey::from_bytes(arr(&k.ratchet, "skipped ratchet key")?),
            MessageKeySeed { seed: arr(&k.seed, "skipped key")?, counter: k.counter },
        ));
    }
    let remote_identity_ed25519 =
        p.remote_identity_ed25519.as_deref().map(|k| arr(k, "remote Ed25519 identity")).transpose()?;
    let ns = namespace_of(p.ns, remote_identity_ed25519.is_some())?;
    let next_ratchet = p
        .next_ratchet
        .as_deref()
        .map(|k| arr(k, "next ratchet private key").map(PrivateKey::from_bytes))
        .transpose()?;
    if next_ratchet.is_some() && p.receiver.is_none() {
        return Err(StoreError::Corrupt("ratchet step without a receiving chain"));
    }
    Ok(SessionState {
        next_ratchet,
        received_since_send: p.received_since_send,
        sent_since_receive: p.sent_since_receive,
        ns,
        remote_identity_ed25519,
        remote_identity: PublicKey::from_bytes(arr(&p.remote_identity, "remote identity")?),
        initiator: p.initiator,
        base_key: PublicKey::from_bytes(arr(&p.base_key, "base key")?),
        root: RootKey(arr(&p.root, "root key")?),
        sender_ratchet: KeyPair { public, private },
        sender_chain: ChainKey { key: arr(&p.sender_chain, "sender chain key")?, index: p.sender_index },
        previous_counter: p.previous_counter,
        receiver: p.receiver.as_ref().map(chain_from).transpose()?,
        previous_receiver: p.previous_receiver.as_ref().map(chain_from).transpose()?,
        skipped,
        pending: p
            .pending
            .as_ref()
            .map(|p| PendingKeyExchange { pre_key_id: p.pre_key_id, signed_pre_key_id: p.signed_pre_key_id }),
    })
}

impl SessionRecord {
    /// Serializes the record for storage.
    pub fn to_bytes(&self) -> Vec<u8> {
        RecordProto {
            current: self.current.as_ref().map(state_to),
            archived: self.archived.iter().map(state_to).collect(),
        }
        .encode_to_vec()
    }

    /// Loads a stored record. Malformed bytes are a [`StoreError::Corrupt`], never a panic.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StoreError> {
        let proto = RecordProto::decode(bytes).map_err(|_| StoreError::Corrupt("session record protobuf"))?;
        if proto.archived.len() > MAX_ARCHIVED_STATES {
            return Err(StoreError::Corrupt("too many archived states"));
        }
        Ok(Self {
            current: proto.current.as_ref().map(state_from).transpose()?,
            archived: proto.archived.iter().map(state_from).collect::<Result<_, _>>()?,
        })
    }
}

/// A protobuf field as the send-state reader sees it: a varint, or the bytes of a length-delimited field
/// (borrowed). Fixed-width fields are skipped; groups are refused.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// The fields of one protobuf message, in order, without allocating. Malformed framing (a truncated
/// varint or field, a length past the end, field number 0, a group) ends the walk with an error.
struct Fields<'a> {
    buf: &'a [u8],
}

fn corrupt() -> StoreError {
    StoreError::Corrupt("session record protobuf")
}

fn varint(buf: &mut &[u8]) -> Result<u64, StoreError> {
    let mut value = 0u64;
    for i in 0..10 {
        let (&b, rest) = buf.split_first().ok_or_else(corrupt)?;
        *buf = rest;
        // The tenth byte may only carry the 64th bit.
        if i == 9 && b > 1 {
            return Err(corrupt());
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(corrupt())
}

impl<'a> Fields<'a> {
    fn next_field(&mut self) -> Result<Option<(u32, Field<'a>)>, StoreError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = varint(&mut self.buf)?;
        let number = u32::try_from(key >> 3).map_err(|_| corrupt())?;
        if number == 0 {
            return Err(corrupt());
        }
        let field = match key & 7 {
            0 => Field::Varint(varint(&mut self.buf)?),
            wire @ (1 | 5) => {
                let width = if wire == 1 { 8 } else { 4 };
                self.buf = self.buf.get(width..).ok_or_else(corrupt)?;
                Field::Fixed
            }
            2 => {
                let len = usize::try_from(varint(&mut self.buf)?).map_err(|_| corrupt())?;
                if len > self.buf.len() {
                    return Err(corrupt());
                }
                let (bytes, rest) = self.buf.split_at(len);
                self.buf = rest;
                Field::Bytes(bytes)
            }
            _ => return Err(corrupt()),
        };
        Ok(Some((number, field)))
    }
}

fn bytes_of(f: Field<'_>) -> Result<&[u8], StoreError> {
    match f {
        Field::Bytes(b) => Ok(b),
        _ => Err(corrupt()),
    }
}

fn u32_of(f: Field<'_>) -> Result<u32, StoreError> {
    match f {
        Field::Varint(v) => u32::try_from(v).map_err(|_| corrupt()),
        _ => Err(corrupt()),
    }
}

fn key_of(f: Field<'_>, what: &'static str) -> Result<[u8; 32], StoreError> {
    arr(bytes_of(f)?, what)
}

/// Reads what sending needs of a `StateProto`, checking the framing of every field and the lengths of
/// the keys it skips.
fn send_state_from(mut fields: Fields<'_>) -> Result<SendState, StoreError> {
    let (mut remote, mut initiator, mut base, mut public, mut chain) = (None, false, None, None, None);
    let (mut index, mut previous_counter, mut ns, mut ed25519, mut pending) = (0, 0, 0, None, None);
    let (mut received_since_send, mut sent_since_receive, mut skipped) = (0, 0, 0usize);
    let (mut root_ok, mut private_ok, mut ratchet_due, mut receiver) = (false, false, false, false);
    while let Some((number, f)) = fields.next_field()? {
        match number {
            1 => remote = Some(key_of(f, "remote identity")?),
            2 => match f {
                Field::Varint(v) => initiator = v != 0,
                _ => return Err(corrupt()),
            },
            3 => base = Some(key_of(f, "base key")?),
            4 => root_ok = bytes_of(f)?.len() == 32,
            5 => private_ok = bytes_of(f)?.len() == 32,
            6 => public = Some(key_of(f, "sender ratchet public key")?),
            7 => chain = Some(key_of(f, "sender chain key")?),
            8 => index = u32_of(f)?,
            9 => previous_counter = u32_of(f)?,
            10 => {
                bytes_of(f)?;
                receiver = true;
            }
            11 => {
                bytes_of(f)?;
            }
            12 => {
                bytes_of(f)?;
                skipped += 1;
            }
            13 => {
                let (mut pre_key_id, mut signed_pre_key_id) = (None, 0);
                let mut inner = Fields { buf: bytes_of(f)? };
                while let Some((n, f)) = inner.next_field()? {
                    match n {
                        1 => pre_key_id = Some(u32_of(f)?),
                        2 => signed_pre_key_id = u32_of(f)?,
                        _ => {}
                    }
                }
                pending = Some(PendingKeyExchange { pre_key_id, signed_pre_key_id });
            }
            14 => ns = u32_of(f)?,
            15 => ed25519 = Some(key_of(f, "remote Ed25519 identity")?),
            16 => received_since_send = u32_of(f)?,
            17 => sent_since_receive = u32_of(f)?,
            18 if bytes_of(f)?.len() == 32 => ratchet_due = true,
            18 => return Err(StoreError::Corrupt("next ratchet private key")),
            _ => {}
        }
    }
    if skipped > MAX_SKIPPED_KEYS {
        return Err(StoreError::Corrupt("too many skipped keys"));
    }
    if !private_ok {
        return Err(StoreError::Corrupt("sender ratchet private key"));
    }
    if !root_ok {
        return Err(StoreError::Corrupt("root key"));
    }
    if ratchet_due && !receiver {
        return Err(StoreError::Corrupt("ratchet step without a receiving chain"));
    }
    let ns = namespace_of(ns, ed25519.is_some())?;
    Ok(SendState {
        ns,
        remote_identity: PublicKey::from_bytes(remote.ok_or(StoreError::Corrupt("remote identity"))?),
        remote_identity_ed25519: ed25519,
        initiator,
        base_key: PublicKey::from_bytes(base.ok_or(StoreError::Corrupt("base key"))?),
        sender_ratchet: PublicKey::from_bytes(public.ok_or(StoreError::Corrupt("sender ratchet public key"))?),
        sender_chain: ChainKey { key: chain.ok_or(StoreError::Corrupt("sender chain key"))?, index },
        previous_counter,
        pending,
        received_since_send,
        sent_since_receive,
        ratchet_due,
    })
}

impl SendState {
    /// Reads what sending needs of the current state of a stored record (the bytes of
    /// [`SessionRecord::to_bytes`]) and applies its stored [`SendStep`], if any: the state that
    /// [`SessionRecord::from_bytes`], [`SessionRecord::apply_step`] and [`SessionRecord::send_state`] give,
    /// without decoding the archived states, receiving chains and skipped keys, and without allocating.
    /// The framing of the whole record and the lengths of the current state's keys are checked. `None`:
    /// the record holds no session.
    pub fn from_record_bytes(record: &[u8], step: Option<&[u8]>) -> Result<Option<Self>, StoreError> {
        let mut fields = Fields { buf: record };
        let (mut current, mut archived) = (None, 0usize);
        while let Some((number, f)) = fields.next_field()? {
            match number {
                1 if current.is_none() => current = Some(bytes_of(f)?),
                // Our encoder writes the current state once (a protobuf reader would merge a second one).
                1 => return Err(StoreError::Corrupt("session record with two current states")),
                2 => {
                    bytes_of(f)?;
                    archived += 1;
                }
                _ => {}
            }
        }
        if archived > MAX_ARCHIVED_STATES {
            return Err(StoreError::Corrupt("too many archived states"));
        }
        let Some(current) = current else {
            return match step {
                Some(_) => Err(StoreError::Corrupt("session step without a session")),
                None => Ok(None),
            };
        };
        let mut state = send_state_from(Fields { buf: current })?;
        if let Some(step) = step {
            state.apply_step(&SendStep::from_bytes(step)?)?;
        }
        Ok(Some(state))
    }
}
