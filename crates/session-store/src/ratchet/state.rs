//! Session state: root key, sending chain, receiving chains, skipped keys, pending key exchange.
//!
//! Every operation that can fail runs on a copy of the state; the caller keeps the copy only when the
//! whole operation (including the MAC check) succeeded.

use std::{collections::VecDeque, fmt};

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use rand_core::CryptoRngCore;

use super::keys::{hmac_sha256, ChainKey, MessageKeySeed, MessageKeys, RootKey};
use crate::{
    error::SessionError,
    keys::{ct_eq, KeyPair, PublicKey},
    namespace::Namespace,
    wire::v0_3::{PreKeySignalMessage, SignalMessage, MAC_LEN},
};

/// Skipped message keys kept per session; when full, the oldest is evicted. python-omemo keeps 1000 too,
/// so a peer that loses up to this many messages of ours still decrypts later ones.
pub const MAX_SKIPPED_KEYS: usize = 1000;

/// The largest forward jump of a message counter we compute keys for. A bigger gap is refused: a hostile
/// counter must not make us derive (and store) millions of keys.
pub const MAX_MESSAGE_GAP: u32 = 1000;

/// Earlier session states kept per device besides the current one. Two devices that start sessions with
/// each other at the same moment each end up with two; messages on the older one must still decrypt.
/// libsignal keeps 40; a handful covers the real race while keeping records small.
pub const MAX_ARCHIVED_STATES: usize = 5;

type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;
type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;

/// Builds a SignalMessage: `0x33 ‖ proto ‖ HMAC(mac_key, sender_ik ‖ receiver_ik ‖ 0x33 ‖ proto)[..8]`, the
/// ciphertext being AES-256-CBC/PKCS#7 under the message keys.
pub(crate) fn seal_0_3(
    keys: &MessageKeys,
    ratchet: &PublicKey,
    previous_counter: u32,
    sender_identity: &PublicKey,
    receiver_identity: &PublicKey,
    plaintext: &[u8],
) -> Vec<u8> {
    let ciphertext =
        Aes256CbcEnc::new(&keys.cipher_key.into(), &keys.iv.into()).encrypt_padded_vec_mut::<Pkcs7>(plaintext);
    let mut msg = SignalMessage::encode_unauthenticated(ratchet, keys.counter, previous_counter, &ciphertext);
    let mac = hmac_sha256(&keys.mac_key, &[&sender_identity.serialize(), &receiver_identity.serialize(), &msg]);
    msg.extend_from_slice(&mac[..MAC_LEN]);
    msg
}

/// Checks a SignalMessage's MAC (constant time) and decrypts its ciphertext.
pub(crate) fn open_0_3(
    keys: &MessageKeys,
    sender_identity: &PublicKey,
    receiver_identity: &PublicKey,
    msg: &SignalMessage,
) -> Result<Vec<u8>, SessionError> {
    let mac =
        hmac_sha256(&keys.mac_key, &[&sender_identity.serialize(), &receiver_identity.serialize(), &msg.authenticated]);
    if !ct_eq(&mac[..MAC_LEN], &msg.mac) {
        return Err(SessionError::BadMac);
    }
    Aes256CbcDec::new(&keys.cipher_key.into(), &keys.iv.into())
        .decrypt_padded_vec_mut::<Pkcs7>(&msg.ciphertext)
        .map_err(|_| SessionError::BadCiphertext)
}

/// A receiving chain: the peer's ratchet key and our chain key for it.
#[derive(Clone)]
pub(crate) struct ReceiverChain {
    pub(crate) ratchet: PublicKey,
    pub(crate) chain: ChainKey,
}

/// What the initiator repeats in every message until the responder answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PendingKeyExchange {
    pub(crate) pre_key_id: Option<u32>,
    pub(crate) signed_pre_key_id: u32,
}

/// One Double Ratchet session with one device.
#[derive(Clone)]
pub(crate) struct SessionState {
    pub(crate) remote_identity: PublicKey,
    pub(crate) initiator: bool,
    /// The initiator's X3DH ephemeral key: identifies the session a key exchange builds.
    pub(crate) base_key: PublicKey,
    pub(crate) root: RootKey,
    pub(crate) sender_ratchet: KeyPair,
    pub(crate) sender_chain: ChainKey,
    pub(crate) previous_counter: u32,
    pub(crate) receiver: Option<ReceiverChain>,
    pub(crate) previous_receiver: Option<ReceiverChain>,
    pub(crate) skipped: VecDeque<(PublicKey, MessageKeySeed)>,
    pub(crate) pending: Option<PendingKeyExchange>,
}

impl fmt::Debug for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            remote_identity,
            initiator,
            base_key: _,
            root: _,
            sender_ratchet: _,
            sender_chain,
            previous_counter,
            receiver,
            previous_receiver: _,
            skipped,
            pending,
        } = self;
        f.debug_struct("SessionState")
            .field("remote_identity", remote_identity)
            .field("initiator", initiator)
            .field("sent", &sender_chain.index())
            .field("previous_counter", previous_counter)
            .field("received", &receiver.as_ref().map(|r| r.chain.index()))
            .field("skipped_keys", &skipped.len())
            .field("pending_key_exchange", &pending.is_some())
            .finish_non_exhaustive()
    }
}

fn push_skipped(skipped: &mut VecDeque<(PublicKey, MessageKeySeed)>, ratchet: PublicKey, seed: MessageKeySeed) {
    if skipped.len() >= MAX_SKIPPED_KEYS {
        skipped.pop_front();
    }
    skipped.push_back((ratchet, seed));
}

/// Advances `chain` to `target`, storing the keys passed over. Refuses gaps over [`MAX_MESSAGE_GAP`].
fn skip_to(
    chain: &mut ChainKey,
    ratchet: PublicKey,
    target: u32,
    skipped: &mut VecDeque<(PublicKey, MessageKeySeed)>,
) -> Result<(), SessionError> {
    if target <= chain.index() {
        return Ok(());
    }
    let gap = target - chain.index();
    if gap > MAX_MESSAGE_GAP {
        return Err(SessionError::TooFarAhead { counter: target, gap: gap.into(), max: MAX_MESSAGE_GAP as usize });
    }
    while chain.index() < target {
        push_skipped(skipped, ratchet, chain.message_key_seed());
        *chain = chain.next().ok_or(SessionError::Malformed("counter overflow"))?;
    }
    Ok(())
}

/// The key for message `counter` on `chain`, advancing the chain past it.
fn key_on_chain(
    chain: &mut ChainKey,
    ratchet: PublicKey,
    counter: u32,
    skipped: &mut VecDeque<(PublicKey, MessageKeySeed)>,
) -> Result<MessageKeySeed, SessionError> {
    if counter < chain.index() {
        return Err(SessionError::Duplicate { counter });
    }
    skip_to(chain, ratchet, counter, skipped)?;
    let seed = chain.message_key_seed();
    *chain = chain.next().ok_or(SessionError::Malformed("counter overflow"))?;
    Ok(seed)
}

impl SessionState {
    /// Encrypts `plaintext` (the key material) as an OMEMO 0.3 key element. Advances the sending chain.
    pub(crate) fn encrypt_0_3(&mut self, our_identity: &PublicKey, plaintext: &[u8]) -> Result<Vec<u8>, SessionError> {
        let keys = self.sender_chain.message_key_seed().expand(Namespace::Oldmemo);
        let next = self.sender_chain.next().ok_or(SessionError::Internal("sending chain exhausted"))?;
        let msg = seal_0_3(
            &keys,
            &self.sender_ratchet.public,
            self.previous_counter,
            our_identity,
            &self.remote_identity,
            plaintext,
        );
        self.sender_chain = next;
        Ok(match &self.pending {
            Some(p) => PreKeySignalMessage {
                pre_key_id: p.pre_key_id,
                signed_pre_key_id: p.signed_pre_key_id,
                base_key: self.base_key,
                identity_key: *our_identity,
                message: msg,
            }
            .encode(),
            None => msg,
        })
    }

    /// Finds (or derives) the key for `msg`, performing a DH ratchet step for a new ratchet key.
    fn message_key(
        &mut self,
        msg: &SignalMessage,
        rng: &mut impl CryptoRngCore,
    ) -> Result<MessageKeySeed, SessionError> {
        let ns = Namespace::Oldmemo;
        if let Some(pos) = self.skipped.iter().position(|(r, s)| *r == msg.ratchet_key && s.counter == msg.counter) {
            return self.skipped.remove(pos).map(|(_, s)| s).ok_or(SessionError::Internal("skipped key vanished"));
        }
        for chain in [&mut self.receiver, &mut self.previous_receiver].into_iter().flatten() {
            if chain.ratchet == msg.ratchet_key {
                return key_on_chain(&mut chain.chain, chain.ratchet, msg.counter, &mut self.skipped);
            }
        }
        // A new ratchet key from the peer: finish the current receiving chain up to the length the peer
        // says it had, then step the root chain twice (receiving, then a fresh sending chain).
        if let Some(current) = &mut self.receiver {
            skip_to(&mut current.chain, current.ratchet, msg.previous_counter, &mut self.skipped)?;
        }
        let (root, receiving) = self.root.create_chain(ns, &msg.ratchet_key, &self.sender_ratchet.private)?;
        let ratchet = KeyPair::generate(rng);
        let (root, sending) = root.create_chain(ns, &msg.ratchet_key, &ratchet.private)?;
        self.root = root;
        self.previous_counter = self.sender_chain.index();
        self.sender_ratchet = ratchet;
        self.sender_chain = sending;
        self.previous_receiver = self.receiver.take();
        let mut chain = ReceiverChain { ratchet: msg.ratchet_key, chain: receiving };
        let seed = key_on_chain(&mut chain.chain, chain.ratchet, msg.counter, &mut self.skipped)?;
        self.receiver = Some(chain);
        Ok(seed)
    }

    /// Decrypts an OMEMO 0.3 SignalMessage. Call on a copy: on error the copy is garbage.
    pub(crate) fn decrypt_0_3(
        &mut self,
        our_identity: &PublicKey,
        msg: &SignalMessage,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Vec<u8>, SessionError> {
        let keys = self.message_key(msg, rng)?.expand(Namespace::Oldmemo);
        let plaintext = open_0_3(&keys, &self.remote_identity, our_identity, msg)?;
        // The peer answered on this session: it has it, no more key exchanges needed.
        self.pending = None;
        Ok(plaintext)
    }
}

/// All session states with one device: the current one and up to [`MAX_ARCHIVED_STATES`] earlier ones.
#[derive(Clone, Default)]
pub struct SessionRecord {
    pub(crate) current: Option<SessionState>,
    pub(crate) archived: Vec<SessionState>,
}

impl fmt::Debug for SessionRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { current, archived } = self;
        f.debug_struct("SessionRecord").field("current", current).field("archived", &archived.len()).finish()
    }
}

impl SessionRecord {
    /// Is there a usable session?
    pub fn has_current(&self) -> bool {
        self.current.is_some()
    }

    /// The peer's identity key of the current session.
    pub fn remote_identity(&self) -> Option<PublicKey> {
        self.current.as_ref().map(|s| s.remote_identity)
    }

    /// Will the next message be a key exchange (the peer has not answered on this session yet)?
    pub fn pending_key_exchange(&self) -> bool {
        self.current.as_ref().is_some_and(|s| s.pending.is_some())
    }

    /// Messages sent on the current sending chain.
    pub fn sent_on_chain(&self) -> Option<u32> {
        self.current.as_ref().map(|s| s.sender_chain.index())
    }

    /// Encrypts `plaintext` (key material) for the peer on the current session, advancing its sending
    /// chain. Returns the key element bytes and whether they are a key exchange.
    pub fn encrypt_0_3(&mut self, our_identity: &PublicKey, plaintext: &[u8]) -> Result<(Vec<u8>, bool), SessionError> {
        let state = self.current.as_mut().ok_or(SessionError::NoSession)?;
        let kex = state.pending.is_some();
        Ok((state.encrypt_0_3(our_identity, plaintext)?, kex))
    }

    /// Makes `state` current, archiving the previous current state.
    pub(crate) fn promote(&mut self, state: SessionState) {
        if let Some(old) = self.current.replace(state) {
            self.archived.insert(0, old);
            self.archived.truncate(MAX_ARCHIVED_STATES);
        }
    }

    /// Index of the state (`None` = current) built from `base_key`, if any.
    pub(crate) fn find_base_key(&self, base_key: &PublicKey) -> Option<Option<usize>> {
        if self.current.as_ref().is_some_and(|s| s.base_key == *base_key) {
            return Some(None);
        }
        self.archived.iter().position(|s| s.base_key == *base_key).map(Some)
    }

    /// Decrypts a SignalMessage with the current state, then with the archived ones. On success the
    /// state that worked is advanced and made current; on failure `self` is unchanged.
    pub(crate) fn decrypt_0_3(
        &mut self,
        our_identity: &PublicKey,
        msg: &SignalMessage,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Vec<u8>, SessionError> {
        let mut first_err = None;
        for idx in std::iter::once(None).chain((0..self.archived.len()).map(Some)) {
            let state = match idx {
                None => self.current.as_ref(),
                Some(i) => self.archived.get(i),
            };
            let Some(state) = state else { continue };
            let mut copy = state.clone();
            match copy.decrypt_0_3(our_identity, msg, rng) {
                Ok(pt) => {
                    match idx {
                        None => self.current = Some(copy),
                        Some(i) => {
                            self.archived.remove(i);
                            self.promote(copy);
                        }
                    }
                    return Ok(pt);
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err.unwrap_or(SessionError::NoSession))
    }
}
