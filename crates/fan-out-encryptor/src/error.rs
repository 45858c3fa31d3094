//! Errors of the XML, encrypt and decrypt paths.

use session_store::{DeviceId, SessionError, StoreError};

/// An OMEMO element could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum XmlError {
    /// Not well-formed XML.
    #[error("malformed XML: {0}")]
    Syntax(String),
    /// Well-formed, but not the element we expected, or invalid inside.
    #[error("invalid {element}: {detail}")]
    Invalid {
        /// The element.
        element: &'static str,
        /// What is wrong.
        detail: String,
    },
}

/// Encrypting a message failed as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncryptError {
    /// No recipient device could be encrypted for; the report says why for each.
    #[error("no device to encrypt for")]
    NoDevices,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Our own account is missing.
    #[error("no account in the store")]
    NoAccount,
    /// A session operation failed in a way that is not about one device.
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// Decrypting a message failed. The store is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecryptError {
    /// The stanza or its `<encrypted>` element is malformed.
    #[error(transparent)]
    Xml(#[from] XmlError),
    /// The stanza carries no OMEMO element of a namespace we speak.
    #[error("no OMEMO element in the stanza")]
    NotEncrypted,
    /// The message holds no key for this device.
    #[error("message not encrypted for device {0}")]
    NotForThisDevice(DeviceId),
    /// The message was sent by this very device (we never encrypt to ourselves).
    #[error("message sent by this device")]
    FromThisDevice,
    /// The key element could not be decrypted.
    #[error("key element: {0}")]
    Session(#[from] SessionError),
    /// The key material has a size no OMEMO 0.3 client sends.
    #[error("key material of {0} bytes")]
    BadKeyMaterial(usize),
    /// The IV is neither 12 nor 16 bytes.
    #[error("IV of {0} bytes")]
    BadIv(usize),
    /// The payload did not authenticate under the key.
    #[error("payload authentication failed")]
    BadPayload,
    /// The SCE envelope's affixes do not match the stanza (forged `<from>`, wrong or missing `<to>`).
    #[error(transparent)]
    Affix(#[from] crate::xml::sce::AffixError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
