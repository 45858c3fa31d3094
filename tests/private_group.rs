//! Turning a 1:1 chat into a private group, the engine's part: OMEMO-encrypted XEP-0249 invitations to
//! members speaking OMEMO 0.3 or 2, their attribution on receipt, plaintext invitations only for
//! invitees without OMEMO, single-use invitation tokens in the SQLite store, and the invitees talking
//! in the room once they accepted. (The room creation itself is tested against simulated Prosody and
//! ejabberd services in participant-resolver's tests.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fan_out_encryptor::{
    group::{GroupOptions, Inbound},
    invite::{
        encrypt_invitation, invitation_needs_bundles, plaintext_invitation, receive_invitation, redeem_token,
        PlaintextInvitationError, RedeemError,
    },
    DecryptError, NamespaceChoice,
};
use omemo_muc::world::{DeviceSpec, World};
use participant_resolver::{
    invitation::{DirectInvitation, Invitations, InvitedBy, Offered},
    token::{self, TokenError, TokenKey},
};
use rand_chacha::{rand_core::SeedableRng, ChaCha20Rng};
use session_store::{session::PreKeyMode, MemoryStore, NamespaceSet, SessionError, SqliteStore, Store};

const ROOM: &str = "q4n7zr2hxk3m5vbt6wy8cdfg2a@conference.example.org";

fn world() -> World<MemoryStore> {
    let specs = [
        DeviceSpec::new("alice@example.org", "alice", NamespaceSet::BOTH),
        DeviceSpec::new("bob@example.org", "bob", NamespaceSet::OLDMEMO),
        DeviceSpec::new("carol@example.org", "carol", NamespaceSet::TWOMEMO),
    ];
    World::new(ROOM, &specs, &[], 21, |_| Ok(MemoryStore::default())).unwrap()
}

fn invitation() -> DirectInvitation {
    DirectInvitation {
        room: ROOM.into(),
        reason: Some("our private group".into()),
        password: None,
        continues: true,
        thread: Some("thread-1to1".into()),
    }
}

#[test]
fn encrypted_invitations_reach_both_namespaces_and_are_attributed() {
    let mut w = world();
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    for invitee in [1, 2] {
        let mut pending = Invitations::default();
        let jid = w.devices[invitee].jid.clone();
        w.sync_device_lists(0).unwrap();
        let need = invitation_needs_bundles(&w.devices[0].store, &jid, NamespaceChoice::Auto).unwrap();
        let bundles: Vec<_> = need.iter().map(|a| (a.clone(), w.bundle(a))).collect();
        let inv =
            encrypt_invitation(&w.devices[0].store, &jid, &invitation(), &bundles, NamespaceChoice::Auto, &mut rng)
                .unwrap();
        assert!(inv.failed.is_empty());
        w.devices[0].store.apply(&inv.message.changes).unwrap();
        // Outside the encrypted elements the stanza says nothing about the room.
        let text = String::from(&inv.stanza);
        assert!(!text.contains("jabber:x:conference") && !text.contains(ROOM), "{text}");
        // The invitee reads it: from a trusted device of alice's, whatever the roster says.
        let stanza: minidom::Element =
            text.replacen("<message ", "<message from='alice@example.org/laptop' ", 1).parse().unwrap();
        let nobody = |_: &str| false;
        let (got, changes) =
            receive_invitation(&w.devices[invitee].store, &stanza, &nobody, &mut rng).unwrap().unwrap();
        w.devices[invitee].store.apply(&changes).unwrap();
        assert_eq!(got.room, ROOM);
        assert_eq!(got.invited_by, InvitedBy::TrustedDevice("alice@example.org".into()));
        assert!(got.encrypted);
        assert_eq!(got.continues, Some(Some("thread-1to1".into())));
        assert_eq!(got.reason.as_deref(), Some("our private group"));
        assert_eq!(pending.offer(got, false), Offered::New);
        // The same stanza again is a replay: refused by the ratchet.
        assert!(receive_invitation(&w.devices[invitee].store, &stanza, &nobody, &mut rng).is_err());
        // Nothing joined by itself: the user accepts.
        assert!(pending.take(ROOM).is_some());
    }
    // The members talk in the room.
    let (m, coverage) = w.send(0, "welcome to the group", &GroupOptions::default()).unwrap();
    assert_eq!(coverage.keyed.len(), 2);
    for to in [1, 2] {
        match w.deliver(to, m, false, PreKeyMode::Live).unwrap() {
            Inbound::Decrypted { message, .. } => {
                assert_eq!(&message.plaintext.unwrap()[..], b"welcome to the group")
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn plaintext_invitations_and_forged_senders() {
    let mut w = world();
    let mut rng = ChaCha20Rng::seed_from_u64(10);
    // For an invitee without OMEMO, by explicit choice: a plaintext direct invitation.
    let plain = plaintext_invitation(&w.devices[0].store, "dave@example.org", &invitation(), "inv-1").unwrap();
    // Never in plaintext to someone with OMEMO devices.
    w.sync_device_lists(0).unwrap();
    assert!(matches!(
        plaintext_invitation(&w.devices[0].store, "bob@example.org", &invitation(), "inv-2"),
        Err(PlaintextInvitationError::InviteeHasDevices(_))
    ));
    let received: minidom::Element =
        String::from(&plain).replacen("<message ", "<message from='alice@example.org/laptop' ", 1).parse().unwrap();
    let alice_is_contact = |j: &str| j == "alice@example.org";
    let nobody = |_: &str| false;
    let store = &w.devices[1].store;
    let (inv, ch) = receive_invitation(store, &received, &alice_is_contact, &mut rng).unwrap().unwrap();
    assert!(ch.is_empty() && !inv.encrypted);
    assert_eq!(inv.invited_by, InvitedBy::Contact("alice@example.org".into()));
    let (inv, _) = receive_invitation(store, &received, &nobody, &mut rng).unwrap().unwrap();
    assert_eq!(inv.invited_by, InvitedBy::Unverified("alice@example.org".into()));
    // An encrypted invitation claiming to be from someone else: the session does not match.
    w.sync_device_lists(0).unwrap();
    let need = invitation_needs_bundles(&w.devices[0].store, "bob@example.org", NamespaceChoice::Auto).unwrap();
    let bundles: Vec<_> = need.iter().map(|a| (a.clone(), w.bundle(a))).collect();
    let inv = encrypt_invitation(
        &w.devices[0].store,
        "bob@example.org",
        &invitation(),
        &bundles,
        NamespaceChoice::Auto,
        &mut rng,
    )
    .unwrap();
    let forged: minidom::Element =
        String::from(&inv.stanza).replacen("<message ", "<message from='carol@example.org/x' ", 1).parse().unwrap();
    // Bob knows carol's device list (as a client does): alice's device is not on it.
    w.sync_device_lists(1).unwrap();
    let r = receive_invitation(&w.devices[1].store, &forged, &alice_is_contact, &mut rng);
    assert!(
        matches!(r, Err(DecryptError::Session(SessionError::UnknownDevice { ref jid, .. })) if jid == "carol@example.org"),
        "{r:?}"
    );
}

#[test]
fn tokens_are_single_use_in_the_store() {
    let dir = std::env::temp_dir().join(format!("omemo-muc-tokens-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("service.sqlite3");
    let mut store = SqliteStore::open(&path).unwrap();
    let key = TokenKey::new([42; 32]);
    let t = token::issue(&key, ROOM, "alice@example.org", None, 5_000, [9; 16]);
    let uri = token::join_uri(ROOM, &t);
    let (room, t2) = token::parse_join_uri(&uri).unwrap();
    assert_eq!((room.as_str(), t2.as_str()), (ROOM, t.as_str()));
    let (claims, changes) = redeem_token(&store, &key, ROOM, &t, "erin@example.org/web", 1_000).unwrap();
    assert_eq!(claims.inviter, "alice@example.org");
    store.apply(&changes).unwrap();
    // Spent, also after a restart.
    drop(store);
    let mut store = SqliteStore::open(&path).unwrap();
    assert!(matches!(
        redeem_token(&store, &key, ROOM, &t, "frank@example.org", 1_001),
        Err(RedeemError::Token(TokenError::Spent))
    ));
    // Expired, bound to someone else, for another room: each with its reason.
    let old = token::issue(&key, ROOM, "alice@example.org", None, 900, [1; 16]);
    assert!(matches!(
        redeem_token(&store, &key, ROOM, &old, "x@example.org", 1_000),
        Err(RedeemError::Token(TokenError::Expired { .. }))
    ));
    let bound = token::issue(&key, ROOM, "alice@example.org", Some("gina@example.org"), 9_000, [2; 16]);
    assert!(matches!(
        redeem_token(&store, &key, ROOM, &bound, "x@example.org", 1_000),
        Err(RedeemError::Token(TokenError::WrongInvitee { .. }))
    ));
    assert!(matches!(
        redeem_token(&store, &key, "other@conference.example.org", &bound, "gina@example.org", 1_000),
        Err(RedeemError::Token(TokenError::BadMac))
    ));
    // Once expired, the spent record is forgotten with the next redemption.
    let (_, ch) = redeem_token(&store, &key, ROOM, &bound, "gina@example.org", 6_000).unwrap();
    store.apply(&ch).unwrap();
    assert!(!session_store::LedgerStore::token_spent(&store, &[9; 16]).unwrap());
    assert!(session_store::LedgerStore::token_spent(&store, &[2; 16]).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}
