//! Session state: root key, sending chain, receiving chains, skipped keys, pending key exchange.
//!
//! Every operation that can fail runs on a copy of the state; the caller keeps the copy only when the
//! whole operation (including the MAC check) succeeded.

use std::{collections::VecDeque, fmt};

use rand_core::CryptoRngCore;

use super::keys::{ChainKey, MessageKeySeed, MessageKeys, RootKey};
use crate::primitives::hmac_sha256;
use crate::{
    error::SessionError,
    keys::{ct_eq, KeyPair, PrivateKey, PublicKey},
    namespace::Namespace,
    primitives::{aes256_cbc_decrypt, aes256_cbc_encrypt_into, cbc_len},
    wire::{
        v0_3::{self, PreKeySignalMessage, SignalMessage},
        v2::{self, AuthenticatedMessage, KeyExchange},
    },
};

/// Skipped message keys kept per session; when full, the oldest is evicted. python-omemo keeps 1000 too,
/// so a peer that loses up to this many messages of ours still decrypts later ones.
pub const MAX_SKIPPED_KEYS: usize = 1000;

/// The largest forward jump of a message counter we compute keys for. A bigger gap is refused: a hostile
/// counter must not make us derive (and store) millions of keys.
pub const MAX_MESSAGE_GAP: u32 = 1000;

/// XEP-0384: after this many messages received on a session without our answering, send an empty
/// message (heartbeat) so that the peer's ratchet moves forward.
pub const HEARTBEAT_AFTER: u32 = 53;

/// After this many messages sent to a device without any answer from it, stop encrypting to it (it is
/// reported as stale) until it speaks again.
pub const STALE_AFTER: u32 = 106;

/// Earlier session states kept per device besides the current one. Two devices that start sessions with
/// each other at the same moment each end up with two; messages on the older one must still decrypt.
/// libsignal keeps 40; a handful covers the real race while keeping records small.
pub const MAX_ARCHIVED_STATES: usize = 5;

/// Our identity key in both encodings: Curve25519 (0.3, and every agreement) and Ed25519 (OMEMO 2's
/// `<ik>` and associated data). Computed once per account, passed to every ratchet operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalIdentity {
    /// Curve25519 form.
    pub curve: PublicKey,
    /// Ed25519 form (sign bit 0, as XEdDSA signs).
    pub ed25519: [u8; 32],
}

/// A received ratchet message of either namespace, as the Double Ratchet sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Incoming<'a> {
    pub(crate) ratchet_key: PublicKey,
    pub(crate) counter: u32,
    pub(crate) previous_counter: u32,
    pub(crate) ciphertext: &'a [u8],
    pub(crate) authenticated: &'a [u8],
    pub(crate) mac: &'a [u8],
}

impl<'a> From<&'a SignalMessage> for Incoming<'a> {
    fn from(m: &'a SignalMessage) -> Self {
        Self {
            ratchet_key: m.ratchet_key,
            counter: m.counter,
            previous_counter: m.previous_counter,
            ciphertext: &m.ciphertext,
            authenticated: &m.authenticated,
            mac: &m.mac,
        }
    }
}

impl<'a> From<&'a AuthenticatedMessage> for Incoming<'a> {
    fn from(m: &'a AuthenticatedMessage) -> Self {
        Self {
            ratchet_key: m.ratchet_key,
            counter: m.counter,
            previous_counter: m.previous_counter,
            ciphertext: &m.ciphertext,
            authenticated: &m.authenticated,
            mac: &m.mac,
        }
    }
}

/// Appends the AES-256-CBC/PKCS#7 ciphertext of `plaintext` under the message keys.
fn cbc_encrypt(keys: &MessageKeys, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), SessionError> {
    aes256_cbc_encrypt_into(&keys.cipher_key, &keys.iv, plaintext, out).map_err(SessionError::Internal)
}

/// Checks `mac` against HMAC-SHA-256(mac_key, parts) truncated to its length (constant time), then
/// decrypts the ciphertext.
fn check_and_decrypt(keys: &MessageKeys, parts: &[&[u8]], msg: &Incoming<'_>) -> Result<Vec<u8>, SessionError> {
    let mac = hmac_sha256(&keys.mac_key, parts);
    if msg.mac.is_empty() || msg.mac.len() > mac.len() || !ct_eq(&mac[..msg.mac.len()], msg.mac) {
        return Err(SessionError::BadMac);
    }
    aes256_cbc_decrypt(&keys.cipher_key, &keys.iv, msg.ciphertext).ok_or(SessionError::BadCiphertext)
}

/// Appends a SignalMessage to `out`: `0x33 ‖ proto ‖ HMAC(mac_key, sender_ik ‖ receiver_ik ‖ 0x33 ‖
/// proto)[..8]`, the ciphertext being AES-256-CBC/PKCS#7 under the message keys. Written in place: a group
/// send wraps a key for thousands of devices, each into one buffer.
pub(crate) fn seal_0_3(
    keys: &MessageKeys,
    ratchet: &PublicKey,
    previous_counter: u32,
    sender_identity: &PublicKey,
    receiver_identity: &PublicKey,
    plaintext: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), SessionError> {
    let ciphertext_len = cbc_len(plaintext.len());
    let at = out.len();
    out.reserve(SignalMessage::HEAD_MAX + ciphertext_len + v0_3::MAC_LEN);
    SignalMessage::write_head(out, ratchet, keys.counter, previous_counter, ciphertext_len);
    cbc_encrypt(keys, plaintext, out)?;
    let msg = out.get(at..).unwrap_or_default();
    let mac = hmac_sha256(&keys.mac_key, &[&sender_identity.serialize(), &receiver_identity.serialize(), msg]);
    out.extend_from_slice(&mac[..v0_3::MAC_LEN]);
    Ok(())
}

/// Checks a SignalMessage's 8-byte MAC (sender ‖ receiver identities) and decrypts its ciphertext.
pub(crate) fn open_0_3(
    keys: &MessageKeys,
    sender_identity: &PublicKey,
    receiver_identity: &PublicKey,
    msg: &Incoming<'_>,
) -> Result<Vec<u8>, SessionError> {
    if msg.mac.len() != v0_3::MAC_LEN {
        return Err(SessionError::BadMac);
    }
    check_and_decrypt(keys, &[&sender_identity.serialize(), &receiver_identity.serialize(), msg.authenticated], msg)
}

/// Appends an OMEMOAuthenticatedMessage to `out`: `{mac = HMAC(mac_key, ad ‖ OMEMOMessage)[..16],
/// message}` where `ad` = IK_initiator ‖ IK_responder (Ed25519). Written in place, like [`seal_0_3`]: the
/// MAC's space first, then the message, then the MAC into its space.
pub(crate) fn seal_v2(
    keys: &MessageKeys,
    ratchet: &PublicKey,
    previous_counter: u32,
    ad: &[u8; 64],
    plaintext: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), SessionError> {
    let ciphertext_len = cbc_len(plaintext.len());
    let message_len = AuthenticatedMessage::message_len(keys.counter, previous_counter, ciphertext_len);
    out.reserve(2 + v2::MAC_LEN + 1 + 5 + message_len);
    let mac_at = AuthenticatedMessage::write_head(out, message_len);
    let at = out.len();
    AuthenticatedMessage::write_message_head(out, ratchet, keys.counter, previous_counter, ciphertext_len);
    cbc_encrypt(keys, plaintext, out)?;
    let mac = hmac_sha256(&keys.mac_key, &[ad, out.get(at..).unwrap_or_default()]);
    out.get_mut(mac_at..mac_at + v2::MAC_LEN)
        .ok_or(SessionError::Internal("no space for the MAC"))?
        .copy_from_slice(&mac[..v2::MAC_LEN]);
    Ok(())
}

/// Checks an OMEMOAuthenticatedMessage's 16-byte MAC and decrypts its ciphertext.
pub(crate) fn open_v2(keys: &MessageKeys, ad: &[u8; 64], msg: &Incoming<'_>) -> Result<Vec<u8>, SessionError> {
    if msg.mac.len() != v2::MAC_LEN {
        return Err(SessionError::BadMac);
    }
    check_and_decrypt(keys, &[ad, msg.authenticated], msg)
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
    pub(crate) ns: Namespace,
    pub(crate) remote_identity: PublicKey,
    /// The peer's identity key as it published it in Ed25519 form (OMEMO 2 only: the sign bit cannot be
    /// recovered from the Curve25519 form, and the associated data needs it).
    pub(crate) remote_identity_ed25519: Option<[u8; 32]>,
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
    /// Messages received since we last sent on this session.
    pub(crate) received_since_send: u32,
    /// Messages sent since we last received on this session.
    pub(crate) sent_since_receive: u32,
    /// The private key of our next sending ratchet, drawn when the peer's new ratchet key arrived: the
    /// sending half of that DH ratchet step is done when we next send ([`SessionState::complete_ratchet`]),
    /// not while decrypting. While it is set, `sender_ratchet` and `sender_chain` are spent: nothing is
    /// sent on them.
    pub(crate) next_ratchet: Option<PrivateKey>,
}

impl fmt::Debug for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            ns,
            remote_identity,
            remote_identity_ed25519: _,
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
            received_since_send,
            sent_since_receive,
            next_ratchet,
        } = self;
        f.debug_struct("SessionState")
            .field("ns", ns)
            .field("remote_identity", remote_identity)
            .field("initiator", initiator)
            .field("sent", &sender_chain.index())
            .field("previous_counter", previous_counter)
            .field("received", &receiver.as_ref().map(|r| r.chain.index()))
            .field("skipped_keys", &skipped.len())
            .field("pending_key_exchange", &pending.is_some())
            .field("received_since_send", received_since_send)
            .field("sent_since_receive", sent_since_receive)
            .field("ratchet_step_due", &next_ratchet.is_some())
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
        let (seed, next) = chain.advance().ok_or(SessionError::Malformed("counter overflow"))?;
        push_skipped(skipped, ratchet, seed);
        *chain = next;
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
    let (seed, next) = chain.advance().ok_or(SessionError::Malformed("counter overflow"))?;
    *chain = next;
    Ok(seed)
}

/// OMEMO 2 associated data: initiator's ‖ responder's Ed25519 identity key.
fn associated_v2(initiator: bool, theirs: Option<[u8; 32]>, our: &LocalIdentity) -> Result<[u8; 64], SessionError> {
    let theirs = theirs.ok_or(SessionError::Internal("OMEMO 2 session without Ed25519 key"))?;
    let (first, second) = if initiator { (our.ed25519, theirs) } else { (theirs, our.ed25519) };
    let mut ad = [0u8; 64];
    ad[..32].copy_from_slice(&first);
    ad[32..].copy_from_slice(&second);
    Ok(ad)
}

impl SessionState {
    /// OMEMO 2 associated data: initiator's ‖ responder's Ed25519 identity key, in both directions.
    fn associated_v2(&self, our: &LocalIdentity) -> Result<[u8; 64], SessionError> {
        associated_v2(self.initiator, self.remote_identity_ed25519, our)
    }

    /// Encrypts `plaintext` (the key material) as a key element of the session's namespace, wrapped in the
    /// key exchange while the peer has not answered. Advances the sending chain.
    pub(crate) fn encrypt(&mut self, our: &LocalIdentity, plaintext: &[u8]) -> Result<Vec<u8>, SessionError> {
        self.complete_ratchet()?;
        let mut send = SendState::of(self);
        let (out, _) = send.encrypt(our, plaintext)?;
        self.sender_chain = send.sender_chain.clone();
        self.sent_since_receive = send.sent_since_receive;
        self.received_since_send = 0;
        Ok(out)
    }

    /// Is the sending half of a DH ratchet step waiting (see [`SessionState::next_ratchet`])?
    pub(crate) fn ratchet_due(&self) -> bool {
        self.next_ratchet.is_some()
    }

    /// Does the sending half of the DH ratchet step that a new ratchet key of the peer started, if it
    /// waits: our new sending ratchet key pair, and a root step with the peer's current ratchet key
    /// for a fresh sending chain. The same keys as doing it on receipt; only the time differs.
    pub(crate) fn complete_ratchet(&mut self) -> Result<(), SessionError> {
        let Some(next) = self.next_ratchet.take() else { return Ok(()) };
        let theirs = self
            .receiver
            .as_ref()
            .map(|r| r.ratchet)
            .ok_or(SessionError::Internal("ratchet step without a receiving chain"))?;
        let ratchet = KeyPair::from_private(next);
        let (root, sending) = self.root.create_chain(self.ns, &theirs, &ratchet.private)?;
        self.root = root;
        self.previous_counter = self.sender_chain.index();
        self.sender_ratchet = ratchet;
        self.sender_chain = sending;
        Ok(())
    }

    /// Finds (or derives) the key for `msg`, performing a DH ratchet step for a new ratchet key.
    fn message_key(
        &mut self,
        msg: &Incoming<'_>,
        rng: &mut impl CryptoRngCore,
    ) -> Result<MessageKeySeed, SessionError> {
        let ns = self.ns;
        if let Some(pos) = self.skipped.iter().position(|(r, s)| *r == msg.ratchet_key && s.counter == msg.counter) {
            return self.skipped.remove(pos).map(|(_, s)| s).ok_or(SessionError::Internal("skipped key vanished"));
        }
        for chain in [&mut self.receiver, &mut self.previous_receiver].into_iter().flatten() {
            if chain.ratchet == msg.ratchet_key {
                return key_on_chain(&mut chain.chain, chain.ratchet, msg.counter, &mut self.skipped);
            }
        }
        // A new ratchet key from the peer: finish the current receiving chain up to the length the peer
        // says it had, then step the root chain for the receiving chain. The second root step (our new
        // sending chain) waits until we send: its key pair is drawn now, its DH is done then. (A peer
        // that moves on again before we sent makes us finish the waiting step first, in order.)
        if let Some(current) = &mut self.receiver {
            skip_to(&mut current.chain, current.ratchet, msg.previous_counter, &mut self.skipped)?;
        }
        self.complete_ratchet()?;
        let (root, receiving) = self.root.create_chain(ns, &msg.ratchet_key, &self.sender_ratchet.private)?;
        self.root = root;
        self.next_ratchet = Some(PrivateKey::generate(rng));
        self.previous_receiver = self.receiver.take();
        let mut chain = ReceiverChain { ratchet: msg.ratchet_key, chain: receiving };
        let seed = key_on_chain(&mut chain.chain, chain.ratchet, msg.counter, &mut self.skipped)?;
        self.receiver = Some(chain);
        Ok(seed)
    }

    /// Decrypts a ratchet message of the session's namespace. Call on a copy: on error the copy is
    /// garbage.
    pub(crate) fn decrypt(
        &mut self,
        our: &LocalIdentity,
        msg: &Incoming<'_>,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Vec<u8>, SessionError> {
        let keys = self.message_key(msg, rng)?.expand(self.ns);
        let plaintext = match self.ns {
            Namespace::Oldmemo => open_0_3(&keys, &self.remote_identity, &our.curve, msg)?,
            Namespace::Twomemo => open_v2(&keys, &self.associated_v2(our)?, msg)?,
        };
        // The peer answered on this session: it has it, no more key exchanges needed.
        self.pending = None;
        self.received_since_send = self.received_since_send.saturating_add(1);
        self.sent_since_receive = 0;
        Ok(plaintext)
    }
}

/// What sending one message changed in a session: its sending chain moved on (and the counters of the
/// life cycle). A store persists this small delta instead of the whole record after a group send, and
/// applies it to the record when it reads it again ([`SessionRecord::apply_step`]).
#[derive(Clone, PartialEq, Eq, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub struct SendStep {
    /// The first bytes of the sending ratchet key the chain belongs to: a step applies only to that
    /// state. (The key is a random curve point: another chain's key shares these 8 bytes with
    /// probability 2^-64. The tag guards against an inconsistent store, not against an attacker, who
    /// could write any record.)
    ratchet_tag: [u8; SendStep::TAG_LEN],
    chain_key: [u8; 32],
    index: u32,
    sent_since_receive: u32,
}

impl fmt::Debug for SendStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendStep").field("index", &self.index).finish_non_exhaustive()
    }
}

impl SendStep {
    /// Encoded size: a version byte, the ratchet key's tag, the chain key, two counters.
    pub const ENCODED_LEN: usize = 1 + Self::TAG_LEN + 32 + 4 + 4;
    const VERSION: u8 = 2;
    const TAG_LEN: usize = 8;
    /// The first stored form (version 1, 73 bytes) held the whole ratchet key; it is still read.
    const V1_LEN: usize = 1 + 32 + 32 + 4 + 4;

    /// The tag of a sending ratchet key.
    fn tag_of(ratchet: &PublicKey) -> [u8; Self::TAG_LEN] {
        let mut tag = [0u8; Self::TAG_LEN];
        tag.copy_from_slice(&ratchet.as_bytes()[..Self::TAG_LEN]);
        tag
    }

    /// The stored form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::ENCODED_LEN);
        self.write_to(&mut out);
        out
    }

    /// The stored form, replacing what `out` held (a store overwrites a step in place). The old bytes are
    /// zeroized first: they hold an earlier chain key.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        zeroize::Zeroize::zeroize(out);
        out.push(Self::VERSION);
        out.extend_from_slice(&self.ratchet_tag);
        out.extend_from_slice(&self.chain_key);
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&self.sent_since_receive.to_be_bytes());
    }

    /// Reads the stored form (this version's, or the first one's).
    pub fn from_bytes(b: &[u8]) -> Result<Self, crate::StoreError> {
        let bad = crate::StoreError::Corrupt("session step");
        // Where the chain key starts: after the tag, or after version 1's whole ratchet key.
        let key_at = match (b.first(), b.len()) {
            (Some(&Self::VERSION), Self::ENCODED_LEN) => 1 + Self::TAG_LEN,
            (Some(1), Self::V1_LEN) => 1 + 32,
            _ => return Err(bad),
        };
        let word = |at: usize| b.get(at..at + 4).and_then(|w| w.try_into().ok()).map(u32::from_be_bytes);
        let (Some(ratchet_tag), Some(chain_key), Some(index), Some(sent_since_receive)) =
            (b.get(1..1 + Self::TAG_LEN), b.get(key_at..key_at + 32), word(key_at + 32), word(key_at + 36))
        else {
            return Err(bad);
        };
        let (Ok(ratchet_tag), Ok(chain_key)) = (ratchet_tag.try_into(), chain_key.try_into()) else { return Err(bad) };
        Ok(Self { ratchet_tag, chain_key, index, sent_since_receive })
    }

    /// The counter of the next message on the chain.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// A step applies only to the sending chain of its ratchet key, and never moves it back; anything
    /// else means the store is inconsistent.
    fn check(&self, ratchet: &PublicKey, chain: &ChainKey, due: bool) -> Result<(), crate::StoreError> {
        // (A record whose chain is spent was written whole after the last send, which drops its step.)
        if due {
            return Err(crate::StoreError::Corrupt("session step for a spent sending chain"));
        }
        if Self::tag_of(ratchet) != self.ratchet_tag {
            return Err(crate::StoreError::Corrupt("session step of another sending chain"));
        }
        if self.index < chain.index {
            return Err(crate::StoreError::Corrupt("session step behind its record"));
        }
        Ok(())
    }
}

/// What sending needs of a session's current state, and nothing more: no root key, no ratchet private
/// key, no receiving chains or skipped keys. A group send reads this for every device
/// ([`crate::SessionStore::send_states`]), which a store decodes from a stored record without
/// allocating, wraps the message key with it, and persists the [`SendStep`] it ends with.
#[derive(Clone)]
pub struct SendState {
    pub(crate) ns: Namespace,
    pub(crate) remote_identity: PublicKey,
    pub(crate) remote_identity_ed25519: Option<[u8; 32]>,
    pub(crate) initiator: bool,
    pub(crate) base_key: PublicKey,
    pub(crate) sender_ratchet: PublicKey,
    /// Zeroized on drop (its own `ZeroizeOnDrop`).
    pub(crate) sender_chain: ChainKey,
    pub(crate) previous_counter: u32,
    pub(crate) pending: Option<PendingKeyExchange>,
    pub(crate) received_since_send: u32,
    pub(crate) sent_since_receive: u32,
    /// The sending half of a DH ratchet step waits ([`SessionState::complete_ratchet`]): the chain
    /// here is spent, and the whole record is needed to send.
    pub(crate) ratchet_due: bool,
}

impl fmt::Debug for SendState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendState")
            .field("ns", &self.ns)
            .field("remote_identity", &self.remote_identity)
            .field("sent", &self.sender_chain.index())
            .field("pending_key_exchange", &self.pending.is_some())
            .field("sent_since_receive", &self.sent_since_receive)
            .field("ratchet_due", &self.ratchet_due)
            .finish_non_exhaustive()
    }
}

impl SendState {
    pub(crate) fn of(s: &SessionState) -> Self {
        Self {
            ns: s.ns,
            remote_identity: s.remote_identity,
            remote_identity_ed25519: s.remote_identity_ed25519,
            initiator: s.initiator,
            base_key: s.base_key,
            sender_ratchet: s.sender_ratchet.public,
            sender_chain: s.sender_chain.clone(),
            previous_counter: s.previous_counter,
            pending: s.pending.clone(),
            received_since_send: s.received_since_send,
            sent_since_receive: s.sent_since_receive,
            ratchet_due: s.ratchet_due(),
        }
    }

    /// The session's namespace.
    pub fn namespace(&self) -> Namespace {
        self.ns
    }

    /// The peer's identity key.
    pub fn remote_identity(&self) -> PublicKey {
        self.remote_identity
    }

    /// Will the next message be a key exchange (the peer has not answered on this session yet)?
    pub fn pending_key_exchange(&self) -> bool {
        self.pending.is_some()
    }

    /// Has the device not answered [`STALE_AFTER`] of our messages?
    pub fn is_stale(&self) -> bool {
        self.sent_since_receive >= STALE_AFTER
    }

    /// Does sending wait for the second half of a DH ratchet step (the peer sent a new ratchet key since
    /// we last sent)? Then this state cannot encrypt: the whole record must ([`SessionRecord::encrypt`]
    /// does that step first, [`SessionRecord::complete_ratchet`] alone).
    pub fn ratchet_due(&self) -> bool {
        self.ratchet_due
    }

    /// Encrypts `plaintext` (the key material) as a key element of the session's namespace, wrapped in
    /// the key exchange while the peer has not answered; returns the bytes and whether they are a key
    /// exchange. Advances the sending chain (see [`SendState::step`]).
    pub fn encrypt(&mut self, our: &LocalIdentity, plaintext: &[u8]) -> Result<(Vec<u8>, bool), SessionError> {
        let mut out = Vec::new();
        let kex = self.encrypt_into(our, plaintext, &mut out)?;
        Ok((out, kex))
    }

    /// [`SendState::encrypt`], appending the key element's bytes to `out` (a group send reuses one buffer
    /// for many devices); returns whether they are a key exchange. On an error `out` may hold a part of
    /// them, and the state has not advanced.
    pub fn encrypt_into(
        &mut self,
        our: &LocalIdentity,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<bool, SessionError> {
        if self.ratchet_due {
            return Err(SessionError::Internal("a DH ratchet step waits: encrypt with the whole record"));
        }
        let (seed, next) = self.sender_chain.advance().ok_or(SessionError::Internal("sending chain exhausted"))?;
        let keys = seed.expand(self.ns);
        let ratchet = self.sender_ratchet;
        let pn = self.previous_counter;
        match (self.ns, &self.pending) {
            (Namespace::Oldmemo, None) => {
                seal_0_3(&keys, &ratchet, pn, &our.curve, &self.remote_identity, plaintext, out)?
            }
            (Namespace::Oldmemo, Some(p)) => {
                let mut message = Vec::new();
                seal_0_3(&keys, &ratchet, pn, &our.curve, &self.remote_identity, plaintext, &mut message)?;
                let kex = PreKeySignalMessage {
                    pre_key_id: p.pre_key_id,
                    signed_pre_key_id: p.signed_pre_key_id,
                    base_key: self.base_key,
                    identity_key: our.curve,
                    message,
                };
                out.extend_from_slice(&kex.encode());
            }
            (Namespace::Twomemo, pending) => {
                let ad = associated_v2(self.initiator, self.remote_identity_ed25519, our)?;
                match pending {
                    None => seal_v2(&keys, &ratchet, pn, &ad, plaintext, out)?,
                    Some(p) => {
                        let pre_key_id =
                            p.pre_key_id.ok_or(SessionError::Internal("OMEMO 2 key exchange without pre-key"))?;
                        let mut message = Vec::new();
                        seal_v2(&keys, &ratchet, pn, &ad, plaintext, &mut message)?;
                        let kex = KeyExchange::encode(
                            pre_key_id,
                            p.signed_pre_key_id,
                            &our.ed25519,
                            &self.base_key,
                            &message,
                        );
                        out.extend_from_slice(&kex);
                    }
                }
            }
        }
        self.sender_chain = next;
        self.sent_since_receive = self.sent_since_receive.saturating_add(1);
        self.received_since_send = 0;
        Ok(self.pending.is_some())
    }

    /// Field-by-field equality, for the tests and fuzz targets (not in constant time: never use it to
    /// decide anything an attacker can time).
    pub(crate) fn same_as(&self, other: &Self) -> bool {
        self.ns == other.ns
            && self.remote_identity == other.remote_identity
            && self.remote_identity_ed25519 == other.remote_identity_ed25519
            && self.initiator == other.initiator
            && self.base_key == other.base_key
            && self.previous_counter == other.previous_counter
            && self.pending == other.pending
            && self.received_since_send == other.received_since_send
            && self.ratchet_due == other.ratchet_due
            && self.step() == other.step()
    }

    /// The sending chain as it is now, to be persisted as a delta of the stored record.
    pub fn step(&self) -> SendStep {
        SendStep {
            ratchet_tag: SendStep::tag_of(&self.sender_ratchet),
            chain_key: self.sender_chain.key,
            index: self.sender_chain.index,
            sent_since_receive: self.sent_since_receive,
        }
    }

    /// Applies a stored [`SendStep`] (the same checks as [`SessionRecord::apply_step`]).
    pub fn apply_step(&mut self, step: &SendStep) -> Result<(), crate::StoreError> {
        step.check(&self.sender_ratchet, &self.sender_chain, self.ratchet_due)?;
        self.sender_chain = ChainKey { key: step.chain_key, index: step.index };
        self.sent_since_receive = step.sent_since_receive;
        self.received_since_send = 0;
        Ok(())
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

    /// XEP-0384 heartbeat: have we received [`HEARTBEAT_AFTER`] messages on the current session without
    /// answering?
    pub fn heartbeat_due(&self) -> bool {
        self.current.as_ref().is_some_and(|s| s.received_since_send >= HEARTBEAT_AFTER)
    }

    /// Has the device not answered [`STALE_AFTER`] of our messages? Then we stop encrypting to it until
    /// it speaks.
    pub fn is_stale(&self) -> bool {
        self.current.as_ref().is_some_and(|s| s.sent_since_receive >= STALE_AFTER)
    }

    /// The current state's sending chain as it is now: what [`SessionRecord::encrypt`] changed, to be
    /// persisted as a delta.
    pub fn send_step(&self) -> Option<SendStep> {
        self.current.as_ref().map(|s| SendState::of(s).step())
    }

    /// What sending needs of the current state.
    pub fn send_state(&self) -> Option<SendState> {
        self.current.as_ref().map(SendState::of)
    }

    /// Applies a stored [`SendStep`] to the current state. It must belong to that state's sending
    /// ratchet key and must not move the chain back; anything else means the store is inconsistent.
    pub fn apply_step(&mut self, step: &SendStep) -> Result<(), crate::StoreError> {
        let state = self.current.as_mut().ok_or(crate::StoreError::Corrupt("session step without a session"))?;
        step.check(&state.sender_ratchet.public, &state.sender_chain, state.ratchet_due())?;
        state.sender_chain = ChainKey { key: step.chain_key, index: step.index };
        state.sent_since_receive = step.sent_since_receive;
        state.received_since_send = 0;
        Ok(())
    }

    /// Does the sending half of a DH ratchet step wait on the current state? ([`SendState::ratchet_due`])
    pub fn ratchet_due(&self) -> bool {
        self.current.as_ref().is_some_and(SessionState::ratchet_due)
    }

    /// Does the sending half of a waiting DH ratchet step on the current state (what
    /// [`SessionRecord::encrypt`] does first): afterwards [`SessionRecord::send_state`] can encrypt.
    pub fn complete_ratchet(&mut self) -> Result<(), SessionError> {
        self.current.as_mut().map_or(Ok(()), SessionState::complete_ratchet)
    }

    /// Messages sent on the current sending chain.
    pub fn sent_on_chain(&self) -> Option<u32> {
        self.current.as_ref().map(|s| s.sender_chain.index())
    }

    /// Encrypts `plaintext` (key material) for the peer on the current session, advancing its sending
    /// chain. Returns the key element bytes and whether they are a key exchange.
    pub fn encrypt(&mut self, our: &LocalIdentity, plaintext: &[u8]) -> Result<(Vec<u8>, bool), SessionError> {
        let state = self.current.as_mut().ok_or(SessionError::NoSession)?;
        let kex = state.pending.is_some();
        Ok((state.encrypt(our, plaintext)?, kex))
    }

    /// Makes the current state of `newer` (a record from [`crate::session::initiate_record`]) current
    /// here, archiving the previous one.
    pub fn absorb(&mut self, newer: SessionRecord) {
        if let Some(state) = newer.current {
            self.promote(state);
        }
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

    /// Decrypts a ratchet message with the current state, then with the archived ones. On success the
    /// state that worked is advanced and made current; on failure `self` is unchanged.
    pub(crate) fn decrypt(
        &mut self,
        our: &LocalIdentity,
        msg: &Incoming<'_>,
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
            match copy.decrypt(our, msg, rng) {
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
