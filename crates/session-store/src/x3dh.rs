//! X3DH key agreement for both namespaces: initiator from a bundle, responder from a key exchange.
//!
//! ```text
//! secret = 0xFF×32 ‖ DH(IK_A, SPK_B) ‖ DH(EK_A, IK_B) ‖ DH(EK_A, SPK_B) ‖ DH(EK_A, OPK_B)
//! root ‖ chain = HKDF-SHA-256(salt = 0×32, secret, info = "WhisperText" | "OMEMO X3DH", 64)
//! ```
//! The initiator then steps the root chain once with a fresh ratchet key against SPK_B (its first
//! sending chain); the responder's ratchet key is SPK_B until the first message arrives.

use std::collections::VecDeque;

use curve25519_dalek::{edwards::EdwardsPoint, montgomery::MontgomeryPoint};
use rand_core::CryptoRngCore;
use zeroize::{Zeroize, Zeroizing};

use crate::{
    error::SessionError,
    keys::{to_montgomery_batch, KeyPair, PreparedKey, PrivateKey, PublicKey, SharedSecret},
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
        self.check(Namespace::Oldmemo).map(|_| ())
    }

    /// Checks the signed pre-key's signature (OMEMO 2: Ed25519 by `<ik>` over the raw 32-byte key) and
    /// that `<ik>` and the Curve25519 identity agree.
    pub fn verify_v2(&self) -> Result<(), SessionError> {
        self.check(Namespace::Twomemo).map(|_| ())
    }

    /// Checks the bundle as `ns` defines it.
    pub fn verify(&self, ns: Namespace) -> Result<(), SessionError> {
        self.check(ns).map(|_| ())
    }

    /// The signature of the bundle as `ns` defines it, ready to check (alone or in a batch), with the
    /// identity key's point; what is wrong before the equation (forms that disagree, not a point, small
    /// order, a malformed signature) is refused here.
    fn signed(&self, ns: Namespace) -> Result<xeddsa::Signed, SessionError> {
        let ik = self.ed25519_identity(ns)?;
        if let Some((point, _)) = &ik {
            if !self.is_identity(&point.to_montgomery()) {
                return Err(FORMS_DISAGREE);
            }
        }
        self.signed_with(ik)
    }

    /// Whether `u` (an Ed25519 identity converted) is this bundle's Curve25519 identity.
    fn is_identity(&self, u: &MontgomeryPoint) -> bool {
        u.to_bytes() == *self.identity_key.as_bytes()
    }

    /// OMEMO 2: the published Ed25519 identity key, decoded (`None` for OMEMO 0.3, whose signature is
    /// by the Curve25519 key). Whether it agrees with the Curve25519 identity is checked next, by the
    /// caller ([`Self::signed`] alone, [`check_bundles`] for many with one inversion).
    fn ed25519_identity(&self, ns: Namespace) -> Result<Option<EdIdentity>, SessionError> {
        match ns {
            Namespace::Oldmemo => Ok(None),
            Namespace::Twomemo => {
                let ik = self.identity_key_ed25519.ok_or(SessionError::BadBundle("no Ed25519 identity key"))?;
                Ok(Some((crate::keys::ed25519_point(&ik)?, ik)))
            }
        }
    }

    /// [`Self::signed`] once the identity's forms agree; `ik` is what [`Self::ed25519_identity`] gave
    /// (`None`: OMEMO 0.3, XEdDSA by the Curve25519 key; else OMEMO 2, Ed25519 by `<ik>`).
    fn signed_with(&self, ik: Option<EdIdentity>) -> Result<xeddsa::Signed, SessionError> {
        let signed = match ik {
            None => xeddsa::Signed::xeddsa(
                &self.identity_key,
                &self.signed_pre_key.serialize(),
                &self.signed_pre_key_signature,
            ),
            Some((point, ik)) => {
                let sig: [u8; 64] = self
                    .signed_pre_key_signature
                    .as_slice()
                    .try_into()
                    .map_err(|_| SessionError::BadBundleSignature)?;
                xeddsa::Signed::by(point, &ik, self.signed_pre_key.as_bytes(), &sig)
            }
        };
        signed.ok_or(SessionError::BadBundleSignature)
    }

    /// Checks the bundle as `ns` defines it, keeping what X3DH needs of the check.
    pub fn check(&self, ns: Namespace) -> Result<CheckedBundle<'_>, SessionError> {
        let signed = self.signed(ns)?;
        if !signed.check() {
            return Err(SessionError::BadBundleSignature);
        }
        Ok(CheckedBundle::of(self, ns, &signed))
    }
}

/// A bundle whose signed pre-key signature verified, in its namespace, with its identity key already
/// on the Edwards curve for X3DH (the check converted it).
pub struct CheckedBundle<'a> {
    bundle: &'a PreKeyBundle,
    ns: Namespace,
    identity: PreparedKey,
}

impl<'a> CheckedBundle<'a> {
    fn of(bundle: &'a PreKeyBundle, ns: Namespace, signed: &xeddsa::Signed) -> Self {
        Self { bundle, ns, identity: PreparedKey::of_point(signed.key) }
    }

    /// The bundle.
    pub fn bundle(&self) -> &'a PreKeyBundle {
        self.bundle
    }

    /// Its namespace.
    pub fn namespace(&self) -> Namespace {
        self.ns
    }
}

impl std::fmt::Debug for CheckedBundle<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedBundle").field("bundle", &self.bundle).field("ns", &self.ns).finish_non_exhaustive()
    }
}

/// A published Ed25519 identity key: its point and its encoding.
type EdIdentity = (EdwardsPoint, [u8; 32]);

/// An OMEMO 2 bundle whose `<ik>` is not the Ed25519 form of its Curve25519 identity.
const FORMS_DISAGREE: SessionError = SessionError::BadBundle("identity key forms disagree");

/// From this many bundles on, [`check_bundles`] checks signatures in batches.
const BATCH_FROM: usize = 8;

/// [`check_bundles`] compares this many identities' two forms with one inversion.
const FORMS_CHUNK: usize = 64;

/// Checks many bundles (each in its namespace): the signatures in batches, one multi-scalar
/// multiplication per batch, spread over the cores; a batch that fails is checked one by one, so that
/// each bundle gets its own answer. See [`xeddsa::verify_batch`] for the one difference from checking
/// alone. Answers in the order asked.
pub fn check_bundles<'a>(
    bundles: &[(&'a PreKeyBundle, Namespace)],
    rng: &mut impl CryptoRngCore,
) -> Vec<Result<CheckedBundle<'a>, SessionError>> {
    use rayon::prelude::*;
    if bundles.len() < BATCH_FROM {
        return bundles.iter().map(|(b, ns)| b.check(*ns)).collect();
    }
    // The OMEMO 2 identities decoded, then compared with their Curve25519 forms a chunk at a time, each
    // chunk's conversions sharing one inversion (the keys are public).
    let identities: Vec<Result<Option<EdIdentity>, SessionError>> =
        bundles.par_iter().map(|(b, ns)| b.ed25519_identity(*ns)).collect();
    let forms_agree: Vec<bool> = identities
        .par_chunks(FORMS_CHUNK)
        .zip(bundles.par_chunks(FORMS_CHUNK))
        .flat_map_iter(|(ids, asked)| {
            let points: Vec<EdwardsPoint> =
                ids.iter().filter_map(|id| id.as_ref().ok().and_then(|id| id.as_ref().map(|(p, _)| *p))).collect();
            let mut u = EdwardsPoint::to_montgomery_batch(&points).into_iter();
            ids.iter()
                .zip(asked)
                .map(|(id, (bundle, _))| match id {
                    Ok(Some(_)) => u.next().is_some_and(|u| bundle.is_identity(&u)),
                    _ => true,
                })
                .collect::<Vec<bool>>()
        })
        .collect();
    let signed: Vec<Result<xeddsa::Signed, SessionError>> = bundles
        .par_iter()
        .map(|(b, _)| *b)
        .zip(identities)
        .zip(forms_agree)
        .map(|((b, id), agree)| match agree {
            true => b.signed_with(id?),
            false => Err(FORMS_DISAGREE),
        })
        .collect();
    // The well-formed ones, in batches (one per core, at least `BATCH_FROM` each), each with its own
    // generator for the random coefficients.
    let ok: Vec<usize> = signed.iter().enumerate().filter(|(_, s)| s.is_ok()).map(|(i, _)| i).collect();
    let per = ok.len().div_ceil(rayon::current_num_threads().max(1)).max(BATCH_FROM);
    let batches: Vec<(&[usize], [u8; 32])> = ok
        .chunks(per)
        .map(|c| {
            let mut seed = [0u8; 32];
            rng.fill_bytes(&mut seed);
            (c, seed)
        })
        .collect();
    let passed: Vec<bool> = batches
        .par_iter()
        .map(|(at, seed)| {
            let items: Vec<&xeddsa::Signed> =
                at.iter().filter_map(|&i| signed.get(i).and_then(|s| s.as_ref().ok())).collect();
            let mut rng = <rand_chacha::ChaCha20Rng as rand_core::SeedableRng>::from_seed(*seed);
            xeddsa::verify_batch(&items, &mut rng)
        })
        .collect();
    let mut batch_passed = vec![false; bundles.len()];
    for ((at, _), passed) in batches.iter().zip(passed) {
        for &i in *at {
            if let Some(p) = batch_passed.get_mut(i) {
                *p = passed;
            }
        }
    }
    bundles
        .par_iter()
        .zip(signed)
        .zip(batch_passed)
        .map(|(((bundle, ns), signed), batch_passed)| {
            let signed = signed?;
            if !batch_passed && !signed.check() {
                return Err(SessionError::BadBundleSignature);
            }
            Ok(CheckedBundle::of(bundle, *ns, &signed))
        })
        .collect()
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
    initiate_checked(our_identity, &bundle.check(ns)?, rng)
}

/// [`initiate`] from a bundle already checked.
pub(crate) fn initiate_checked(
    our_identity: &KeyPair,
    checked: &CheckedBundle<'_>,
    rng: &mut impl CryptoRngCore,
) -> Result<SessionState, SessionError> {
    let CheckedBundle { bundle, ns, identity } = checked;
    let ns = *ns;
    if bundle.pre_keys.is_empty() {
        return Err(SessionError::BadBundle("no pre-keys"));
    }
    let pick = (rng.next_u64() % bundle.pre_keys.len() as u64) as usize;
    let (pre_key_id, pre_key) = bundle.pre_keys[pick];
    let base = PrivateKey::generate(rng);
    let ratchet = PrivateKey::generate(rng);
    // The signed pre-key takes part in three agreements: converted for them once. The five agreements
    // and the two new public keys are points until one batch conversion (one inversion instead of seven).
    let spk = bundle.signed_pre_key.prepare()?;
    let points = Zeroizing::new([
        our_identity.private.agree_point(&spk),
        base.agree_point(identity),
        base.agree_point(&spk),
        base.agree_point(&pre_key.prepare()?),
        ratchet.agree_point(&spk),
        base.public_point(),
        ratchet.public_point(),
    ]);
    let u = to_montgomery_batch(&points[..]);
    let [dh1, dh2, dh3, dh4, first_step, base_public, ratchet_public] = u.as_slice() else {
        return Err(SessionError::Internal("batch conversion lost a point"));
    };
    let [dh1, dh2, dh3, dh4, first_step] = [dh1, dh2, dh3, dh4, first_step].map(|u| SharedSecret::of_u(*u));
    let (root, _responder_chain) = derive(ns, &[dh1?.as_bytes(), dh2?.as_bytes(), dh3?.as_bytes(), dh4?.as_bytes()]);
    let base = KeyPair { public: PublicKey::from_bytes(base_public.to_bytes()), private: base };
    let ratchet = KeyPair { public: PublicKey::from_bytes(ratchet_public.to_bytes()), private: ratchet };
    let (root, sending) = root.chain_from(ns, &first_step?);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use curve25519_dalek::{constants::EIGHT_TORSION, EdwardsPoint, Scalar};
    use rand_chacha::ChaCha20Rng;
    use rand_core::{RngCore, SeedableRng};
    use sha2::{Digest, Sha512};

    use super::*;
    use crate::{account, traits::AccountStore, Account, MemoryStore, NamespaceSet, Store};

    fn bundles(rng: &mut ChaCha20Rng) -> Vec<(PreKeyBundle, Namespace)> {
        let mut out = Vec::new();
        for who in ["a@example.org", "b@example.org", "c@example.org"] {
            let mut s = MemoryStore::default();
            s.apply(&Account::create(who, NamespaceSet::BOTH, &[], 0, rng)).unwrap();
            for ns in [Namespace::Oldmemo, Namespace::Twomemo] {
                out.push((account::own_bundle_for(&s, ns).unwrap(), ns));
            }
        }
        out
    }

    /// A batch answers each bundle as checking it alone does: good ones pass, and each bad one (a
    /// flipped bit in R or in s, a short signature, identity forms that disagree, another namespace's
    /// signature) gets the error it gets alone, wherever it stands in the batch, also across the chunks
    /// in which the identities' forms are compared.
    #[test]
    fn batch_answers_each_bundle_as_alone() {
        let mut rng = ChaCha20Rng::seed_from_u64(21);
        let good = bundles(&mut rng);
        let mut all: Vec<(PreKeyBundle, Namespace)> = (0..140).map(|i| good[i % good.len()].clone()).collect();
        let mut expected = Vec::new();
        // (Each base is even: a bundle keeps its namespace, which alternates with the index.)
        for base in [0, 50, 100] {
            all[base + 3].0.signed_pre_key_signature[2] ^= 1;
            all[base + 17].0.signed_pre_key_signature[40] ^= 1;
            all[base + 18].0.signed_pre_key_signature.truncate(63);
            // Another account's identity.
            all[base + 25].0.identity_key = good[(base + 25 + 2) % good.len()].0.identity_key;
            all[base + 31].1 = match all[base + 31].1 {
                Namespace::Oldmemo => Namespace::Twomemo,
                Namespace::Twomemo => Namespace::Oldmemo,
            };
            all[base + 39].0.signed_pre_key = good[(base + 39 + 2) % good.len()].0.signed_pre_key;
            let mut identity_point = [0u8; 32];
            identity_point[0] = 1;
            all[base + 9].0.identity_key_ed25519 = Some(identity_point);
            expected.extend([3, 9, 17, 18, 25, 31, 39].map(|i| base + i));
        }
        expected.sort();
        let refs: Vec<(&PreKeyBundle, Namespace)> = all.iter().map(|(b, ns)| (b, *ns)).collect();
        let batch = check_bundles(&refs, &mut rng);
        let mut bad = Vec::new();
        for (i, ((b, ns), got)) in refs.iter().zip(&batch).enumerate() {
            let alone = b.check(*ns);
            assert_eq!(got.as_ref().err(), alone.as_ref().err(), "bundle {i}");
            if got.is_err() {
                bad.push(i);
            }
        }
        assert_eq!(bad, expected);
        // Each says what is wrong.
        for base in [0, 50, 100] {
            assert_eq!(batch[base + 9].as_ref().err(), Some(&SessionError::Key(crate::KeyError::LowOrderPoint)));
            assert_eq!(batch[base + 25].as_ref().err(), Some(&FORMS_DISAGREE));
            assert_eq!(batch[base + 3].as_ref().err(), Some(&SessionError::BadBundleSignature));
        }
        // The identity point the check keeps agrees as the identity key does (X3DH's DH2 uses it).
        let probe = crate::PrivateKey::generate(&mut rng);
        for (got, (b, _)) in batch.iter().zip(&refs) {
            if let Ok(c) = got {
                let kept = probe.agree_prepared(&c.identity).unwrap();
                assert_eq!(kept.as_bytes(), probe.agree(&b.identity_key).unwrap().as_bytes());
            }
        }
    }

    /// A session built from a batch-checked bundle is the one built from the bundle alone (same
    /// randomness), and refuses nothing the single path accepts.
    #[test]
    fn sessions_from_checked_bundles_match() {
        let mut rng = ChaCha20Rng::seed_from_u64(22);
        let mut ours = MemoryStore::default();
        ours.apply(&Account::create("me@example.org", NamespaceSet::BOTH, &[], 0, &mut rng)).unwrap();
        let me = ours.account().unwrap().unwrap();
        let good = bundles(&mut rng);
        let all: Vec<(&PreKeyBundle, Namespace)> =
            (0..12).map(|i| (&good[i % good.len()].0, good[i % good.len()].1)).collect();
        for (checked, (b, ns)) in check_bundles(&all, &mut rng).into_iter().zip(&all) {
            let checked = checked.unwrap();
            let record = |state| {
                let mut r = crate::SessionRecord::default();
                r.promote(state);
                r.to_bytes()
            };
            let from_checked = initiate_checked(&me.identity, &checked, &mut ChaCha20Rng::seed_from_u64(5)).unwrap();
            let alone = initiate(*ns, &me.identity, b, &mut ChaCha20Rng::seed_from_u64(5)).unwrap();
            assert_eq!(record(from_checked), record(alone));
        }
    }

    /// The documented difference: a signature its key's owner made off by a small-order point fails
    /// the strict check alone and passes the batch (RFC 8032's cofactored equation); a forgery fails both.
    #[test]
    fn batch_uses_the_cofactored_equation() {
        let mut rng = ChaCha20Rng::seed_from_u64(23);
        let a = Scalar::from_bytes_mod_order(*b"owner's secret scalar, 32 bytes.");
        let key = EdwardsPoint::mul_base(&a).compress().to_bytes();
        let sign = |msg: &[u8], torsion: &EdwardsPoint, rng: &mut ChaCha20Rng| {
            let mut wide = [0u8; 64];
            rng.fill_bytes(&mut wide);
            let r = Scalar::from_bytes_mod_order_wide(&wide);
            let big_r = (EdwardsPoint::mul_base(&r) + torsion).compress().to_bytes();
            let k =
                crate::xeddsa::scalar_of_hash(Sha512::new().chain_update(big_r).chain_update(key).chain_update(msg));
            let mut sig = [0u8; 64];
            sig[..32].copy_from_slice(&big_r);
            sig[32..].copy_from_slice((r + k * a).as_bytes());
            sig
        };
        let honest: Vec<xeddsa::Signed> = (0..10u8)
            .map(|i| xeddsa::Signed::ed25519(&key, &[i], &sign(&[i], &EdwardsPoint::default(), &mut rng)).unwrap())
            .collect();
        assert!(honest.iter().all(xeddsa::Signed::check));
        let honest: Vec<&xeddsa::Signed> = honest.iter().collect();
        assert!(xeddsa::verify_batch(&honest, &mut rng));
        let crafted = xeddsa::Signed::ed25519(&key, b"x", &sign(b"x", &EIGHT_TORSION[1], &mut rng)).unwrap();
        assert!(!crafted.check());
        let mut with = honest.clone();
        with.push(&crafted);
        assert!(xeddsa::verify_batch(&with, &mut rng));
        // Signed by another key: fails alone and in the batch.
        let mut forged = sign(b"y", &EdwardsPoint::default(), &mut rng);
        forged[33] ^= 4;
        let forged = xeddsa::Signed::ed25519(&key, b"y", &forged).unwrap();
        assert!(!forged.check());
        let mut with = honest;
        with.insert(4, &forged);
        assert!(!xeddsa::verify_batch(&with, &mut rng));
    }
}
