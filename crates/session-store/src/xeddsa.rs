//! XEdDSA (Signal's specification): Ed25519-compatible signatures made with a Curve25519 private key,
//! and verification of the signatures OMEMO 0.3 bundles carry.
//!
//! A Curve25519 key has no Ed25519 sign bit. XEdDSA signers pick the Edwards key with sign bit 0 (negating
//! the scalar if needed); the libsignal legacy convention, which python-omemo follows, instead stores the
//! sign bit in the top bit of the signature's last byte. A verifier therefore takes that bit as the sign
//! bit, clears it, and verifies; our own signatures always carry 0 there and verify either way.

use curve25519_dalek::{
    edwards::{CompressedEdwardsY, EdwardsPoint},
    montgomery::MontgomeryPoint,
    scalar::Scalar,
};
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha512};
use zeroize::Zeroize;

use crate::keys::{PrivateKey, PublicKey};

/// A SHA-512 digest reduced modulo the group order (Ed25519's and XEdDSA's hashes to scalars).
pub(crate) fn scalar_of_hash(hash: Sha512) -> Scalar {
    let mut wide: [u8; 64] = hash.finalize().into();
    let scalar = Scalar::from_bytes_mod_order_wide(&wide);
    wide.zeroize();
    scalar
}

/// Length of a signature.
pub const SIGNATURE_LEN: usize = 64;

/// The Ed25519 public key (sign bit 0) that XEdDSA signatures by `private` verify under, the scalar to
/// sign with, and the bytes of `a` that go into the nonce hash. Like libsignal and libxeddsa, the nonce
/// hash takes the clamped key as it is when no negation is needed, and `-k mod q` otherwise.
fn edwards_key(private: &PrivateKey) -> (Scalar, [u8; 32], [u8; 32]) {
    let k = Scalar::from_bytes_mod_order(*private.as_bytes());
    let big_a = EdwardsPoint::mul_base(&k).compress().to_bytes();
    if big_a[31] & 0x80 == 0 {
        return (k, big_a, *private.as_bytes());
    }
    let a = -k;
    (a, EdwardsPoint::mul_base(&a).compress().to_bytes(), a.to_bytes())
}

/// The Ed25519 form (sign bit 0) of a Curve25519 private key's public key.
pub fn ed25519_public(private: &PrivateKey) -> [u8; 32] {
    edwards_key(private).1
}

/// Signs `message` with XEdDSA. `random` is 64 fresh random bytes (the spec's Z).
pub fn sign(private: &PrivateKey, message: &[u8], random: &[u8; 64]) -> [u8; SIGNATURE_LEN] {
    let (mut a, big_a, mut a_bytes) = edwards_key(private);
    let mut prefix = [0xFFu8; 32];
    prefix[0] = 0xFE;
    let mut r = scalar_of_hash(
        Sha512::new().chain_update(prefix).chain_update(a_bytes).chain_update(message).chain_update(random),
    );
    let big_r = EdwardsPoint::mul_base(&r).compress().to_bytes();
    let h = scalar_of_hash(Sha512::new().chain_update(big_r).chain_update(big_a).chain_update(message));
    let s = r + h * a;
    a.zeroize();
    r.zeroize();
    a_bytes.zeroize();
    let mut sig = [0u8; SIGNATURE_LEN];
    sig[..32].copy_from_slice(&big_r);
    sig[32..].copy_from_slice(s.as_bytes());
    sig
}

/// Verifies an OMEMO 0.3 signature by the Curve25519 key `public` (sign bit in `sig[63] & 0x80`).
/// Refuses small-order keys and non-canonical signatures.
pub fn verify(public: &PublicKey, message: &[u8], sig: &[u8]) -> bool {
    Signed::xeddsa(public, message, sig).is_some_and(|s| s.check())
}

/// A signature made ready to check: the signer's Ed25519 point, the signature's R (as sent and
/// decoded) and s, and `k = SHA-512(R ‖ A ‖ message)`. Making it refuses what a strict Ed25519
/// verification refuses before its equation: a key or R that is not a point or has small order, and an s
/// that is not reduced.
#[derive(Clone)]
pub(crate) struct Signed {
    /// The signer's point (its u-coordinate is the Curve25519 key: usable for X25519 too).
    pub(crate) key: EdwardsPoint,
    r_bytes: [u8; 32],
    r: EdwardsPoint,
    s: Scalar,
    k: Scalar,
}

impl Signed {
    /// A plain Ed25519 signature by the key encoded as `public`.
    pub(crate) fn ed25519(public: &[u8; 32], message: &[u8], sig: &[u8; SIGNATURE_LEN]) -> Option<Self> {
        let key = CompressedEdwardsY(*public).decompress()?;
        Self::by(key, public, message, sig)
    }

    /// An XEdDSA signature by the Curve25519 key `public` (sign bit in `sig[63] & 0x80`).
    pub(crate) fn xeddsa(public: &PublicKey, message: &[u8], sig: &[u8]) -> Option<Self> {
        let mut sig = <[u8; SIGNATURE_LEN]>::try_from(sig).ok()?;
        let sign_bit = (sig[63] & 0x80) >> 7;
        sig[63] &= 0x7F;
        let key = MontgomeryPoint(*public.as_bytes()).to_edwards(sign_bit)?;
        Self::by(key, &key.compress().to_bytes(), message, &sig)
    }

    /// A signature by the point `key`, encoded as `key_bytes` (the caller decoded or converted it).
    pub(crate) fn by(
        key: EdwardsPoint,
        key_bytes: &[u8; 32],
        message: &[u8],
        sig: &[u8; SIGNATURE_LEN],
    ) -> Option<Self> {
        let mut r_bytes = [0u8; 32];
        let mut s_bytes = [0u8; 32];
        r_bytes.copy_from_slice(sig.get(..32)?);
        s_bytes.copy_from_slice(sig.get(32..)?);
        let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes))?;
        let r = CompressedEdwardsY(r_bytes).decompress()?;
        if key.is_small_order() || r.is_small_order() {
            return None;
        }
        let k = scalar_of_hash(Sha512::new().chain_update(r_bytes).chain_update(key_bytes).chain_update(message));
        Some(Self { key, r_bytes, r, s, k })
    }

    /// The strict check, alone: `R == [s]B − [k]A`, compared as encodings (what `verify_strict` does).
    pub(crate) fn check(&self) -> bool {
        let expected = EdwardsPoint::vartime_double_scalar_mul_basepoint(&self.k, &-self.key, &self.s);
        expected.compress().to_bytes() == self.r_bytes
    }
}

/// Checks many signatures at once: with fresh random 128-bit `z_i`,
/// `[8]·(Σ z_i·R_i + Σ (z_i·k_i)·A_i − (Σ z_i·s_i)·B)` must be the identity (one multi-scalar
/// multiplication instead of one double-scalar multiplication per signature). Every signature that
/// passes [`Signed::check`] passes here; a forgery passes with probability below 2⁻¹²⁵. The one
/// difference: this uses RFC 8032's cofactored equation, so a signature that is off only by a
/// small-order component also passes, and only the key's owner can make one (it proves nothing new
/// about the key). `false` says some signature failed, not which: check them alone to find out.
pub(crate) fn verify_batch(items: &[&Signed], rng: &mut impl CryptoRngCore) -> bool {
    use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
    let z: Vec<Scalar> = items
        .iter()
        .map(|_| {
            let mut bytes = [0u8; 32];
            rng.fill_bytes(&mut bytes[..16]);
            Scalar::from_bytes_mod_order(bytes)
        })
        .collect();
    let b: Scalar = items.iter().zip(&z).map(|(it, z)| z * it.s).sum();
    let scalars = std::iter::once(-b).chain(z.iter().copied()).chain(items.iter().zip(&z).map(|(it, z)| z * it.k));
    let points = std::iter::once(curve25519_dalek::constants::ED25519_BASEPOINT_POINT)
        .chain(items.iter().map(|it| it.r))
        .chain(items.iter().map(|it| it.key));
    EdwardsPoint::vartime_multiscalar_mul(scalars, points).mul_by_cofactor().is_identity()
}

/// Verifies a plain Ed25519 signature (strict: no small-order keys, canonical encodings).
pub fn verify_ed25519(public: &[u8; 32], message: &[u8], sig: &[u8; SIGNATURE_LEN]) -> bool {
    Signed::ed25519(public, message, sig).is_some_and(|s| s.check())
}

#[cfg(test)]
mod tests {
    use rand_chacha::rand_core::{RngCore, SeedableRng};

    use super::*;

    #[test]
    fn sign_verify_round_trip_and_rejections() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        for _ in 0..20 {
            let private = PrivateKey::generate(&mut rng);
            let public = private.public_key();
            let mut z = [0u8; 64];
            rng.fill_bytes(&mut z);
            let sig = sign(&private, b"hello", &z);
            assert_eq!(sig[63] & 0x80, 0);
            assert!(verify(&public, b"hello", &sig));
            assert!(!verify(&public, b"hellO", &sig));
            let mut bad = sig;
            bad[5] ^= 1;
            assert!(!verify(&public, b"hello", &bad));
            // A plain Ed25519 verifier accepts it under the sign-bit-0 Edwards key.
            assert!(verify_ed25519(&ed25519_public(&private), b"hello", &sig));
        }
        let private = PrivateKey::generate(&mut rng);
        assert!(!verify(&private.public_key(), b"x", &[0u8; 10]));
        assert!(!verify(&PublicKey::from_bytes([0; 32]), b"x", &[0u8; 64]));
    }
}
