//! Group chat in the in-process world (`omemo_muc::world`): members with one or two devices speaking
//! OMEMO 0.3, OMEMO 2 or both; PEP served from their stores; a room that reflects messages (adding
//! stanza-id and occupant-id) and archives them. Covers the send path (recipients, one bundle batch,
//! wrap, coverage, one commit), reflections, duplicates, bans, the missing-device policy, the stanza
//! budget, a restart from the SQLite file, and catching up from the archive.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fan_out_encryptor::group::{
    encrypt_group_message, plan_group_message, Cause, GroupError, GroupOptions, Inbound, Left, MissingDevicePolicy,
};
use omemo_muc::world::{DeviceSpec, World};
use participant_resolver::Exclusion;
use rand_chacha::{rand_core::SeedableRng, ChaCha20Rng};
use session_store::{session::PreKeyMode, Namespace, NamespaceSet, SqliteStore};

const ROOM: &str = "team@muc.example.org";

type Sql = SqliteStore<rusqlite::Connection>;

/// A world whose devices keep SQLite files in a directory removed at the end.
struct W {
    w: World<Sql>,
    dir: std::path::PathBuf,
}

impl std::ops::Deref for W {
    type Target = World<Sql>;
    fn deref(&self) -> &World<Sql> {
        &self.w
    }
}

impl std::ops::DerefMut for W {
    fn deref_mut(&mut self) -> &mut World<Sql> {
        &mut self.w
    }
}

impl Drop for W {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn world(name: &str, members: &[(&str, &str, NamespaceSet)], extra_members: &[&str]) -> W {
    let dir = std::env::temp_dir().join(format!("omemo-muc-group-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let specs: Vec<DeviceSpec> = members.iter().map(|(j, n, ns)| DeviceSpec::new(j, n, *ns)).collect();
    let w = World::new(ROOM, &specs, extra_members, name.len() as u64, |i| {
        SqliteStore::open(dir.join(format!("{i}.sqlite3")))
    })
    .unwrap();
    W { w, dir }
}

impl W {
    /// Sends under the default options (block); the posted message's index.
    fn send(&mut self, from: usize, text: &str) -> usize {
        self.w.send(from, text, &GroupOptions::default()).unwrap().0
    }

    fn best_effort(&mut self, from: usize, text: &str) -> usize {
        let opts = GroupOptions { missing: MissingDevicePolicy::BestEffort, ..GroupOptions::default() };
        self.w.send(from, text, &opts).unwrap().0
    }

    fn receive(&mut self, to: usize, m: usize) -> Inbound {
        self.w.deliver(to, m, false, PreKeyMode::Live).unwrap()
    }

    fn plaintext(&mut self, to: usize, m: usize) -> String {
        match self.receive(to, m) {
            Inbound::Decrypted { message, .. } => String::from_utf8(message.plaintext.unwrap().to_vec()).unwrap(),
            other => panic!("device {to}: {other:?}"),
        }
    }
}

fn mixed(name: &str) -> W {
    world(
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
        let m = w.send(0, &text);
        for to in 1..5 {
            assert_eq!(w.plaintext(to, m), text, "device {to}");
        }
        // Our own copy comes back: recognised, not decrypted.
        assert!(
            matches!(w.receive(0, m), Inbound::OwnReflection { ref entry, .. } if entry.plaintext_hash == session_store::LedgerEntry::hash(text.as_bytes()))
        );
        // The same stanza again, and the same message from the archive: duplicates, never errors.
        assert!(matches!(w.receive(3, m), Inbound::Duplicate));
        assert!(matches!(w.deliver(3, m, true, PreKeyMode::Live).unwrap(), Inbound::Duplicate));
        // Everyone answers; single-namespace devices cannot reach every member, so best effort.
        for from in 1..5 {
            let reply = w.best_effort(from, &format!("reply {from}.{round}"));
            assert_eq!(w.plaintext(0, reply), format!("reply {from}.{round}"));
        }
        // Each answer brought a new ratchet key: decrypting did only the receiving half of that DH step,
        // the sending half waits in the record until the next message to that device.
        assert_eq!(ratchet_steps_waiting(&w, 0), 4, "round {round}");
    }
    // The next message does them (whole records, written with the send), and everyone decrypts it.
    let m = w.send(0, "after the answers");
    assert_eq!(ratchet_steps_waiting(&w, 0), 0);
    for to in 1..5 {
        assert_eq!(w.plaintext(to, m), "after the answers", "device {to}");
    }
}

/// How many of device `i`'s sessions with the other devices wait for the sending half of a DH ratchet
/// step.
fn ratchet_steps_waiting(w: &W, i: usize) -> usize {
    use session_store::{SessionAddress, SessionStore};
    let store = &w.devices[i].store;
    let mut n = 0;
    for d in w.devices.iter().filter(|d| d.device_id != w.devices[i].device_id) {
        for ns in [Namespace::Oldmemo, Namespace::Twomemo] {
            let rec = store.session(&SessionAddress::new(ns, d.jid.clone(), d.device_id)).unwrap();
            n += usize::from(rec.is_some_and(|r| r.ratchet_due()));
        }
    }
    n
}

#[test]
fn banned_member_gets_no_key_in_the_very_next_message() {
    let mut w = mixed("ban");
    let first = w.send(0, "before");
    assert_eq!(w.plaintext(4, first), "before");
    w.ban("dave@example.org").unwrap();
    let d = &w.devices[0];
    let plan = plan_group_message(&d.store, &d.room, fan_out_encryptor::NamespaceChoice::Auto).unwrap();
    assert!(plan.recipients.excluded.contains(&("dave@example.org".to_owned(), Exclusion::Outcast)));
    let next = w.send(0, "after the ban");
    assert!(!String::from(&w.posted[next].live).contains("jid='dave@example.org'"));
    // Dave reads the stanza anyway (from a copy): there is no key for him.
    assert!(matches!(w.receive(4, next), Inbound::Undecryptable { cause: Cause::NotForThisDevice, .. }));
    assert_eq!(w.plaintext(2, next), "after the ban");
}

#[test]
fn missing_devices_block_by_default_and_best_effort_reports() {
    let mut w = world(
        "missing",
        &[("alice@example.org", "alice", NamespaceSet::BOTH), ("bob@example.org", "bob", NamespaceSet::BOTH)],
        &["erin@example.org"],
    );
    match w.w.send(0, "x", &GroupOptions::default()) {
        Err(omemo_muc::world::WorldError::Group(GroupError::MembersWithoutDevices(m))) => {
            assert_eq!(m, vec!["erin@example.org".to_owned()])
        }
        other => panic!("{other:?}"),
    }
    let opts = GroupOptions { missing: MissingDevicePolicy::BestEffort, ..GroupOptions::default() };
    w.sync_device_lists(0).unwrap();
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

/// A mixed room before device 0's first send: its plan (every device needs a bundle) and carol's device.
fn first_send_to_carol(name: &str) -> (W, fan_out_encryptor::group::GroupPlan, session_store::SessionAddress) {
    let mut w = mixed(name);
    w.sync_device_lists(0).unwrap();
    let d = &w.devices[0];
    let plan = plan_group_message(&d.store, &d.room, fan_out_encryptor::NamespaceChoice::Auto).unwrap();
    let victim = plan.need_bundles.iter().find(|a| a.jid == "carol@example.org").unwrap().clone();
    (w, plan, victim)
}

#[test]
fn bad_bundle_excludes_only_that_device_and_budget_is_enforced() {
    let (mut w, _, victim) = first_send_to_carol("bad-bundle");
    w.broken_bundles.insert(victim.clone());
    let m = w.best_effort(0, "with one bad bundle");
    // The rejected bundle left no trace: no session, no identity recorded for that device.
    let store = &w.devices[0].store;
    assert!(session_store::SessionStore::session(store, &victim).unwrap().is_none());
    assert!(session_store::IdentityStore::identity(store, &victim.jid, victim.device).unwrap().is_none());
    assert_eq!(w.plaintext(2, m), "with one bad bundle");
    assert!(matches!(w.receive(3, m), Inbound::Undecryptable { cause: Cause::NotForThisDevice, .. }));
    // Under Block, carol (her only device excluded) stops the send.
    assert!(matches!(
        w.w.send(0, "x", &GroupOptions::default()),
        Err(omemo_muc::world::WorldError::Group(GroupError::MembersWithoutDevices(_)))
    ));
    // A budget far too small: a clear error with the key count, nothing committed.
    w.broken_bundles.clear();
    let tiny = GroupOptions { max_stanza_bytes: 500, ..GroupOptions::default() };
    match w.w.send(0, "x", &tiny) {
        Err(omemo_muc::world::WorldError::Group(GroupError::TooLarge { keys, limit: 500, .. })) => assert_eq!(keys, 4),
        other => panic!("{other:?}"),
    }
    // At the budget's edge the check is exact (the stanza is written as text, its length known): a
    // budget of exactly the stanza's length passes, one byte less fails and says so. The same seed gives
    // the same stanza (the SCE padding is random).
    let d = &w.devices[0];
    let attempt = |limit: usize| {
        let opts = GroupOptions {
            max_stanza_bytes: limit,
            missing: MissingDevicePolicy::BestEffort,
            ..GroupOptions::default()
        };
        let mut rng = ChaCha20Rng::seed_from_u64(99);
        encrypt_group_message(&d.store, &d.room, "edge of the budget", &[], &opts, 1, &mut rng)
    };
    let exact = attempt(usize::MAX).unwrap().stanza.len();
    assert_eq!(attempt(exact).unwrap().stanza.as_str().len(), exact);
    match attempt(exact - 1) {
        Err(GroupError::TooLarge { bytes, limit, .. }) => assert_eq!((bytes, limit), (exact, exact - 1)),
        other => panic!("{other:?}"),
    }
}

/// A bundle whose identity key is already distrusted builds no session (its X3DH runs beside the
/// identity check and is dropped): the device is left out as distrusted, nothing of it is stored, and
/// the other devices' sessions are built from their bundles in the same send.
#[test]
fn a_distrusted_identity_in_a_bundle_builds_no_session() {
    use session_store::{Changes, IdentityStore, SessionStore, Store, TrustLevel};
    let (mut w, plan, victim) = first_send_to_carol("cold-distrust");
    let bundles: Vec<_> = plan.need_bundles.iter().map(|a| (a.clone(), w.bundle(a))).collect();
    let carol_key = bundles.iter().find(|(a, _)| *a == victim).unwrap().1.as_ref().unwrap().identity_key;
    let decision =
        Changes { trust: vec![(victim.jid.to_string(), carol_key, TrustLevel::Distrusted)], ..Changes::default() };
    w.devices[0].store.apply(&decision).unwrap();
    let d = &w.devices[0];
    let opts = GroupOptions { missing: MissingDevicePolicy::BestEffort, ..GroupOptions::default() };
    let mut rng = ChaCha20Rng::seed_from_u64(12);
    let msg = encrypt_group_message(&d.store, &d.room, "not for carol", &bundles, &opts, 1, &mut rng).unwrap();
    assert!(msg.coverage.devices_left_out.contains(&(victim.clone(), Left::Distrusted)), "{:?}", msg.coverage);
    assert!(msg.coverage.keyed.iter().all(|(a, _)| *a != victim));
    assert_eq!(msg.coverage.keyed.len(), plan.need_bundles.len() - 1, "{:?}", msg.coverage);
    assert!(msg.changes.sessions.iter().all(|(a, _)| *a != victim));
    let (stanza, _) = msg.commit(&mut w.devices[0].store).unwrap();
    let store = &w.devices[0].store;
    assert!(store.session(&victim).unwrap().is_none());
    assert!(store.identity(&victim.jid, victim.device).unwrap().is_none());
    let m = w.post(0, "not for carol", &stanza.to_element().unwrap()).unwrap();
    assert_eq!(w.plaintext(2, m), "not for carol");
    assert!(matches!(w.receive(3, m), Inbound::Undecryptable { cause: Cause::NotForThisDevice, .. }));
}

/// Trust decides who gets a key: a distrusted or undecided identity gets none, its session does not
/// move, and a namespace left without devices gets no payload in the stanza.
#[test]
fn distrusted_and_undecided_devices_get_no_key() {
    use session_store::{AccountStore, Changes, IdentityStore, SessionAddress, SessionStore, Store, TrustLevel};
    let mut w = mixed("trust");
    let m = w.send(0, "before any decision");
    for to in 1..5 {
        assert_eq!(w.plaintext(to, m), "before any decision");
    }
    // Device 0's sessions with: 1 alice-laptop (0.3), 2 bob (2), 3 carol (0.3), 4 dave (OMEMO 2 first).
    let addr = |w: &W, i: usize, ns: Namespace| {
        let d = &w.devices[i];
        SessionAddress::new(ns, d.jid.clone(), d.store.account().unwrap().unwrap().device_id)
    };
    let (laptop, bob, carol, dave) = (
        addr(&w, 1, Namespace::Oldmemo),
        addr(&w, 2, Namespace::Twomemo),
        addr(&w, 3, Namespace::Oldmemo),
        addr(&w, 4, Namespace::Twomemo),
    );
    let store = &w.devices[0].store;
    let key = |a: &SessionAddress| store.identity(&a.jid, a.device).unwrap().unwrap();
    let decisions = Changes {
        trust: vec![
            (carol.jid.to_string(), key(&carol), TrustLevel::Distrusted),
            (bob.jid.to_string(), key(&bob), TrustLevel::Undecided),
            (laptop.jid.to_string(), key(&laptop), TrustLevel::Undecided),
        ],
        ..Changes::default()
    };
    w.devices[0].store.apply(&decisions).unwrap();
    let sessions = |w: &W| -> Vec<Vec<u8>> {
        [&laptop, &bob, &carol, &dave]
            .iter()
            .map(|a| w.devices[0].store.session(a).unwrap().unwrap().to_bytes())
            .collect()
    };
    let before = sessions(&w);

    // Block: bob and carol have no device left (alice's own laptop does not count).
    let d = &w.devices[0];
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    match encrypt_group_message(&d.store, &d.room, "x", &[], &GroupOptions::default(), 1, &mut rng) {
        Err(GroupError::MembersWithoutDevices(m)) => assert_eq!(m, vec![bob.jid.clone(), carol.jid.clone()]),
        other => panic!("{other:?}"),
    }
    let opts = GroupOptions { missing: MissingDevicePolicy::BestEffort, ..GroupOptions::default() };
    let msg = encrypt_group_message(&d.store, &d.room, "only dave", &[], &opts, 2, &mut rng).unwrap();
    let keyed: Vec<&SessionAddress> = msg.coverage.keyed.iter().map(|(a, _)| a).collect();
    assert_eq!(keyed, vec![&dave]);
    for (a, why) in [(&carol, Left::Distrusted), (&bob, Left::Undecided), (&laptop, Left::Undecided)] {
        assert!(msg.coverage.devices_left_out.contains(&(a.clone(), why.clone())), "{a:?}: {:?}", msg.coverage);
    }
    // No OMEMO 0.3 device is left: no OMEMO 0.3 payload either.
    assert!(msg.stanza.as_str().contains("urn:xmpp:omemo:2"));
    assert!(!msg.stanza.as_str().contains("eu.siacs.conversations.axolotl"), "{}", msg.stanza.as_str());
    let (stanza, _) = msg.commit(&mut w.devices[0].store).unwrap();
    let after = sessions(&w);
    assert_eq!(after[..3], before[..3], "the sessions of the devices left out did not move");
    assert_ne!(after[3], before[3]);
    let m = w.post(0, "only dave", &stanza.to_element().unwrap()).unwrap();
    assert_eq!(w.plaintext(4, m), "only dave");
    assert!(matches!(w.receive(3, m), Inbound::Undecryptable { cause: Cause::NotForThisDevice, .. }));
}

#[test]
fn restart_from_sqlite_and_catch_up_from_the_archive() {
    let mut w = mixed("catch-up");
    // Carol (OMEMO 0.3 only) is offline for 30 messages from the members who can reach her.
    w.leave(3).unwrap();
    let mut archive = Vec::new();
    for i in 0..30 {
        let from = [0, 4][i % 2];
        archive.push((from, w.send(from, &format!("m{i}")), format!("m{i}")));
    }
    // Alice's device restarts from its SQLite file: her own messages from the archive are reflections.
    w.restart(0).unwrap();
    let mut own = 0;
    for (from, m, _) in archive.clone() {
        if from == 0 {
            assert!(matches!(w.deliver(0, m, true, PreKeyMode::Live).unwrap(), Inbound::OwnReflection { .. }));
            own += 1;
        }
    }
    assert_eq!(own, 15);
    // Carol catches up from the archive, in order, attributed by the archive's real JIDs; the pre-keys
    // the senders' key exchanges used stay (hidden) until she ends the catch-up.
    w.restart(3).unwrap();
    for (_, m, text) in &archive {
        match w.deliver(3, *m, true, PreKeyMode::CatchUp).unwrap() {
            Inbound::Decrypted { message, attribution } => {
                assert_eq!(String::from_utf8(message.plaintext.unwrap().to_vec()).unwrap(), *text);
                assert_eq!(attribution.decided_by, Some(participant_resolver::AttributionSource::MamRealJid));
            }
            other => panic!("{text}: {other:?}"),
        }
    }
    let hidden = session_store::PreKeyStore::hidden_pre_keys(&w.devices[3].store).unwrap();
    assert_eq!(hidden.len(), 2, "alice's and dave's key exchanges");
    // The completion replies waited in the store (across a restart) until the catch-up ends.
    w.restart(3).unwrap();
    let due = session_store::LedgerStore::replies_due(&w.devices[3].store).unwrap();
    let mut owed: Vec<&str> = due.iter().map(|a| a.jid.as_str()).collect();
    owed.sort();
    assert_eq!(owed, ["alice@example.org", "dave@example.org"]);
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let (replies, mut ch) = fan_out_encryptor::encrypt::empty_messages(&w.devices[3].store, &due, &mut rng).unwrap();
    ch.merge(session_store::session::end_catch_up(&w.devices[3].store).unwrap());
    session_store::Store::apply(&mut w.devices[3].store, &ch).unwrap();
    assert!(session_store::PreKeyStore::hidden_pre_keys(&w.devices[3].store).unwrap().is_empty());
    assert!(session_store::LedgerStore::replies_due(&w.devices[3].store).unwrap().is_empty());
    // Alice's device reads carol's reply: its session is complete, no more key exchange for carol.
    let to_alice = replies.iter().find(|r| r.attr("to") == Some("alice@example.org")).unwrap();
    let ctx = fan_out_encryptor::Context {
        sender: "carol@example.org",
        expected_to: "alice@example.org",
        group: false,
        pre_keys: PreKeyMode::Live,
    };
    let (empty, ch) = fan_out_encryptor::decrypt_stanza(&w.devices[0].store, to_alice, &ctx, &mut rng).unwrap();
    assert!(empty.plaintext.is_none());
    session_store::Store::apply(&mut w.devices[0].store, &ch).unwrap();
    let (_, coverage) = w.w.send(0, "after the reply", &GroupOptions::default()).unwrap();
    let carol = coverage.keyed.iter().find(|(a, _)| a.jid == "carol@example.org").unwrap();
    assert!(!carol.1, "no key exchange once carol answered");
}

#[test]
fn silent_device_goes_stale_and_resumes_when_it_speaks() {
    let mut w = world(
        "stale",
        &[
            ("alice@example.org", "alice", NamespaceSet::BOTH),
            ("bob@example.org", "bob", NamespaceSet::BOTH),
            ("carol@example.org", "carol", NamespaceSet::BOTH),
        ],
        &[],
    );
    // Carol reads and answers; bob reads but never writes.
    for i in 0..session_store::ratchet::STALE_AFTER {
        let m = w.best_effort(0, &format!("m{i}"));
        w.plaintext(1, m);
        if i % 20 == 0 {
            let reply = w.send(2, "carol here");
            w.plaintext(0, reply);
        }
    }
    w.sync_device_lists(0).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let best_effort = GroupOptions { missing: MissingDevicePolicy::BestEffort, ..GroupOptions::default() };
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
    assert_eq!(w.plaintext(0, reply), "still here");
    let m = w.send(0, "welcome back");
    assert_eq!(w.plaintext(1, m), "welcome back");
}

/// Fifty members (ten with two devices; OMEMO 0.3, 2 and both), a hundred messages while one member is
/// away, a nick change every ten messages, a device restarted from its SQLite file between any two
/// steps, every message keyed for every other device; then the member who was away catches up on all
/// hundred from the archive.
#[test]
fn fifty_members_nick_changes_restarts_and_a_member_a_hundred_behind() {
    let mut members: Vec<(String, String, NamespaceSet)> = Vec::new();
    let sets = [NamespaceSet::BOTH, NamespaceSet::OLDMEMO, NamespaceSet::TWOMEMO];
    for i in 0..50 {
        members.push((format!("m{i:02}@example.org"), format!("m{i:02}"), sets[i % 3]));
        if i < 10 {
            members.push((format!("m{i:02}@example.org"), format!("m{i:02}-phone"), sets[(i + 1) % 3]));
        }
    }
    let refs: Vec<(&str, &str, NamespaceSet)> = members.iter().map(|(j, n, s)| (j.as_str(), n.as_str(), *s)).collect();
    let mut w = world("fifty", &refs, &[]);
    let n = w.devices.len();
    let away = n - 1;
    w.leave(away).unwrap();
    let senders: Vec<usize> = (0..n).filter(|&i| w.devices[i].namespaces == NamespaceSet::BOTH && i != away).collect();
    let mut sent = Vec::new();
    for k in 0..100 {
        let from = senders[k % senders.len()];
        let text = format!("message {k} from {}", w.devices[from].nick);
        let (m, coverage) = w.w.send(from, &text, &GroupOptions::default()).unwrap();
        // Every other device of every member got a key (the one away included).
        assert_eq!(coverage.keyed.len(), n - 1, "message {k}");
        sent.push((m, text));
        // A few readers, in turn.
        for r in 0..3 {
            let to = (k * 7 + r * 13) % n;
            if to != from && to != away {
                assert_eq!(w.plaintext(to, m), sent[k].1, "message {k} on device {to}");
            }
        }
        if k % 10 == 9 {
            let who = (k * 3) % (n - 1);
            let nick = format!("renamed{k}");
            w.change_nick(who, &nick).unwrap();
        }
        // A restart between any two steps.
        w.restart((k * 11) % (n - 1)).unwrap();
    }
    // The member who was away is a hundred messages behind: from the archive, in catch-up mode.
    w.restart(away).unwrap();
    for (k, (m, text)) in sent.iter().enumerate() {
        match w.deliver(away, *m, true, PreKeyMode::CatchUp).unwrap() {
            Inbound::Decrypted { message, .. } => {
                assert_eq!(String::from_utf8(message.plaintext.unwrap().to_vec()).unwrap(), *text, "message {k}")
            }
            other => panic!("message {k}: {other:?}"),
        }
    }
    let ch = session_store::session::end_catch_up(&w.devices[away].store).unwrap();
    session_store::Store::apply(&mut w.devices[away].store, &ch).unwrap();
    w.join(away).unwrap();
    // It speaks OMEMO 0.3 only: the members with OMEMO 2 only are out of its reach (best effort).
    let m = w.best_effort(away, "back again");
    assert_eq!(w.plaintext(0, m), "back again");
}

/// A message without a key for this device is "sent before we joined" when the archive dates it before
/// the device entered the room, and "not for this device" otherwise.
#[test]
fn sent_before_we_joined_is_told_apart() {
    let mut w = world(
        "before-joined",
        &[
            ("alice@example.org", "alice", NamespaceSet::BOTH),
            ("bob@example.org", "bob", NamespaceSet::OLDMEMO),
            ("carol@example.org", "carol", NamespaceSet::TWOMEMO),
        ],
        &[],
    );
    // Bob speaks OMEMO 0.3 only: carol (OMEMO 2 only) gets no key.
    let first = w.best_effort(1, "one");
    let second = w.best_effort(1, "two");
    match w.deliver(2, first, true, PreKeyMode::Live).unwrap() {
        Inbound::Undecryptable { cause: Cause::NotForThisDevice, .. } => {}
        other => panic!("{other:?}"),
    }
    // Had carol entered the room only after these messages:
    let later = w.now() + 60;
    w.devices[2].room.set_member_since(later);
    w.restart(2).unwrap();
    assert_eq!(w.devices[2].room.member_since(), Some(later), "kept across a restart");
    match w.deliver(2, second, true, PreKeyMode::Live).unwrap() {
        Inbound::Undecryptable { cause: Cause::SentBeforeWeJoined, .. } => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(w.plaintext(0, second), "two");
}
