//! The command-line tool's offline commands, as functions the binary (and tests) call.
//!
//! Every command works on one SQLite store file; every change it makes is one transaction.

use std::time::{SystemTime, UNIX_EPOCH};

use fan_out_encryptor::{
    xml::{
        find_descendant, parse_element,
        stanza::{self, MessageHeaders},
        v0_3, v2,
    },
    Context as DecryptContext, Coverage, DecryptError, EncryptError, NamespaceChoice, Outgoing, SkipReason,
};
use rand_core::{CryptoRngCore, OsRng};
use serde_json::{json, Value};
use session_store::{
    account, session, Account, AccountStore, Changes, DeviceListStore, IdentityStore, Namespace, NamespaceSet,
    SessionAddress, SessionError, SessionStore, SqliteStore, Store, StoreError, TrustLevel,
};

use crate::pep_dir::{PepDir, PepError};

/// A command failed. `code` is the process exit code; the binary prints `{error, detail}`.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct CliError {
    /// Short machine-readable kind (`usage`, `store`, `decrypt`, ...).
    pub kind: &'static str,
    /// Human-readable detail.
    pub detail: String,
    /// Exit code: 1 usage/environment, 2 the operation was refused.
    pub code: i32,
}

impl CliError {
    /// A usage error (exit 1).
    pub fn usage(detail: impl Into<String>) -> Self {
        Self { kind: "usage", detail: detail.into(), code: 1 }
    }
    fn refused(kind: &'static str, detail: impl ToString) -> Self {
        Self { kind, detail: detail.to_string(), code: 2 }
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        Self { kind: "store", detail: e.to_string(), code: 1 }
    }
}
impl From<PepError> for CliError {
    fn from(e: PepError) -> Self {
        Self { kind: "pep", detail: e.to_string(), code: 1 }
    }
}
impl From<SessionError> for CliError {
    fn from(e: SessionError) -> Self {
        Self::refused("session", e)
    }
}
impl From<EncryptError> for CliError {
    fn from(e: EncryptError) -> Self {
        Self::refused("encrypt", e)
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The store file and our JID, as every command needs them.
#[derive(Debug)]
pub struct Context {
    store: SqliteStore<rusqlite::Connection>,
    jid: String,
}

impl Context {
    /// Opens the store; `jid` must match the account in it, if there is one.
    pub fn open(path: &str, jid: &str) -> Result<Self, CliError> {
        if jid.is_empty() || jid.contains('/') || !jid.contains('@') {
            return Err(CliError::usage(format!("--jid must be a bare JID, got {jid:?}")));
        }
        let store = SqliteStore::open(path)?;
        if let Some(acc) = store.account()? {
            if acc.jid != jid {
                return Err(CliError::usage(format!("store {path} belongs to {}, not {jid}", acc.jid)));
            }
        }
        Ok(Self { store, jid: jid.to_owned() })
    }

    fn account(&self) -> Result<Account, CliError> {
        self.store.account()?.ok_or_else(|| CliError::usage("no device in this store yet: run `init` first"))
    }

    /// `init`: creates the device (speaking `namespaces`) if the store is new. An existing device keeps
    /// its namespaces: changing them is refused rather than done silently.
    pub fn init(&mut self, namespaces: NamespaceSet) -> Result<Value, CliError> {
        let created = self.store.account()?.is_none();
        if created {
            let changes = Account::create(&self.jid, namespaces, &[], now(), &mut OsRng);
            self.store.apply(&changes)?;
        }
        let acc = self.account()?;
        if acc.namespaces != namespaces {
            return Err(CliError::usage(format!(
                "this device speaks {}; its namespaces cannot be changed",
                ns_names(acc.namespaces).join(" and ")
            )));
        }
        Ok(json!({
            "jid": acc.jid,
            "device_id": acc.device_id,
            "fingerprint": acc.fingerprint(),
            "created": created,
            "namespaces": ns_names(acc.namespaces),
        }))
    }

    /// `fingerprint`.
    pub fn fingerprint(&self) -> Result<Value, CliError> {
        let acc = self.account()?;
        Ok(json!({
            "device_id": acc.device_id,
            "fingerprint": acc.fingerprint(),
            "identity_key_curve25519_hex": hex(acc.identity.public.as_bytes()),
            "identity_key_ed25519_b64": base64_std(&acc.identity_key_ed25519()),
            "oldmemo_identity_key_b64": base64_std(&acc.identity.public.serialize()),
            "namespaces": ns_names(acc.namespaces),
        }))
    }

    /// `publish`: for each namespace we speak, our entry merged into the device list, and our bundle
    /// (after topping up pre-keys and rotating the signed pre-key when due).
    pub fn publish(&mut self, pep: &PepDir) -> Result<Value, CliError> {
        // Another device of this account may have taken our id before we ever published: move first.
        let acc = self.account()?;
        let mut published = Vec::new();
        for ns in acc.namespaces.iter() {
            for id in pep.device_list(&acc.jid, ns)? {
                published.push((id, pep.bundle(&acc.jid, ns, id).ok().map(|b| b.identity_key)));
            }
        }
        let moved_from = match account::resolve_device_id_collision(&self.store, &published, &mut OsRng)? {
            Some(changes) => {
                self.store.apply(&changes)?;
                Some(acc.device_id)
            }
            None => None,
        };
        let maint = account::maintain_keys(&self.store, now(), &mut OsRng)?;
        if !maint.is_empty() {
            self.store.apply(&maint)?;
        }
        let acc = self.account()?;
        let mut out = serde_json::Map::new();
        for ns in acc.namespaces.iter() {
            let mut list = pep.device_list(&acc.jid, ns)?;
            if !list.contains(&acc.device_id) {
                list.push(acc.device_id);
                pep.set_device_list(&acc.jid, ns, &list)?;
            }
            let bundle = account::own_bundle_for(&self.store, ns)?;
            pep.set_bundle(&acc.jid, ns, acc.device_id, &bundle)?;
            out.insert(ns.short_name().into(), json!({"devices": list, "pre_keys": bundle.pre_keys.len()}));
        }
        let mut result = json!({"jid": acc.jid, "device_id": acc.device_id, "published": out});
        if let Some(old) = moved_from {
            result["device_id_collision"] = json!({"taken": old, "now": acc.device_id});
        }
        Ok(result)
    }

    /// Reads the device lists of `jids` (and ours) from PEP into the store, then builds the missing
    /// sessions from the bundles there. Returns the change set (not yet applied) and per-device failures.
    fn prepare_sessions(
        &mut self,
        pep: &PepDir,
        jids: &[String],
        choice: NamespaceChoice,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(Changes, Vec<(SessionAddress, String)>), CliError> {
        let acc = self.account()?;
        let mut lists = Changes::default();
        let mut all = jids.to_vec();
        all.push(acc.jid.clone());
        for jid in &all {
            for ns in [Namespace::Oldmemo, Namespace::Twomemo] {
                let devices = pep.device_list(jid, ns)?;
                if !devices.is_empty() || self.store.device_list(ns, jid)?.is_some() {
                    lists.device_lists.push((ns, jid.clone(), devices));
                }
            }
        }
        self.store.apply(&lists)?;
        let mut changes = Changes::default();
        let mut failures = Vec::new();
        for addr in fan_out_encryptor::missing_sessions(&self.store, jids, choice)? {
            let bundle = match pep.bundle(&addr.jid, addr.namespace, addr.device) {
                Ok(b) => b,
                Err(e @ (PepError::BundleNotFound { .. } | PepError::Invalid { .. })) => {
                    failures.push((addr, e.to_string()));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if let Err(e) = session::initiate(&self.store, &acc, &addr, &bundle, &mut changes, rng) {
                failures.push((addr, e.to_string()));
            }
        }
        Ok((changes, failures))
    }

    /// `encrypt`: prints the `<message>` stanza (one `<encrypted>` per namespace in use); sessions missing
    /// are built from the PEP directory.
    pub fn encrypt(
        &mut self,
        pep: &PepDir,
        to: &[String],
        room: Option<&str>,
        id: Option<&str>,
        plaintext: &str,
        choice: NamespaceChoice,
    ) -> Result<(String, Value), CliError> {
        let mut rng = OsRng;
        let (changes, failures) = self.prepare_sessions(pep, to, choice, &mut rng)?;
        let single = (to.len() == 1).then(|| to[0].as_str());
        let out = Outgoing { body: Some(plaintext), sce_to: room.or(single), sce_time: None, sce_content: None };
        let msg = fan_out_encryptor::encrypt_message(&self.store, to, &out, choice, changes, &mut rng)?;
        // Persist every advanced session before the stanza is handed out.
        self.store.apply(&msg.changes)?;
        let id = id.map(str::to_owned).unwrap_or_else(|| stanza::new_message_id(&mut rng));
        let headers = MessageHeaders {
            to: room.or(single).map(str::to_owned),
            groupchat: room.is_some(),
            id,
            eme_namespace: msg.eme_namespace(),
            fallback_body: true,
        };
        let stanza = stanza::build_message(&headers, msg.elements());
        Ok((String::from(&stanza), coverage_json(&msg.coverage, &failures)))
    }

    /// `decrypt`: a stanza (or several, one per line) on input; the first one holding an OMEMO element
    /// for this device is decrypted.
    pub fn decrypt(&mut self, pep: &PepDir, input: &str, sender: Option<&str>) -> Result<Value, CliError> {
        let acc = self.account()?;
        let stanzas = parse_stanzas(input)?;
        let is_omemo = |e: &minidom::Element| e.is("encrypted", v0_3::NS) || e.is("encrypted", v2::NS);
        let messages: Vec<&minidom::Element> = stanzas
            .iter()
            .filter_map(|st| find_descendant(st, "message", "jabber:client"))
            .filter(|m| m.children().any(is_omemo))
            .collect();
        if messages.is_empty() {
            return Err(CliError::refused("not-encrypted", DecryptError::NotEncrypted));
        }
        // The first stanza holding an element for this device is ours (the oracle prints one per namespace).
        let mut last_err = None;
        for message in messages {
            match self.decrypt_message(pep, &acc, message, sender) {
                Err(e) if e.kind == "not-for-this-device" => last_err = Some(e),
                other => return other,
            }
        }
        Err(last_err.unwrap_or_else(|| CliError::refused("not-encrypted", DecryptError::NotEncrypted)))
    }

    fn decrypt_message(
        &mut self,
        pep: &PepDir,
        acc: &Account,
        message: &minidom::Element,
        sender: Option<&str>,
    ) -> Result<Value, CliError> {
        let group = message.attr("type") == Some("groupchat");
        let sender_jid = match sender {
            Some(s) => s.to_owned(),
            None if group => {
                return Err(CliError::usage("a groupchat message needs --sender (the sender's real bare JID)"))
            }
            None => message
                .attr("from")
                .map(|f| stanza::bare(f).to_owned())
                .ok_or_else(|| CliError::usage("the stanza has no from; give --sender"))?,
        };
        // An SCE <to> must name the room (group), us (1:1), or, on a copy of a message our own account
        // sent (another device of ours, or a carbon), the peer that message was addressed to.
        let expected_to = if group {
            message.attr("from").or(message.attr("to")).map(stanza::bare).unwrap_or_default().to_owned()
        } else if sender_jid == acc.jid {
            message.attr("to").map(stanza::bare).unwrap_or(&acc.jid).to_owned()
        } else {
            acc.jid.clone()
        };
        // The sender's device lists as published now: a key exchange is accepted only from a listed device.
        let mut lists = Changes::default();
        for ns in [Namespace::Oldmemo, Namespace::Twomemo] {
            let devices = pep.device_list(&sender_jid, ns)?;
            if !devices.is_empty() || self.store.device_list(ns, &sender_jid)?.is_some() {
                lists.device_lists.push((ns, sender_jid.clone(), devices));
            }
        }
        self.store.apply(&lists)?;
        let ctx = DecryptContext {
            sender: &sender_jid,
            expected_to: &expected_to,
            group,
            pre_keys: session_store::session::PreKeyMode::Live,
        };
        let (out, changes) = fan_out_encryptor::decrypt_stanza(&self.store, message, &ctx, &mut OsRng)
            .map_err(|e| CliError::refused(decrypt_kind(&e), e))?;
        self.store.apply(&changes)?;
        let mut republished = false;
        if out.consumed_pre_key.is_some() {
            self.publish(pep)?;
            republished = true;
        }
        let (plaintext, b64) = match &out.plaintext {
            Some(p) => (Some(String::from_utf8_lossy(p).into_owned()), Some(base64_std(p))),
            None => (None, None),
        };
        let sce = out.envelope.as_ref().map(|e| {
            json!({
                "from": e.from.as_ref().map(|f| f.jid.clone()),
                "to": e.to.as_ref().map(|t| t.jid.clone()),
                "time": e.time.as_ref().map(|t| t.stamp.clone()),
                "rpad_len": e.rpad.as_ref().map(|r| r.pad.len()),
            })
        });
        Ok(json!({
            "plaintext": plaintext,
            "plaintext_b64": b64,
            "empty": out.plaintext.is_none(),
            "sender_jid": out.sender_jid,
            "sender_device_id": out.sender_device,
            "namespace": out.namespace.xmlns(),
            "kex": out.kex,
            "sce": sce,
            "sender_trust": out.identity.trust.name(),
            "sender_fingerprint": out.identity.key.fingerprint(),
            "identity_changed": out.identity.changed_from.is_some(),
            "origin_id": stanza::origin_id(message),
            "bundle_republished": republished,
        }))
    }

    /// `devices [--peer JID]`: devices we know of, with sessions and trust.
    pub fn devices(&self, peer: Option<&str>) -> Result<Value, CliError> {
        let acc = self.account()?;
        let jid = peer.unwrap_or(&acc.jid);
        let mut ids: Vec<(Namespace, u32)> = Vec::new();
        for ns in [Namespace::Twomemo, Namespace::Oldmemo] {
            let listed = self.store.device_list(ns, jid)?.unwrap_or_default();
            for d in listed.into_iter().chain(self.store.session_devices(ns, jid)?) {
                if !ids.contains(&(ns, d)) {
                    ids.push((ns, d));
                }
            }
        }
        ids.sort_unstable_by_key(|(ns, d)| (*d, ns.code()));
        let mut out = Vec::new();
        for (ns, d) in ids {
            let own = jid == acc.jid && d == acc.device_id;
            let record = self.store.session(&SessionAddress::new(ns, jid, d))?;
            let key = if own { Some(acc.identity.public) } else { self.store.identity(jid, d)? };
            let trust = match &key {
                Some(k) if !own => self.store.trust(jid, k)?.map(|t| t.name()),
                _ => None,
            };
            out.push(json!({
                "jid": jid,
                "device_id": d,
                "namespace": ns.short_name(),
                "own": own,
                "fingerprint": key.map(|k| k.fingerprint()),
                "trust": trust,
                "session": record.as_ref().map(|r| json!({
                    "pending_key_exchange": r.pending_key_exchange(),
                    "sent_on_chain": r.sent_on_chain(),
                })),
            }));
        }
        Ok(Value::Array(out))
    }

    /// `trust --peer JID --device ID --level LEVEL`.
    pub fn trust(&mut self, peer: &str, device: u32, level: TrustLevel) -> Result<Value, CliError> {
        let key = self
            .store
            .identity(peer, device)?
            .ok_or_else(|| CliError::refused("unknown-device", format!("no identity key known for {peer}/{device}")))?;
        let changes = Changes { trust: vec![(peer.to_owned(), key, level)], ..Changes::default() };
        self.store.apply(&changes)?;
        Ok(json!({"jid": peer, "device_id": device, "fingerprint": key.fingerprint(), "trust": level.name()}))
    }
}

fn decrypt_kind(e: &DecryptError) -> &'static str {
    match e {
        DecryptError::Xml(_) => "malformed",
        DecryptError::NotEncrypted => "not-encrypted",
        DecryptError::NotForThisDevice(_) => "not-for-this-device",
        DecryptError::FromThisDevice => "from-this-device",
        DecryptError::Session(SessionError::Duplicate { .. }) => "duplicate",
        DecryptError::Session(SessionError::BadMac) => "bad-mac",
        DecryptError::Session(SessionError::NoSession) => "no-session",
        DecryptError::Session(SessionError::Distrusted { .. }) => "distrusted",
        DecryptError::Session(SessionError::UnknownDevice { .. }) => "unknown-device",
        DecryptError::Session(SessionError::Malformed(_)) => "malformed",
        DecryptError::Session(_) => "session",
        DecryptError::BadPayload => "bad-payload",
        DecryptError::Affix(_) => "sce-affix",
        _ => "decrypt",
    }
}

fn coverage_json(c: &Coverage, failures: &[(SessionAddress, String)]) -> Value {
    let reason = |r: &SkipReason| match r {
        SkipReason::NoSession => "no session".to_owned(),
        SkipReason::Untrusted => "untrusted".to_owned(),
        SkipReason::SessionFailed(e) => e.clone(),
        _ => "other".to_owned(),
    };
    json!({
        "keyed": c.keyed.iter().map(|(a, kex)| json!({"jid": a.jid.as_str(), "device_id": a.device, "namespace": a.namespace.short_name(), "kex": kex})).collect::<Vec<_>>(),
        "skipped": c.skipped.iter().map(|(a, r)| {
            let why = failures.iter().find(|(f, _)| f == a).map(|(_, e)| e.clone()).unwrap_or_else(|| reason(r));
            json!({"jid": a.jid.as_str(), "device_id": a.device, "reason": why})
        }).collect::<Vec<_>>(),
        "jids_without_devices": c.jids_without_devices,
    })
}

/// Parses the input as one element, or else as one element per non-empty line.
fn parse_stanzas(input: &str) -> Result<Vec<minidom::Element>, CliError> {
    if let Ok(e) = parse_element(input) {
        return Ok(vec![e]);
    }
    let mut out = Vec::new();
    for line in input.lines().filter(|l| !l.trim().is_empty()) {
        out.push(parse_element(line).map_err(|e| CliError::refused("malformed", e))?);
    }
    if out.is_empty() {
        return Err(CliError::refused("malformed", "no stanza on input"));
    }
    Ok(out)
}

fn ns_names(set: NamespaceSet) -> Vec<&'static str> {
    set.iter().map(Namespace::short_name).collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn base64_std(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}
