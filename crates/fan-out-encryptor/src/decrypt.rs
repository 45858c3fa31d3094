//! Decrypting a received OMEMO 0.3 message addressed to this device.

use std::fmt;

use rand_core::CryptoRngCore;
use session_store::{
    session::{self, IdentityInfo},
    Changes, DeviceId, Namespace, SessionAddress, SessionError, Store,
};
use xmpp_parsers::legacy_omemo::Encrypted;
use zeroize::Zeroizing;

use crate::{error::DecryptError, payload};

/// A decrypted message.
pub struct Decrypted {
    /// The plaintext; `None` for a key-transport (empty) message.
    pub plaintext: Option<Zeroizing<Vec<u8>>>,
    /// Sender bare JID (as the caller attributed it).
    pub sender_jid: String,
    /// Sender device id (`sid`).
    pub sender_device: DeviceId,
    /// The namespace.
    pub namespace: Namespace,
    /// Was our key element a key exchange?
    pub kex: bool,
    /// The sender's identity and trust.
    pub identity: IdentityInfo,
    /// A pre-key consumed by the key exchange (our bundle must be republished).
    pub consumed_pre_key: Option<u32>,
}

impl fmt::Debug for Decrypted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { plaintext, sender_jid: _, sender_device, namespace, kex, identity, consumed_pre_key } = self;
        f.debug_struct("Decrypted")
            .field("plaintext_len", &plaintext.as_ref().map(|p| p.len()))
            .field("sender_device", sender_device)
            .field("namespace", namespace)
            .field("kex", kex)
            .field("identity", identity)
            .field("consumed_pre_key", consumed_pre_key)
            .finish_non_exhaustive()
    }
}

/// Decrypts `encrypted`, sent by `sender_jid`. Every `<key>` for our device id is tried (0.3 keys carry
/// no JID, so two accounts' devices may share an id). On success the change set holds the advanced
/// session; apply it before showing the plaintext. On failure nothing changes.
pub fn decrypt_0_3(
    store: &impl Store,
    encrypted: &Encrypted,
    sender_jid: &str,
    rng: &mut impl CryptoRngCore,
) -> Result<(Decrypted, Changes), DecryptError> {
    let account = store.account()?.ok_or(DecryptError::Session(SessionError::NoAccount))?;
    let sid = encrypted.header.sid;
    if sid == account.device_id && sender_jid == account.jid {
        return Err(DecryptError::FromThisDevice);
    }
    let iv = &encrypted.header.iv.data;
    if iv.len() != 12 && iv.len() != 16 {
        return Err(DecryptError::BadIv(iv.len()));
    }
    let from = SessionAddress::new(Namespace::Oldmemo, sender_jid, sid);
    let mut first_err = None;
    for key in encrypted.header.keys.iter().filter(|k| k.rid == account.device_id) {
        let (out, changes) = match session::decrypt(store, &account, &from, &key.data, rng) {
            Ok(r) => r,
            Err(e) => {
                first_err.get_or_insert(DecryptError::Session(e));
                continue;
            }
        };
        let plaintext = match &encrypted.payload {
            Some(p) => Some(payload::decrypt(&out.plaintext, iv, &p.data)?),
            None => None,
        };
        return Ok((
            Decrypted {
                plaintext,
                sender_jid: sender_jid.to_owned(),
                sender_device: sid,
                namespace: Namespace::Oldmemo,
                kex: out.kex,
                identity: out.identity,
                consumed_pre_key: out.consumed_pre_key,
            },
            changes,
        ));
    }
    Err(first_err.unwrap_or(DecryptError::NotForThisDevice(account.device_id)))
}
