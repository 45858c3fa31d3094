//! Our own device: identity key, signed pre-key, one-time pre-keys.

use std::fmt;

use rand_core::CryptoRngCore;

use crate::{
    changes::Changes,
    error::{SessionError, StoreError},
    keys::{random_device_id, DeviceId, KeyPair, PrivateKey, PublicKey},
    namespace::{Namespace, NamespaceSet},
    ratchet::LocalIdentity,
    traits::Store,
    x3dh::PreKeyBundle,
    xeddsa,
};

/// One-time pre-keys kept published (XEP-0384 asks for at least 20 in 0.3, 25 in OMEMO 2).
pub const PRE_KEY_COUNT: u32 = 100;

/// Signed pre-keys rotate after this many seconds (7 days); the previous one is kept one more period.
pub const SIGNED_PRE_KEY_ROTATION_SECS: u64 = 7 * 24 * 3600;

/// Our device.
#[derive(Clone)]
pub struct Account {
    /// Our bare JID.
    pub jid: String,
    /// Our device id.
    pub device_id: DeviceId,
    /// Our identity key pair (Curve25519; the Ed25519 form is derived for OMEMO 2).
    pub identity: KeyPair,
    /// The Ed25519 form of our identity public key (sign bit 0), derived from `identity`.
    identity_ed25519: [u8; 32],
    /// The id the next new pre-key gets: ids are never reused.
    pub next_pre_key_id: u32,
    /// The id the next signed pre-key gets.
    pub next_signed_pre_key_id: u32,
    /// The namespaces this device speaks.
    pub namespaces: NamespaceSet,
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            jid: _,
            device_id,
            identity,
            identity_ed25519: _,
            next_pre_key_id,
            next_signed_pre_key_id,
            namespaces,
        } = self;
        f.debug_struct("Account")
            .field("device_id", device_id)
            .field("identity", &identity.public)
            .field("namespaces", namespaces)
            .field("next_pre_key_id", next_pre_key_id)
            .field("next_signed_pre_key_id", next_signed_pre_key_id)
            .finish_non_exhaustive()
    }
}

/// A signed pre-key with its signature.
#[derive(Clone)]
pub struct SignedPreKeyRecord {
    /// Id.
    pub id: u32,
    /// The key pair.
    pub key_pair: KeyPair,
    /// XEdDSA signature by the identity key over `0x05 ‖ public`.
    pub signature: [u8; 64],
    /// Creation time, seconds since the Unix epoch.
    pub created_at: u64,
}

impl fmt::Debug for SignedPreKeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { id, key_pair, signature: _, created_at } = self;
        f.debug_struct("SignedPreKeyRecord")
            .field("id", id)
            .field("key_pair", key_pair)
            .field("created_at", created_at)
            .finish_non_exhaustive()
    }
}

/// A one-time pre-key.
#[derive(Clone, Debug)]
pub struct PreKeyRecord {
    /// Id.
    pub id: u32,
    /// The key pair.
    pub key_pair: KeyPair,
}

impl Account {
    /// An account from its stored parts.
    pub fn new(
        jid: String,
        device_id: DeviceId,
        identity: KeyPair,
        next_pre_key_id: u32,
        next_signed_pre_key_id: u32,
        namespaces: NamespaceSet,
    ) -> Self {
        let identity_ed25519 = xeddsa::ed25519_public(&identity.private);
        Self { jid, device_id, identity, identity_ed25519, next_pre_key_id, next_signed_pre_key_id, namespaces }
    }

    /// Creates a new device speaking `namespaces`: identity key, signed pre-key 1, pre-keys 1..=100.
    /// `taken` lists device ids already in use for this JID (from its device lists), which the new id
    /// avoids.
    pub fn create(
        jid: &str,
        namespaces: NamespaceSet,
        taken: &[DeviceId],
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Changes {
        Self::create_with_pre_keys(jid, namespaces, taken, now, PRE_KEY_COUNT, rng)
    }

    /// [`Account::create`] with `pre_keys` one-time pre-keys instead of the usual 100 (tests and
    /// benchmarks that need many devices quickly).
    pub fn create_with_pre_keys(
        jid: &str,
        namespaces: NamespaceSet,
        taken: &[DeviceId],
        now: u64,
        pre_keys: u32,
        rng: &mut impl CryptoRngCore,
    ) -> Changes {
        let device_id = loop {
            let id = random_device_id(rng);
            if !taken.contains(&id) {
                break id;
            }
        };
        let mut account = Account::new(jid.to_owned(), device_id, KeyPair::generate(rng), 1, 1, namespaces);
        let mut changes = Changes::default();
        changes.signed_pre_keys.push(account.new_signed_pre_key(now, rng));
        for _ in 0..pre_keys {
            changes.pre_keys.push(account.new_pre_key(rng));
        }
        changes.account = Some(account);
        changes
    }

    /// A new signed pre-key with the next id (the caller persists the account's new counter).
    pub fn new_signed_pre_key(&mut self, now: u64, rng: &mut impl CryptoRngCore) -> SignedPreKeyRecord {
        let key_pair = KeyPair::generate(rng);
        let mut z = [0u8; 64];
        rng.fill_bytes(&mut z);
        let signature = xeddsa::sign(&self.identity.private, &key_pair.public.serialize(), &z);
        let id = self.next_signed_pre_key_id;
        self.next_signed_pre_key_id = self.next_signed_pre_key_id.wrapping_add(1).max(1);
        SignedPreKeyRecord { id, key_pair, signature, created_at: now }
    }

    /// A new one-time pre-key with the next id. Ids only grow, so an id is never reused.
    pub fn new_pre_key(&mut self, rng: &mut impl CryptoRngCore) -> PreKeyRecord {
        let id = self.next_pre_key_id;
        self.next_pre_key_id = self.next_pre_key_id.wrapping_add(1).max(1);
        PreKeyRecord { id, key_pair: KeyPair::generate(rng) }
    }

    /// Restores an identity from its secret bytes (for stores).
    pub fn identity_from_secret(secret: [u8; 32]) -> KeyPair {
        KeyPair::from_private(PrivateKey::from_bytes(secret))
    }

    /// Our identity public key.
    pub fn identity_key(&self) -> PublicKey {
        self.identity.public
    }

    /// Our identity public key in Ed25519 form (OMEMO 2's `<ik>`).
    pub fn identity_key_ed25519(&self) -> [u8; 32] {
        self.identity_ed25519
    }

    /// Both forms of our identity key, as ratchet operations need them.
    pub fn local_identity(&self) -> LocalIdentity {
        LocalIdentity { curve: self.identity.public, ed25519: self.identity_ed25519 }
    }

    /// Our fingerprint (8 groups of 8 hex digits).
    pub fn fingerprint(&self) -> String {
        self.identity.public.fingerprint()
    }
}

/// The device-id collision check before a publish: `published` are the device ids on our JID's device
/// lists, each with the identity key its published bundle carries (`None` when there is no bundle). If
/// our id is there with another identity key, another device of this account took it first: we move to
/// a fresh id that avoids every listed one (our identity and pre-keys stay; nothing was published under
/// the old id). Returns the change set, or `None` when there is no collision.
pub fn resolve_device_id_collision(
    store: &impl Store,
    published: &[(DeviceId, Option<PublicKey>)],
    rng: &mut impl CryptoRngCore,
) -> Result<Option<Changes>, SessionError> {
    let mut account = store.account()?.ok_or(SessionError::NoAccount)?;
    let ours = account.identity.public;
    let collides = published.iter().any(|(id, key)| *id == account.device_id && key.is_some_and(|k| k != ours));
    if !collides {
        return Ok(None);
    }
    let taken: Vec<DeviceId> = published.iter().map(|(id, _)| *id).collect();
    account.device_id = loop {
        let id = random_device_id(rng);
        if !taken.contains(&id) && id != account.device_id {
            break id;
        }
    };
    Ok(Some(Changes { account: Some(account), ..Changes::default() }))
}

/// Our current bundle for `ns`: the newest signed pre-key and every one-time pre-key. The OMEMO 0.3
/// bundle carries the stored XEdDSA signature over `0x05 ‖ spk`; the OMEMO 2 bundle an Ed25519-valid
/// XEdDSA signature over the raw key, made here (its nonce input is derived from the key, so the same
/// bundle is published each time).
pub fn own_bundle_for(store: &impl Store, ns: Namespace) -> Result<PreKeyBundle, SessionError> {
    let mut bundle = own_bundle(store)?;
    if ns == Namespace::Twomemo {
        let account = store.account()?.ok_or(SessionError::NoAccount)?;
        let mut z = [0u8; 64];
        crate::primitives::hkdf_sha256(None, bundle.signed_pre_key.as_bytes(), b"omemo-muc spk nonce", &mut z)
            .map_err(SessionError::Internal)?;
        let sig = xeddsa::sign(&account.identity.private, bundle.signed_pre_key.as_bytes(), &z);
        bundle.signed_pre_key_signature = sig.to_vec();
        bundle.identity_key_ed25519 = Some(account.identity_ed25519);
    }
    Ok(bundle)
}

/// Our current OMEMO 0.3 bundle: the newest signed pre-key and every one-time pre-key.
pub fn own_bundle(store: &impl Store) -> Result<PreKeyBundle, SessionError> {
    let account = store.account()?.ok_or(SessionError::NoAccount)?;
    let spk = store
        .signed_pre_keys()?
        .into_iter()
        .max_by_key(|s| (s.created_at, s.id))
        .ok_or(StoreError::Corrupt("no signed pre-key"))?;
    let mut pre_keys: Vec<(u32, PublicKey)> =
        store.pre_keys()?.into_iter().map(|p| (p.id, p.key_pair.public)).collect();
    pre_keys.sort_by_key(|p| p.0);
    Ok(PreKeyBundle {
        identity_key: account.identity.public,
        identity_key_ed25519: None,
        signed_pre_key_id: spk.id,
        signed_pre_key: spk.key_pair.public,
        signed_pre_key_signature: spk.signature.to_vec(),
        pre_keys,
    })
}

/// Tops the pre-keys up to [`PRE_KEY_COUNT`] and rotates the signed pre-key when it is older than
/// [`SIGNED_PRE_KEY_ROTATION_SECS`] (keeping the previous one for one more period). Empty when nothing
/// is due.
pub fn maintain_keys(store: &impl Store, now: u64, rng: &mut impl CryptoRngCore) -> Result<Changes, SessionError> {
    let mut account = store.account()?.ok_or(SessionError::NoAccount)?;
    let mut changes = Changes::default();
    let have = store.pre_keys()?.len() as u32;
    for _ in have..PRE_KEY_COUNT {
        changes.pre_keys.push(account.new_pre_key(rng));
    }
    let mut spks = store.signed_pre_keys()?;
    spks.sort_by_key(|s| std::cmp::Reverse((s.created_at, s.id)));
    let newest_age = spks.first().map(|s| now.saturating_sub(s.created_at));
    if newest_age.is_none_or(|age| age >= SIGNED_PRE_KEY_ROTATION_SECS) {
        changes.signed_pre_keys.push(account.new_signed_pre_key(now, rng));
        // Keep the previous one (still referenced by key exchanges in flight); drop older ones.
        changes.removed_signed_pre_keys.extend(spks.iter().skip(1).map(|s| s.id));
    }
    if !changes.is_empty() {
        changes.account = Some(account);
    }
    Ok(changes)
}
