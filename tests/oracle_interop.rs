//! OMEMO 0.3 interop with python-omemo (the oracle), both directions, through the command-line tool.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

const ALICE: &str = "alice@example.org";
const BOB: &str = "bob@example.org";

/// A conversation of 21 messages each way with DH-ratchet turns (runs of 3), starting with the oracle's
/// key exchange; our first reply is a normal message on the session the oracle built.
#[test]
fn conversation_both_ways_with_ratchet_turns() {
    let s = Scratch::new("conversation");
    let alice = Oracle::new(&s, ALICE, "alice");
    let bob = Ours::new(&s, BOB, "bob");
    for round in 0..7 {
        for i in 0..3 {
            let text = format!("alice {round}.{i} ✓");
            let m = alice.encrypt(&[BOB], &text);
            let out = bob.decrypt(&m, ALICE).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(out["plaintext"], text.as_str());
            // The oracle repeats its key exchange until it has read something of ours.
            assert_eq!(out["kex"], round == 0, "{text}");
            assert_eq!(out["sender_device_id"].as_u64(), Some(alice.device_id()));
        }
        for i in 0..3 {
            let text = format!("bob {round}.{i} ✓");
            let m = bob.encrypt(&[ALICE], &text);
            assert!(!m.contains("prekey"), "we answer on the session the oracle built: {m}");
            let out = alice.decrypt(&m, BOB).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(out["plaintext"], text.as_str());
            assert_eq!(out["kex"], false);
        }
    }
}

/// Our key exchange first: the oracle decrypts it, consumes a pre-key and republishes its bundle.
/// Then out-of-order delivery, replays and tampering, both directions.
#[test]
fn our_key_exchange_out_of_order_replay_and_tamper() {
    let s = Scratch::new("ooo");
    let alice = Ours::new(&s, ALICE, "alice");
    let bob = Oracle::new(&s, BOB, "bob");
    // Ours → oracle: four messages, all key exchanges (no answer yet), delivered 3, 1, 4, 2.
    let ms: Vec<String> = (0..4).map(|i| alice.encrypt(&[BOB], &format!("m{i}"))).collect();
    assert!(ms.iter().all(|m| m.contains("prekey='true'") || m.contains("prekey=\"true\"")));
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
    assert!(!alice.encrypt(&[BOB], "after").contains("prekey"));
    // Replays and tampering are refused with precise errors, and change nothing.
    assert_eq!(alice.decrypt(&rs[2], BOB).unwrap_err()["error"], "duplicate");
    let r5 = bob.encrypt(&[ALICE], "r5");
    assert_eq!(alice.decrypt(&tamper(&r5, "payload"), BOB).unwrap_err()["error"], "bad-payload");
    let bad_key = alice.decrypt(&tamper(&r5, "key"), BOB).unwrap_err();
    assert!(matches!(bad_key["error"].as_str(), Some("bad-mac" | "malformed" | "session")), "{bad_key}");
    assert_eq!(alice.decrypt(&r5, BOB).unwrap()["plaintext"], "r5");
}

/// One message from us to our own second device and one oracle device: all decrypt it.
#[test]
fn message_to_our_two_devices_and_an_oracle_device() {
    let s = Scratch::new("three");
    let a1 = Ours::new(&s, ALICE, "alice1");
    let a2 = Ours::new(&s, ALICE, "alice2");
    let bob = Oracle::new(&s, BOB, "bob");
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
    // A groupchat stanza (room) from the oracle, attributed by --sender.
    let o = bob.cmd(
        &["encrypt", "--to", ALICE, "--ns", "oldmemo", "--room", "room@muc.example.org", "--plaintext", "in the room"],
        None,
    );
    let g = String::from_utf8(o.stdout).unwrap();
    assert!(g.contains("groupchat"));
    assert_eq!(a2.decrypt(&g, BOB).unwrap()["plaintext"], "in the room");
}
