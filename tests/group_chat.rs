//! Group chat in an in-process world: members with one or two devices speaking OMEMO 0.3, OMEMO 2 or
//! both; PEP served from their stores; a room that reflects messages (adding stanza-id and
//! occupant-id) and wraps them as MAM results. Covers the send path (recipients, one bundle batch,
//! wrap, coverage, one commit), reflections, duplicates, bans, the missing-device policy, the stanza
//! budget, a restart from the SQLite file, and catching up from the archive.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fan_out_encryptor::group::{
    encrypt_group_message, plan_group_message, receive_group_message, Cause, GroupError, GroupOptions, Inbound, Left,
    MissingDevicePolicy,
};
use minidom::Element;
use participant_resolver::{Exclusion, Policy, Room};
use rand_chacha::{rand_core::SeedableRng, ChaCha20Rng};
use session_store::{
    account, session::PreKeyMode, Account, AccountStore, Changes, Namespace, NamespaceSet, PreKeyBundle,
    SessionAddress, SqliteStore, Store,
};

const ROOM: &str = "team@muc.example.org";

struct Device {
    jid: String,
    nick: String,
    store: SqliteStore<rusqlite::Connection>,
    path: std::path::PathBuf,
    room: Room,
    namespaces: NamespaceSet,
}

struct World {
    devices: Vec<Device>,
    rng: ChaCha20Rng,
    next_stanza: u64,
    dir: std::path::PathBuf,
}

fn presence(nick: &str, jid: &str, affiliation: &str, codes: &[u16], unavailable: bool) -> Element {
    let status: String = codes.iter().map(|c| format!("<status code='{c}'/>")).collect();
    let (t, role) = if unavailable { (" type='unavailable'", "none") } else { ("", "participant") };
    format!(
        "<presence xmlns='jabber:client' from='{ROOM}/{nick}'{t}><occupant-id xmlns='urn:xmpp:occupant-id:0' id='oid-{nick}'/>\
         <x xmlns='http://jabber.org/protocol/muc#user'>{status}<item jid='{jid}/r' affiliation='{affiliation}' role='{role}'/></x></presence>"
    )
    .parse()
    .unwrap()
}

impl World {
    /// `members`: (jid, nick, namespaces) per device; a JID may appear twice (two devices).
    fn new(name: &str, members: &[(&str, &str, NamespaceSet)], extra_members: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("omemo-muc-group-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(name.len() as u64);
        let mut devices = Vec::new();
        for (i, (jid, nick, ns)) in members.iter().enumerate() {
            let path = dir.join(format!("{i}.sqlite3"));
            let mut store = SqliteStore::open(&path).unwrap();
            store.apply(&Account::create(jid, *ns, &[], 1000, &mut rng)).unwrap();
            devices.push(Device {
                jid: jid.to_string(),
                nick: nick.to_string(),
                store,
                path,
                room: Room::new(ROOM, jid, Policy::default()),
                namespaces: *ns,
            });
        }
        let mut w = World { devices, rng, next_stanza: 0, dir };
        // Everyone's view of the room: configuration, the member list, everyone's presence.
        let mut all: Vec<String> =
            members.iter().map(|m| m.0.to_string()).chain(extra_members.iter().map(|s| s.to_string())).collect();
        all.sort();
        all.dedup();
        let items: String = all.iter().map(|j| format!("<item jid='{j}' affiliation='member'/>")).collect();
        let list: Element = format!("<iq xmlns='jabber:client' type='result' from='{ROOM}' id='l'><query xmlns='http://jabber.org/protocol/muc#admin'>{items}</query></iq>").parse().unwrap();
        let disco: Element = format!("<iq xmlns='jabber:client' type='result' from='{ROOM}' id='d'><query xmlns='http://jabber.org/protocol/disco#info'><feature var='muc_nonanonymous'/><feature var='muc_membersonly'/><feature var='urn:xmpp:occupant-id:0'/></query></iq>").parse().unwrap();
        let occupants: Vec<(String, String)> = w.devices.iter().map(|d| (d.nick.clone(), d.jid.clone())).collect();
        for d in &mut w.devices {
            d.room.apply_captured(&list).unwrap();
            d.room.apply_captured(&disco).unwrap();
            for (nick, jid) in &occupants {
                let codes: &[u16] = if *nick == d.nick { &[110] } else { &[] };
                d.room.apply_captured(&presence(nick, jid, "member", codes, false)).unwrap();
            }
        }
        w
    }

    /// What PEP holds: every device list (per namespace) of every member, into `to`'s store.
    fn sync_device_lists(&mut self, to: usize) {
        let mut ch = Changes::default();
        let mut jids: Vec<String> = self.devices.iter().map(|d| d.jid.clone()).collect();
        jids.dedup();
        for jid in jids {
            for ns in [Namespace::Oldmemo, Namespace::Twomemo] {
                let ids: Vec<u32> = self
                    .devices
                    .iter()
                    .filter(|d| d.jid == jid && d.namespaces.contains(ns))
                    .map(|d| d.store.account().unwrap().unwrap().device_id)
                    .collect();
                if !ids.is_empty() {
                    ch.device_lists.push((ns, jid.clone(), ids));
                }
            }
        }
        self.devices[to].store.apply(&ch).unwrap();
    }

    fn bundle(&self, addr: &SessionAddress) -> Result<PreKeyBundle, String> {
        let d = self
            .devices
            .iter()
            .find(|d| d.jid == addr.jid && d.store.account().unwrap().unwrap().device_id == addr.device)
            .ok_or("no such device")?;
        account::own_bundle_for(&d.store, addr.namespace).map_err(|e| e.to_string())
    }

    fn send_with(
        &mut self,
        from: usize,
        text: &str,
        opts: &GroupOptions,
        tamper: Option<&SessionAddress>,
    ) -> Result<Element, GroupError> {
        self.sync_device_lists(from);
        let plan = plan_group_message(&self.devices[from].store, &self.devices[from].room, opts.choice)?;
        let bundles: Vec<(SessionAddress, Result<PreKeyBundle, String>)> = plan
            .need_bundles
            .iter()
            .map(|a| {
                let mut b = self.bundle(a);
                if Some(a) == tamper {
                    if let Ok(b) = &mut b {
                        b.signed_pre_key_signature[7] ^= 1;
                    }
                }
                (a.clone(), b)
            })
            .collect();
        let d = &mut self.devices[from];
        let msg = encrypt_group_message(&d.store, &d.room, text, &bundles, opts, 2000, &mut self.rng)?;
        let (stanza, _) = msg.commit(&mut d.store).unwrap();
        Ok(stanza)
    }

    fn send(&mut self, from: usize, text: &str) -> Element {
        self.send_with(from, text, &GroupOptions::default(), None).unwrap()
    }

    /// The stanza as the room delivers it: from the sender's occupant JID, with stanza-id and occupant-id.
    fn reflect(&mut self, from: usize, stanza: &Element) -> Element {
        self.next_stanza += 1;
        let nick = &self.devices[from].nick;
        let text = String::from(stanza).replacen("<message ", &format!("<message from='{ROOM}/{nick}' "), 1).replacen(
            "</message>",
            &format!("<occupant-id xmlns='urn:xmpp:occupant-id:0' id='oid-{nick}'/><stanza-id xmlns='urn:xmpp:sid:0' id='sid-{}' by='{ROOM}'/></message>", self.next_stanza),
            1,
        );
        text.parse().unwrap()
    }

    /// The same stanza as a MAM result from the room's archive.
    fn archived(&self, from: usize, live: &Element) -> Element {
        let jid = &self.devices[from].jid;
        let inner = String::from(live)
            .replacen("<stanza-id", "<x xmlns='http://jabber.org/protocol/muc#user'><item jid='JID'/></x><stanza-id", 1)
            .replace("JID", jid);
        let id = live.children().find(|c| c.name() == "stanza-id").and_then(|c| c.attr("id")).unwrap().to_owned();
        format!("<message xmlns='jabber:client' from='{ROOM}'><result xmlns='urn:xmpp:mam:2' id='{id}'><forwarded xmlns='urn:xmpp:forward:0'>{inner}</forwarded></result></message>").parse().unwrap()
    }

    fn receive(&mut self, to: usize, stanza: &Element) -> Inbound {
        self.receive_in(to, stanza, PreKeyMode::Live)
    }

    fn receive_in(&mut self, to: usize, stanza: &Element, mode: PreKeyMode) -> Inbound {
        self.sync_device_lists(to);
        let owners = |_: u32| Vec::new();
        let d = &mut self.devices[to];
        let (inbound, changes) =
            receive_group_message(&d.store, &d.room, stanza, &owners, mode, &mut self.rng).unwrap();
        d.store.apply(&changes).unwrap();
        inbound
    }

    fn plaintext(&mut self, to: usize, stanza: &Element) -> String {
        match self.receive(to, stanza) {
            Inbound::Decrypted { message, .. } => String::from_utf8(message.plaintext.unwrap().to_vec()).unwrap(),
            other => panic!("device {to}: {other:?}"),
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn mixed(name: &str) -> World {
    World::new(
        name,
        &[
            ("alice@example.org", "alice", NamespaceSet::BOTH),
            ("alice@example.org", "alice-laptop", NamespaceSet::OLDMEMO),
            ("bob@example.org", "bob", NamespaceSet::TWOMEMO),
            ("carol@example.org", "carol", NamespaceSet::OLDMEMO),
            ("dave@example.org", "dave", NamespaceSet::BOTH),
        ],
        &[],
    )
}

#[test]
fn mixed_room_round_trip_reflection_and_duplicates() {
    let mut w = mixed("round-trip");
    for round in 0..3 {
        let text = format!("hello team {round}");
        let stanza = w.send(0, &text);
        let live = w.reflect(0, &stanza);
        for to in 1..5 {
            assert_eq!(w.plaintext(to, &live), text, "device {to}");
        }
        // Our own copy comes back: recognised, not decrypted.
        assert!(
            matches!(w.receive(0, &live), Inbound::OwnReflection { ref entry, .. } if entry.plaintext_hash == session_store::LedgerEntry::hash(text.as_bytes()))
        );
        // The same stanza again, and the same message from the archive: duplicates, never errors.
        assert!(matches!(w.receive(3, &live), Inbound::Duplicate));
        let archived = w.archived(0, &live);
        assert!(matches!(w.receive(3, &archived), Inbound::Duplicate));
        // Everyone answers; single-namespace devices cannot reach every member, so best effort.
        let best_effort = GroupOptions { missing: MissingDevicePolicy::BestEffort, ..GroupOptions::default() };
        for from in 1..5 {
            let reply = w.send_with(from, &format!("reply {from}.{round}"), &best_effort, None).unwrap();
            let live = w.reflect(from, &reply);
            assert_eq!(w.plaintext(0, &live), format!("reply {from}.{round}"));
        }
    }
}

#[test]
fn banned_member_gets_no_key_in_the_very_next_message() {
    let mut w = mixed("ban");
    let first = w.send(0, "before");
    let live = w.reflect(0, &first);
    assert_eq!(w.plaintext(4, &live), "before");
    let ban = presence("dave", "dave@example.org", "outcast", &[301], true);
    w.devices[0].room.apply_captured(&ban).unwrap();
    let d = &w.devices[0];
    let plan = plan_group_message(&d.store, &d.room, fan_out_encryptor::NamespaceChoice::Auto).unwrap();
    assert!(plan.recipients.excluded.contains(&("dave@example.org".to_owned(), Exclusion::Outcast)));
    let next = w.send(0, "after the ban");
    assert!(!String::from(&next).contains("jid='dave@example.org'"));
    let live = w.reflect(0, &next);
    assert!(matches!(w.receive(4, &live), Inbound::Undecryptable { cause: Cause::NotForThisDevice, .. }));
    assert_eq!(w.plaintext(2, &live), "after the ban");
}

#[test]
fn missing_devices_block_by_default_and_best_effort_reports() {
    let mut w = World::new(
        "missing",
        &[("alice@example.org", "alice", NamespaceSet::BOTH), ("bob@example.org", "bob", NamespaceSet::BOTH)],
        &["erin@example.org"],
    );
    match w.send_with(0, "x", &GroupOptions::default(), None) {
        Err(GroupError::MembersWithoutDevices(m)) => assert_eq!(m, vec!["erin@example.org".to_owned()]),
        other => panic!("{other:?}"),
    }
    let opts = GroupOptions { missing: MissingDevicePolicy::BestEffort, ..GroupOptions::default() };
    w.sync_device_lists(0);
    let d0 = &w.devices[0];
    let plan = plan_group_message(&d0.store, &d0.room, opts.choice).unwrap();
    assert_eq!(plan.need_device_lists, vec!["erin@example.org".to_owned()]);
    let bundles: Vec<_> = plan.need_bundles.iter().map(|a| (a.clone(), w.bundle(a))).collect();
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let msg =
        encrypt_group_message(&w.devices[0].store, &w.devices[0].room, "x", &bundles, &opts, 1, &mut rng).unwrap();
    assert!(msg.coverage.members_left_out.contains(&("erin@example.org".to_owned(), Left::NoDeviceList)));
    // bob's one device (in OMEMO 2, which both speak): one key.
    assert_eq!(msg.coverage.keyed.len(), 1, "{:?}", msg.coverage.keyed);
    assert_eq!(msg.coverage.keyed[0].0.namespace, Namespace::Twomemo);
}

#[test]
fn bad_bundle_excludes_only_that_device_and_budget_is_enforced() {
    let mut w = mixed("bad-bundle");
    w.sync_device_lists(0);
    let d = &w.devices[0];
    let plan = plan_group_message(&d.store, &d.room, fan_out_encryptor::NamespaceChoice::Auto).unwrap();
    let victim = plan.need_bundles.iter().find(|a| a.jid == "carol@example.org").unwrap().clone();
    let opts = GroupOptions { missing: MissingDevicePolicy::BestEffort, ..GroupOptions::default() };
    let stanza = w.send_with(0, "with one bad bundle", &opts, Some(&victim)).unwrap();
    // The rejected bundle left no trace: no session, no identity recorded for that device.
    let store = &w.devices[0].store;
    assert!(session_store::SessionStore::session(store, &victim).unwrap().is_none());
    assert!(session_store::IdentityStore::identity(store, &victim.jid, victim.device).unwrap().is_none());
    let live = w.reflect(0, &stanza);
    assert_eq!(w.plaintext(2, &live), "with one bad bundle");
    assert!(matches!(w.receive(3, &live), Inbound::Undecryptable { cause: Cause::NotForThisDevice, .. }));
    // Under Block, carol (her only device excluded) stops the send.
    assert!(matches!(
        w.send_with(0, "x", &GroupOptions::default(), Some(&victim)),
        Err(GroupError::MembersWithoutDevices(_))
    ));
    // A budget far too small: a clear error with the key count, nothing committed.
    let tiny = GroupOptions { max_stanza_bytes: 500, ..GroupOptions::default() };
    match w.send_with(0, "x", &tiny, None) {
        Err(GroupError::TooLarge { keys, limit: 500, .. }) => assert_eq!(keys, 4),
        other => panic!("{other:?}"),
    }
}

#[test]
fn restart_from_sqlite_and_catch_up_from_the_archive() {
    let mut w = mixed("catch-up");
    // Carol (OMEMO 0.3 only) is offline for 30 messages from the members who can reach her.
    let mut archive = Vec::new();
    for i in 0..30 {
        let from = [0, 4][i % 2];
        let stanza = w.send(from, &format!("m{i}"));
        let live = w.reflect(from, &stanza);
        archive.push((from, w.archived(from, &live), format!("m{i}")));
    }
    // Alice's device restarts from its SQLite file: her own messages from the archive are reflections.
    let path = w.devices[0].path.clone();
    w.devices[0].store = SqliteStore::open(&path).unwrap();
    let mut own = 0;
    for (from, stanza, _) in archive.clone() {
        if from == 0 {
            assert!(matches!(w.receive(0, &stanza), Inbound::OwnReflection { .. }));
            own += 1;
        }
    }
    assert_eq!(own, 15);
    // Carol catches up from the archive, in order, attributed by the archive's real JIDs; the pre-keys
    // the senders' key exchanges used stay (hidden) until she ends the catch-up.
    for (_, stanza, text) in &archive {
        match w.receive_in(3, stanza, PreKeyMode::CatchUp) {
            Inbound::Decrypted { message, attribution } => {
                assert_eq!(String::from_utf8(message.plaintext.unwrap().to_vec()).unwrap(), *text);
                assert_eq!(attribution.decided_by, Some(participant_resolver::AttributionSource::MamRealJid));
            }
            other => panic!("{text}: {other:?}"),
        }
    }
    let hidden = session_store::PreKeyStore::hidden_pre_keys(&w.devices[3].store).unwrap();
    assert_eq!(hidden.len(), 2, "alice's and dave's key exchanges");
    let ch = session_store::session::end_catch_up(&w.devices[3].store).unwrap();
    w.devices[3].store.apply(&ch).unwrap();
    assert!(session_store::PreKeyStore::hidden_pre_keys(&w.devices[3].store).unwrap().is_empty());
}

#[test]
fn silent_device_goes_stale_and_resumes_when_it_speaks() {
    let mut w = World::new(
        "stale",
        &[
            ("alice@example.org", "alice", NamespaceSet::BOTH),
            ("bob@example.org", "bob", NamespaceSet::BOTH),
            ("carol@example.org", "carol", NamespaceSet::BOTH),
        ],
        &[],
    );
    let best_effort = GroupOptions { missing: MissingDevicePolicy::BestEffort, ..GroupOptions::default() };
    // Carol reads and answers; bob reads but never writes.
    for i in 0..session_store::ratchet::STALE_AFTER {
        let stanza = w.send_with(0, &format!("m{i}"), &best_effort, None).unwrap();
        let live = w.reflect(0, &stanza);
        w.plaintext(1, &live);
        if i % 20 == 0 {
            let reply = w.send(2, "carol here");
            let live = w.reflect(2, &reply);
            w.plaintext(0, &live);
        }
    }
    w.sync_device_lists(0);
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let d = &w.devices[0];
    let msg = encrypt_group_message(&d.store, &d.room, "x", &[], &best_effort, 1, &mut rng).unwrap();
    assert!(
        msg.coverage.devices_left_out.iter().any(|(a, why)| a.jid == "bob@example.org" && *why == Left::Stale),
        "{:?}",
        msg.coverage
    );
    assert!(msg.coverage.keyed.iter().any(|(a, _)| a.jid == "carol@example.org"));
    // Under Block, bob (his only device stale) stops the send.
    assert!(
        matches!(encrypt_group_message(&d.store, &d.room, "x", &[], &GroupOptions::default(), 1, &mut rng), Err(GroupError::MembersWithoutDevices(ref m)) if m == &vec!["bob@example.org".to_owned()])
    );
    // Bob speaks: he is back.
    let reply = w.send(1, "still here");
    let live = w.reflect(1, &reply);
    assert_eq!(w.plaintext(0, &live), "still here");
    let stanza = w.send(0, "welcome back");
    let live = w.reflect(0, &stanza);
    assert_eq!(w.plaintext(1, &live), "welcome back");
}
