//! OMEMO 0.3 payload encryption: AES-128-GCM.
//!
//! `<payload>` is the ciphertext without its tag; the per-device secret is key (16) ‖ tag (16). Older
//! clients put only the 16-byte key in the key element and append the tag to `<payload>`; both layouts
//! are accepted. The IV is 12 bytes (16 from some older clients).

use aes_gcm::{
    aead::{consts::U16, AeadInPlace, KeyInit},
    Aes128Gcm, AesGcm, Nonce, Tag,
};
use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use crate::error::DecryptError;

type Aes128Gcm16 = AesGcm<aes::Aes128, U16>;

/// Length of the GCM tag.
pub const TAG_LEN: usize = 16;
/// Length of the AES key.
pub const KEY_LEN: usize = 16;

/// An encrypted payload with the key material for the ratchets.
pub struct EncryptedPayload {
    /// The IV for `<iv>`.
    pub iv: [u8; 12],
    /// The ciphertext for `<payload>` (no tag).
    pub ciphertext: Vec<u8>,
    /// key ‖ tag: what each device's ratchet encrypts.
    pub key_material: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for EncryptedPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptedPayload").field("len", &self.ciphertext.len()).finish_non_exhaustive()
    }
}

/// Encrypts `plaintext` once under a fresh key and IV.
pub fn encrypt(plaintext: &[u8], rng: &mut impl CryptoRngCore) -> EncryptedPayload {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    rng.fill_bytes(&mut key[..]);
    let mut iv = [0u8; 12];
    rng.fill_bytes(&mut iv);
    let cipher = Aes128Gcm::new((&*key).into());
    let mut ciphertext = plaintext.to_vec();
    // AES-GCM only fails for plaintexts over 64 GiB.
    let tag = cipher.encrypt_in_place_detached(Nonce::from_slice(&iv), b"", &mut ciphertext).unwrap_or_default();
    let mut key_material = Zeroizing::new([0u8; 32]);
    key_material[..KEY_LEN].copy_from_slice(&key[..]);
    key_material[KEY_LEN..].copy_from_slice(&tag);
    EncryptedPayload { iv, ciphertext, key_material }
}

/// A fresh random key for a key-transport (empty) message: no payload, no tag.
pub fn transport_key(rng: &mut impl CryptoRngCore) -> Zeroizing<[u8; KEY_LEN]> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    rng.fill_bytes(&mut key[..]);
    key
}

/// Decrypts `<payload>` with the key material from our key element.
pub fn decrypt(key_material: &[u8], iv: &[u8], payload: &[u8]) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
    let (key, tag, ciphertext) = match key_material.len() {
        32 => (&key_material[..KEY_LEN], &key_material[KEY_LEN..], payload),
        KEY_LEN if payload.len() >= TAG_LEN => {
            let (ct, tag) = payload.split_at(payload.len() - TAG_LEN);
            (key_material, tag, ct)
        }
        KEY_LEN => return Err(DecryptError::BadPayload),
        n => return Err(DecryptError::BadKeyMaterial(n)),
    };
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    let tag = Tag::from_slice(tag);
    let ok = match iv.len() {
        12 => Aes128Gcm::new(key.into()).decrypt_in_place_detached(Nonce::from_slice(iv), b"", &mut buf, tag),
        16 => Aes128Gcm16::new(key.into()).decrypt_in_place_detached(
            aes_gcm::Nonce::<U16>::from_slice(iv),
            b"",
            &mut buf,
            tag,
        ),
        n => return Err(DecryptError::BadIv(n)),
    };
    ok.map_err(|_| DecryptError::BadPayload)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use rand_chacha::{rand_core::SeedableRng, ChaCha20Rng};

    use super::*;

    #[test]
    fn both_layouts_and_iv_sizes() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let p = encrypt(b"hello world", &mut rng);
        assert_eq!(p.ciphertext.len(), 11);
        assert_eq!(&decrypt(&p.key_material[..], &p.iv, &p.ciphertext).unwrap()[..], b"hello world");
        // Older layout: 16-byte key, tag appended to the payload.
        let mut legacy = p.ciphertext.clone();
        legacy.extend_from_slice(&p.key_material[16..]);
        assert_eq!(&decrypt(&p.key_material[..16], &p.iv, &legacy).unwrap()[..], b"hello world");
        // Tampering.
        let mut bad = p.ciphertext.clone();
        bad[0] ^= 1;
        assert!(matches!(decrypt(&p.key_material[..], &p.iv, &bad), Err(DecryptError::BadPayload)));
        assert!(matches!(decrypt(&p.key_material[..], &p.iv[..8], &p.ciphertext), Err(DecryptError::BadIv(8))));
        assert!(matches!(decrypt(&[0; 20], &p.iv, &p.ciphertext), Err(DecryptError::BadKeyMaterial(20))));
        assert!(matches!(decrypt(&[0; 16], &p.iv, &[1, 2]), Err(DecryptError::BadPayload)));
        // A 16-byte IV (AES-GCM with a 128-bit nonce).
        let key = [7u8; 16];
        let iv = [9u8; 16];
        let mut ct = b"sixteen".to_vec();
        let tag = Aes128Gcm16::new((&key).into())
            .encrypt_in_place_detached(aes_gcm::Nonce::<U16>::from_slice(&iv), b"", &mut ct)
            .unwrap();
        let mut km = key.to_vec();
        km.extend_from_slice(&tag);
        assert_eq!(&decrypt(&km, &iv, &ct).unwrap()[..], b"sixteen");
    }
}
