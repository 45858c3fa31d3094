//! The symmetric primitives OMEMO uses, in one place for every crate of the engine: HKDF-SHA-256,
//! HMAC-SHA-256 and AES-256-CBC with PKCS#7.

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};

pub use crate::ratchet::keys::hmac_sha256;

/// HKDF-SHA-256 (`salt = None` is 32 zero bytes). Fails only when `out` is over 8160 bytes.
pub fn hkdf_sha256(salt: Option<&[u8]>, ikm: &[u8], info: &[u8], out: &mut [u8]) -> Result<(), &'static str> {
    crate::ratchet::keys::hkdf(salt, ikm, info, out)
}

/// AES-256-CBC with PKCS#7 padding.
pub fn aes256_cbc_encrypt(key: &[u8; 32], iv: &[u8; 16], plaintext: &[u8]) -> Vec<u8> {
    cbc::Encryptor::<aes::Aes256>::new(key.into(), iv.into()).encrypt_padded_vec_mut::<Pkcs7>(plaintext)
}

/// AES-256-CBC decryption; `None` when the padding is wrong.
pub fn aes256_cbc_decrypt(key: &[u8; 32], iv: &[u8; 16], ciphertext: &[u8]) -> Option<Vec<u8>> {
    cbc::Decryptor::<aes::Aes256>::new(key.into(), iv.into()).decrypt_padded_vec_mut::<Pkcs7>(ciphertext).ok()
}
