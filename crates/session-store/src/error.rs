//! Error types: one enum per operation family.

use crate::keys::DeviceId;

/// A key could not be parsed or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The encoded key has the wrong length.
    #[error("key has {got} bytes, expected {expected}")]
    BadLength {
        /// Expected length.
        expected: usize,
        /// Length found.
        got: usize,
    },
    /// The 0.3 type byte is not `0x05`.
    #[error("unknown key type byte {0:#04x}")]
    BadKeyType(u8),
    /// The Ed25519 encoding is not a point of the curve.
    #[error("not a valid Ed25519 point")]
    NotAPoint,
    /// The peer's key is a low-order point: the agreement would not depend on our secret.
    #[error("low-order public key refused")]
    LowOrderPoint,
}

/// A ratchet message or key exchange was refused. Nothing was committed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The bytes are not a well-formed message of this namespace.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// The message's version byte is not one we speak.
    #[error("unsupported message version {0:#04x}")]
    UnsupportedVersion(u8),
    /// A key inside the message is invalid.
    #[error("invalid key in message: {0}")]
    Key(#[from] KeyError),
    /// We hold no session with this device and the message is no key exchange.
    #[error("no session with this device")]
    NoSession,
    /// The MAC did not verify (tampered, or not for this session).
    #[error("message authentication failed")]
    BadMac,
    /// This message key was already used: a replay or duplicate.
    #[error("duplicate message (counter {counter})")]
    Duplicate {
        /// The counter of the refused message.
        counter: u32,
    },
    /// The counter jumps further ahead than the skipped-key bound allows.
    #[error("message counter {counter} is {gap} ahead of the chain; at most {max} keys may be skipped")]
    TooFarAhead {
        /// Counter of the message.
        counter: u32,
        /// How many keys would have to be skipped.
        gap: u64,
        /// The bound.
        max: usize,
    },
    /// The payload inside the authenticated message could not be decrypted (bad padding).
    #[error("ciphertext could not be decrypted")]
    BadCiphertext,
    /// A key exchange names a signed pre-key we do not have.
    #[error("unknown signed pre-key {0}")]
    UnknownSignedPreKey(u32),
    /// A key exchange names a pre-key we do not have (used already, or never ours).
    #[error("unknown pre-key {0}")]
    UnknownPreKey(u32),
    /// A key exchange without a one-time pre-key (OMEMO requires one).
    #[error("key exchange without a one-time pre-key")]
    MissingPreKey,
    /// A key exchange from a device that is not on its sender's known device list (a forged sender,
    /// or a list that is out of date: fetch it and try again).
    #[error("device {device} is not on the device list of {jid}")]
    UnknownDevice {
        /// The sender.
        jid: String,
        /// The device id its message claims.
        device: DeviceId,
    },
    /// The sender's identity key is distrusted.
    #[error("identity key of {jid}/{device} is distrusted")]
    Distrusted {
        /// Sender bare JID.
        jid: String,
        /// Sender device.
        device: DeviceId,
    },
    /// The peer's identity key is not trusted enough to encrypt to (undecided or distrusted).
    #[error("identity key of {jid}/{device} is not trusted for encryption")]
    Untrusted {
        /// Peer bare JID.
        jid: String,
        /// Peer device.
        device: DeviceId,
    },
    /// The bundle's signed pre-key signature does not verify.
    #[error("bundle signature invalid")]
    BadBundleSignature,
    /// The bundle is unusable (no pre-keys, missing fields).
    #[error("bundle invalid: {0}")]
    BadBundle(&'static str),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Our own account has not been created yet.
    #[error("no account in the store")]
    NoAccount,
    /// A bug in this library.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

/// A store could not load or persist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database failed (message from SQLite).
    #[error("database error: {0}")]
    Database(String),
    /// A stored record could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(&'static str),
    /// The database was written by a newer schema version.
    #[error("database schema version {found} is newer than this library's {supported}")]
    SchemaTooNew {
        /// Found.
        found: u32,
        /// Supported.
        supported: u32,
    },
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Database(e.to_string())
    }
}
