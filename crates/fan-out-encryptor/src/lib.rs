//! # fan-out-encryptor
//!
//! OMEMO XML for both namespaces' elements, encrypt-once messages whose key is wrapped per recipient
//! device, and decryption of received stanzas. Sans-IO: bundles and device lists come in as parsed
//! elements, stanzas and change sets go out.
#![forbid(unsafe_code)]

pub mod decrypt;
pub mod encrypt;
pub mod error;
pub mod fuzzing;
pub mod group;
pub mod invite;
pub mod payload;
pub mod xml;

pub use decrypt::{decrypt_0_3, decrypt_stanza, decrypt_v2, Context, Decrypted};
pub use encrypt::{
    encrypt_message, missing_sessions, recipient_devices, Coverage, EncryptedMessage, NamespaceChoice, Outgoing,
    SkipReason,
};
pub use error::{DecryptError, EncryptError, XmlError};
