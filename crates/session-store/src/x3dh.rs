//! X3DH key agreement for both namespaces: initiator from a bundle, responder from a key exchange.
//!
//! ```text
//! secret = 0xFF×32 ‖ DH(IK_A, SPK_B) ‖ DH(EK_A, IK_B) ‖ DH(EK_A, SPK_B) ‖ DH(EK_A, OPK_B)
//! root ‖ chain = HKDF-SHA-256(salt = 0×32, secret, info = "WhisperText" | "OMEMO X3DH", 64)
//! ```
//! The initiator then steps the root chain once with a fresh ratchet key against SPK_B (its first
//! sending chain); the responder's ratchet key is SPK_B until the first message arrives.

use std::collections::VecDeque;

use rand_core::CryptoRngCore;
use zeroize::Zeroize;

use crate::{
    error::SessionError,
    keys::{KeyPair, PublicKey},
    namespace::Namespace,
    ratchet::{
        keys::{root_and_chain, ChainKey, RootKey},
        PendingKeyExchange, SessionState,
    },
    xeddsa,
};

/// What a device publishes so that others can start sessions with it (namespace-neutral).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreKeyBundle {
    /// The identity key (Curve25519).
    pub identity_key: PublicKey,
    /// The identity key as published in Ed25519 form (OMEMO 2 bundles); `None` for 0.3 bundles.
    pub identity_key_ed25519: Option<[u8; 32]>,
    /// Id of the signed pre-key.
    pub signed_pre_key_id: u32,
    /// The signed pre-key.
    pub signed_pre_key: PublicKey,
    /// Signature over the encoded signed pre-key by the identity key.
    pub signed_pre_key_signature: Vec<u8>,
    /// One-time pre-keys with their ids.
    pub pre_keys: Vec<(u32, PublicKey)>,
}

impl PreKeyBundle {
    /// Checks the signed pre-key's signature (OMEMO 0.3: XEdDSA over `0x05 ‖ spk`, sign bit in the
    /// signature).
    pub fn verify_0_3(&self) -> Result<(), SessionError> {
        if xeddsa::verify(&self.identity_key, &self.signed_pre_key.serialize(), &self.signed_pre_key_signature) {
            Ok(())
        } else {
            Err(SessionError::BadBundleSignature)
        }
    }

    /// Checks the signed pre-key's signature (OMEMO 2: Ed25519 by `<ik>` over the raw 32-byte key) and
    /// that `<ik>` and the Curve25519 identity agree.
    pub fn verify_v2(&self) -> Result<(), SessionError> {
        let ik = self.identity_key_ed25519.ok_or(SessionError::BadBundle("no Ed25519 identity key"))?;
        if crate::keys::ed25519_to_curve25519(&ik)? != self.identity_key {
            return Err(SessionError::BadBundle("identity key forms disagree"));
        }
        let sig: [u8; 64] =
            self.signed_pre_key_signature.as_slice().try_into().map_err(|_| SessionError::BadBundleSignature)?;
        if xeddsa::verify_ed25519(&ik, self.signed_pre_key.as_bytes(), &sig) {
            Ok(())
        } else {
            Err(SessionError::BadBundleSignature)
        }
    }

    /// Checks the bundle as `ns` defines it.
    pub fn verify(&self, ns: Namespace) -> Result<(), SessionError> {
        match ns {
            Namespace::Oldmemo => self.verify_0_3(),
            Namespace::Twomemo => self.verify_v2(),
        }
    }
}

fn derive(ns: Namespace, dhs: &[&[u8; 32]]) -> (RootKey, ChainKey) {
    let mut secret = Vec::with_capacity(32 * (dhs.len() + 1));
    secret.extend_from_slice(&[0xFF; 32]);
    for dh in dhs {
        secret.extend_from_slice(*dh);
    }
    let keys = root_and_chain(None, &secret, ns.x3dh_info());
    secret.zeroize();
    keys
}

/// Initiator: verifies the bundle, picks one of its pre-keys at random and builds a session whose
/// messages carry the key exchange until the peer answers.
pub(crate) fn initiate(
    ns: Namespace,
    our_identity: &KeyPair,
    bundle: &PreKeyBundle,
    rng: &mut impl CryptoRngCore,
) -> Result<SessionState, SessionError> {
    bundle.verify(ns)?;
    if bundle.pre_keys.is_empty() {
        return Err(SessionError::BadBundle("no pre-keys"));
    }
    let pick = (rng.next_u64() % bundle.pre_keys.len() as u64) as usize;
    let (pre_key_id, pre_key) = bundle.pre_keys[pick];
    let base = KeyPair::generate(rng);
    // The signed pre-key takes part in three agreements: converted for them once.
    let spk = bundle.signed_pre_key.prepare()?;
    let dh1 = our_identity.private.agree_prepared(&spk)?;
    let dh2 = base.private.agree(&bundle.identity_key)?;
    let dh3 = base.private.agree_prepared(&spk)?;
    let dh4 = base.private.agree(&pre_key)?;
    let (root, _responder_chain) = derive(ns, &[dh1.as_bytes(), dh2.as_bytes(), dh3.as_bytes(), dh4.as_bytes()]);
    let ratchet = KeyPair::generate(rng);
    let (root, sending) = root.create_chain_prepared(ns, &spk, &ratchet.private)?;
    Ok(SessionState {
        ns,
        remote_identity: bundle.identity_key,
        remote_identity_ed25519: bundle.identity_key_ed25519.filter(|_| ns == Namespace::Twomemo),
        initiator: true,
        base_key: base.public,
        root,
        sender_ratchet: ratchet,
        sender_chain: sending,
        previous_counter: 0,
        receiver: None,
        previous_receiver: None,
        skipped: VecDeque::new(),
        pending: Some(PendingKeyExchange { pre_key_id: Some(pre_key_id), signed_pre_key_id: bundle.signed_pre_key_id }),
        received_since_send: 0,
        sent_since_receive: 0,
        next_ratchet: None,
    })
}

/// Responder: the session a key exchange builds, before its embedded message is decrypted.
/// `their_identity_ed25519` is the `ik` of an OMEMO 2 key exchange.
pub(crate) fn respond(
    ns: Namespace,
    our_identity: &KeyPair,
    signed_pre_key: &KeyPair,
    pre_key: &KeyPair,
    their_identity: &PublicKey,
    their_identity_ed25519: Option<[u8; 32]>,
    base_key: &PublicKey,
) -> Result<SessionState, SessionError> {
    let dh1 = signed_pre_key.private.agree(their_identity)?;
    let dh2 = our_identity.private.agree(base_key)?;
    let dh3 = signed_pre_key.private.agree(base_key)?;
    let dh4 = pre_key.private.agree(base_key)?;
    let (root, chain) = derive(ns, &[dh1.as_bytes(), dh2.as_bytes(), dh3.as_bytes(), dh4.as_bytes()]);
    Ok(SessionState {
        ns,
        remote_identity: *their_identity,
        remote_identity_ed25519: their_identity_ed25519,
        initiator: false,
        base_key: *base_key,
        root,
        sender_ratchet: signed_pre_key.clone(),
        sender_chain: chain,
        previous_counter: 0,
        receiver: None,
        previous_receiver: None,
        skipped: VecDeque::new(),
        pending: None,
        received_since_send: 0,
        sent_since_receive: 0,
        next_ratchet: None,
    })
}
