//! An in-process world for tests, fuzzing, examples and the demo: one members-only, non-anonymous MUC
//! room that reflects messages (adding a stanza-id and an occupant-id) and archives them (MAM results
//! carrying the sender's real JID), PEP served from the members' own stores, and devices that each keep
//! their own store and their own view of the room.
//!
//! The world delivers nothing by itself: the caller decides which device receives which stanza, when,
//! and how often (live or from the archive), so that tests and the fuzzer can drop, reorder and repeat.

use std::collections::{BTreeMap, BTreeSet};

use fan_out_encryptor::group::{
    encrypt_group_message, plan_group_message, receive_group_message, GroupCoverage, GroupError, GroupOptions, Inbound,
};
use minidom::Element;
use participant_resolver::{Policy, Room};
use rand_chacha::{rand_core::SeedableRng, ChaCha20Rng};
use session_store::{
    account, session::PreKeyMode, Account, Changes, DeviceId, MemoryStore, Namespace, NamespaceSet, PreKeyBundle,
    SessionAddress, SqliteStore, Store, StoreError,
};

/// A store the world can restart: what a device keeps across a process restart.
pub trait Storage: Store + Sized {
    /// Replaces the store with one opened again from what it persisted (on failure it is unchanged).
    fn reopen(&mut self) -> Result<(), StoreError>;
}

impl Storage for MemoryStore {
    /// A memory store keeps everything: a restart changes nothing.
    fn reopen(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

impl Storage for SqliteStore<rusqlite::Connection> {
    /// Opens the database file again and closes the old connection (which holds no open transaction).
    /// An in-memory database cannot restart.
    fn reopen(&mut self) -> Result<(), StoreError> {
        let path = self.path().ok_or(StoreError::Corrupt("an in-memory database cannot be reopened"))?;
        *self = SqliteStore::open(path)?;
        Ok(())
    }
}

/// What went wrong in the world (the engine's own outcomes are returned, not errors).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorldError {
    /// The send failed as a whole.
    #[error("send: {0}")]
    Group(#[from] GroupError),
    /// A store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The room refused a stanza of the world (a bug in the world).
    #[error("room: {0}")]
    Room(String),
    /// A stanza of the world did not parse (a bug in the world).
    #[error("xml: {0}")]
    Xml(String),
    /// No device with that index, or it has no account.
    #[error("no device {0}")]
    NoDevice(usize),
    /// No message with that index.
    #[error("no message {0}")]
    NoMessage(usize),
}

/// One member's device, as the world creates it.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    /// The member's bare JID (two devices of one member share it).
    pub jid: String,
    /// The nick this device uses in the room.
    pub nick: String,
    /// The OMEMO versions the device speaks.
    pub namespaces: NamespaceSet,
}

impl DeviceSpec {
    /// A device of `jid` with `nick`, speaking `namespaces`.
    pub fn new(jid: &str, nick: &str, namespaces: NamespaceSet) -> Self {
        Self { jid: jid.to_owned(), nick: nick.to_owned(), namespaces }
    }
}

/// A device in the world.
#[derive(Debug)]
pub struct Device<S> {
    /// The member's bare JID.
    pub jid: String,
    /// Its current nick.
    pub nick: String,
    /// Its own store.
    pub store: S,
    /// Its own view of the room.
    pub room: Room,
    /// The OMEMO versions it speaks.
    pub namespaces: NamespaceSet,
    /// Its device id.
    pub device_id: DeviceId,
    /// In the room now (gets presences; a device that is not may still read the archive).
    pub online: bool,
}

/// A message the room has seen: as reflected live, and as its archive returns it.
#[derive(Debug, Clone)]
pub struct Posted {
    /// The sending device.
    pub from: usize,
    /// The text sent.
    pub text: String,
    /// The stanza as the room delivers it live.
    pub live: Element,
    /// The same stanza as a MAM result.
    pub archived: Element,
}

/// The world: a room, its members' devices, and everything posted.
#[derive(Debug)]
pub struct World<S> {
    /// The room's JID.
    pub room: String,
    /// The devices, by index.
    pub devices: Vec<Device<S>>,
    /// Everything the room has seen, in order.
    pub posted: Vec<Posted>,
    /// The room's affiliations (bare JID to `owner`, `member`, `outcast` ...).
    pub affiliations: BTreeMap<String, String>,
    /// Devices whose bundle PEP serves with a broken signature (a tampering server).
    pub broken_bundles: BTreeSet<SessionAddress>,
    rng: ChaCha20Rng,
    now: u64,
}

pub use participant_resolver::xml::escape;

fn parse(text: &str) -> Result<Element, WorldError> {
    participant_resolver::xml::parse_text(text).map_err(WorldError::Xml)
}

impl<S: Storage> World<S> {
    /// A room `room` with `devices` (each with a new account in the store `open(i)` returns), everyone
    /// online and a `member`, plus `extra_members` (members with no device in the world). Deterministic
    /// for a given `seed`.
    pub fn new(
        room: &str,
        devices: &[DeviceSpec],
        extra_members: &[&str],
        seed: u64,
        mut open: impl FnMut(usize) -> Result<S, StoreError>,
    ) -> Result<Self, WorldError> {
        let mut stores = Vec::with_capacity(devices.len());
        for (i, spec) in devices.iter().enumerate() {
            stores.push((spec.clone(), open(i)?));
        }
        Self::with_stores(room, stores, extra_members, ChaCha20Rng::seed_from_u64(seed))
    }

    /// Like [`World::new`], with stores of the caller's: a store that holds an account already keeps it
    /// (a process that starts again on its files), the others get a new one from `rng`.
    pub fn with_stores(
        room: &str,
        devices: Vec<(DeviceSpec, S)>,
        extra_members: &[&str],
        mut rng: ChaCha20Rng,
    ) -> Result<Self, WorldError> {
        let now = 1_000;
        let mut out = Vec::with_capacity(devices.len());
        let mut taken = Vec::new();
        let mut affiliations = BTreeMap::new();
        for (i, (spec, mut store)) in devices.into_iter().enumerate() {
            let device_id = match store.account()? {
                Some(a) if a.jid == spec.jid => a.device_id,
                Some(_) => return Err(WorldError::NoDevice(i)),
                None => {
                    let account = Account::create(&spec.jid, spec.namespaces, &taken, now, &mut rng);
                    let id = account.account.as_ref().map(|a| a.device_id).ok_or(WorldError::NoDevice(i))?;
                    store.apply(&account)?;
                    id
                }
            };
            taken.push(device_id);
            affiliations.insert(spec.jid.clone(), "member".to_owned());
            out.push(Device {
                room: Room::new(room, &spec.jid, Policy::default()),
                jid: spec.jid,
                nick: spec.nick,
                store,
                namespaces: spec.namespaces,
                device_id,
                online: false,
            });
        }
        for jid in extra_members {
            affiliations.insert((*jid).to_owned(), "member".to_owned());
        }
        let mut w = World {
            room: room.to_owned(),
            devices: out,
            posted: Vec::new(),
            affiliations,
            broken_bundles: BTreeSet::new(),
            rng,
            now,
        };
        for i in 0..w.devices.len() {
            w.join(i)?;
        }
        Ok(w)
    }

    /// A copy of this world whose devices keep the stores `copy(i, store)` makes of the originals:
    /// everything else (rooms, posts, affiliations, the generator's state) is cloned.
    pub fn fork<T: Storage>(
        &self,
        mut copy: impl FnMut(usize, &S) -> Result<T, StoreError>,
    ) -> Result<World<T>, WorldError> {
        let mut devices = Vec::with_capacity(self.devices.len());
        for (i, d) in self.devices.iter().enumerate() {
            devices.push(Device {
                jid: d.jid.clone(),
                nick: d.nick.clone(),
                store: copy(i, &d.store)?,
                room: d.room.clone(),
                namespaces: d.namespaces,
                device_id: d.device_id,
                online: d.online,
            });
        }
        Ok(World {
            room: self.room.clone(),
            devices,
            posted: self.posted.clone(),
            affiliations: self.affiliations.clone(),
            broken_bundles: self.broken_bundles.clone(),
            rng: self.rng.clone(),
            now: self.now,
        })
    }

    /// The clock of the world (seconds); every send advances it by one.
    pub fn now(&self) -> u64 {
        self.now
    }

    fn device(&self, i: usize) -> Result<&Device<S>, WorldError> {
        self.devices.get(i).ok_or(WorldError::NoDevice(i))
    }

    fn presence(&self, i: usize, to: usize, unavailable: bool, codes: &[u16], new_nick: Option<&str>) -> String {
        let d = &self.devices[i];
        let affiliation = self.affiliations.get(&d.jid).map(String::as_str).unwrap_or("none");
        let mut codes = codes.to_vec();
        if i == to {
            codes.push(110);
        }
        let status: String = codes.iter().map(|c| format!("<status code='{c}'/>")).collect();
        let (t, role) = if unavailable { (" type='unavailable'", "none") } else { ("", "participant") };
        let nick_attr = new_nick.map(|n| format!(" nick='{}'", escape(n))).unwrap_or_default();
        format!(
            "<presence xmlns='jabber:client' from='{room}/{nick}'{t}>\
             <occupant-id xmlns='urn:xmpp:occupant-id:0' id='oid-{oid}'/>\
             <x xmlns='http://jabber.org/protocol/muc#user'><item jid='{jid}/device{id}' affiliation='{affiliation}' \
             role='{role}'{nick_attr}/>{status}</x></presence>",
            room = escape(&self.room),
            nick = escape(&d.nick),
            oid = d.device_id,
            jid = escape(&d.jid),
            id = d.device_id,
        )
    }

    /// Applies a stanza to one device's view of the room.
    fn tell(&mut self, to: usize, stanza: &str) -> Result<(), WorldError> {
        let e = parse(stanza)?;
        let d = self.devices.get_mut(to).ok_or(WorldError::NoDevice(to))?;
        d.room.apply_captured(&e).map_err(|e| WorldError::Room(e.to_string()))?;
        Ok(())
    }

    /// Sends device `i`'s presence to every online device (and to `i` itself).
    fn broadcast(
        &mut self,
        i: usize,
        unavailable: bool,
        codes: &[u16],
        new_nick: Option<&str>,
    ) -> Result<(), WorldError> {
        for to in 0..self.devices.len() {
            if self.devices[to].online || to == i {
                let p = self.presence(i, to, unavailable, codes, new_nick);
                self.tell(to, &p)?;
            }
        }
        Ok(())
    }

    /// Device `i` enters the room: it learns the configuration, the member list and who is there, and
    /// everyone online sees its presence.
    pub fn join(&mut self, i: usize) -> Result<(), WorldError> {
        self.device(i)?;
        let room = escape(&self.room);
        let items: String = self
            .affiliations
            .iter()
            .filter(|(_, a)| a.as_str() == "member" || a.as_str() == "owner" || a.as_str() == "admin")
            .map(|(j, a)| format!("<item jid='{}' affiliation='{a}'/>", escape(j)))
            .collect();
        self.tell(i, &format!("<iq xmlns='jabber:client' type='result' from='{room}' id='members'><query xmlns='http://jabber.org/protocol/muc#admin'>{items}</query></iq>"))?;
        self.tell(i, &format!("<iq xmlns='jabber:client' type='result' from='{room}' id='disco'><query xmlns='http://jabber.org/protocol/disco#info'><identity category='conference' type='text'/><feature var='http://jabber.org/protocol/muc'/><feature var='muc_nonanonymous'/><feature var='muc_membersonly'/><feature var='muc_persistent'/><feature var='urn:xmpp:mam:2'/><feature var='urn:xmpp:occupant-id:0'/></query></iq>"))?;
        for other in 0..self.devices.len() {
            if other != i && self.devices[other].online {
                let p = self.presence(other, i, false, &[], None);
                self.tell(i, &p)?;
            }
        }
        self.devices[i].online = true;
        if self.devices[i].room.member_since().is_none() {
            let now = self.now;
            self.devices[i].room.set_member_since(now);
        }
        self.broadcast(i, false, &[], None)
    }

    /// Device `i` leaves the room (it stays a member).
    pub fn leave(&mut self, i: usize) -> Result<(), WorldError> {
        if !self.device(i)?.online {
            return Ok(());
        }
        self.broadcast(i, true, &[], None)?;
        self.devices[i].online = false;
        Ok(())
    }

    /// The owner bans the member `jid`: affiliation `outcast`, every device of it removed (status 301).
    pub fn ban(&mut self, jid: &str) -> Result<(), WorldError> {
        self.affiliations.insert(jid.to_owned(), "outcast".to_owned());
        let victims: Vec<usize> = (0..self.devices.len()).filter(|&i| self.devices[i].jid == jid).collect();
        for i in victims {
            if self.devices[i].online {
                self.broadcast(i, true, &[301], None)?;
                self.devices[i].online = false;
            }
        }
        // Devices that were not there learn it from the changed affiliation (status 301 without presence).
        let room = escape(&self.room);
        let note = format!("<message xmlns='jabber:client' from='{room}'><x xmlns='http://jabber.org/protocol/muc#user'><item jid='{}' affiliation='outcast'/><status code='301'/></x></message>", escape(jid));
        for to in 0..self.devices.len() {
            if self.devices[to].online {
                self.tell(to, &note)?;
            }
        }
        Ok(())
    }

    /// Device `i` changes its nick (status 303, then the presence under the new nick).
    pub fn change_nick(&mut self, i: usize, new_nick: &str) -> Result<(), WorldError> {
        if !self.device(i)?.online {
            self.devices[i].nick = new_nick.to_owned();
            return Ok(());
        }
        self.broadcast(i, true, &[303], Some(new_nick))?;
        self.devices[i].nick = new_nick.to_owned();
        self.broadcast(i, false, &[], None)
    }

    /// Device `i` restarts: its store is closed and opened again, its view of the room rebuilt by
    /// joining again (if it was in the room).
    pub fn restart(&mut self, i: usize) -> Result<(), WorldError> {
        let was_online = self.device(i)?.online;
        let d = &mut self.devices[i];
        d.store.reopen()?;
        let since = d.room.member_since();
        d.room = Room::new(&self.room, &d.jid, Policy::default());
        if let Some(since) = since {
            d.room.set_member_since(since);
        }
        d.online = false;
        if was_online {
            self.join(i)?;
        }
        Ok(())
    }

    /// What PEP holds: every member's device list (per namespace), written into device `to`'s store.
    pub fn sync_device_lists(&mut self, to: usize) -> Result<(), WorldError> {
        self.device(to)?;
        // Both namespaces for every member: a node nobody published reads as an empty list.
        let mut lists: BTreeMap<(Namespace, String), Vec<DeviceId>> = BTreeMap::new();
        for d in &self.devices {
            for ns in [Namespace::Oldmemo, Namespace::Twomemo] {
                let list = lists.entry((ns, d.jid.clone())).or_default();
                if d.namespaces.contains(ns) {
                    list.push(d.device_id);
                }
            }
        }
        let ch = Changes {
            device_lists: lists.into_iter().map(|((ns, jid), ids)| (ns, jid, ids)).collect(),
            ..Changes::default()
        };
        self.devices[to].store.apply(&ch)?;
        Ok(())
    }

    /// The bundle PEP serves for a device, as the sender would receive it.
    pub fn bundle(&self, addr: &SessionAddress) -> Result<PreKeyBundle, String> {
        let d = self
            .devices
            .iter()
            .find(|d| d.jid == addr.jid && d.device_id == addr.device)
            .ok_or_else(|| "item-not-found".to_owned())?;
        let mut b = account::own_bundle_for(&d.store, addr.namespace).map_err(|e| e.to_string())?;
        if self.broken_bundles.contains(addr) {
            b.signed_pre_key_signature[7] ^= 1;
        }
        Ok(b)
    }

    /// Device `from` sends `text` to the room: device lists from PEP, one batch of bundles, the
    /// encrypted stanza committed to its store. The room reflects it and archives it; the index of the
    /// posted message is returned with the coverage report. Nothing is delivered yet.
    pub fn send(&mut self, from: usize, text: &str, opts: &GroupOptions) -> Result<(usize, GroupCoverage), WorldError> {
        self.sync_device_lists(from)?;
        let d = &self.devices[from];
        let plan = plan_group_message(&d.store, &d.room, opts.choice)?;
        let bundles: Vec<(SessionAddress, Result<PreKeyBundle, String>)> =
            plan.need_bundles.iter().map(|a| (a.clone(), self.bundle(a))).collect();
        self.now += 1;
        let d = &mut self.devices[from];
        let msg = encrypt_group_message(&d.store, &d.room, text, &bundles, opts, self.now, &mut self.rng)?;
        let (stanza, coverage) = msg.commit(&mut d.store)?;
        let stanza = stanza.to_element().map_err(|e| WorldError::Xml(e.to_string()))?;
        let index = self.post(from, text, &stanza)?;
        Ok((index, coverage))
    }

    /// The room takes a stanza from device `from`: it is reflected from the sender's occupant JID with a
    /// stanza-id and occupant-id, and archived with the sender's real JID.
    pub fn post(&mut self, from: usize, text: &str, stanza: &Element) -> Result<usize, WorldError> {
        let d = self.device(from)?;
        let index = self.posted.len();
        let sid = format!("sid-{index}");
        let mut live = stanza.clone();
        let mut attrs = String::new();
        for k in ["type", "id", "xml:lang"] {
            if let Some(v) = live.attr(k) {
                attrs.push_str(&format!(" {k}='{}'", escape(v)));
            }
        }
        let inner: String = live
            .nodes()
            .map(|n| match n {
                minidom::Node::Element(e) => String::from(e),
                minidom::Node::Text(t) => escape(t),
            })
            .collect();
        let room = escape(&self.room);
        let nick = escape(&d.nick);
        let extra = format!(
            "<occupant-id xmlns='urn:xmpp:occupant-id:0' id='oid-{}'/><stanza-id xmlns='urn:xmpp:sid:0' id='{sid}' by='{room}'/>",
            d.device_id
        );
        live = parse(&format!("<message xmlns='jabber:client' from='{room}/{nick}'{attrs}>{inner}{extra}</message>"))?;
        let archived = parse(&format!(
            "<message xmlns='jabber:client' from='{room}'><result xmlns='urn:xmpp:mam:2' id='{sid}'><forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='urn:xmpp:delay' stamp='{stamp}'/><message xmlns='jabber:client' from='{room}/{nick}'{attrs}>{inner}<x xmlns='http://jabber.org/protocol/muc#user'><item jid='{jid}'/></x>{extra}</message></forwarded></result></message>",
            jid = escape(&d.jid),
            stamp = participant_resolver::xml::format_timestamp(self.now),
        ))?;
        self.posted.push(Posted { from, text: text.to_owned(), live, archived });
        Ok(index)
    }

    /// Delivers posted message `m` to device `to`, live or from the archive, and commits what the engine
    /// asks to commit. `mode` is the pre-key mode (catching up from the archive, or live).
    pub fn deliver(&mut self, to: usize, m: usize, archived: bool, mode: PreKeyMode) -> Result<Inbound, WorldError> {
        let posted = self.posted.get(m).ok_or(WorldError::NoMessage(m))?;
        let stanza = if archived { posted.archived.clone() } else { posted.live.clone() };
        self.receive(to, &stanza, mode)
    }

    /// Who owns a device id, as the published device lists say: what `receive_group_message` needs to
    /// attribute a message by its device.
    pub fn device_owners(&self) -> impl Fn(u32) -> Vec<String> {
        let owners: BTreeMap<DeviceId, Vec<String>> = self.devices.iter().fold(BTreeMap::new(), |mut m, d| {
            m.entry(d.device_id).or_insert_with(Vec::new).push(d.jid.clone());
            m
        });
        move |id: u32| owners.get(&id).cloned().unwrap_or_default()
    }

    /// Device `to` processes any stanza of the room, and commits what the engine asks to commit.
    pub fn receive(&mut self, to: usize, stanza: &Element, mode: PreKeyMode) -> Result<Inbound, WorldError> {
        self.sync_device_lists(to)?;
        let owners = self.device_owners();
        let d = &mut self.devices[to];
        let (inbound, changes) = receive_group_message(&d.store, &d.room, stanza, &owners, mode, &mut self.rng)?;
        d.store.apply(&changes)?;
        Ok(inbound)
    }
}
