//! Interop with python-omemo (the oracle), both directions, through the command-line tool: every
//! scenario runs once with the oracle's OMEMO 0.3 backend (oldmemo) and once with OMEMO 2 (twomemo).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

const ALICE: &str = "alice@example.org";
const BOB: &str = "bob@example.org";
const ROOM: &str = "room@muc.example.org";

/// A conversation of 21 messages each way with DH-ratchet turns (runs of 3), starting with the oracle's
/// key exchange; our first reply is a normal message on the session the oracle built.
fn kex_attr(m: &str) -> bool {
    ["prekey='true'", "prekey=\"true\"", "kex='true'", "kex=\"true\""].iter().any(|a| m.contains(a))
}

fn xmlns_of(ns: &str) -> &'static str {
    if ns == "twomemo" {
        "urn:xmpp:omemo:2"
    } else {
        "eu.siacs.conversations.axolotl"
    }
}

#[test]
fn conversation_oldmemo() {
    conversation("oldmemo");
}

#[test]
fn conversation_twomemo() {
    conversation("twomemo");
}

#[test]
fn kex_ooo_replay_tamper_oldmemo() {
    our_key_exchange_out_of_order_replay_and_tamper("oldmemo");
}

#[test]
fn kex_ooo_replay_tamper_twomemo() {
    our_key_exchange_out_of_order_replay_and_tamper("twomemo");
}

#[test]
fn own_devices_and_oracle_oldmemo() {
    message_to_our_two_devices_and_an_oracle_device("oldmemo");
}

#[test]
fn own_devices_and_oracle_twomemo() {
    message_to_our_two_devices_and_an_oracle_device("twomemo");
}

fn conversation(ns: &'static str) {
    let s = Scratch::new(&format!("conversation-{ns}"));
    let alice = Oracle::with_ns(&s, ALICE, "alice", ns);
    let bob = Ours::new(&s, BOB, "bob");
    for round in 0..7 {
        for i in 0..3 {
            let text = format!("alice {round}.{i} ✓");
            let m = alice.encrypt(&[BOB], &text);
            let out = bob.decrypt(&m, ALICE).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(out["plaintext"], text.as_str());
            assert_eq!(out["namespace"], xmlns_of(ns));
            // The oracle repeats its key exchange until it has read something of ours.
            assert_eq!(out["kex"], round == 0, "{text}");
            assert_eq!(out["sender_device_id"].as_u64(), Some(alice.device_id()));
        }
        for i in 0..3 {
            let text = format!("bob {round}.{i} ✓");
            let m = bob.encrypt(&[ALICE], &text);
            assert!(!kex_attr(&m), "we answer on the session the oracle built: {m}");
            let out = alice.decrypt(&m, BOB).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(out["plaintext"], text.as_str());
            assert_eq!(out["kex"], false);
            if ns == "twomemo" {
                // Our SCE envelope: <from> us, <to> the peer.
                assert_eq!(out["sce"]["from"], BOB);
                assert_eq!(out["sce"]["to"], ALICE);
                assert!(out.get("sce_from_mismatch").is_none(), "{out}");
            }
        }
    }
}

/// Our key exchange first: the oracle decrypts it, consumes a pre-key and republishes its bundle.
/// Then out-of-order delivery, replays and tampering, both directions.
fn our_key_exchange_out_of_order_replay_and_tamper(ns: &'static str) {
    let s = Scratch::new(&format!("ooo-{ns}"));
    let alice = Ours::new(&s, ALICE, "alice");
    let bob = Oracle::with_ns(&s, BOB, "bob", ns);
    // Ours → oracle: four messages, all key exchanges (no answer yet), delivered 3, 1, 4, 2.
    let ms: Vec<String> = (0..4).map(|i| alice.encrypt(&[BOB], &format!("m{i}"))).collect();
    assert!(ms.iter().all(|m| kex_attr(m)));
    for i in [2usize, 0, 3, 1] {
        let out = bob.decrypt(&ms[i], ALICE).unwrap_or_else(|e| panic!("m{i}: {e}"));
        assert_eq!(out["plaintext"], format!("m{i}").as_str());
        assert_eq!(out["kex"], true);
    }
    // Replay and tamper are refused by the oracle.
    let err = bob.decrypt(&ms[1], ALICE).unwrap_err();
    assert_eq!(err["error"], "DecryptionFailed", "{err}");
    let next = alice.encrypt(&[BOB], "fresh");
    assert!(bob.decrypt(&tamper(&next, "payload"), ALICE).is_err());
    assert_eq!(bob.decrypt(&next, ALICE).unwrap()["plaintext"], "fresh");

    // Oracle → ours: 5 messages, delivered 1, 5, 3, 2, 4.
    let rs: Vec<String> = (0..5).map(|i| bob.encrypt(&[ALICE], &format!("r{i}"))).collect();
    for i in [0usize, 4, 2, 1, 3] {
        let out = alice.decrypt(&rs[i], BOB).unwrap_or_else(|e| panic!("r{i}: {e}"));
        assert_eq!(out["plaintext"], format!("r{i}").as_str());
    }
    // Our first message carried a key exchange; after the oracle's answer ours stop carrying one.
    assert!(!kex_attr(&alice.encrypt(&[BOB], "after")));
    // Replays and tampering are refused with precise errors, and change nothing.
    assert_eq!(alice.decrypt(&rs[2], BOB).unwrap_err()["error"], "duplicate");
    let r5 = bob.encrypt(&[ALICE], "r5");
    assert_eq!(alice.decrypt(&tamper(&r5, "payload"), BOB).unwrap_err()["error"], "bad-payload");
    let bad_key = alice.decrypt(&tamper(&r5, "key"), BOB).unwrap_err();
    assert!(matches!(bad_key["error"].as_str(), Some("bad-mac" | "malformed" | "session")), "{bad_key}");
    assert_eq!(alice.decrypt(&r5, BOB).unwrap()["plaintext"], "r5");
}

/// One message from us to our own second device and one oracle device: all decrypt it.
fn message_to_our_two_devices_and_an_oracle_device(ns: &'static str) {
    let s = Scratch::new(&format!("three-{ns}"));
    let a1 = Ours::new(&s, ALICE, "alice1");
    let a2 = Ours::new(&s, ALICE, "alice2");
    let bob = Oracle::with_ns(&s, BOB, "bob", ns);
    let m = a1.encrypt(&[BOB], "to everyone");
    assert_eq!(m.matches("<key ").count(), 2, "a2 and bob, never the sender: {m}");
    assert_eq!(a2.decrypt(&m, ALICE).unwrap()["plaintext"], "to everyone");
    assert_eq!(bob.decrypt(&m, ALICE).unwrap()["plaintext"], "to everyone");
    // The sending device cannot read its own message (it holds no key for itself).
    assert_eq!(a1.decrypt(&m, ALICE).unwrap_err()["error"], "from-this-device");
    // The oracle's reply reaches both of our devices (it adds its own other devices: none).
    let r = bob.encrypt(&[ALICE], "reply");
    assert_eq!(a1.decrypt(&r, BOB).unwrap()["plaintext"], "reply");
    assert_eq!(a2.decrypt(&r, BOB).unwrap()["plaintext"], "reply");
    // A groupchat stanza (room) from the oracle, attributed by --sender; OMEMO 2 needs SCE <to> = room.
    let g = bob.encrypt_with(&[ALICE], "in the room", &["--room", ROOM, "--sce-to", ROOM]);
    assert!(g.contains("groupchat"));
    assert_eq!(a2.decrypt(&g, BOB).unwrap()["plaintext"], "in the room");
}

/// SCE affixes on OMEMO 2 messages from the oracle: a wrong `<to>`, a forged `<from>`, a group message
/// without `<to>` are refused, and change nothing: the next genuine message still decrypts.
#[test]
fn sce_affix_checks_twomemo() {
    let s = Scratch::new("sce");
    let bob = Oracle::with_ns(&s, BOB, "bob", "twomemo");
    let alice = Ours::new(&s, ALICE, "alice");
    // The first message establishes the session (key exchange), with a correct <to>.
    let first = bob.encrypt_with(&[ALICE], "hello", &["--sce-to", ALICE, "--sce-time"]);
    let out = alice.decrypt(&first, BOB).unwrap();
    assert_eq!(out["sce"]["to"], ALICE);
    assert!(out["sce"]["time"].is_string());
    // Addressed to someone else: refused.
    let wrong_to = bob.encrypt_with(&[ALICE], "not for you", &["--sce-to", "carol@example.org"]);
    assert_eq!(alice.decrypt(&wrong_to, BOB).unwrap_err()["error"], "sce-affix");
    // A lying <from>: the oracle encrypts raw bytes, here an envelope claiming to come from mallory.
    let forged = "<envelope xmlns='urn:xmpp:sce:1'><content><body xmlns='jabber:client'>trust me</body></content>\
                  <rpad>xyz</rpad><from jid='mallory@example.org'/></envelope>";
    let m = bob.encrypt_with(&[ALICE], forged, &["--raw"]);
    let err = alice.decrypt(&m, BOB).unwrap_err();
    assert_eq!(err["error"], "sce-affix", "{err}");
    assert!(err["detail"].as_str().unwrap().contains("mallory"), "{err}");
    // A group message without <to>, and one whose <to> names another room.
    let no_to = bob.encrypt_with(&[ALICE], "in a room", &["--room", ROOM]);
    assert_eq!(alice.decrypt(&no_to, BOB).unwrap_err()["error"], "sce-affix");
    let other_room = bob.encrypt_with(&[ALICE], "elsewhere", &["--room", ROOM, "--sce-to", "other@muc.example.org"]);
    assert_eq!(alice.decrypt(&other_room, BOB).unwrap_err()["error"], "sce-affix");
    // Refusals changed nothing: the next genuine messages decrypt.
    let ok = bob.encrypt_with(&[ALICE], "fine", &["--room", ROOM, "--sce-to", ROOM]);
    assert_eq!(alice.decrypt(&ok, BOB).unwrap()["plaintext"], "fine");
    let ok = bob.encrypt(&[ALICE], "also fine");
    assert_eq!(alice.decrypt(&ok, BOB).unwrap()["plaintext"], "also fine");
}

/// A group of four devices: an oracle device that speaks only 0.3, one that speaks only OMEMO 2, one
/// with both, and ours (both). One stanza from us reaches all three; each of them reaches us.
#[test]
fn mixed_group_of_four_devices() {
    let s = Scratch::new("group4");
    let carol = Oracle::with_ns(&s, "carol@example.org", "carol", "oldmemo");
    let dave = Oracle::with_ns(&s, "dave@example.org", "dave", "twomemo");
    let erin = Oracle::with_ns(&s, "erin@example.org", "erin", "both");
    let alice = Ours::new(&s, ALICE, "alice");
    let members = ["carol@example.org", "dave@example.org", "erin@example.org"];
    let o = alice.cmd(&["encrypt", "--to", &members.join(","), "--room", ROOM, "--plaintext", "hello group"], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stanza = String::from_utf8(o.stdout).unwrap();
    // One stanza, both elements, EME naming OMEMO 2, one origin-id.
    assert_eq!(stanza.matches("<encrypted").count(), 2, "{stanza}");
    assert!(stanza.contains("namespace='urn:xmpp:omemo:2'") || stanza.contains("namespace=\"urn:xmpp:omemo:2\""));
    assert_eq!(stanza.matches("<origin-id").count(), 1);
    for (who, ns) in [(&carol, "oldmemo"), (&dave, "twomemo"), (&erin, "twomemo")] {
        let out = who.decrypt(&stanza, ALICE).unwrap_or_else(|e| panic!("{}: {e}", who.jid));
        assert_eq!(out["plaintext"], "hello group", "{}", who.jid);
        assert_eq!(out["ns"], ns, "{}", who.jid);
        if ns == "twomemo" {
            assert_eq!(out["sce"]["to"], ROOM);
        }
    }
    // Each of them writes to the room; we read all three.
    for (who, ns) in [(&carol, "oldmemo"), (&dave, "twomemo"), (&erin, "twomemo")] {
        let m = who.encrypt_with(&[ALICE], &format!("from {}", who.jid), &["--room", ROOM, "--sce-to", ROOM]);
        let out = alice.decrypt(&m, &who.jid).unwrap_or_else(|e| panic!("{}: {e}", who.jid));
        assert_eq!(out["plaintext"], format!("from {}", who.jid).as_str());
        assert_eq!(out["namespace"], xmlns_of(ns), "{}", who.jid);
    }
}

/// A conversation stored by the first release (schema 1, OMEMO 0.3 only) goes on after the upgrade:
/// the migrated store decrypts the oracle's next message and the oracle decrypts our reply.
#[test]
fn schema_1_store_keeps_talking_after_upgrade() {
    let s = Scratch::new("v1-upgrade");
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1-conversation");
    copy_tree(&fixture, &s.dir);
    let alice = Oracle::existing(&s, ALICE, s.dir.join("alice-oracle.json"), "oldmemo");
    let bob = Ours::existing(&s, BOB, s.dir.join("bob.sqlite3"));
    assert_eq!(bob.ok(&["fingerprint"], None)["namespaces"], serde_json::json!(["oldmemo"]));
    let m = alice.encrypt(&[BOB], "still there?");
    assert_eq!(bob.decrypt(&m, ALICE).unwrap()["plaintext"], "still there?");
    let r = bob.encrypt(&[ALICE], "yes, after the upgrade");
    assert_eq!(alice.decrypt(&r, BOB).unwrap()["plaintext"], "yes, after the upgrade");
}
