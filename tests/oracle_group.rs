//! The group path (participant-resolver + fan-out-encryptor) with oracle devices as room members, both
//! namespaces, both directions: our group message reaches a 0.3-only and an OMEMO 2-only oracle
//! device; their room messages, as the room delivers them, reach us, and a second delivery is a
//! duplicate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use fan_out_encryptor::group::{
    encrypt_group_message, plan_group_message, receive_group_message, GroupOptions, Inbound,
};
use minidom::Element;
use omemo_muc::pep_dir::PepDir;
use participant_resolver::{Policy, Room};
use rand_core::OsRng;
use session_store::{session::PreKeyMode, Changes, Namespace, SqliteStore, Store};

const ROOM: &str = "team@muc.example.org";
const ALICE: &str = "alice@example.org";
const BOB: &str = "bob@example.org";
const CAROL: &str = "carol@example.org";

fn room_view() -> Room {
    let mut room = Room::new(ROOM, ALICE, Policy::default());
    let stanzas = [
        format!("<iq xmlns='jabber:client' type='result' from='{ROOM}' id='d'><query xmlns='http://jabber.org/protocol/disco#info'><feature var='muc_nonanonymous'/><feature var='muc_membersonly'/></query></iq>"),
        format!("<iq xmlns='jabber:client' type='result' from='{ROOM}' id='l'><query xmlns='http://jabber.org/protocol/muc#admin'><item jid='{BOB}' affiliation='member'/><item jid='{CAROL}' affiliation='member'/></query></iq>"),
        format!("<presence xmlns='jabber:client' from='{ROOM}/alice'><x xmlns='http://jabber.org/protocol/muc#user'><status code='110'/><item jid='{ALICE}/r' affiliation='owner' role='moderator'/></x></presence>"),
        format!("<presence xmlns='jabber:client' from='{ROOM}/bob'><occupant-id xmlns='urn:xmpp:occupant-id:0' id='oid-bob'/><x xmlns='http://jabber.org/protocol/muc#user'><item jid='{BOB}/r' affiliation='member' role='participant'/></x></presence>"),
        format!("<presence xmlns='jabber:client' from='{ROOM}/carol'><occupant-id xmlns='urn:xmpp:occupant-id:0' id='oid-carol'/><x xmlns='http://jabber.org/protocol/muc#user'><item jid='{CAROL}/r' affiliation='member' role='participant'/></x></presence>"),
    ];
    for s in stanzas {
        room.apply_captured(&s.parse::<Element>().unwrap()).unwrap();
    }
    room
}

/// The oracle's stanza as the room delivers it (from the occupant, with occupant-id and stanza-id).
fn delivered(stanza: &str, nick: &str, n: u32) -> Element {
    let first = stanza.lines().next().unwrap();
    first
        .replacen("<message ", &format!("<message from='{ROOM}/{nick}' "), 1)
        .replacen(
            "</message>",
            &format!("<occupant-id xmlns='urn:xmpp:occupant-id:0' id='oid-{nick}'/><stanza-id xmlns='urn:xmpp:sid:0' id='s{n}' by='{ROOM}'/></message>"),
            1,
        )
        .parse()
        .unwrap()
}

#[test]
fn oracle_members_in_a_room_both_directions() {
    let s = Scratch::new("oracle-group");
    let bob = Oracle::with_ns(&s, BOB, "bob", "twomemo");
    let carol = Oracle::with_ns(&s, CAROL, "carol", "oldmemo");
    let ours = Ours::new(&s, ALICE, "alice");
    let pep = PepDir::new(s.pep());
    let mut store = SqliteStore::open(&ours.store).unwrap();
    let room = room_view();

    // PEP -> store: the members' device lists; the plan asks for their bundles, in one batch.
    let mut lists = Changes::default();
    for jid in [BOB, CAROL, ALICE] {
        for ns in [Namespace::Oldmemo, Namespace::Twomemo] {
            let devices = pep.device_list(jid, ns).unwrap();
            if !devices.is_empty() {
                lists.device_lists.push((ns, jid.to_owned(), devices));
            }
        }
    }
    store.apply(&lists).unwrap();
    let plan = plan_group_message(&store, &room, fan_out_encryptor::NamespaceChoice::Auto).unwrap();
    assert_eq!(plan.need_bundles.len(), 2);
    let bundles: Vec<_> = plan
        .need_bundles
        .iter()
        .map(|a| (a.clone(), pep.bundle(&a.jid, a.namespace, a.device).map_err(|e| e.to_string())))
        .collect();
    let msg = encrypt_group_message(&store, &room, "hello oracles", &bundles, &GroupOptions::default(), 1, &mut OsRng)
        .unwrap();
    assert_eq!(msg.coverage.keyed.len(), 2);
    let (stanza, _) = msg.commit(&mut store).unwrap();
    let text = stanza.into_string();
    assert_eq!(text.matches("<encrypted").count(), 2, "one element per namespace");
    for (who, ns) in [(&bob, "twomemo"), (&carol, "oldmemo")] {
        let out = who.decrypt(&text, ALICE).unwrap_or_else(|e| panic!("{}: {e}", who.jid));
        assert_eq!(out["plaintext"], "hello oracles");
        assert_eq!(out["ns"], ns);
        if ns == "twomemo" {
            assert_eq!(out["sce"]["to"], ROOM);
        }
    }

    // Their room messages come back through the room: attributed, decrypted, and recognised as
    // duplicates when delivered again.
    let mut n = 0;
    for round in 0..3 {
        for (who, nick) in [(&bob, "bob"), (&carol, "carol")] {
            n += 1;
            let body = format!("{nick} says {round}");
            let sent = who.encrypt_with(&[ALICE], &body, &["--room", ROOM, "--sce-to", ROOM]);
            let live = delivered(&sent, nick, n);
            let owners = |_: u32| Vec::new();
            let (inbound, ch) =
                receive_group_message(&store, &room, &live, &owners, PreKeyMode::Live, &mut OsRng).unwrap();
            store.apply(&ch).unwrap();
            match inbound {
                Inbound::Decrypted { message, attribution } => {
                    assert_eq!(String::from_utf8(message.plaintext.unwrap().to_vec()).unwrap(), body);
                    assert_eq!(attribution.real_jid.as_deref(), Some(who.jid.as_str()));
                }
                other => panic!("{body}: {other:?}"),
            }
            let (again, _) =
                receive_group_message(&store, &room, &live, &owners, PreKeyMode::Live, &mut OsRng).unwrap();
            assert!(matches!(again, Inbound::Duplicate));
        }
        // And we answer in the room each round.
        let msg = encrypt_group_message(
            &store,
            &room,
            &format!("alice {round}"),
            &[],
            &GroupOptions::default(),
            2,
            &mut OsRng,
        )
        .unwrap();
        let (stanza, _) = msg.commit(&mut store).unwrap();
        let text = stanza.into_string();
        for who in [&bob, &carol] {
            assert_eq!(who.decrypt(&text, ALICE).unwrap()["plaintext"], format!("alice {round}").as_str());
        }
    }
}
