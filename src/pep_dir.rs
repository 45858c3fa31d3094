//! A directory standing in for PEP, in the layout of the oracle (`../shared/oracle/README.md`):
//!
//! ```text
//! DIR/<bare-jid>/oldmemo/devicelist.xml      the <list> of node eu.siacs.conversations.axolotl.devicelist
//! DIR/<bare-jid>/oldmemo/bundle-<id>.xml     the <bundle> of node eu.siacs.conversations.axolotl.bundles:<id>
//! ```
//! Each file holds one element on one line; on reading, the element is searched anywhere in the file so
//! that a wrapping `<item>` is accepted too. A missing device list reads as empty.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use fan_out_encryptor::xml::{find_descendant, parse_element, v0_3};
use session_store::{DeviceId, PreKeyBundle};

/// A PEP directory could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PepError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file holds no valid element of the expected kind.
    #[error("{path}: {detail}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// No bundle is published for this device.
    #[error("no bundle published for {jid}/{device}")]
    BundleNotFound {
        /// Owner.
        jid: String,
        /// Device.
        device: DeviceId,
    },
    /// A JID that cannot name a directory.
    #[error("invalid JID for a PEP directory: {0:?}")]
    BadJid(String),
}

/// The PEP directory.
#[derive(Debug, Clone)]
pub struct PepDir {
    root: PathBuf,
}

impl PepDir {
    /// Uses `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn dir(&self, jid: &str) -> Result<PathBuf, PepError> {
        if jid.is_empty() || jid.contains('/') || jid.contains('\\') || jid.starts_with('.') {
            return Err(PepError::BadJid(jid.to_owned()));
        }
        Ok(self.root.join(jid).join("oldmemo"))
    }

    fn read(path: &Path) -> Result<Option<String>, PepError> {
        match fs::read_to_string(path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(PepError::Io { path: path.to_owned(), source }),
        }
    }

    fn write(path: &Path, text: &str) -> Result<(), PepError> {
        let io_err = |source| PepError::Io { path: path.to_owned(), source };
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err)?;
        }
        // Write then rename, so that a reader never sees half a file.
        let tmp = path.with_extension("xml.tmp");
        fs::write(&tmp, text).map_err(io_err)?;
        fs::rename(&tmp, path).map_err(io_err)
    }

    /// The OMEMO 0.3 device list of `jid` (empty if none is published).
    pub fn device_list(&self, jid: &str) -> Result<Vec<DeviceId>, PepError> {
        let path = self.dir(jid)?.join("devicelist.xml");
        let Some(text) = Self::read(&path)? else {
            return Ok(Vec::new());
        };
        let invalid = |detail: String| PepError::Invalid { path: path.clone(), detail };
        let root = parse_element(&text).map_err(|e| invalid(e.to_string()))?;
        let list = find_descendant(&root, "list", v0_3::NS).ok_or_else(|| invalid("no <list>".into()))?;
        v0_3::parse_device_list(list).map_err(|e| invalid(e.to_string()))
    }

    /// Publishes `jid`'s device list.
    pub fn set_device_list(&self, jid: &str, devices: &[DeviceId]) -> Result<(), PepError> {
        let path = self.dir(jid)?.join("devicelist.xml");
        Self::write(&path, &String::from(&v0_3::device_list(devices)))
    }

    /// The bundle of `jid`'s `device`.
    pub fn bundle(&self, jid: &str, device: DeviceId) -> Result<PreKeyBundle, PepError> {
        let path = self.dir(jid)?.join(format!("bundle-{device}.xml"));
        let Some(text) = Self::read(&path)? else {
            return Err(PepError::BundleNotFound { jid: jid.to_owned(), device });
        };
        let invalid = |detail: String| PepError::Invalid { path: path.clone(), detail };
        let root = parse_element(&text).map_err(|e| invalid(e.to_string()))?;
        let b = find_descendant(&root, "bundle", v0_3::NS).ok_or_else(|| invalid("no <bundle>".into()))?;
        v0_3::parse_bundle(b).map_err(|e| invalid(e.to_string()))
    }

    /// Publishes a bundle.
    pub fn set_bundle(&self, jid: &str, device: DeviceId, bundle: &PreKeyBundle) -> Result<(), PepError> {
        let path = self.dir(jid)?.join(format!("bundle-{device}.xml"));
        Self::write(&path, &String::from(&v0_3::bundle(bundle)))
    }
}
