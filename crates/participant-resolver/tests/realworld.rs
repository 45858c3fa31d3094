//! The room model fed with stanzas captured from a real Prosody 0.12 room (../shared/realworld/fixtures):
//! creation, configuration, affiliation lists, joins, a nick change, a kick, a ban, live and archived
//! messages.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use minidom::Element;
use participant_resolver::*;

mod common;
use common::{fixture, fixture_text};

const ROOM: &str = "pelovusaho@conference.localhost";

/// Replaces the value of the first `attr="..."` after `marker` in `text`.
fn set_attr_after(text: &str, marker: &str, attr: &str, value: &str) -> String {
    let at = text.find(marker).unwrap();
    let key = format!("{attr}=\"");
    let start = at + text[at..].find(&key).unwrap() + key.len();
    let end = start + text[start..].find('"').unwrap();
    format!("{}{}{}", &text[..start], value, &text[end..])
}

/// A presence of another occupant, made from bob's captured join presence.
fn joined(nick: &str, jid: &str, affiliation: &str, occupant_id: &str) -> Element {
    let text = fixture_text("muc-presence-occupant-joined.recv.xml")
        .replace("/bob\"", &format!("/{nick}\""))
        .replace("bob@localhost", jid)
        .replace("affiliation=\"member\"", &format!("affiliation=\"{affiliation}\""));
    set_attr_after(&text, "<occupant-id", "id", occupant_id).trim().parse().unwrap()
}

/// Alice's view: she creates and configures the room, reads the lists, others join.
fn alice_room() -> Room {
    let mut room = Room::new(ROOM, "alice@localhost", Policy::default());
    room.apply_captured(&fixture("muc-create-02-self-presence-110-201.recv.xml")).unwrap();
    assert_eq!(room.presence(), &Presence::Joined);
    assert_eq!(room.own_nick(), Some("alice"));
    assert!(matches!(room.recipients(), Err(ResolveError::ConfigurationUnknown)));
    let events = room.apply_captured(&fixture("muc-create-06-config-changed-104-170-172.recv.xml")).unwrap();
    assert!(
        events.iter().any(|e| matches!(e, RoomEvent::Request(r) if r.kind == RequestKind::DiscoInfo)),
        "104 re-reads the configuration"
    );
    assert!(matches!(room.recipients(), Err(ResolveError::ConfigurationChanged)));
    room.apply_captured(&fixture("muc-room-disco-info.recv.xml")).unwrap();
    let f = room.features().unwrap();
    assert!(f.nonanonymous && f.membersonly && f.occupant_id && f.mam);
    for list in ["owner-by-owner", "admin-by-owner", "member-by-owner"] {
        room.apply_captured(&fixture(&format!("muc-affiliation-list-{list}.recv.xml"))).unwrap();
    }
    room
}

#[test]
fn creation_configuration_and_lists() {
    let room = alice_room();
    let r = room.recipients().unwrap();
    let included: Vec<&str> = r.included.iter().map(String::as_str).collect();
    assert_eq!(included, ["alice@localhost", "bob@localhost", "carol@localhost", "dave@localhost"]);
    assert!(r.excluded.is_empty());
}

#[test]
fn joins_nick_change_kick_ban_and_leave() {
    let mut room = alice_room();
    room.apply_captured(&fixture("muc-presence-occupant-joined.recv.xml")).unwrap();
    room.apply_captured(&joined(
        "carol",
        "carol@localhost/x",
        "member",
        "4Kk5oQmSFtd2qu6w4Vie6e/xwBYxgMaLXdmZAn3w/FE=",
    ))
    .unwrap();
    room.apply_captured(&joined("dave", "dave@localhost/y", "member", "A5emMA1ukivZ6/JlbNdg7M29txWyRUGc37YRvB4dd+U="))
        .unwrap();
    let nicks: Vec<&str> = room.occupants().map(|o| o.nick.as_str()).collect();
    assert_eq!(nicks, ["alice", "bob", "carol", "dave"]);
    let bob = room.occupants().find(|o| o.nick == "bob").unwrap();
    assert_eq!(bob.real_jid.as_deref(), Some("bob@localhost"));
    assert!(bob.occupant_id.is_some());

    // carol renames herself: 303 from the old nick, then the new nick.
    room.apply_captured(&fixture("muc-presence-nick-change-303-old.recv.xml")).unwrap();
    room.apply_captured(&fixture("muc-presence-nick-change-new.recv.xml")).unwrap();
    assert!(room.occupants().any(|o| o.nick == "carol-renamed" && o.real_jid.as_deref() == Some("carol@localhost")));
    assert!(!room.occupants().any(|o| o.nick == "carol"));
    let spans: Vec<_> =
        room.nick_history().iter().filter(|s| s.real_jid.as_deref() == Some("carol@localhost")).collect();
    assert_eq!(spans.len(), 2);
    assert!(spans[0].until.is_some() && spans[1].until.is_none());

    // carol leaves: still a member, still a recipient.
    room.apply_captured(&fixture("muc-presence-leave.recv.xml")).unwrap();
    assert!(!room.occupants().any(|o| o.nick.starts_with("carol")));
    assert!(room.recipients().unwrap().included.contains("carol@localhost"));

    // A kick (307) changes a role, not membership.
    room.apply_captured(&joined(
        "carol",
        "carol@localhost/x",
        "member",
        "4Kk5oQmSFtd2qu6w4Vie6e/xwBYxgMaLXdmZAn3w/FE=",
    ))
    .unwrap();
    room.apply_captured(&fixture("muc-presence-kick-307.recv.xml")).unwrap();
    assert!(!room.occupants().any(|o| o.nick == "carol"));
    assert!(room.recipients().unwrap().included.contains("carol@localhost"));

    // A ban (301) makes dave an outcast at once.
    room.apply_captured(&fixture("muc-presence-ban-301.recv.xml")).unwrap();
    let r = room.recipients().unwrap();
    assert!(!r.included.contains("dave@localhost"));
    assert_eq!(r.excluded, vec![("dave@localhost".to_owned(), Exclusion::Outcast)]);
    // The outcast list agrees.
    room.apply_captured(&fixture("muc-affiliation-list-outcast-by-owner.recv.xml")).unwrap();
    assert_eq!(room.recipients().unwrap().excluded, vec![("dave@localhost".to_owned(), Exclusion::Outcast)]);
}

#[test]
fn own_removal_makes_sending_fail() {
    for (fixture_name, me, reason) in [
        ("muc-presence-kick-307-self.recv.xml", "carol@localhost", "kicked"),
        ("muc-presence-ban-301-self.recv.xml", "dave@localhost", "banned"),
    ] {
        let mut room = Room::new(ROOM, me, Policy::default());
        let nick = me.split('@').next().unwrap();
        room.apply_captured(&joined(nick, &format!("{me}/r"), "member", "x")).unwrap();
        // Not our self-presence (no 110): we are not joined yet.
        assert_eq!(room.presence(), &Presence::NotJoined);
        let events = room.apply_captured(&fixture(fixture_name)).unwrap();
        assert!(events.contains(&RoomEvent::SelfLeft(reason)), "{fixture_name}: {events:?}");
        assert!(matches!(room.recipients(), Err(ResolveError::NotJoined(r)) if r == reason));
    }
}

#[test]
fn member_view_with_self_presence_100_110() {
    let mut room = Room::new(ROOM, "bob@localhost", Policy::default());
    room.apply_captured(&fixture("muc-presence-existing-occupant-on-join.recv.xml")).unwrap();
    room.apply_captured(&fixture("muc-presence-self-100-110.recv.xml")).unwrap();
    assert_eq!(room.presence(), &Presence::Joined);
    room.apply_captured(&fixture("muc-room-disco-info.recv.xml")).unwrap();
    room.apply_captured(&fixture("muc-affiliation-list-member-by-member.recv.xml")).unwrap();
    room.apply_captured(&fixture("muc-affiliation-list-owner-by-member.recv.xml")).unwrap();
    let r = room.recipients().unwrap();
    assert!(["alice@localhost", "bob@localhost", "carol@localhost", "dave@localhost"]
        .iter()
        .all(|j| r.included.contains(*j)));
}

#[test]
fn refused_list_queries_do_not_break_the_room() {
    let mut room = Room::new(ROOM, "bob@localhost", Policy::default());
    let requests = room.join_requests();
    assert_eq!(requests.len(), 4);
    for r in &requests {
        assert_eq!(r.stanza.attr("to"), Some(ROOM));
    }
    room.apply_captured(&fixture("muc-presence-existing-occupant-on-join.recv.xml")).unwrap();
    room.apply_captured(&fixture("muc-presence-self-100-110.recv.xml")).unwrap();
    for r in &requests {
        let answer: Element = match r.kind {
            RequestKind::DiscoInfo => {
                set_attr_after(&fixture_text("muc-room-disco-info.recv.xml"), "<iq", "id", &r.id).trim().parse().unwrap()
            }
            RequestKind::AffiliationList(_) => format!(
                "<iq xmlns='jabber:client' type='error' id='{}' from='{ROOM}'><error type='auth'><forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
                r.id
            )
            .parse()
            .unwrap(),
        };
        room.handle_iq(&answer).unwrap();
    }
    assert!(room.list_states().values().all(|s| *s == room::ListState::Refused("forbidden".into())));
    // Presences still count: alice (owner, present) and ourselves.
    let r = room.recipients().unwrap();
    assert!(r.included.contains("alice@localhost") && r.included.contains("bob@localhost"));
    // An answer to nobody's request is refused.
    let stray: Element = format!("<iq xmlns='jabber:client' type='result' id='nope' from='{ROOM}'/>").parse().unwrap();
    assert!(matches!(room.handle_iq(&stray), Err(InputError::UnknownRequest(_))));
}

#[test]
fn degrading_room_refuses_sending() {
    let mut room = alice_room();
    assert!(room.recipients().is_ok());
    let msg = |codes: &[u16]| -> Element {
        let s: String = codes.iter().map(|c| format!("<status code='{c}'/>")).collect();
        format!("<message xmlns='jabber:client' from='{ROOM}' type='groupchat'><x xmlns='http://jabber.org/protocol/muc#user'>{s}</x></message>").parse().unwrap()
    };
    room.apply_captured(&msg(&[173])).unwrap();
    assert!(matches!(room.recipients(), Err(ResolveError::Anonymous)));
    room.apply_captured(&msg(&[172])).unwrap();
    assert!(room.recipients().is_ok());
    // A new disco#info without members-only: refused, unless the policy allows open rooms.
    let open: Element = fixture_text("muc-room-disco-info.recv.xml")
        .replace("<feature var=\"muc_membersonly\"/>", "")
        .trim()
        .parse()
        .unwrap();
    room.apply_captured(&open).unwrap();
    assert!(matches!(room.recipients(), Err(ResolveError::NotMembersOnly)));
    let mut lenient = Room::new(ROOM, "alice@localhost", Policy { allow_open_rooms: true });
    lenient.apply_captured(&fixture("muc-create-02-self-presence-110-201.recv.xml")).unwrap();
    lenient.apply_captured(&open).unwrap();
    assert!(lenient.recipients().is_ok());
    let anon: Element = fixture_text("muc-room-disco-info.recv.xml")
        .replace("<feature var=\"muc_nonanonymous\"/>", "")
        .trim()
        .parse()
        .unwrap();
    lenient.apply_captured(&anon).unwrap();
    assert!(matches!(lenient.recipients(), Err(ResolveError::Anonymous)), "non-anonymous stays mandatory");
}

#[test]
fn out_of_room_affiliation_messages() {
    let mut room = alice_room();
    let msg: Element = format!(
        "<message xmlns='jabber:client' from='{ROOM}'><x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='none' jid='bob@localhost'/></x></message>"
    )
    .parse()
    .unwrap();
    room.apply_captured(&msg).unwrap();
    let r = room.recipients().unwrap();
    assert!(!r.included.contains("bob@localhost"));
    assert!(r.excluded.contains(&("bob@localhost".to_owned(), Exclusion::NoLongerMember)));
}

#[test]
fn attribution_live_archive_and_forgeries() {
    let mut room = alice_room();
    room.apply_captured(&fixture("muc-presence-occupant-joined.recv.xml")).unwrap();
    let none = |_: u32| Vec::new();
    // A live message from bob: decided by occupant-id (bob's presence carried it).
    let live = fixture("muc-message-twomemo.recv.xml");
    let a = room.attribute(&live, &none).unwrap();
    assert_eq!(a.real_jid.as_deref(), Some("bob@localhost"));
    assert_eq!(a.decided_by, Some(AttributionSource::OccupantId));
    assert!(a.sender_device.is_some() && a.ids.stanza_id.is_some() && a.ids.origin_id.is_some());
    // Without an occupant-id, the nick decides.
    let mut no_oid = live.clone();
    no_oid.remove_child("occupant-id", "urn:xmpp:occupant-id:0");
    let a = room.attribute(&no_oid, &none).unwrap();
    assert_eq!((a.real_jid.as_deref(), a.decided_by), (Some("bob@localhost"), Some(AttributionSource::NickHistory)));
    // A forged <x muc#user><item jid> on a live message is ignored.
    let forged: Element = fixture_text("muc-message-twomemo.recv.xml")
        .replace("<body>", "<x xmlns='http://jabber.org/protocol/muc#user'><item jid='mallory@localhost'/></x><body>")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(room.attribute(&forged, &none).unwrap().real_jid.as_deref(), Some("bob@localhost"));
    // A MAM result from the room's archive: the archive's real JID decides, even for someone not present.
    let dave_view = Room::new(ROOM, "dave@localhost", Policy::default());
    for f in ["mam-room-result-oldmemo.recv.xml", "mam-room-result-twomemo.recv.xml"] {
        let a = dave_view.attribute(&fixture(f), &none).unwrap();
        assert_eq!(a.decided_by, Some(AttributionSource::MamRealJid), "{f}");
        assert!(a.from_archive && a.ids.stanza_id.is_some());
    }
    // ejabberd puts a full JID there: the bare JID is the answer.
    let full: Element = fixture_text("mam-room-result-oldmemo.recv.xml")
        .replace("jid=\"alice@localhost\"", "jid=\"alice@localhost/phone\"")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(dave_view.attribute(&full, &none).unwrap().real_jid.as_deref(), Some("alice@localhost"));
    // The same result relayed by someone else is not the archive: refused, its item jid never trusted.
    let relayed: Element = fixture_text("mam-room-result-oldmemo.recv.xml")
        .replacen(&format!("from=\"{ROOM}\""), "from=\"mallory@localhost\"", 1)
        .trim()
        .parse()
        .unwrap();
    assert!(matches!(
        dave_view.attribute(&relayed, &none),
        Err(InputError::NotFromArchive { ref from, .. }) if from == "mallory@localhost"
    ));
    assert_eq!(dave_view.message_ids(&relayed).stanza_id, None, "nor its result id");
    // A message from another room is refused.
    let other: Element = fixture_text("muc-message-twomemo.recv.xml")
        .replace(ROOM, "other@conference.localhost")
        .trim()
        .parse()
        .unwrap();
    assert!(matches!(room.attribute(&other, &none), Err(InputError::NotFromRoom(_))));
}

#[test]
fn nick_reused_by_someone_else_and_device_candidates() {
    let mut room = alice_room();
    // "eve-nick" is held by carol, then (after she leaves) by dave: a conflict for an archived message.
    room.apply_captured(&joined("shared", "carol@localhost/x", "member", "oid-carol")).unwrap();
    let leave: Element = format!("<presence xmlns='jabber:client' from='{ROOM}/shared' type='unavailable'><x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='member' role='none' jid='carol@localhost/x'/></x></presence>").parse().unwrap();
    room.apply_captured(&leave).unwrap();
    room.apply_captured(&joined("shared", "dave@localhost/y", "member", "oid-dave")).unwrap();
    // Live, now: dave holds the nick.
    let live: Element = format!(
        "<message xmlns='jabber:client' from='{ROOM}/shared' type='groupchat' id='m1'><body>x</body></message>"
    )
    .parse()
    .unwrap();
    assert_eq!(room.attribute(&live, &|_| Vec::new()).unwrap().real_jid.as_deref(), Some("dave@localhost"));
    // Archived without a real JID: the nick had two holders: reported, and the device decides.
    let archived: Element = format!(
        "<message xmlns='jabber:client' from='{ROOM}'><result xmlns='urn:xmpp:mam:2' id='a1'><forwarded xmlns='urn:xmpp:forward:0'>\
         <message xmlns='jabber:client' from='{ROOM}/shared' type='groupchat' id='m0'>\
         <encrypted xmlns='urn:xmpp:omemo:2'><header sid='77'/></encrypted></message></forwarded></result></message>"
    )
    .parse()
    .unwrap();
    let owners =
        |sid: u32| if sid == 77 { vec!["carol@localhost".to_owned(), "mallory@localhost".to_owned()] } else { vec![] };
    let a = room.attribute(&archived, &owners).unwrap();
    assert_eq!(a.conflicts.len(), 1);
    assert_eq!(a.conflicts[0].source, AttributionSource::NickHistory);
    assert_eq!(a.conflicts[0].jids, vec!["carol@localhost".to_owned(), "dave@localhost".to_owned()]);
    assert_eq!(
        (a.real_jid.as_deref(), a.decided_by),
        (Some("carol@localhost"), Some(AttributionSource::DeviceId)),
        "mallory is no member"
    );
    // An occupant-id seen with two real JIDs is a conflict too.
    room.apply_captured(&joined("x1", "bob@localhost/z", "member", "dup")).unwrap();
    room.apply_captured(&joined("x2", "carol@localhost/z", "member", "dup")).unwrap();
    let m: Element = format!("<message xmlns='jabber:client' from='{ROOM}/gone' type='groupchat'><occupant-id xmlns='urn:xmpp:occupant-id:0' id='dup'/></message>").parse().unwrap();
    let a = room.attribute(&m, &|_| Vec::new()).unwrap();
    assert_eq!(a.real_jid, None);
    assert_eq!(a.conflicts[0].source, AttributionSource::OccupantId);
}

/// A member list read again (after a rejoin) is the whole truth: a member missing from it (banned or
/// removed while we were away, with no presence to tell us) gets no more keys. Found by the
/// `group_interaction` fuzz target.
#[test]
fn a_fresh_member_list_drops_who_is_gone() {
    let mut room = alice_room();
    assert!(room.recipients().unwrap().included.contains("bob@localhost"));
    let without_bob = fixture_text("muc-affiliation-list-member-by-owner.recv.xml")
        .replace("<item jid=\"bob@localhost\" affiliation=\"member\"/>", "");
    room.apply_captured(&without_bob.trim().parse().unwrap()).unwrap();
    let r = room.recipients().unwrap();
    assert!(!r.included.contains("bob@localhost"));
    assert!(r.included.contains("carol@localhost") && r.included.contains("dave@localhost"));
}
