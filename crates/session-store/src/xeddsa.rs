//! XEdDSA (Signal's specification): Ed25519-compatible signatures made with a Curve25519 private key,
//! and verification of the signatures OMEMO 0.3 bundles carry.
//!
//! A Curve25519 key has no Ed25519 sign bit. XEdDSA signers pick the Edwards key with sign bit 0 (negating
//! the scalar if needed); the libsignal legacy convention, which python-omemo follows, instead stores the
//! sign bit in the top bit of the signature's last byte. A verifier therefore takes that bit as the sign
//! bit, clears it, and verifies; our own signatures always carry 0 there and verify either way.

use curve25519_dalek::{edwards::EdwardsPoint, montgomery::MontgomeryPoint, scalar::Scalar};
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha512};
use zeroize::Zeroize;

use crate::keys::{PrivateKey, PublicKey};

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
    let mut r = Scalar::from_hash(
        Sha512::new().chain_update(prefix).chain_update(a_bytes).chain_update(message).chain_update(random),
    );
    let big_r = EdwardsPoint::mul_base(&r).compress().to_bytes();
    let h = Scalar::from_hash(Sha512::new().chain_update(big_r).chain_update(big_a).chain_update(message));
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
    let Ok(sig) = <[u8; SIGNATURE_LEN]>::try_from(sig) else {
        return false;
    };
    let sign_bit = (sig[63] & 0x80) >> 7;
    let mut sig = sig;
    sig[63] &= 0x7F;
    let Some(ed) = MontgomeryPoint(*public.as_bytes()).to_edwards(sign_bit) else {
        return false;
    };
    verify_ed25519(&ed.compress().to_bytes(), message, &sig)
}

/// Verifies a plain Ed25519 signature (strict: no small-order keys, canonical encodings).
pub fn verify_ed25519(public: &[u8; 32], message: &[u8], sig: &[u8; SIGNATURE_LEN]) -> bool {
    let Ok(vk) = VerifyingKey::from_bytes(public) else {
        return false;
    };
    vk.verify_strict(message, &Signature::from_bytes(sig)).is_ok()
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
