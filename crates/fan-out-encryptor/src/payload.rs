//! Payload encryption.
//!
//! **OMEMO 2**: a random 32-byte key → HKDF-SHA-256(salt 0×32, info "OMEMO Payload", 80 bytes) → AES-256
//! key ‖ HMAC key ‖ IV; `<payload>` = AES-256-CBC(PKCS#7) of the SCE envelope; the per-device secret is
//! key (32) ‖ HMAC-SHA-256(ciphertext)[..16]. An empty message (no payload) carries 32 zero bytes.
//!
//! **OMEMO 0.3**: AES-128-GCM.
//!
//! `<payload>` is the ciphertext without its tag; the per-device secret is key (16) ‖ tag (16). Older
//! clients put only the 16-byte key in the key element and append the tag to `<payload>`; both layouts
//! are accepted. The IV is 12 bytes (16 from some older clients).

use aes_gcm::{
    aead::{consts::U16, AeadInPlace, KeyInit},
    Aes128Gcm, AesGcm, Nonce, Tag,
};
use rand_core::CryptoRngCore;
use session_store::primitives;
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

/// Length of the OMEMO 2 per-device secret: key (32) ‖ truncated HMAC (16).
pub const V2_KEY_MATERIAL_LEN: usize = 48;
/// What an OMEMO 2 empty message (heartbeat, session completion) carries instead of a key.
pub const V2_EMPTY_KEY_MATERIAL: [u8; 32] = [0; 32];

/// An OMEMO 2 payload and its per-device secret.
pub struct EncryptedPayloadV2 {
    /// The ciphertext for `<payload>`.
    pub ciphertext: Vec<u8>,
    /// key ‖ mac: what each device's ratchet encrypts.
    pub key_material: Zeroizing<[u8; V2_KEY_MATERIAL_LEN]>,
}

impl std::fmt::Debug for EncryptedPayloadV2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptedPayloadV2").field("len", &self.ciphertext.len()).finish_non_exhaustive()
    }
}

struct V2Keys {
    enc: Zeroizing<[u8; 32]>,
    auth: Zeroizing<[u8; 32]>,
    iv: [u8; 16],
}

fn v2_keys(key: &[u8]) -> V2Keys {
    let mut okm = Zeroizing::new([0u8; 80]);
    // 80 bytes is far below HKDF's limit.
    let _ = primitives::hkdf_sha256(None, key, b"OMEMO Payload", &mut okm[..]);
    let mut k = V2Keys { enc: Zeroizing::new([0; 32]), auth: Zeroizing::new([0; 32]), iv: [0; 16] };
    k.enc.copy_from_slice(&okm[..32]);
    k.auth.copy_from_slice(&okm[32..64]);
    k.iv.copy_from_slice(&okm[64..]);
    k
}

/// Encrypts an OMEMO 2 payload (the serialized SCE envelope) under a fresh key.
pub fn encrypt_v2(plaintext: &[u8], rng: &mut impl CryptoRngCore) -> EncryptedPayloadV2 {
    let mut key = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(&mut key[..]);
    encrypt_v2_with_key(&key, plaintext)
}

fn encrypt_v2_with_key(key: &[u8; 32], plaintext: &[u8]) -> EncryptedPayloadV2 {
    let k = v2_keys(&key[..]);
    let ciphertext = primitives::aes256_cbc_encrypt(&k.enc, &k.iv, plaintext);
    let mac = primitives::hmac_sha256(&k.auth[..], &[&ciphertext]);
    let mut key_material = Zeroizing::new([0u8; V2_KEY_MATERIAL_LEN]);
    key_material[..32].copy_from_slice(&key[..]);
    key_material[32..].copy_from_slice(&mac[..16]);
    EncryptedPayloadV2 { ciphertext, key_material }
}

/// Decrypts an OMEMO 2 payload with the per-device secret, checking its HMAC first (constant time).
pub fn decrypt_v2(key_material: &[u8], ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
    if key_material.len() != V2_KEY_MATERIAL_LEN {
        return Err(DecryptError::BadKeyMaterial(key_material.len()));
    }
    let k = v2_keys(&key_material[..32]);
    let mac = primitives::hmac_sha256(&k.auth[..], &[ciphertext]);
    if !session_store::keys::ct_eq(&mac[..16], &key_material[32..]) {
        return Err(DecryptError::BadPayload);
    }
    primitives::aes256_cbc_decrypt(&k.enc, &k.iv, ciphertext).map(Zeroizing::new).ok_or(DecryptError::BadPayload)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use rand_chacha::{rand_core::SeedableRng, ChaCha20Rng};

    use super::*;

    /// Known answers from python-omemo's twomemo (`tests/vectors/twomemo_kat.json`).
    #[test]
    fn v2_payload_matches_twomemo() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/vectors/twomemo_kat.json");
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let h = |x: &serde_json::Value| hex::decode(x.as_str().unwrap()).unwrap();
        let cases = v["payload"].as_array().unwrap();
        assert!(!cases.is_empty());
        for t in cases {
            let key: [u8; 32] = h(&t["key"]).try_into().unwrap();
            let p = encrypt_v2_with_key(&key, &h(&t["plaintext"]));
            assert_eq!(p.ciphertext, h(&t["ciphertext"]));
            assert_eq!(&p.key_material[32..], &h(&t["auth_tag"])[..]);
            assert_eq!(&decrypt_v2(&p.key_material[..], &h(&t["ciphertext"])).unwrap()[..], &h(&t["plaintext"])[..]);
        }
    }

    #[test]
    fn v2_round_trip_and_tamper() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let p = encrypt_v2(b"<envelope/>", &mut rng);
        assert_eq!(p.ciphertext.len(), 16);
        assert_eq!(&decrypt_v2(&p.key_material[..], &p.ciphertext).unwrap()[..], b"<envelope/>");
        let mut bad = p.ciphertext.clone();
        bad[3] ^= 1;
        assert!(matches!(decrypt_v2(&p.key_material[..], &bad), Err(DecryptError::BadPayload)));
        assert!(matches!(decrypt_v2(&p.key_material[..32], &p.ciphertext), Err(DecryptError::BadKeyMaterial(32))));
    }

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
