//! # session-store
//!
//! The OMEMO session core: identity keys, signed and one-time pre-keys, X3DH, the Double Ratchet in both
//! wire formats (OMEMO 0.3 / libsignal v3, and OMEMO 2), trust, and the stores that keep it all (in memory, or in SQLite
//! through a connection the application owns).
//!
//! The crate does no I/O of its own and reads no clock or RNG: both are parameters. Operations never
//! write: they return a [`Changes`] set that a [`Store`] applies in one transaction, so a failed
//! operation (wrong MAC, replay, unknown pre-key) leaves no trace.
//!
//! ```
//! use rand_core::OsRng;
//! use session_store::{
//!     account, session, Account, AccountStore, MemoryStore, Namespace, NamespaceSet, SessionAddress, Store,
//! };
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut alice = MemoryStore::default();
//! alice.apply(&Account::create("alice@example.org", NamespaceSet::BOTH, &[], 0, &mut OsRng))?;
//! let mut bob = MemoryStore::default();
//! bob.apply(&Account::create("bob@example.org", NamespaceSet::BOTH, &[], 0, &mut OsRng))?;
//! let a = alice.account()?.ok_or("no account")?;
//! let b = bob.account()?.ok_or("no account")?;
//!
//! // Alice starts an OMEMO 2 session from Bob's bundle and encrypts.
//! let to_bob = SessionAddress::new(Namespace::Twomemo, "bob@example.org", b.device_id);
//! let mut changes = session_store::Changes::default();
//! let bundle = account::own_bundle_for(&bob, Namespace::Twomemo)?;
//! session::initiate(&alice, &a, &to_bob, &bundle, &mut changes, &mut OsRng)?;
//! let key = session::encrypt(&alice, &a, &to_bob, b"key material", &mut changes)?;
//! alice.apply(&changes)?;
//! assert!(key.kex);
//!
//! // Bob decrypts the key exchange; the pre-key is consumed only now.
//! let from_alice = SessionAddress::new(Namespace::Twomemo, "alice@example.org", a.device_id);
//! let (out, changes) = session::decrypt(&bob, &b, &from_alice, &key.data, &mut OsRng)?;
//! bob.apply(&changes)?;
//! assert_eq!(&out.plaintext[..], b"key material");
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod account;
pub mod changes;
pub mod error;
pub mod fuzzing;
pub mod keys;
pub mod ledger;
mod memory;
pub mod namespace;
pub mod primitives;
pub mod ratchet;
mod record;
pub mod session;
mod sqlite;
pub mod traits;
pub mod trust;
pub mod wire;
pub mod x3dh;
pub mod xeddsa;

#[cfg(test)]
mod kat;
#[cfg(test)]
mod tests;

pub use account::{Account, PreKeyRecord, SignedPreKeyRecord};
pub use changes::{Changes, Jid, SessionAddress};
pub use error::{KeyError, SessionError, StoreError};
pub use keys::{DeviceId, KeyPair, PrivateKey, PublicKey};
pub use ledger::LedgerEntry;
pub use memory::MemoryStore;
pub use namespace::{Namespace, NamespaceSet};
pub use ratchet::{LocalIdentity, SendState, SendStep, SessionRecord};
pub use sqlite::SqliteStore;
pub use traits::{
    AccountStore, DeviceListStore, DeviceLists, IdentityStore, LedgerStore, PreKeyStore, SessionStore,
    SignedPreKeyStore, Store,
};
pub use trust::TrustLevel;

/// The hash maps with an entry per device (the store's read cache, a group send): keyed by JIDs that
/// others choose, so with random keys (as std's SipHash), but quicker to compute for the thousands of
/// lookups of every group send.
pub type FastMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;
/// The set of [`FastMap`].
pub type FastSet<T> = std::collections::HashSet<T, ahash::RandomState>;
pub use x3dh::{check_bundles, CheckedBundle, PreKeyBundle};
