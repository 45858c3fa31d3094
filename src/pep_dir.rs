//! A directory standing in for PEP, in the layout of the oracle (`../shared/oracle/README.md`):
//!
//! ```text
//! DIR/<bare-jid>/oldmemo/devicelist.xml      the <list> of node eu.siacs.conversations.axolotl.devicelist
//! DIR/<bare-jid>/oldmemo/bundle-<id>.xml     the <bundle> of node eu.siacs.conversations.axolotl.bundles:<id>
//! DIR/<bare-jid>/twomemo/devicelist.xml      the <devices> of node urn:xmpp:omemo:2:devices
//! DIR/<bare-jid>/twomemo/bundle-<id>.xml     the <bundle> item <id> of node urn:xmpp:omemo:2:bundles
//! ```
//! Each file holds one element on one line; on reading, the element is searched anywhere in the file so
//! that a wrapping `<item>` is accepted too. A missing device list reads as empty.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use fan_out_encryptor::xml::{find_descendant, parse_element, v0_3, v2};
use session_store::{DeviceId, Namespace, PreKeyBundle};

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

    fn dir(&self, jid: &str, ns: Namespace) -> Result<PathBuf, PepError> {
        if jid.is_empty() || jid.contains('/') || jid.contains('\\') || jid.starts_with('.') {
            return Err(PepError::BadJid(jid.to_owned()));
        }
        Ok(self.root.join(jid).join(ns.short_name()))
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

    /// The device list of `jid` in `ns` (empty if none is published).
    pub fn device_list(&self, jid: &str, ns: Namespace) -> Result<Vec<DeviceId>, PepError> {
        let path = self.dir(jid, ns)?.join("devicelist.xml");
        let Some(text) = Self::read(&path)? else { return Ok(Vec::new()) };
        let invalid = |detail: String| PepError::Invalid { path: path.clone(), detail };
        let root = parse_element(&text).map_err(|e| invalid(e.to_string()))?;
        let parsed = match ns {
            Namespace::Oldmemo => find_descendant(&root, "list", v0_3::NS).map(v0_3::parse_device_list),
            _ => find_descendant(&root, "devices", v2::NS).map(v2::parse_device_list),
        };
        parsed.ok_or_else(|| invalid("no device list element".into()))?.map_err(|e| invalid(e.to_string()))
    }

    /// Publishes `jid`'s device list in `ns`.
    pub fn set_device_list(&self, jid: &str, ns: Namespace, devices: &[DeviceId]) -> Result<(), PepError> {
        let path = self.dir(jid, ns)?.join("devicelist.xml");
        let elem = match ns {
            Namespace::Oldmemo => v0_3::device_list(devices),
            _ => v2::device_list(devices),
        };
        Self::write(&path, &String::from(&elem))
    }

    /// The bundle of `jid`'s `device` in `ns`.
    pub fn bundle(&self, jid: &str, ns: Namespace, device: DeviceId) -> Result<PreKeyBundle, PepError> {
        let path = self.dir(jid, ns)?.join(format!("bundle-{device}.xml"));
        let Some(text) = Self::read(&path)? else {
            return Err(PepError::BundleNotFound { jid: jid.to_owned(), device });
        };
        let invalid = |detail: String| PepError::Invalid { path: path.clone(), detail };
        let root = parse_element(&text).map_err(|e| invalid(e.to_string()))?;
        let parsed = match ns {
            Namespace::Oldmemo => find_descendant(&root, "bundle", v0_3::NS).map(v0_3::parse_bundle),
            _ => find_descendant(&root, "bundle", v2::NS).map(v2::parse_bundle),
        };
        parsed.ok_or_else(|| invalid("no <bundle>".into()))?.map_err(|e| invalid(e.to_string()))
    }

    /// Publishes a bundle in `ns`.
    pub fn set_bundle(
        &self,
        jid: &str,
        ns: Namespace,
        device: DeviceId,
        bundle: &PreKeyBundle,
    ) -> Result<(), PepError> {
        let path = self.dir(jid, ns)?.join(format!("bundle-{device}.xml"));
        let elem = match ns {
            Namespace::Oldmemo => v0_3::bundle(bundle),
            _ => v2::bundle(bundle).ok_or_else(|| PepError::Invalid {
                path: path.clone(),
                detail: "an OMEMO 2 bundle needs the Ed25519 identity key".into(),
            })?,
        };
        Self::write(&path, &String::from(&elem))
    }
}
