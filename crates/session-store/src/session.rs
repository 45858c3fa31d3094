//! Session operations over a store, for both namespaces: start a session from a bundle, encrypt for a
//! device, decrypt from a device. Each returns what it changed as [`Changes`]; nothing is written until the caller applies
//! them, and a failed operation changes nothing.

use std::fmt;

use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use crate::{
    account::Account,
    changes::{Changes, SessionAddress},
    error::SessionError,
    keys::{ed25519_to_curve25519, DeviceId, PublicKey},
    namespace::Namespace,
    ratchet::{Incoming, SessionRecord},
    traits::Store,
    trust::TrustLevel,
    wire::{
        v0_3::{PreKeySignalMessage, SignalMessage},
        v2::{AuthenticatedMessage, KeyExchange},
    },
    x3dh::{self, PreKeyBundle},
};

/// What we know of a peer device's identity key after an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityInfo {
    /// The identity key used.
    pub key: PublicKey,
    /// Its trust level.
    pub trust: TrustLevel,
    /// The key this device had before, when it changed. Reported, never silently accepted: the new key
    /// has its own trust, starting from the default.
    pub changed_from: Option<PublicKey>,
}

/// One encrypted key element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedKey {
    /// The bytes for the `<key>` element.
    pub data: Vec<u8>,
    /// Is it a key exchange (`prekey='true'` / `kex='true'`)?
    pub kex: bool,
}

/// A decrypted key element.
pub struct DecryptedKey {
    /// The key material.
    pub plaintext: Zeroizing<Vec<u8>>,
    /// Was it a key exchange?
    pub kex: bool,
    /// The sender's identity.
    pub identity: IdentityInfo,
    /// The pre-key the key exchange consumed (deleted and replaced in the change set).
    pub consumed_pre_key: Option<u32>,
    /// XEP-0384: answer with an empty message now, because this key exchange built a new session (so
    /// the initiator stops sending key exchanges), or because [`crate::ratchet::HEARTBEAT_AFTER`]
    /// messages arrived without our answering.
    pub reply_due: bool,
}

impl fmt::Debug for DecryptedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { plaintext: _, kex, identity, consumed_pre_key, reply_due } = self;
        f.debug_struct("DecryptedKey")
            .field("kex", kex)
            .field("identity", identity)
            .field("consumed_pre_key", consumed_pre_key)
            .field("reply_due", reply_due)
            .finish_non_exhaustive()
    }
}

fn trust_in(
    store: &impl Store,
    changes: &Changes,
    jid: &str,
    key: &PublicKey,
) -> Result<Option<TrustLevel>, SessionError> {
    if let Some((_, _, t)) = changes.trust.iter().rev().find(|(j, k, _)| j == jid && k == key) {
        return Ok(Some(*t));
    }
    Ok(store.trust(jid, key)?)
}

/// Looks `key` up for (`jid`, `device`), records it if new or changed, and gives new keys the default
/// trust (blind trust before verification).
pub fn check_identity(
    store: &impl Store,
    changes: &mut Changes,
    jid: &str,
    device: DeviceId,
    key: &PublicKey,
) -> Result<IdentityInfo, SessionError> {
    let known = match changes.identities.iter().rev().find(|(j, d, _)| j == jid && *d == device) {
        Some((_, _, k)) => Some(*k),
        None => store.identity(jid, device)?,
    };
    let decided = trust_in(store, changes, jid, key)?;
    let verified = match decided {
        Some(_) => false,
        None => store.any_verified(&[jid])?.first().copied().unwrap_or(false),
    };
    Ok(identity_decision(changes, jid, device, key, known, decided, verified))
}

/// [`check_identity`] for many devices at once, each on its own (as with a change set of its own, which
/// is returned with it): three batch reads of the store in all instead of three reads per device.
pub fn check_identities(
    store: &impl Store,
    devices: &[(&str, DeviceId, &PublicKey)],
) -> Result<Vec<(IdentityInfo, Changes)>, SessionError> {
    let known = store.identities(&devices.iter().map(|(j, d, _)| (*j, *d)).collect::<Vec<_>>())?;
    let decided = store.trusts(&devices.iter().map(|(j, _, k)| (*j, **k)).collect::<Vec<_>>())?;
    let undecided: Vec<&str> =
        devices.iter().zip(&decided).filter(|(_, t)| t.is_none()).map(|((j, _, _), _)| *j).collect();
    let mut verified = store.any_verified(&undecided)?.into_iter();
    Ok(devices
        .iter()
        .zip(known)
        .zip(decided)
        .map(|(((jid, device, key), known), decided)| {
            let verified = decided.is_none() && verified.next().unwrap_or(false);
            let mut changes = Changes::default();
            let info = identity_decision(&mut changes, jid, *device, key, known, decided, verified);
            (info, changes)
        })
        .collect())
}

/// What [`check_identity`] decides from what it read: a new or changed key is recorded; a key without
/// a decision gets the default trust (`verified`: some key of the JID was verified).
fn identity_decision(
    changes: &mut Changes,
    jid: &str,
    device: DeviceId,
    key: &PublicKey,
    known: Option<PublicKey>,
    decided: Option<TrustLevel>,
    verified: bool,
) -> IdentityInfo {
    if known != Some(*key) {
        changes.identities.push((jid.to_owned(), device, *key));
    }
    let trust = decided.unwrap_or_else(|| {
        let t = TrustLevel::default_for_new_key(verified);
        changes.trust.push((jid.to_owned(), *key, t));
        t
    });
    IdentityInfo { key: *key, trust, changed_from: known.filter(|k| k != key) }
}

fn load_record(
    store: &impl Store,
    changes: &Changes,
    addr: &SessionAddress,
) -> Result<Option<SessionRecord>, SessionError> {
    Ok(changes.session_now(addr, || store.session(addr))?)
}

/// Starts a session with `addr` (in its namespace) from the device's bundle (signature checked, one
/// pre-key picked at random). The new session becomes current; an earlier one is archived. Refuses
/// distrusted keys.
pub fn initiate(
    store: &impl Store,
    account: &Account,
    addr: &SessionAddress,
    bundle: &PreKeyBundle,
    changes: &mut Changes,
    rng: &mut impl CryptoRngCore,
) -> Result<IdentityInfo, SessionError> {
    let mut scratch = Changes::default();
    let identity = check_identity(store, &mut scratch, &addr.jid, addr.device, &bundle.identity_key)?;
    if identity.trust == TrustLevel::Distrusted {
        return Err(SessionError::Distrusted { jid: addr.jid.to_string(), device: addr.device });
    }
    let state = x3dh::initiate(addr.namespace, &account.identity, bundle, rng)?;
    let mut record = load_record(store, changes, addr)?.unwrap_or_default();
    record.promote(state);
    scratch.sessions.push((addr.clone(), record));
    changes.merge(scratch);
    Ok(identity)
}

/// The X3DH part of [`initiate`] alone, touching no store: a record holding just the new session.
/// Pure and `Send`, so that many sessions can be built in parallel; check the identity first
/// ([`check_identity`], refusing distrusted keys) and merge the result with [`SessionRecord::absorb`].
pub fn initiate_record(
    account: &Account,
    ns: Namespace,
    bundle: &PreKeyBundle,
    rng: &mut impl CryptoRngCore,
) -> Result<SessionRecord, SessionError> {
    initiate_record_checked(account, &bundle.check(ns)?, rng)
}

/// [`initiate_record`] from a bundle already checked ([`PreKeyBundle::check`],
/// [`x3dh::check_bundles`]).
pub fn initiate_record_checked(
    account: &Account,
    bundle: &x3dh::CheckedBundle<'_>,
    rng: &mut impl CryptoRngCore,
) -> Result<SessionRecord, SessionError> {
    let mut record = SessionRecord::default();
    record.promote(x3dh::initiate_checked(&account.identity, bundle, rng)?);
    Ok(record)
}

/// Encrypts `plaintext` for `addr` on the current session, advancing it in `changes`. Refuses devices
/// whose identity key is not trusted for encryption.
pub fn encrypt(
    store: &impl Store,
    account: &Account,
    addr: &SessionAddress,
    plaintext: &[u8],
    changes: &mut Changes,
) -> Result<EncryptedKey, SessionError> {
    let mut record = load_record(store, changes, addr)?.ok_or(SessionError::NoSession)?;
    let remote = record.remote_identity().ok_or(SessionError::NoSession)?;
    let trust = trust_in(store, changes, &addr.jid, &remote)?.unwrap_or(TrustLevel::Undecided);
    if !trust.may_encrypt() {
        return Err(SessionError::Untrusted { jid: addr.jid.to_string(), device: addr.device });
    }
    let (data, kex) = record.encrypt(&account.local_identity(), plaintext)?;
    changes.merge(Changes { sessions: vec![(addr.clone(), record)], ..Changes::default() });
    Ok(EncryptedKey { data, kex })
}

/// How many consumed pre-keys stay usable (hidden from the bundle) in live traffic: members of a room
/// fetch a new device's bundle at about the same time, and two of them may pick the same pre-key before
/// the replacement is published. Past this many, the oldest are deleted.
pub const LIVE_PRE_KEY_GRACE: usize = 20;

/// What happens to the one-time pre-key a key exchange used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PreKeyMode {
    /// Live traffic: hidden from the bundle and replaced at once; kept usable while fewer than
    /// [`LIVE_PRE_KEY_GRACE`] others are hidden, then deleted oldest first.
    #[default]
    Live,
    /// Catching up from an archive (MAM): hidden from the bundle (and replaced) but kept, because two
    /// senders may have used the same pre-key while we were offline; [`end_catch_up`] deletes it. The
    /// session-completion replies ([`DecryptedKey::reply_due`]) wait until then too (XEP-0384).
    CatchUp,
}

/// Ends a catch-up: the pre-keys hidden during it are deleted.
pub fn end_catch_up(store: &impl Store) -> Result<Changes, SessionError> {
    Ok(Changes { removed_pre_keys: store.hidden_pre_keys()?, ..Changes::default() })
}

/// The parts of a key exchange of either namespace that the responder needs.
struct KeyExchangeParts<'a> {
    pre_key_id: Option<u32>,
    signed_pre_key_id: u32,
    base_key: PublicKey,
    identity: PublicKey,
    identity_ed25519: Option<[u8; 32]>,
    message: Incoming<'a>,
}

/// Decrypts a key element from `from` (in its namespace). A key exchange is recognised by parsing the
/// element, whatever its `prekey`/`kex` attribute says. On success the change set holds the advanced
/// session, the consumed pre-key's deletion and its replacement, and the sender's identity; on failure
/// nothing changes.
pub fn decrypt(
    store: &impl Store,
    account: &Account,
    from: &SessionAddress,
    data: &[u8],
    rng: &mut impl CryptoRngCore,
) -> Result<(DecryptedKey, Changes), SessionError> {
    decrypt_with(store, account, from, data, PreKeyMode::Live, rng)
}

/// [`decrypt`], choosing what happens to a consumed pre-key (see [`PreKeyMode`]).
pub fn decrypt_with(
    store: &impl Store,
    account: &Account,
    from: &SessionAddress,
    data: &[u8],
    mode: PreKeyMode,
    rng: &mut impl CryptoRngCore,
) -> Result<(DecryptedKey, Changes), SessionError> {
    let (mut out, mut changes) = decrypt_any(store, account, from, data, mode, rng)?;
    // While catching up, the replies wait in the store until the catch-up ends.
    if mode == PreKeyMode::CatchUp && out.reply_due {
        changes.replies_due.push(from.clone());
        out.reply_due = false;
    }
    Ok((out, changes))
}

fn decrypt_any(
    store: &impl Store,
    account: &Account,
    from: &SessionAddress,
    data: &[u8],
    mode: PreKeyMode,
    rng: &mut impl CryptoRngCore,
) -> Result<(DecryptedKey, Changes), SessionError> {
    match from.namespace {
        Namespace::Oldmemo => {
            if let Ok(kex) = PreKeySignalMessage::parse(data) {
                let msg = SignalMessage::parse(&kex.message)?;
                let parts = KeyExchangeParts {
                    pre_key_id: kex.pre_key_id,
                    signed_pre_key_id: kex.signed_pre_key_id,
                    base_key: kex.base_key,
                    identity: kex.identity_key,
                    identity_ed25519: None,
                    message: (&msg).into(),
                };
                decrypt_key_exchange(store, account, from, parts, mode, rng)
            } else {
                let msg = SignalMessage::parse(data)?;
                decrypt_message(store, account, from, &(&msg).into(), rng)
            }
        }
        Namespace::Twomemo => {
            if let Ok(kex) = KeyExchange::parse(data) {
                let parts = KeyExchangeParts {
                    pre_key_id: Some(kex.pre_key_id),
                    signed_pre_key_id: kex.signed_pre_key_id,
                    base_key: kex.base_key,
                    identity: ed25519_to_curve25519(&kex.identity_key)?,
                    identity_ed25519: Some(kex.identity_key),
                    message: (&kex.message).into(),
                };
                decrypt_key_exchange(store, account, from, parts, mode, rng)
            } else {
                let msg = AuthenticatedMessage::parse(data)?;
                decrypt_message(store, account, from, &(&msg).into(), rng)
            }
        }
    }
}

fn decrypt_key_exchange(
    store: &impl Store,
    account: &Account,
    from: &SessionAddress,
    kex: KeyExchangeParts<'_>,
    mode: PreKeyMode,
    rng: &mut impl CryptoRngCore,
) -> Result<(DecryptedKey, Changes), SessionError> {
    let our = account.local_identity();
    let mut changes = Changes::default();
    let mut record = store.session(from)?.unwrap_or_default();
    let identity = check_identity(store, &mut changes, &from.jid, from.device, &kex.identity)?;
    if !identity.trust.may_decrypt() {
        return Err(SessionError::Distrusted { jid: from.jid.to_string(), device: from.device });
    }
    let mut consumed_pre_key = None;
    let plaintext = if record.find_base_key(&kex.base_key).is_some() {
        // The initiator repeats its key exchange until we answer: same session, just decrypt.
        record.decrypt(&our, &kex.message, rng)?
    } else {
        // A new session only with a device its owner published (when we know the list at all).
        if let Some(list) = store.device_list(from.namespace, &from.jid)? {
            if !list.contains(&from.device) {
                return Err(SessionError::UnknownDevice { jid: from.jid.to_string(), device: from.device });
            }
        }
        let spk = store
            .signed_pre_key(kex.signed_pre_key_id)?
            .ok_or(SessionError::UnknownSignedPreKey(kex.signed_pre_key_id))?;
        let pre_key_id = kex.pre_key_id.ok_or(SessionError::MissingPreKey)?;
        let pre_key = store.pre_key(pre_key_id)?.ok_or(SessionError::UnknownPreKey(pre_key_id))?;
        let mut state = x3dh::respond(
            from.namespace,
            &account.identity,
            &spk.key_pair,
            &pre_key.key_pair,
            &kex.identity,
            kex.identity_ed25519,
            &kex.base_key,
        )?;
        let plaintext = state.decrypt(&our, &kex.message, rng)?;
        record.promote(state);
        // Only now that the key exchange decrypted: hide the pre-key and publish a replacement (unless a
        // replacement was made when it was first used).
        let mut hidden = store.hidden_pre_keys()?;
        if !hidden.contains(&pre_key_id) {
            let mut fresh = store.account()?.ok_or(SessionError::NoAccount)?;
            changes.pre_keys.push(fresh.new_pre_key(rng));
            changes.account = Some(fresh);
            changes.hidden_pre_keys.push(pre_key_id);
            hidden.push(pre_key_id);
        }
        if mode == PreKeyMode::Live {
            hidden.sort_unstable();
            let excess = hidden.len().saturating_sub(LIVE_PRE_KEY_GRACE);
            changes.removed_pre_keys.extend(hidden.into_iter().filter(|id| *id != pre_key_id).take(excess));
        }
        consumed_pre_key = Some(pre_key_id);
        plaintext
    };
    let reply_due = consumed_pre_key.is_some() || record.heartbeat_due();
    changes.sessions.push((from.clone(), record));
    Ok((
        DecryptedKey { plaintext: Zeroizing::new(plaintext), kex: true, identity, consumed_pre_key, reply_due },
        changes,
    ))
}

fn decrypt_message(
    store: &impl Store,
    account: &Account,
    from: &SessionAddress,
    msg: &Incoming<'_>,
    rng: &mut impl CryptoRngCore,
) -> Result<(DecryptedKey, Changes), SessionError> {
    let mut changes = Changes::default();
    let mut record = store.session(from)?.unwrap_or_default();
    let remote = record.remote_identity().ok_or(SessionError::NoSession)?;
    let identity = check_identity(store, &mut changes, &from.jid, from.device, &remote)?;
    if !identity.trust.may_decrypt() {
        return Err(SessionError::Distrusted { jid: from.jid.to_string(), device: from.device });
    }
    let plaintext = record.decrypt(&account.local_identity(), msg, rng)?;
    let reply_due = record.heartbeat_due();
    changes.sessions.push((from.clone(), record));
    Ok((
        DecryptedKey { plaintext: Zeroizing::new(plaintext), kex: false, identity, consumed_pre_key: None, reply_due },
        changes,
    ))
}
