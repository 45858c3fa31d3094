//! Encrypting one message for a set of bare JIDs: every active device of theirs and our own other
//! devices, never the sending device.
//!
//! ```text
//! payload  = AES-128-GCM(key16, iv12, plaintext)          -- once
//! for each device d with a session we trust:
//!     key_d = ratchet_encrypt(session_d, key16 ‖ tag16)   -- on a copy; collected in one Changes
//! <encrypted><header sid=OUR_DEVICE><key rid=d [prekey='true']>key_d</key>…<iv>iv</iv></header>
//!            <payload>ciphertext</payload></encrypted>
//! ```

use rand_core::CryptoRngCore;
use session_store::{session, Changes, DeviceId, Namespace, SessionAddress, SessionError, Store};
use xmpp_parsers::legacy_omemo::{Encrypted, Header, Key, Payload, IV};

use crate::{error::EncryptError, payload};

/// Why a device did not get a key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SkipReason {
    /// We hold no device list for this JID.
    NoDeviceList,
    /// No session, and no bundle was given to build one.
    NoSession,
    /// The device's identity key is distrusted or undecided.
    Untrusted,
    /// The session refused (e.g. a chain counter would overflow).
    SessionFailed(String),
}

/// Who got a key and who did not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Devices that got a key, with whether it was a key exchange.
    pub keyed: Vec<(SessionAddress, bool)>,
    /// JIDs without any device list.
    pub jids_without_devices: Vec<String>,
    /// Devices left out, each with its reason.
    pub skipped: Vec<(SessionAddress, SkipReason)>,
}

/// An encrypted message ready to be wrapped in a stanza, and what to persist before sending it.
#[derive(Debug)]
pub struct EncryptedMessage {
    /// The `<encrypted>` element.
    pub encrypted: Encrypted,
    /// Advanced sessions: apply before the stanza goes out.
    pub changes: Changes,
    /// The coverage report.
    pub coverage: Coverage,
}

/// The devices a message to `jids` goes to: the active devices of each JID's device list, plus our own
/// other devices; never our sending device. Deduplicated, in order.
pub fn recipient_devices(
    store: &impl Store,
    jids: &[String],
    ns: Namespace,
) -> Result<(Vec<SessionAddress>, Vec<String>), EncryptError> {
    let account = store.account()?.ok_or(EncryptError::NoAccount)?;
    let mut all: Vec<String> = jids.to_vec();
    if !all.contains(&account.jid) {
        all.push(account.jid.clone());
    }
    let mut out = Vec::new();
    let mut without = Vec::new();
    for jid in all {
        match store.device_list(ns, &jid)? {
            Some(devices) => {
                for d in devices {
                    if jid == account.jid && d == account.device_id {
                        continue;
                    }
                    let addr = SessionAddress::new(ns, jid.clone(), d);
                    if !out.contains(&addr) {
                        out.push(addr);
                    }
                }
            }
            // Our own JID without other devices is normal.
            None if jid == account.jid => {}
            None => without.push(jid),
        }
    }
    Ok((out, without))
}

/// Recipient devices of a message to `jids` that have no session yet: fetch their bundles.
pub fn missing_sessions_0_3(store: &impl Store, jids: &[String]) -> Result<Vec<SessionAddress>, EncryptError> {
    let (devices, _) = recipient_devices(store, jids, Namespace::Oldmemo)?;
    let mut out = Vec::new();
    for addr in devices {
        if !store.session(&addr)?.is_some_and(|r| r.has_current()) {
            out.push(addr);
        }
    }
    Ok(out)
}

/// Encrypts `plaintext` (or, with `None`, a key-transport message without payload) for `jids`.
/// Sessions must exist (see [`missing_sessions_0_3`] and `session::initiate`, whose changes may be
/// passed in `changes` so that one transaction covers everything). Devices that cannot be encrypted for
/// are reported, not fatal; no device at all is [`EncryptError::NoDevices`].
pub fn encrypt_0_3(
    store: &impl Store,
    jids: &[String],
    plaintext: Option<&[u8]>,
    mut changes: Changes,
    rng: &mut impl CryptoRngCore,
) -> Result<EncryptedMessage, EncryptError> {
    let account = store.account()?.ok_or(EncryptError::NoAccount)?;
    let (devices, without) = recipient_devices(store, jids, Namespace::Oldmemo)?;
    let mut coverage = Coverage { jids_without_devices: without, ..Coverage::default() };
    let (iv, ciphertext, key_material) = match plaintext {
        Some(pt) => {
            let p = payload::encrypt(pt, rng);
            (p.iv, Some(p.ciphertext), p.key_material.to_vec())
        }
        None => {
            let mut iv = [0u8; 12];
            rng.fill_bytes(&mut iv);
            (iv, None, payload::transport_key(rng).to_vec())
        }
    };
    let key_material = zeroize::Zeroizing::new(key_material);
    let mut keys = Vec::with_capacity(devices.len());
    for addr in devices {
        match session::encrypt(store, &account, &addr, &key_material, &mut changes) {
            Ok(k) => {
                keys.push(Key { rid: addr.device, prekey: k.kex, data: k.data });
                coverage.keyed.push((addr, k.kex));
            }
            Err(SessionError::NoSession) => coverage.skipped.push((addr, SkipReason::NoSession)),
            Err(SessionError::Untrusted { .. }) => coverage.skipped.push((addr, SkipReason::Untrusted)),
            Err(SessionError::Store(e)) => return Err(e.into()),
            Err(e) => coverage.skipped.push((addr, SkipReason::SessionFailed(e.to_string()))),
        }
    }
    if keys.is_empty() {
        return Err(EncryptError::NoDevices);
    }
    Ok(EncryptedMessage {
        encrypted: Encrypted {
            header: Header { sid: account.device_id, keys, iv: IV { data: iv.to_vec() } },
            payload: ciphertext.map(|data| Payload { data }),
        },
        changes,
        coverage,
    })
}

/// The device id the stanza's sender used.
pub fn sender_device(encrypted: &Encrypted) -> DeviceId {
    encrypted.header.sid
}
