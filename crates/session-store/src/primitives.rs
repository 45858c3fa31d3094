//! The symmetric primitives OMEMO uses, in one place for every crate of the engine: HKDF-SHA-256,
//! HMAC-SHA-256 and AES-256-CBC with PKCS#7.
//!
//! An HMAC key is prepared once ([`HmacKey`]: the hash states after its inner and outer pad blocks)
//! and reused for every MAC under it: the sending chain takes two MACs per message under the chain key,
//! and HKDF's expansion one per 32 bytes under the pseudo-random key; HKDF without a salt (every
//! message key) starts from a key prepared once for the program.

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// SHA-256's initial hash value (FIPS 180-4, 5.3.3).
const SHA256_IV: [u32; 8] =
    [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

/// SHA-256's compression function over one 64-byte block (the sha2 crate's, with its SHA-NI path).
fn compress(state: &mut [u32; 8], block: &[u8; 64]) {
    sha2::compress256(state, std::slice::from_ref(sha2::digest::generic_array::GenericArray::from_slice(block)));
}

/// An HMAC-SHA-256 key, ready for any number of MACs: the hash states after its inner and outer pad
/// blocks (RFC 2104). A MAC starts from copies of them, so it costs only the compressions of its data
/// and of the outer block. Wiped when dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct HmacKey {
    inner: [u32; 8],
    outer: [u32; 8],
}

impl HmacKey {
    /// Prepares `key` (of any length: longer than a block, it is hashed first, as RFC 2104 says).
    pub fn new(key: &[u8]) -> Self {
        let mut block = [0u8; 64];
        if key.len() > 64 {
            let mut digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(key).into();
            block[..32].copy_from_slice(&digest);
            digest.zeroize();
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        // The inner pad block, then the outer one made from it in place: one buffer to wipe.
        let mut states = [SHA256_IV; 2];
        block.iter_mut().for_each(|b| *b ^= 0x36);
        compress(&mut states[0], &block);
        block.iter_mut().for_each(|b| *b ^= 0x36 ^ 0x5c);
        compress(&mut states[1], &block);
        block.zeroize();
        let [inner, outer] = states;
        Self { inner, outer }
    }

    /// HMAC over the concatenation of `parts`.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut state = self.inner;
        let mut block = [0u8; 64];
        let mut fill = 0usize;
        // The pad block is the first 64 bytes of the inner hash's message.
        let mut length = 64u64;
        for part in parts {
            length += part.len() as u64;
            let mut rest = *part;
            while !rest.is_empty() {
                let take = rest.len().min(64 - fill);
                block[fill..fill + take].copy_from_slice(&rest[..take]);
                fill += take;
                rest = &rest[take..];
                if fill == 64 {
                    compress(&mut state, &block);
                    fill = 0;
                }
            }
        }
        let inner_hash = finish(&mut state, &mut block, fill, length);
        // The outer hash: its pad block (in the prepared state), then the inner hash in one block.
        let mut state = self.outer;
        block[..32].copy_from_slice(&inner_hash);
        // The stack copies of one MAC are left as the hash crates leave theirs (wiping them, byte by
        // byte, cost more than the copies saved here); the key's states are wiped with the key.
        finish(&mut state, &mut block, 32, 96)
    }
}

/// SHA-256's padding of a message of `length` bytes whose last `fill` bytes wait in `block`, and the
/// digest.
fn finish(state: &mut [u32; 8], block: &mut [u8; 64], fill: usize, length: u64) -> [u8; 32] {
    block[fill] = 0x80;
    block[fill + 1..].fill(0);
    if fill >= 56 {
        compress(state, block);
        block.fill(0);
    }
    block[56..].copy_from_slice(&(length * 8).to_be_bytes());
    compress(state, block);
    let mut digest = [0u8; 32];
    for (out, word) in digest.chunks_exact_mut(4).zip(state.iter()) {
        out.copy_from_slice(&word.to_be_bytes());
    }
    digest
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

/// The length of the AES-256-CBC/PKCS#7 ciphertext of `plaintext_len` bytes.
pub fn cbc_len(plaintext_len: usize) -> usize {
    (plaintext_len / 16 + 1) * 16
}

/// [`aes256_cbc_encrypt`], appending the ciphertext ([`cbc_len`] bytes) to `out`. (The space appended is
/// what the padding needs: the error cannot happen.)
pub fn aes256_cbc_encrypt_into(
    key: &[u8; 32],
    iv: &[u8; 16],
    plaintext: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), &'static str> {
    let at = out.len();
    out.resize(at + cbc_len(plaintext.len()), 0);
    let space = out.get_mut(at..).ok_or("no space for the ciphertext")?;
    cbc::Encryptor::<aes::Aes256Enc>::new(key.into(), iv.into())
        .encrypt_padded_b2b_mut::<Pkcs7>(plaintext, space)
        .map(|_| ())
        .map_err(|_| "no space for the padding")
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

    /// Keys and messages of every length around the block edges (the key hashed past 64 bytes; the
    /// padding in the same block or in one more), split into parts anywhere: the same MAC as the hmac
    /// crate's.
    #[test]
    fn hmac_matches_the_reference() {
        use hmac::Mac;
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
        let mut data = vec![0u8; 300];
        rng.fill_bytes(&mut data);
        for key_len in [0usize, 1, 31, 32, 55, 63, 64, 65, 100, 129] {
            let key = &data[200 - key_len..200];
            let ours = HmacKey::new(key);
            for msg_len in 0..=200 {
                let msg = &data[..msg_len];
                let mut reference = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key).unwrap();
                reference.update(msg);
                let expected: [u8; 32] = reference.finalize().into_bytes().into();
                let cut = (rng.next_u32() as usize) % (msg_len + 1);
                let cut2 = cut + (rng.next_u32() as usize) % (msg_len - cut + 1);
                let parts = [&msg[..cut], &msg[cut..cut2], &[][..], &msg[cut2..]];
                assert_eq!(ours.mac(&parts), expected, "key {key_len}, message {msg_len}, cut at {cut}, {cut2}");
                assert_eq!(ours.mac(&[msg]), expected);
            }
        }
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
            assert_eq!(ct.len(), cbc_len(len));
            let mut appended = vec![1, 2, 3];
            aes256_cbc_encrypt_into(&key, &iv, &pt, &mut appended).unwrap();
            assert_eq!((&appended[..3], &appended[3..]), (&[1u8, 2, 3][..], &ct[..]));
            assert_eq!(aes256_cbc_decrypt(&key, &iv, &ct).unwrap(), pt);
        }
        assert_eq!(aes256_cbc_decrypt(&[5u8; 32], &iv, &aes256_cbc_encrypt(&key, &iv, b"x")), None);
    }
}
