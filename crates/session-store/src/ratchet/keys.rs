//! The three KDF chains of the Double Ratchet: root key, chain key, message keys.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::{
    error::KeyError,
    keys::{PrivateKey, PublicKey, SharedSecret},
    namespace::Namespace,
    primitives::{hkdf_sha256, hkdf_sha256_salted, no_salt, HmacKey},
};

/// The root key.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct RootKey(pub(crate) [u8; 32]);

impl RootKey {
    /// One DH ratchet step: `HKDF(salt = root, ikm = DH(our, their), info)` → new root key ‖ chain key.
    pub fn create_chain(
        &self,
        ns: Namespace,
        their: &PublicKey,
        our: &PrivateKey,
    ) -> Result<(RootKey, ChainKey), KeyError> {
        Ok(self.chain_from(ns, &our.agree(their)?))
    }

    /// The root step for an agreement already made.
    pub(crate) fn chain_from(&self, ns: Namespace, shared: &SharedSecret) -> (RootKey, ChainKey) {
        root_and_chain(Some(&self.0), shared.as_bytes(), ns.root_info())
    }
}

/// `HKDF(salt, ikm, info)` → 64 bytes, split into a root key and a fresh chain key. Used by the X3DH
/// output and by every DH ratchet step.
pub(crate) fn root_and_chain(salt: Option<&[u8]>, ikm: &[u8], info: &[u8]) -> (RootKey, ChainKey) {
    let mut okm = [0u8; 64];
    // 64 bytes is far below HKDF's limit (255 × 32), so this cannot fail.
    let _ = hkdf_sha256(salt, ikm, info, &mut okm);
    let mut root = [0u8; 32];
    let mut chain = [0u8; 32];
    root.copy_from_slice(&okm[..32]);
    chain.copy_from_slice(&okm[32..]);
    okm.zeroize();
    (RootKey(root), ChainKey { key: chain, index: 0 })
}

impl fmt::Debug for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RootKey(<redacted>)")
    }
}

/// A sending or receiving chain key with its index (the counter of the next message).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct ChainKey {
    pub(crate) key: [u8; 32],
    pub(crate) index: u32,
}

impl ChainKey {
    /// The counter of the next message on this chain.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The message key seed for message `index`: `HMAC(ck, 0x01)`.
    pub fn message_key_seed(&self) -> MessageKeySeed {
        self.seed_with(&HmacKey::new(&self.key))
    }

    /// The next chain key: `HMAC(ck, 0x02)`. `None` when the counter would overflow.
    pub fn next(&self) -> Option<ChainKey> {
        self.next_with(&HmacKey::new(&self.key))
    }

    /// Both: the seed of this message and the chain key after it, the chain key prepared for HMAC
    /// once. `None` when the counter would overflow.
    pub fn advance(&self) -> Option<(MessageKeySeed, ChainKey)> {
        let mac = HmacKey::new(&self.key);
        Some((self.seed_with(&mac), self.next_with(&mac)?))
    }

    fn seed_with(&self, mac: &HmacKey) -> MessageKeySeed {
        MessageKeySeed { seed: mac.mac(&[&[0x01]]), counter: self.index }
    }

    fn next_with(&self, mac: &HmacKey) -> Option<ChainKey> {
        Some(ChainKey { key: mac.mac(&[&[0x02]]), index: self.index.checked_add(1)? })
    }
}

impl fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { key: _, index } = self;
        f.debug_struct("ChainKey").field("index", index).finish_non_exhaustive()
    }
}

/// The 32-byte input to the message key HKDF, kept for skipped messages (smaller than the expanded keys).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MessageKeySeed {
    pub(crate) seed: [u8; 32],
    pub(crate) counter: u32,
}

impl MessageKeySeed {
    /// Expands the seed: HKDF(salt zero, info) → cipher key (32) ‖ MAC key (32) ‖ IV (16).
    pub fn expand(&self, ns: Namespace) -> MessageKeys {
        let mut okm = [0u8; 80];
        let _ = hkdf_sha256_salted(no_salt(), &self.seed, ns.message_key_info(), &mut okm);
        let mut keys = MessageKeys { cipher_key: [0; 32], mac_key: [0; 32], iv: [0; 16], counter: self.counter };
        keys.cipher_key.copy_from_slice(&okm[..32]);
        keys.mac_key.copy_from_slice(&okm[32..64]);
        keys.iv.copy_from_slice(&okm[64..]);
        okm.zeroize();
        keys
    }
}

impl fmt::Debug for MessageKeySeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { seed: _, counter } = self;
        f.debug_struct("MessageKeySeed").field("counter", counter).finish_non_exhaustive()
    }
}

/// The keys of one message.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct MessageKeys {
    pub(crate) cipher_key: [u8; 32],
    pub(crate) mac_key: [u8; 32],
    pub(crate) iv: [u8; 16],
    pub(crate) counter: u32,
}

impl fmt::Debug for MessageKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { cipher_key: _, mac_key: _, iv: _, counter } = self;
        f.debug_struct("MessageKeys").field("counter", counter).finish_non_exhaustive()
    }
}
