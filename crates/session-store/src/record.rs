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
        PendingKeyExchange, ReceiverChain, SessionRecord, SessionState, MAX_ARCHIVED_STATES, MAX_SKIPPED_KEYS,
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
    let ns = u8::try_from(p.ns).ok().and_then(Namespace::from_code).ok_or(StoreError::Corrupt("namespace"))?;
    let remote_identity_ed25519 =
        p.remote_identity_ed25519.as_deref().map(|k| arr(k, "remote Ed25519 identity")).transpose()?;
    if ns == Namespace::Twomemo && remote_identity_ed25519.is_none() {
        return Err(StoreError::Corrupt("OMEMO 2 session without Ed25519 identity"));
    }
    Ok(SessionState {
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
