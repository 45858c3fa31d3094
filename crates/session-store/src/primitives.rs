//! The symmetric primitives OMEMO uses, in one place for every crate of the engine: HKDF-SHA-256,
//! HMAC-SHA-256 and AES-256-CBC with PKCS#7.
//!
//! An HMAC key is prepared once ([`HmacKey`]: the hash states after its inner and outer pad blocks)
//! and reused for every MAC under it: the sending chain takes two MACs per message under the chain key,
//! and HKDF's expansion one per 32 bytes under the pseudo-random key; HKDF without a salt (every
//! message key) starts from a key prepared once for the program.

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use hmac::{Hmac, Mac};
use zeroize::Zeroize;

type HmacSha256 = Hmac<sha2::Sha256>;

/// An HMAC-SHA-256 key, ready for any number of MACs.
#[derive(Clone)]
pub struct HmacKey(HmacSha256);

impl HmacKey {
    /// Prepares `key` (of any length: longer than a block, it is hashed first, as RFC 2104 says).
    pub fn new(key: &[u8]) -> Self {
        // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
        Self(<HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable_hmac()))
    }

    /// HMAC over the concatenation of `parts`.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = self.0.clone();
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }
}

#[cold]
fn unreachable_hmac() -> HmacSha256 {
    // `new_from_slice` only fails for fixed-size keys; HMAC takes any length. Fall back to an empty key
    // rather than panic: a wrong MAC is then the visible result.
    <HmacSha256 as hmac::digest::KeyInit>::new(&Default::default())
}

impl std::fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacKey(<redacted>)")
    }
}

/// HMAC-SHA-256 over the concatenation of `parts`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    HmacKey::new(key).mac(parts)
}

/// HKDF-SHA-256 (RFC 5869; `salt = None` is 32 zero bytes, which HMAC treats as the empty key). Fails
/// only when `out` is over 255 × 32 = 8160 bytes.
pub fn hkdf_sha256(salt: Option<&[u8]>, ikm: &[u8], info: &[u8], out: &mut [u8]) -> Result<(), &'static str> {
    match salt {
        None => hkdf_sha256_salted(no_salt(), ikm, info, out),
        Some(salt) => hkdf_sha256_salted(&HmacKey::new(salt), ikm, info, out),
    }
}

/// The HMAC key of HKDF without a salt, prepared once (every message key is derived with it).
pub(crate) fn no_salt() -> &'static HmacKey {
    static NO_SALT: std::sync::OnceLock<HmacKey> = std::sync::OnceLock::new();
    NO_SALT.get_or_init(|| HmacKey::new(&[]))
}

/// [`hkdf_sha256`] with the salt already prepared as an HMAC key.
pub(crate) fn hkdf_sha256_salted(salt: &HmacKey, ikm: &[u8], info: &[u8], out: &mut [u8]) -> Result<(), &'static str> {
    if out.len() > 255 * 32 {
        return Err("hkdf output too long");
    }
    let mut prk = salt.mac(&[ikm]);
    let prk_key = HmacKey::new(&prk);
    prk.zeroize();
    let mut t = [0u8; 32];
    for (i, chunk) in out.chunks_mut(32).enumerate() {
        // At most 255 blocks (checked above).
        let counter = [(i + 1) as u8];
        let previous: &[u8] = if i == 0 { &[] } else { &t };
        let next = prk_key.mac(&[previous, info, &counter]);
        t = next;
        chunk.copy_from_slice(t.get(..chunk.len()).unwrap_or_default());
    }
    t.zeroize();
    Ok(())
}

/// AES-256-CBC with PKCS#7 padding.
pub fn aes256_cbc_encrypt(key: &[u8; 32], iv: &[u8; 16], plaintext: &[u8]) -> Vec<u8> {
    cbc::Encryptor::<aes::Aes256Enc>::new(key.into(), iv.into()).encrypt_padded_vec_mut::<Pkcs7>(plaintext)
}

/// AES-256-CBC decryption; `None` when the padding is wrong.
pub fn aes256_cbc_decrypt(key: &[u8; 32], iv: &[u8; 16], ciphertext: &[u8]) -> Option<Vec<u8>> {
    cbc::Decryptor::<aes::Aes256Dec>::new(key.into(), iv.into()).decrypt_padded_vec_mut::<Pkcs7>(ciphertext).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use rand_core::{RngCore, SeedableRng};

    use super::*;

    #[test]
    fn hkdf_matches_the_reference() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(8);
        for out_len in [0usize, 1, 31, 32, 33, 64, 80, 100, 255 * 32] {
            for salt_len in [0usize, 32, 80] {
                let (mut salt, mut ikm, mut info) = (vec![0u8; salt_len], vec![0u8; 45], vec![0u8; 26]);
                rng.fill_bytes(&mut salt);
                rng.fill_bytes(&mut ikm);
                rng.fill_bytes(&mut info);
                let salt = (salt_len > 0).then_some(&salt[..]);
                let mut ours = vec![0u8; out_len];
                let mut theirs = vec![0u8; out_len];
                hkdf_sha256(salt, &ikm, &info, &mut ours).unwrap();
                hkdf::Hkdf::<sha2::Sha256>::new(salt, &ikm).expand(&info, &mut theirs).unwrap();
                assert_eq!(ours, theirs, "salt {salt_len}, out {out_len}");
            }
        }
        assert!(hkdf_sha256(None, b"x", b"", &mut [0u8; 255 * 32 + 1]).is_err());
    }

    /// RFC 4231 test cases 1, 2 and 6 (a key longer than a block).
    #[test]
    fn hmac_rfc_4231() {
        let cases: [(&[u8], &[u8], &str); 3] = [
            (&[0x0b; 20], b"Hi There", "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
            (
                b"Jefe",
                b"what do ya want for nothing?",
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First",
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
        ];
        for (key, msg, mac) in cases {
            assert_eq!(hex::encode(hmac_sha256(key, &[msg])), mac);
        }
    }

    /// RFC 5869 test cases 1 and 3 (no salt, no info).
    #[test]
    fn hkdf_rfc_5869() {
        let ikm = [0x0b; 22];
        let salt: Vec<u8> = (0u8..=0x0c).collect();
        let info: Vec<u8> = (0xf0u8..=0xf9).collect();
        let mut okm = [0u8; 42];
        hkdf_sha256(Some(&salt), &ikm, &info, &mut okm).unwrap();
        assert_eq!(
            hex::encode(okm),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        );
        hkdf_sha256(None, &ikm, &[], &mut okm).unwrap();
        assert_eq!(
            hex::encode(okm),
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
        );
    }

    #[test]
    fn cbc_round_trip_and_bad_padding() {
        let (key, iv) = ([3u8; 32], [4u8; 16]);
        for len in [0usize, 15, 16, 17, 32] {
            let pt = vec![9u8; len];
            let ct = aes256_cbc_encrypt(&key, &iv, &pt);
            assert_eq!(ct.len(), (len / 16 + 1) * 16);
            assert_eq!(aes256_cbc_decrypt(&key, &iv, &ct).unwrap(), pt);
        }
        assert_eq!(aes256_cbc_decrypt(&[5u8; 32], &iv, &aes256_cbc_encrypt(&key, &iv, b"x")), None);
    }
}
