//! Hostile input, case by case (issue 8): each one gets its precise error or outcome, and the store is
//! exactly as it was (apart from the room's stanza-id being remembered as processed).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine;
use fan_out_encryptor::{
    group::{Cause, GroupOptions, Inbound},
    xml::{v0_3, v2},
    Context, DecryptError, XmlError,
};
use minidom::Element;
use omemo_muc::world::{DeviceSpec, World};
use session_store::{
    session::{self, PreKeyMode},
    wire, AccountStore, Namespace, NamespaceSet, SessionAddress, SessionError, SqliteStore,
};

const ROOM: &str = "hostile@muc.example.org";
const ALICE: &str = "alice@example.org";
const BOB: &str = "bob@example.org";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

type Sql = SqliteStore<rusqlite::Connection>;

struct Fixture {
    w: World<Sql>,
    dir: std::path::PathBuf,
    /// Two messages from alice on the established chain, not yet read by bob.
    next: Vec<usize>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Alice and bob (both namespaces) with sessions both ways, and carol (a member, OMEMO 2).
fn fixture(name: &str) -> Fixture {
    let dir = std::env::temp_dir().join(format!("omemo-muc-hostile-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let specs = [
        DeviceSpec::new(ALICE, "alice", NamespaceSet::BOTH),
        DeviceSpec::new(BOB, "bob", NamespaceSet::BOTH),
        DeviceSpec::new("carol@example.org", "carol", NamespaceSet::TWOMEMO),
    ];
    let mut w = World::new(ROOM, &specs, &[], 3, |i| SqliteStore::open(dir.join(format!("{i}.sqlite3")))).unwrap();
    let opts = GroupOptions::default();
    let m = w.send(0, "hello", &opts).unwrap().0;
    for to in [1, 2] {
        assert!(matches!(w.deliver(to, m, false, PreKeyMode::Live).unwrap(), Inbound::Decrypted { .. }));
    }
    let r = w.send(1, "hi alice", &opts).unwrap().0;
    assert!(matches!(w.deliver(0, r, false, PreKeyMode::Live).unwrap(), Inbound::Decrypted { .. }));
    let next = vec![w.send(0, "one", &opts).unwrap().0, w.send(0, "two", &opts).unwrap().0];
    Fixture { w, dir, next }
}

/// Every row of every table of a store's database file, except the processed stanza-ids.
fn snapshot(store: &Sql) -> Vec<String> {
    let conn = rusqlite::Connection::open(store.path().unwrap()).unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'omemo_seen' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    let mut rows = Vec::new();
    for t in tables {
        let mut stmt = conn.prepare(&format!("SELECT * FROM {t}")).unwrap();
        let n = stmt.column_count();
        let mut q = stmt.query([]).unwrap();
        while let Some(row) = q.next().unwrap() {
            let cells: Vec<String> = (0..n).map(|i| format!("{:?}", row.get_ref(i).unwrap())).collect();
            rows.push(format!("{t}: {}", cells.join(" | ")));
        }
    }
    rows.sort();
    rows
}

/// Delivers a stanza to bob through the group path and checks that nothing but the stanza-id changed.
fn to_bob(f: &mut Fixture, stanza: &Element) -> Inbound {
    // Each forgery arrives as a stanza of its own (the room gives it a new stanza-id).
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let stanza: Element = String::from(stanza).replace("id='sid-", &format!("id='sid-forged{n}-")).parse().unwrap();
    let before = snapshot(&f.w.devices[1].store);
    let out = f.w.receive(1, &stanza, PreKeyMode::Live).unwrap();
    let after = snapshot(&f.w.devices[1].store);
    let changed: Vec<_> =
        after.iter().filter(|r| !before.contains(r)).chain(before.iter().filter(|r| !after.contains(r))).collect();
    assert!(
        changed.is_empty(),
        "the store changed for {out:?}: {} rows differ, first {:.200}",
        changed.len(),
        changed[0]
    );
    out
}

/// Decrypts directly as bob (sender alice), without committing anything.
fn decrypt_as_bob(f: &Fixture, stanza: &Element) -> Result<fan_out_encryptor::Decrypted, DecryptError> {
    let ctx = Context { sender: ALICE, expected_to: ROOM, group: true, pre_keys: PreKeyMode::Live };
    let mut rng = rand_chacha::ChaCha20Rng::from_seed([5; 32]);
    fan_out_encryptor::decrypt_stanza(&f.w.devices[1].store, stanza, &ctx, &mut rng).map(|(d, _)| d)
}

use rand_chacha::rand_core::SeedableRng;

/// Bob's key element in a stanza, for `ns`.
fn bobs_key(f: &Fixture, stanza: &Element, ns: Namespace) -> Vec<u8> {
    let bob = f.w.devices[1].device_id;
    let e = stanza.get_child("encrypted", ns.xmlns()).unwrap();
    if ns == Namespace::Oldmemo {
        v0_3::parse_encrypted(e).unwrap().header.keys.into_iter().find(|k| k.rid == bob).unwrap().data
    } else {
        v2::parse_encrypted(e).unwrap().key_for(BOB, bob).unwrap().data.clone()
    }
}

/// The stanza with bob's key element (OMEMO 2) replaced by `data` (base64-encoded), and without the
/// OMEMO 0.3 element, so that only the OMEMO 2 path is taken.
fn with_v2_key(f: &Fixture, stanza: &Element, data: &str) -> Element {
    let old = B64.encode(bobs_key(f, stanza, Namespace::Twomemo));
    let mut text = String::from(stanza);
    assert!(text.contains(&old));
    text = text.replacen(&old, data, 1);
    let mut e: Element = text.parse().unwrap();
    e.remove_child("encrypted", v0_3::NS);
    e
}

fn live(f: &Fixture, i: usize) -> Element {
    f.w.posted[f.next[i]].live.clone()
}

#[test]
fn truncated_and_oversized_key_elements() {
    let mut f = fixture("truncated");
    let stanza = live(&f, 0);
    let key = bobs_key(&f, &stanza, Namespace::Twomemo);
    // Truncated protobuf: at every length, a precise error and no change.
    for cut in [0, 1, 5, 20, key.len() / 2, key.len() - 1] {
        let e = with_v2_key(&f, &stanza, &B64.encode(&key[..cut]));
        match decrypt_as_bob(&f, &e) {
            Err(DecryptError::Session(SessionError::Malformed(_) | SessionError::BadMac)) => {}
            Err(DecryptError::Xml(XmlError::Invalid { .. })) if cut == 0 => {}
            other => panic!("cut {cut}: {other:?}"),
        }
    }
    // Broken base64.
    let e = with_v2_key(&f, &stanza, "!!not base64!!");
    assert!(matches!(decrypt_as_bob(&f, &e), Err(DecryptError::Xml(XmlError::Invalid { .. }))), "bad base64");
    // Oversized: a megabyte of key material.
    let e = with_v2_key(&f, &stanza, &B64.encode(vec![0x0a; 1 << 20]));
    assert!(matches!(decrypt_as_bob(&f, &e), Err(DecryptError::Xml(XmlError::Invalid { element: "key", .. }))));
    // Through the group path: reported as a broken or malformed message, the store unchanged.
    let e = with_v2_key(&f, &stanza, &B64.encode(&key[..key.len() - 1]));
    assert!(matches!(
        to_bob(&mut f, &e),
        Inbound::Undecryptable { cause: Cause::BrokenSession(_) | Cause::Malformed(_), .. }
    ));
    // The real message still decrypts afterwards.
    assert!(decrypt_as_bob(&f, &live(&f, 0)).is_ok());
}

#[test]
fn counters_near_u32_max_and_gaps_beyond_the_bound() {
    let mut f = fixture("counters");
    let stanza = live(&f, 0);
    let key = bobs_key(&f, &stanza, Namespace::Twomemo);
    let m = wire::v2::AuthenticatedMessage::parse(&key).unwrap();
    for counter in [u32::MAX, u32::MAX - 1, m.counter + 1001, m.counter + 100_000] {
        let forged = wire::v2::AuthenticatedMessage::encode(
            wire::v2::AuthenticatedMessage::encode_message(&m.ratchet_key, counter, m.previous_counter, &m.ciphertext),
            &m.mac,
        );
        let e = with_v2_key(&f, &stanza, &B64.encode(&forged));
        match decrypt_as_bob(&f, &e) {
            Err(DecryptError::Session(SessionError::TooFarAhead { counter: c, max: 1000, .. })) => {
                assert_eq!(c, counter)
            }
            other => panic!("counter {counter}: {other:?}"),
        }
        assert!(matches!(to_bob(&mut f, &e), Inbound::Undecryptable { cause: Cause::Malformed(_), .. }));
    }
    // A previous-chain length near u32::MAX with a new ratchet key: the same bound.
    let other_key = f.w.devices[2].store.account().unwrap().unwrap().identity_key();
    let forged = wire::v2::AuthenticatedMessage::encode(
        wire::v2::AuthenticatedMessage::encode_message(&other_key, 0, u32::MAX, &m.ciphertext),
        &m.mac,
    );
    let e = with_v2_key(&f, &stanza, &B64.encode(&forged));
    assert!(matches!(decrypt_as_bob(&f, &e), Err(DecryptError::Session(SessionError::TooFarAhead { .. }))));
    assert!(decrypt_as_bob(&f, &live(&f, 0)).is_ok());
}

#[test]
fn a_hundred_thousand_keys() {
    let mut f = fixture("keys");
    let stanza = live(&f, 0);
    let bob = f.w.devices[1].device_id;
    // OMEMO 0.3: 100,000 keys for other devices, then bob's real one.
    let mut text = String::from(&stanza);
    let mut keys = String::with_capacity(100_000 * 40);
    for i in 0..100_000u32 {
        keys.push_str(&format!("<key rid='{}'>AAAA</key>", i + 10));
    }
    let marker = format!("<key rid='{bob}'");
    let at = text.find(&marker).unwrap();
    text.insert_str(at, &keys);
    let e: Element = text.parse().unwrap();
    let t = std::time::Instant::now();
    match decrypt_as_bob(&f, &e) {
        Err(DecryptError::Xml(XmlError::Invalid { element: "header", detail })) => {
            assert!(detail.starts_with("1000") && detail.ends_with("keys; at most 65536"), "{detail}")
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert!(t.elapsed() < std::time::Duration::from_secs(20), "took {:?}", t.elapsed());
    assert!(matches!(to_bob(&mut f, &e), Inbound::Undecryptable { cause: Cause::Malformed(_), .. }));
}

#[test]
fn deep_nesting_is_refused_before_parsing() {
    let n = 100_000;
    let text = format!("<message xmlns='jabber:client'>{}{}</message>", "<a>".repeat(n), "</a>".repeat(n));
    match fan_out_encryptor::xml::parse_element(&text) {
        Err(XmlError::Syntax(s)) => assert!(s.contains("nested deeper than 128"), "{s}"),
        other => panic!("{other:?}"),
    }
    // Also in the SCE envelope (decrypted bytes) and the room's input.
    let sce = format!("<envelope xmlns='urn:xmpp:sce:1'>{}{}</envelope>", "<a>".repeat(n), "</a>".repeat(n));
    assert!(fan_out_encryptor::xml::sce::open(sce.as_bytes(), ALICE, ROOM, true).is_err());
    participant_resolver::fuzzing::room_input(text.as_bytes());
    // A stanza nested as deep as real ones parses.
    let ok = format!("<message xmlns='jabber:client'>{}{}</message>", "<a>".repeat(100), "</a>".repeat(100));
    assert!(fan_out_encryptor::xml::parse_element(&ok).is_ok());
}

#[test]
fn bundles_with_bad_signatures_or_low_order_keys() {
    let f = fixture("bundles");
    let carol = SessionAddress::new(Namespace::Twomemo, "carol@example.org", f.w.devices[2].device_id);
    let alice = &f.w.devices[0].store;
    let account = alice.account().unwrap().unwrap();
    let mut rng = rand_chacha::ChaCha20Rng::from_seed([6; 32]);
    // A bad signature.
    let mut bad = f.w.bundle(&carol).unwrap();
    bad.signed_pre_key_signature[3] ^= 0x40;
    let mut ch = session_store::Changes::default();
    let r = session::initiate(alice, &account, &carol, &bad, &mut ch, &mut rng);
    assert!(matches!(r, Err(SessionError::BadBundleSignature)), "{r:?}");
    assert!(ch.is_empty());
    // A low-order signed pre-key (the point of order 4 at u = 1), properly signed by bob's identity
    // (OMEMO 0.3 bundle): the key agreement refuses it.
    let bob = SessionAddress::new(Namespace::Oldmemo, BOB, f.w.devices[1].device_id);
    let bob_account = f.w.devices[1].store.account().unwrap().unwrap();
    let mut one = [0u8; 32];
    one[0] = 1;
    let mut low = f.w.bundle(&bob).unwrap();
    low.signed_pre_key = session_store::PublicKey::from_bytes(one);
    low.signed_pre_key_signature =
        session_store::xeddsa::sign(&bob_account.identity.private, &low.signed_pre_key.serialize(), &[7; 64]).to_vec();
    low.verify_0_3().unwrap();
    let mut ch = session_store::Changes::default();
    let r = session::initiate(alice, &account, &bob, &low, &mut ch, &mut rng);
    assert!(matches!(r, Err(SessionError::Key(session_store::KeyError::LowOrderPoint))), "{r:?}");
    assert!(ch.is_empty());
    // A low-order one-time pre-key (all zeros).
    let mut low = f.w.bundle(&bob).unwrap();
    for (_, k) in &mut low.pre_keys {
        *k = session_store::PublicKey::from_bytes([0; 32]);
    }
    let r = session::initiate(alice, &account, &bob, &low, &mut ch, &mut rng);
    assert!(matches!(r, Err(SessionError::Key(session_store::KeyError::LowOrderPoint))), "{r:?}");
    assert!(ch.is_empty());
}

#[test]
fn room_level_forgeries() {
    let mut f = fixture("room");
    let stanza = live(&f, 0);
    let text = String::from(&stanza);
    // A nick that maps to no one, no occupant-id, and a device id nobody published: unknown sender.
    let alice_device = f.w.devices[0].device_id;
    let ghost_text = text.replacen(&format!("from='{ROOM}/alice'"), &format!("from='{ROOM}/ghost'"), 1).replacen(
        "urn:xmpp:occupant-id:0",
        "urn:example:not-occupant-id",
        1,
    );
    let ghost: Element = ghost_text.replace(&format!("sid='{alice_device}'"), "sid='4242'").parse().unwrap();
    assert!(matches!(to_bob(&mut f, &ghost), Inbound::Undecryptable { cause: Cause::UnknownSender, sender: None }));
    // The same with alice's device id: the device's owner is the only candidate, and the session's MAC
    // proves it (the message decrypts as alice's).
    let ghost: Element = ghost_text.parse().unwrap();
    match f.w.receive(1, &ghost, PreKeyMode::Live).unwrap() {
        Inbound::Decrypted { message, .. } => assert_eq!(message.sender_jid, ALICE),
        other => panic!("{other:?}"),
    }
    let text = String::from(&live(&f, 1));
    // A live message claiming a real JID in <x muc#user><item jid>: ignored, the sender stays alice.
    let forged: Element = text
        .replacen(
            "</message>",
            "<x xmlns='http://jabber.org/protocol/muc#user'><item jid='carol@example.org/r'/></x></message>",
            1,
        )
        .replacen("sid-", "sid-forged-", 1)
        .parse()
        .unwrap();
    match f.w.receive(1, &forged, PreKeyMode::Live).unwrap() {
        Inbound::Decrypted { message, attribution } => {
            assert_eq!(message.sender_jid, ALICE);
            assert_ne!(attribution.decided_by, Some(participant_resolver::AttributionSource::MamRealJid));
        }
        other => panic!("{other:?}"),
    }
    // A MAM result that does not come from the room's archive.
    let archived = String::from(&f.w.posted[f.next[1]].archived);
    let elsewhere: Element =
        archived.replacen(&format!("from='{ROOM}'"), "from='mallory@evil.example'", 1).parse().unwrap();
    match to_bob(&mut f, &elsewhere) {
        Inbound::Undecryptable { cause: Cause::Malformed(why), sender: None } => assert!(why.contains(ROOM), "{why}"),
        other => panic!("{other:?}"),
    }
    // A reflection of a message we never sent (our own nick, an unknown origin-id, our device id).
    let own = f.w.devices[1].device_id;
    let fake: Element = text
        .replacen(&format!("from='{ROOM}/alice'"), &format!("from='{ROOM}/bob'"), 1)
        .replace(&format!("sid='{alice_device}'"), &format!("sid='{own}'"))
        .replacen("oid-", "oid-x", 1)
        .replacen("sid-", "sid-fake-", 1)
        .parse()
        .unwrap();
    let fake = {
        let mut t = String::from(&fake);
        let id = fake.attr("id").unwrap().to_owned();
        t = t.replace(&id, "never-sent-by-us");
        t.parse::<Element>().unwrap()
    };
    assert!(matches!(to_bob(&mut f, &fake), Inbound::Undecryptable { cause: Cause::UnknownReflection, .. }));
}

#[test]
fn changed_identity_for_a_known_device_is_reported() {
    let mut f = fixture("identity");
    // Carol's device id is taken over by a new identity (a reinstall, or an attacker): her next key
    // exchange reports the change.
    let carol_id = f.w.devices[2].device_id;
    let path = f.w.devices[2].store.path().unwrap();
    drop(std::mem::replace(&mut f.w.devices[2].store, SqliteStore::open(f.dir.join("new-carol.sqlite3")).unwrap()));
    std::fs::remove_file(&path).unwrap();
    let mut rng = rand_chacha::ChaCha20Rng::from_seed([8; 32]);
    let mut account = session_store::Account::create("carol@example.org", NamespaceSet::TWOMEMO, &[], 5, &mut rng);
    if let Some(a) = account.account.as_mut() {
        a.device_id = carol_id;
    }
    session_store::Store::apply(&mut f.w.devices[2].store, &account).unwrap();
    // Bob still has the session with the old identity, and hears a key exchange from the new one: it
    // decrypts (blind trust before verification), and the change is reported with the old key.
    let old_key =
        session_store::IdentityStore::identity(&f.w.devices[1].store, "carol@example.org", carol_id).unwrap().unwrap();
    let m = f.w.send(2, "it is me, carol", &GroupOptions::default()).unwrap().0;
    match f.w.deliver(1, m, false, PreKeyMode::Live).unwrap() {
        Inbound::Decrypted { message, .. } => {
            assert_eq!(message.identity.changed_from, Some(old_key), "{message:?}");
            assert_ne!(message.identity.key, old_key);
        }
        other => panic!("{other:?}"),
    }
}
