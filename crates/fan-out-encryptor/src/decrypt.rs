//! Decrypting a received OMEMO message (either namespace) addressed to this device.

use std::fmt;

use minidom::Element;
use rand_core::CryptoRngCore;
use session_store::{
    session::{self, IdentityInfo},
    Account, Changes, DeviceId, Namespace, SessionAddress, SessionError, Store,
};
use xmpp_parsers::legacy_omemo;
use zeroize::Zeroizing;

use crate::{
    error::DecryptError,
    payload,
    xml::{sce, v0_3, v2},
};

/// A decrypted message.
pub struct Decrypted {
    /// The body text (0.3: the whole plaintext; OMEMO 2: the SCE content's `<body>`); `None` for an
    /// empty message.
    pub plaintext: Option<Zeroizing<Vec<u8>>>,
    /// The checked SCE envelope (OMEMO 2 messages with a payload).
    pub envelope: Option<sce::Envelope>,
    /// Sender bare JID (as the caller attributed it).
    pub sender_jid: String,
    /// Sender device id (`sid`).
    pub sender_device: DeviceId,
    /// The namespace of the element we decrypted.
    pub namespace: Namespace,
    /// Was our key element a key exchange?
    pub kex: bool,
    /// The sender's identity and trust.
    pub identity: IdentityInfo,
    /// A pre-key consumed by the key exchange (our bundle must be republished).
    pub consumed_pre_key: Option<u32>,
    /// Answer the sender's device with an empty message (session completion after its key exchange, or
    /// a heartbeat): see [`session_store::session::DecryptedKey::reply_due`].
    pub reply_due: bool,
}

impl fmt::Debug for Decrypted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            plaintext,
            envelope: _,
            sender_jid: _,
            sender_device,
            namespace,
            kex,
            identity,
            consumed_pre_key,
            reply_due,
        } = self;
        f.debug_struct("Decrypted")
            .field("plaintext_len", &plaintext.as_ref().map(|p| p.len()))
            .field("sender_device", sender_device)
            .field("namespace", namespace)
            .field("kex", kex)
            .field("identity", identity)
            .field("consumed_pre_key", consumed_pre_key)
            .field("reply_due", reply_due)
            .finish_non_exhaustive()
    }
}

/// Who sent a message and where it was addressed, as the caller established it.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The sender's real bare JID.
    pub sender: &'a str,
    /// The room (group message) or our bare JID (1:1): what an SCE `<to>` must say.
    pub expected_to: &'a str,
    /// A group message: SCE `<to>` is required.
    pub group: bool,
    /// Live, or catching up from an archive (consumed pre-keys kept until catch-up ends).
    pub pre_keys: session::PreKeyMode,
}

/// Decrypts a `<message>`: of its `<encrypted>` elements, the OMEMO 2 one with a key for us (our JID and
/// device) is used, else the OMEMO 0.3 one with a key for our device id. On success apply the change set
/// before showing the plaintext; on failure nothing changes.
pub fn decrypt_stanza(
    store: &impl Store,
    message: &Element,
    ctx: &Context<'_>,
    rng: &mut impl CryptoRngCore,
) -> Result<(Decrypted, Changes), DecryptError> {
    let account = store.account()?.ok_or(DecryptError::Session(SessionError::NoAccount))?;
    let mut found_any = false;
    let mut old = None;
    // Our own message coming back (a reflection, a copy): we never encrypt to ourselves.
    let our_sid = account.device_id.to_string();
    let own_sid = |e: &Element| e.children().any(|h| h.name() == "header" && h.attr("sid") == Some(our_sid.as_str()));
    if ctx.sender == account.jid
        && message.children().any(|c| (c.is("encrypted", v2::NS) || c.is("encrypted", v0_3::NS)) && own_sid(c))
    {
        return Err(DecryptError::FromThisDevice);
    }
    for child in message.children() {
        if child.is("encrypted", v2::NS) {
            found_any = true;
            let enc = v2::parse_encrypted(child)?;
            if enc.key_for(&account.jid, account.device_id).is_some() {
                return decrypt_v2(store, &enc, ctx, rng);
            }
        } else if child.is("encrypted", v0_3::NS) {
            found_any = true;
            let enc = v0_3::parse_encrypted(child)?;
            if old.is_none() && enc.header.keys.iter().any(|k| k.rid == account.device_id) {
                old = Some(enc);
            }
        }
    }
    match old {
        Some(enc) => decrypt_0_3(store, &enc, ctx.sender, ctx.pre_keys, rng),
        None if found_any => Err(DecryptError::NotForThisDevice(account.device_id)),
        None => Err(DecryptError::NotEncrypted),
    }
}

fn from_this_device(account: &Account, sender: &str, sid: DeviceId) -> bool {
    sid == account.device_id && sender == account.jid
}

/// Decrypts an OMEMO 2 `<encrypted>` element and checks its SCE affixes.
pub fn decrypt_v2(
    store: &impl Store,
    encrypted: &v2::Encrypted,
    ctx: &Context<'_>,
    rng: &mut impl CryptoRngCore,
) -> Result<(Decrypted, Changes), DecryptError> {
    let account = store.account()?.ok_or(DecryptError::Session(SessionError::NoAccount))?;
    let sid = encrypted.header.sid;
    if from_this_device(&account, ctx.sender, sid) {
        return Err(DecryptError::FromThisDevice);
    }
    let key =
        encrypted.key_for(&account.jid, account.device_id).ok_or(DecryptError::NotForThisDevice(account.device_id))?;
    let from = SessionAddress::new(Namespace::Twomemo, ctx.sender, sid);
    let (out, changes) = session::decrypt_with(store, &account, &from, &key.data, ctx.pre_keys, rng)?;
    let (plaintext, envelope) = match &encrypted.payload {
        Some(p) => {
            let bytes = payload::decrypt_v2(&out.plaintext, &p.data)?;
            let env = sce::open(&bytes, ctx.sender, ctx.expected_to, ctx.group)?;
            (env.body().map(|b| Zeroizing::new(b.into_bytes())), Some(env))
        }
        None if out.plaintext.len() == payload::V2_EMPTY_KEY_MATERIAL.len() => (None, None),
        None => return Err(DecryptError::BadKeyMaterial(out.plaintext.len())),
    };
    Ok((
        Decrypted {
            plaintext,
            envelope,
            sender_jid: ctx.sender.to_owned(),
            sender_device: sid,
            namespace: Namespace::Twomemo,
            kex: out.kex,
            identity: out.identity,
            consumed_pre_key: out.consumed_pre_key,
            reply_due: out.reply_due,
        },
        changes,
    ))
}

/// Decrypts an OMEMO 0.3 `<encrypted>` element sent by `sender_jid`. Every `<key>` for our device id is
/// tried (0.3 keys carry no JID, so two accounts' devices may share an id).
pub fn decrypt_0_3(
    store: &impl Store,
    encrypted: &legacy_omemo::Encrypted,
    sender_jid: &str,
    mode: session::PreKeyMode,
    rng: &mut impl CryptoRngCore,
) -> Result<(Decrypted, Changes), DecryptError> {
    let account = store.account()?.ok_or(DecryptError::Session(SessionError::NoAccount))?;
    let sid = encrypted.header.sid;
    if from_this_device(&account, sender_jid, sid) {
        return Err(DecryptError::FromThisDevice);
    }
    let iv = &encrypted.header.iv.data;
    if iv.len() != 12 && iv.len() != 16 {
        return Err(DecryptError::BadIv(iv.len()));
    }
    let from = SessionAddress::new(Namespace::Oldmemo, sender_jid, sid);
    let mut first_err = None;
    for key in encrypted.header.keys.iter().filter(|k| k.rid == account.device_id) {
        let (out, changes) = match session::decrypt_with(store, &account, &from, &key.data, mode, rng) {
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
                envelope: None,
                sender_jid: sender_jid.to_owned(),
                sender_device: sid,
                namespace: Namespace::Oldmemo,
                kex: out.kex,
                identity: out.identity,
                consumed_pre_key: out.consumed_pre_key,
                reply_due: out.reply_due,
            },
            changes,
        ));
    }
    Err(first_err.unwrap_or(DecryptError::NotForThisDevice(account.device_id)))
}
