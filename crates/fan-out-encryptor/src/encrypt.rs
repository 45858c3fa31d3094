//! Encrypting one message for a set of bare JIDs: every active device of theirs and our own other
//! devices, never the sending device; each device in OMEMO 2 when its JID lists it in the OMEMO 2
//! device list, else in OMEMO 0.3.
//!
//! ```text
//! for each namespace in use:
//!     payload_ns = encrypt once (0.3: AES-128-GCM of the body; 2: AES-256-CBC+HMAC of the SCE envelope)
//!     for each device d of that namespace with a session we trust:
//!         key_d = ratchet_encrypt(session_d, secret_ns)        -- on a copy; collected in one Changes
//! 0.3: <encrypted xmlns='eu.siacs.conversations.axolotl'><header sid><key rid [prekey]/>…<iv/></header><payload/>
//! 2:   <encrypted xmlns='urn:xmpp:omemo:2'><header sid><keys jid><key rid [kex]/>…</keys>…</header><payload/>
//! ```

use std::collections::HashMap;

use minidom::Element;
use rand_core::CryptoRngCore;
use session_store::{session, Changes, DeviceId, Jid, Namespace, SessionAddress, SessionError, Store};
use xmpp_parsers::legacy_omemo;

use crate::{
    error::EncryptError,
    payload,
    xml::{sce, v2},
};

/// Which namespaces a message may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceChoice {
    /// Per device: OMEMO 2 when the device is in its JID's OMEMO 2 list, else 0.3.
    Auto,
    /// Only this namespace; devices without it are left out.
    Only(Namespace),
}

impl NamespaceChoice {
    /// Parses `auto`, `oldmemo`, `twomemo`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(Self::Auto),
            other => Namespace::parse(other).map(Self::Only),
        }
    }

    fn allows(self, ns: Namespace) -> bool {
        match self {
            Self::Auto => true,
            Self::Only(only) => only == ns,
        }
    }
}

/// Why a device did not get a key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SkipReason {
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
    /// JIDs without any usable device list.
    pub jids_without_devices: Vec<String>,
    /// Devices left out, each with its reason.
    pub skipped: Vec<(SessionAddress, SkipReason)>,
}

/// What to send.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outgoing<'a> {
    /// The body text; `None` for an empty message (heartbeat, session completion, key transport).
    pub body: Option<&'a str>,
    /// OMEMO 2 SCE `<to>`: the room for a group message, the peer for 1:1.
    pub sce_to: Option<&'a str>,
    /// OMEMO 2 SCE `<time stamp>` (XEP-0082), if wanted.
    pub sce_time: Option<&'a str>,
    /// The OMEMO 2 SCE `<content>` elements, in place of a `<body>` with `body` (an invitation: the
    /// `jabber:x:conference` element). OMEMO 0.3 carries `body` either way.
    pub sce_content: Option<&'a [Element]>,
}

/// An encrypted message ready to be wrapped in a stanza, and what to persist before sending it.
#[derive(Debug)]
pub struct EncryptedMessage {
    /// The OMEMO 0.3 element, when some device needs it.
    pub oldmemo: Option<legacy_omemo::Encrypted>,
    /// The OMEMO 2 element, when some device needs it.
    pub twomemo: Option<v2::Encrypted>,
    /// Advanced sessions: apply before the stanza goes out.
    pub changes: Changes,
    /// The coverage report.
    pub coverage: Coverage,
}

impl EncryptedMessage {
    /// The `<encrypted>` elements, OMEMO 2 first.
    pub fn elements(&self) -> Vec<Element> {
        elements_and_eme(self.oldmemo.as_ref(), self.twomemo.as_ref()).0
    }

    /// The namespace the EME element names: OMEMO 2 when present.
    pub fn eme_namespace(&self) -> &'static str {
        eme_of(self.twomemo.is_some())
    }
}

/// The key elements of a 1:1 message as the devices are encrypted for, one by one: 0.3 keys in a list,
/// OMEMO 2 keys grouped per bare JID (through an index, not a search per device). A group message
/// writes its keys as text instead ([`GroupKeys`]).
#[derive(Debug, Default)]
pub(crate) struct KeyElements {
    old: Vec<legacy_omemo::Key>,
    new: Vec<(String, Vec<v2::Key>)>,
    group_of: HashMap<String, usize>,
}

impl KeyElements {
    /// Adds the key element for `addr`.
    pub(crate) fn push(&mut self, addr: &SessionAddress, data: Vec<u8>, kex: bool) {
        match addr.namespace {
            Namespace::Oldmemo => self.old.push(legacy_omemo::Key { rid: addr.device, prekey: kex, data }),
            _ => {
                let key = v2::Key { rid: addr.device, kex: kex.then_some(true), data };
                match self.group_of.get(addr.jid.as_str()).and_then(|&i| self.new.get_mut(i)) {
                    Some((_, group)) => group.push(key),
                    None => {
                        self.group_of.insert(addr.jid.to_string(), self.new.len());
                        self.new.push((addr.jid.to_string(), vec![key]));
                    }
                }
            }
        }
    }

    /// The `<encrypted>` of each namespace that got at least one key. `old` is the 0.3 IV and
    /// ciphertext, `new` the OMEMO 2 ciphertext (`None` inside: an empty message without payload).
    pub(crate) fn finish(
        self,
        sid: DeviceId,
        old: Option<([u8; 12], Option<Vec<u8>>)>,
        new: Option<Option<Vec<u8>>>,
    ) -> (Option<legacy_omemo::Encrypted>, Option<v2::Encrypted>) {
        let oldmemo = match (old, self.old.is_empty()) {
            (Some((iv, ciphertext)), false) => Some(legacy_omemo::Encrypted {
                header: legacy_omemo::Header { sid, keys: self.old, iv: legacy_omemo::IV { data: iv.to_vec() } },
                payload: ciphertext.map(|data| legacy_omemo::Payload { data }),
            }),
            _ => None,
        };
        let twomemo = match (new, self.new.is_empty()) {
            (Some(ciphertext), false) => Some(v2::Encrypted {
                header: v2::Header {
                    sid,
                    keys: self.new.into_iter().map(|(jid, keys)| v2::Keys { jid, keys }).collect(),
                },
                payload: ciphertext.map(|data| v2::Payload { data }),
            }),
            _ => None,
        };
        (oldmemo, twomemo)
    }
}

/// The `<encrypted>` elements of a group message, to be written as text (OMEMO 2 first, as [`in_order`]
/// puts them). The keys are the devices' `<key>` elements written as text, in device order; OMEMO 2 keys
/// are grouped per bare JID, the groups in the order their JIDs first appear (as [`KeyElements`] groups
/// them).
pub(crate) struct GroupKeys<'a> {
    old: Vec<&'a str>,
    /// (group, JID, key), sorted by group; each group's keys in device order.
    new: Vec<(usize, &'a str, &'a str)>,
    /// The 0.3 IV and ciphertext, if that element is written.
    old_payload: Option<([u8; 12], &'a [u8])>,
    /// The OMEMO 2 ciphertext, if that element is written.
    new_payload: Option<&'a [u8]>,
    /// About the length of the text.
    len: usize,
}

impl<'a> GroupKeys<'a> {
    /// Groups the keys; `old` is the 0.3 IV and ciphertext, `new` the OMEMO 2 ciphertext. A namespace
    /// without keys gets no element.
    pub(crate) fn new(
        keys: impl Iterator<Item = (&'a SessionAddress, &'a str)>,
        old: Option<([u8; 12], &'a [u8])>,
        new: Option<&'a [u8]>,
    ) -> Self {
        let mut old_keys = Vec::new();
        let mut new_keys: Vec<(usize, &str, &str)> = Vec::new();
        let mut len = 512;
        // Whether the OMEMO 2 JIDs come in ascending order (as in a send to a room, whose recipients are
        // sorted): then each run of one JID is its group, and no map is needed.
        let mut ascending = true;
        for (addr, key) in keys {
            len += key.len();
            match addr.namespace {
                Namespace::Oldmemo => old_keys.push(key),
                _ => {
                    let jid = addr.jid.as_str();
                    ascending &= new_keys.last().is_none_or(|&(_, last, _)| last <= jid);
                    new_keys.push((0, jid, key));
                }
            }
        }
        // Each group numbered in the order its JID first appears (and its element's size counted once).
        let mut group_of: session_store::FastMap<&str, usize> = HashMap::default();
        let mut groups = 0;
        let mut last: Option<&str> = None;
        for (group, jid, _) in &mut new_keys {
            // In ascending order a JID's keys are one run: the map is needed only otherwise.
            let known = match ascending {
                true => (last == Some(*jid)).then(|| groups - 1),
                false => group_of.get(jid).copied(),
            };
            *group = known.unwrap_or_else(|| {
                len += jid.len() + 32;
                if !ascending {
                    group_of.insert(jid, groups);
                }
                groups += 1;
                groups - 1
            });
            last = Some(*jid);
        }
        if !ascending {
            // A JID may come back after another: its keys join its first group. A stable sort: keys of one
            // group keep their order.
            new_keys.sort_by_key(|(group, _, _)| *group);
        }
        let new_payload = new.filter(|_| !new_keys.is_empty());
        let old_payload = old.filter(|_| !old_keys.is_empty());
        len += (new_payload.map_or(0, <[u8]>::len) + old_payload.map_or(0, |(_, c)| c.len())) * 2;
        Self { old: old_keys, new: new_keys, old_payload, new_payload, len }
    }

    /// The namespace the EME names: OMEMO 2 when that element is written.
    pub(crate) fn eme(&self) -> &'static str {
        eme_of(self.new_payload.is_some())
    }

    /// About the length of the text (to reserve it at once).
    pub(crate) fn len_hint(&self) -> usize {
        self.len
    }

    /// Appends the elements.
    pub(crate) fn write(&self, sid: DeviceId, out: &mut String) {
        if let Some(ciphertext) = self.new_payload {
            let groups =
                self.new.chunk_by(|a, b| a.0 == b.0).map(|g| (g.first().map_or("", |k| k.1), g.iter().map(|k| k.2)));
            crate::xml::v2::write_encrypted(out, sid, groups, Some(ciphertext));
        }
        if let Some((iv, ciphertext)) = self.old_payload {
            crate::xml::v0_3::write_encrypted(out, sid, self.old.iter().copied(), &iv, Some(ciphertext));
        }
    }
}

/// The `<encrypted>` elements of a message, OMEMO 2 first, and the namespace its EME names (OMEMO 2
/// when that element is there).
pub(crate) fn elements_and_eme(
    oldmemo: Option<&legacy_omemo::Encrypted>,
    twomemo: Option<&v2::Encrypted>,
) -> (Vec<Element>, &'static str) {
    in_order(twomemo.map(v2::Encrypted::to_element), oldmemo.map(|e| crate::xml::v0_3::encrypted(e.clone())))
}

/// The `<encrypted>` elements in the order they are sent (OMEMO 2 first) and the namespace the EME names.
fn in_order(twomemo: Option<Element>, oldmemo: Option<Element>) -> (Vec<Element>, &'static str) {
    let eme = eme_of(twomemo.is_some());
    (twomemo.into_iter().chain(oldmemo).collect(), eme)
}

/// The namespace the EME element names: OMEMO 2 when the message carries it.
fn eme_of(twomemo: bool) -> &'static str {
    if twomemo {
        Namespace::Twomemo.xmlns()
    } else {
        Namespace::Oldmemo.xmlns()
    }
}

/// The devices a message to `jids` goes to, each with its namespace: the active devices of each JID's
/// device lists, plus our own other devices; never our sending device. Also the JIDs without any usable
/// device list.
pub fn recipient_devices<J: AsRef<str>>(
    store: &impl Store,
    jids: &[J],
    choice: NamespaceChoice,
) -> Result<(Vec<SessionAddress>, Vec<String>), EncryptError> {
    let account = store.account()?.ok_or(EncryptError::NoAccount)?;
    let mut all: Vec<&str> = jids.iter().map(AsRef::as_ref).collect();
    if !all.contains(&account.jid.as_str()) {
        all.push(&account.jid);
    }
    let mut out: Vec<SessionAddress> = Vec::with_capacity(all.len());
    let mut without = Vec::new();
    // Every list of a namespace in one read (a room may have thousands of members).
    let namespaces: Vec<Namespace> = account.namespaces.iter().filter(|ns| choice.allows(*ns)).collect();
    let lists = namespaces.iter().map(|ns| store.device_lists(*ns, &all)).collect::<Result<Vec<_>, _>>()?;
    // The device ids of the current JID seen so far (one buffer for all JIDs).
    let mut taken: Vec<u32> = Vec::new();
    for (i, jid) in all.into_iter().enumerate() {
        let mut found = false;
        // One shared copy of the JID for all its devices, made at its first device.
        let mut shared: Option<Jid> = None;
        // OMEMO 2 first: a device in both lists is reached in OMEMO 2 (once).
        taken.clear();
        for (ns, of_ns) in namespaces.iter().copied().zip(&lists) {
            for &d in of_ns.get(i).unwrap_or_default() {
                if jid == account.jid && d == account.device_id {
                    continue;
                }
                found = true;
                if !taken.contains(&d) {
                    taken.push(d);
                    // The store's copy of the JID if it hands one out, else a new one.
                    let jid = shared.get_or_insert_with(|| of_ns.jid(i).cloned().unwrap_or_else(|| jid.into()));
                    out.push(SessionAddress::new(ns, jid.clone(), d));
                }
            }
        }
        if !found && jid != account.jid {
            without.push(jid.to_owned());
        }
    }
    Ok((out, without))
}

/// Recipient devices of a message to `jids` that have no session yet: fetch their bundles.
pub fn missing_sessions(
    store: &impl Store,
    jids: &[String],
    choice: NamespaceChoice,
) -> Result<Vec<SessionAddress>, EncryptError> {
    let (devices, _) = recipient_devices(store, jids, choice)?;
    let mut out = Vec::new();
    for addr in devices {
        if !store.session(&addr)?.is_some_and(|r| r.has_current()) {
            out.push(addr);
        }
    }
    Ok(out)
}

/// Encrypts `out` for `jids`. Sessions must exist (see [`missing_sessions`] and `session::initiate`,
/// whose changes may be passed in `changes` so that one transaction covers everything). Devices that
/// cannot be encrypted for are reported, not fatal; no device at all is [`EncryptError::NoDevices`].
pub fn encrypt_message(
    store: &impl Store,
    jids: &[String],
    out: &Outgoing<'_>,
    choice: NamespaceChoice,
    changes: Changes,
    rng: &mut impl CryptoRngCore,
) -> Result<EncryptedMessage, EncryptError> {
    let (devices, without) = recipient_devices(store, jids, choice)?;
    encrypt_to_devices(store, devices, without, out, changes, rng)
}

/// Encrypts `out` for exactly these devices (sessions must exist); `without` is carried into the
/// coverage report.
pub fn encrypt_to_devices(
    store: &impl Store,
    devices: Vec<SessionAddress>,
    without: Vec<String>,
    out: &Outgoing<'_>,
    mut changes: Changes,
    rng: &mut impl CryptoRngCore,
) -> Result<EncryptedMessage, EncryptError> {
    let account = store.account()?.ok_or(EncryptError::NoAccount)?;
    let mut coverage = Coverage { jids_without_devices: without, ..Coverage::default() };
    let uses = |ns| devices.iter().any(|a| a.namespace == ns);

    // OMEMO 0.3: the body, AES-128-GCM.
    let old = uses(Namespace::Oldmemo).then(|| match out.body {
        Some(body) => {
            let p = payload::encrypt(body.as_bytes(), rng);
            (p.iv, Some(p.ciphertext), zeroize::Zeroizing::new(p.key_material.to_vec()))
        }
        None => {
            let mut iv = [0u8; 12];
            rng.fill_bytes(&mut iv);
            (iv, None, zeroize::Zeroizing::new(payload::transport_key(rng).to_vec()))
        }
    });
    // OMEMO 2: the SCE envelope (an empty one carries no payload and a zero key).
    let new = uses(Namespace::Twomemo).then(|| match out.body {
        Some(body) => {
            let content = match out.sce_content {
                Some(c) => c.to_vec(),
                None => vec![Element::builder("body", "jabber:client").append(body).build()],
            };
            let env: Element = sce::build(content, &account.jid, out.sce_to, out.sce_time, rng).into();
            let p = payload::encrypt_v2(String::from(&env).as_bytes(), rng);
            (Some(p.ciphertext), zeroize::Zeroizing::new(p.key_material.to_vec()))
        }
        None => (None, zeroize::Zeroizing::new(payload::V2_EMPTY_KEY_MATERIAL.to_vec())),
    });

    let mut keys = KeyElements::default();
    for addr in devices {
        let secret = match addr.namespace {
            Namespace::Oldmemo => old.as_ref().map(|o| &o.2),
            _ => new.as_ref().map(|n| &n.1),
        };
        let Some(secret) = secret else { continue };
        match session::encrypt(store, &account, &addr, secret, &mut changes) {
            Ok(k) => {
                keys.push(&addr, k.data, k.kex);
                coverage.keyed.push((addr, k.kex));
            }
            Err(SessionError::NoSession) => coverage.skipped.push((addr, SkipReason::NoSession)),
            Err(SessionError::Untrusted { .. }) => coverage.skipped.push((addr, SkipReason::Untrusted)),
            Err(SessionError::Store(e)) => return Err(e.into()),
            Err(e) => coverage.skipped.push((addr, SkipReason::SessionFailed(e.to_string()))),
        }
    }
    if coverage.keyed.is_empty() {
        return Err(EncryptError::NoDevices);
    }
    let (oldmemo, twomemo) = keys.finish(
        account.device_id,
        old.map(|(iv, ciphertext, _)| (iv, ciphertext)),
        new.map(|(ciphertext, _)| ciphertext),
    );
    Ok(EncryptedMessage { oldmemo, twomemo, changes, coverage })
}

/// The empty OMEMO messages (key transport, XEP-0384) owed to `devices`: session completion after a
/// key exchange, or a heartbeat. One `<message type='chat'>` per JID, with keys for the listed devices
/// only. The changes (advanced sessions, and the replies no longer owed) must be committed before the
/// stanzas are sent.
pub fn empty_messages(
    store: &impl Store,
    devices: &[SessionAddress],
    rng: &mut impl CryptoRngCore,
) -> Result<(Vec<Element>, Changes), EncryptError> {
    let mut by_jid: std::collections::BTreeMap<&str, Vec<SessionAddress>> = std::collections::BTreeMap::new();
    for a in devices {
        by_jid.entry(a.jid.as_str()).or_default().push(a.clone());
    }
    let mut stanzas = Vec::new();
    let mut all = Changes { replies_done: devices.to_vec(), ..Changes::default() };
    for (jid, addrs) in by_jid {
        let out = Outgoing { body: None, sce_to: Some(jid), sce_time: None, sce_content: None };
        let msg = match encrypt_to_devices(store, addrs, Vec::new(), &out, Changes::default(), rng) {
            Ok(m) => m,
            // The session is gone (or distrusted) since: nothing is owed any more.
            Err(EncryptError::NoDevices) => continue,
            Err(e) => return Err(e),
        };
        let headers = crate::xml::stanza::MessageHeaders {
            to: Some(jid.to_owned()),
            groupchat: false,
            id: crate::xml::stanza::new_message_id(rng),
            eme_namespace: msg.eme_namespace(),
            fallback_body: false,
        };
        stanzas.push(crate::xml::stanza::build_message(&headers, msg.elements()));
        all.merge(msg.changes);
    }
    Ok((stanzas, all))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::xml::{parse_element, v0_3, v2 as v2_xml};

    /// With a store that hands out its own copy of each JID (SQLite), the addresses of every send to the
    /// same members share that copy (no JID is allocated per member and send); a store that does not
    /// (memory) gets the same addresses.
    #[test]
    fn recipient_devices_share_the_stores_jids() {
        use rand_chacha::rand_core::SeedableRng;
        use session_store::{Account, Changes, MemoryStore, NamespaceSet, SqliteStore, Store};
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
        let path = std::env::temp_dir().join(format!("omemo-recipient-jids-{}.sqlite3", std::process::id()));
        let mut sql = SqliteStore::open(&path).unwrap();
        let mut mem = MemoryStore::default();
        let account = Account::create("me@x", NamespaceSet::BOTH, &[], 0, &mut rng);
        let mut lists = Changes::default();
        lists.device_lists.push((Namespace::Twomemo, "a@x".into(), vec![1, 2]));
        lists.device_lists.push((Namespace::Oldmemo, "a@x".into(), vec![2, 3]));
        lists.device_lists.push((Namespace::Oldmemo, "b@x".into(), vec![4]));
        for changes in [&account, &lists] {
            sql.apply(changes).unwrap();
            mem.apply(changes).unwrap();
        }
        let jids = ["a@x", "b@x", "c@x"];
        let (first, without) = recipient_devices(&sql, &jids, NamespaceChoice::Auto).unwrap();
        let (again, _) = recipient_devices(&sql, &jids, NamespaceChoice::Auto).unwrap();
        let (in_memory, in_memory_without) = recipient_devices(&mem, &jids, NamespaceChoice::Auto).unwrap();
        let plain = |a: &[SessionAddress]| -> Vec<(Namespace, String, u32)> {
            a.iter().map(|a| (a.namespace, a.jid.to_string(), a.device)).collect()
        };
        let want = vec![
            (Namespace::Twomemo, "a@x".to_owned(), 1),
            (Namespace::Twomemo, "a@x".to_owned(), 2),
            (Namespace::Oldmemo, "a@x".to_owned(), 3),
            (Namespace::Oldmemo, "b@x".to_owned(), 4),
        ];
        assert_eq!(plain(&first), want);
        assert_eq!(plain(&again), want);
        assert_eq!(plain(&in_memory), want);
        assert_eq!(without, vec!["c@x".to_owned()]);
        assert_eq!(in_memory_without, without);
        for (a, b) in first.iter().zip(&again) {
            assert!(std::ptr::eq(a.jid.as_str(), b.jid.as_str()), "{} shares the store's copy", a.jid);
        }
        drop(sql);
        for end in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{end}", path.display()));
        }
    }

    /// The group send's text and the 1:1 path's elements group and order the same keys the same way,
    /// also when a JID's devices are not adjacent.
    #[test]
    fn group_text_groups_keys_like_the_elements() {
        use Namespace::{Oldmemo, Twomemo};
        let devices = [
            (Twomemo, "b@x", 1, false),
            (Oldmemo, "a@x", 2, true),
            (Twomemo, "a@x", 3, true),
            (Twomemo, "b@x", 4, false),
            (Oldmemo, "b@x", 5, false),
            (Twomemo, "o'c&d@x", 6, false),
            (Twomemo, "a@x", 7, false),
        ];
        let iv = [7u8; 12];
        let (old_ct, new_ct) = (vec![1u8; 20], vec![2u8; 30]);
        // In the order above (a JID comes back after another), and sorted by JID as a room send has them
        // (each JID's keys in one run, the runs ascending).
        let mut sorted = devices;
        sorted.sort_by_key(|d| d.1);
        for (devices, only) in
            [devices, sorted].into_iter().flat_map(|d| [(d, None), (d, Some(Oldmemo)), (d, Some(Twomemo))])
        {
            let mut structs = KeyElements::default();
            let mut texts = Vec::new();
            for (i, (ns, jid, device, kex)) in devices.into_iter().enumerate() {
                if only.is_some_and(|o| o != ns) {
                    continue;
                }
                let addr = SessionAddress::new(ns, jid, device);
                let data = vec![u8::try_from(i).unwrap(); 40 + i];
                structs.push(&addr, data.clone(), kex);
                let mut text = String::new();
                match ns {
                    Oldmemo => v0_3::write_key(&mut text, device, kex, &data),
                    _ => v2_xml::write_key(&mut text, device, kex.then_some(true), &data),
                }
                texts.push((addr, text));
            }
            let (o, n) = structs.finish(9, Some((iv, Some(old_ct.clone()))), Some(Some(new_ct.clone())));
            let (want, want_eme) = elements_and_eme(o.as_ref(), n.as_ref());
            let keys = GroupKeys::new(texts.iter().map(|(a, t)| (a, t.as_str())), Some((iv, &old_ct)), Some(&new_ct));
            assert_eq!(keys.eme(), want_eme);
            let mut text = String::new();
            keys.write(9, &mut text);
            assert!(text.len() <= keys.len_hint());
            let got = parse_element(&format!("<x xmlns='urn:example'>{text}</x>")).unwrap();
            let got: Vec<Element> = got.children().cloned().collect();
            let want: Vec<Element> = want.iter().map(|e| parse_element(&String::from(e)).unwrap()).collect();
            assert_eq!(got, want, "{text}");
            assert_eq!(got.len(), if only.is_some() { 1 } else { 2 });
        }
    }
}
