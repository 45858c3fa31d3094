//! Creating a private group against a simulated MUC service that answers like Prosody 0.12 (its
//! answers made from the captured stanzas in ../shared/realworld/fixtures) or like ejabberd (public and
//! moderated by default, refusing any unknown form field), and reading invitations.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};

use minidom::Element;
use participant_resolver::{
    invitation::{read_invitation, sanitize_reason, InvitationContext, Invitations, InvitedBy, Offered},
    private_group::{private_group_submission, CreateError, CreateGroup, Step, NS_DATA, NS_MUC_OWNER},
    xml::{NS_DISCO_INFO, NS_MUC_ADMIN},
};

mod common;
use common::{fixture, fixture_text};

const SERVICE: &str = "conference.localhost";
const CAPTURED_ROOM: &str = "pelovusaho@conference.localhost";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Prosody,
    Ejabberd,
}

/// A MUC service with just enough behaviour for room creation.
struct Service {
    flavor: Flavor,
    existing: BTreeSet<String>,
    config: BTreeMap<String, String>,
    members: BTreeSet<String>,
    /// Ignores members-only (a server that does not honour it).
    ignore_membersonly: bool,
    /// Drops membership grants (and still answers `result`).
    drop_grants: bool,
    /// Refuses the configuration.
    refuse_config: bool,
    /// What the service saw.
    submitted: Vec<(String, Vec<String>)>,
    grant_items_per_request: Vec<usize>,
}

impl Service {
    fn new(flavor: Flavor) -> Self {
        Service {
            flavor,
            existing: BTreeSet::new(),
            config: BTreeMap::new(),
            members: BTreeSet::new(),
            ignore_membersonly: false,
            drop_grants: false,
            refuse_config: false,
            submitted: Vec::new(),
            grant_items_per_request: Vec::new(),
        }
    }

    fn ejabberd_form() -> String {
        let bool_field = |var: &str, v: &str| format!("<field var='{var}' type='boolean'><value>{v}</value></field>");
        let fields: String = [
            bool_field("muc#roomconfig_persistentroom", "0"),
            bool_field("muc#roomconfig_publicroom", "1"),
            bool_field("public_list", "1"),
            bool_field("muc#roomconfig_passwordprotectedroom", "0"),
            bool_field("muc#roomconfig_membersonly", "0"),
            bool_field("muc#roomconfig_moderatedroom", "1"),
            bool_field("muc#roomconfig_changesubject", "1"),
            bool_field("muc#roomconfig_allowinvites", "0"),
            bool_field("mam", "0"),
        ]
        .concat();
        format!(
            "<x xmlns='jabber:x:data' type='form'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/muc#roomconfig</value></field>\
             <field var='muc#roomconfig_roomname' type='text-single'><value/></field>{fields}\
             <field var='muc#roomconfig_whois' type='list-single'><value>moderators</value><option><value>moderators</value></option><option><value>anyone</value></option></field></x>"
        )
    }

    fn answer(&mut self, s: &Element, room: &str) -> Vec<Element> {
        let id = s.attr("id").unwrap_or("").to_owned();
        let result = |body: &str| -> Element {
            format!(
                "<iq xmlns='jabber:client' type='result' from='{room}' id='{id}' to='alice@localhost/r'>{body}</iq>"
            )
            .parse()
            .unwrap()
        };
        let error = |cond: &str| -> Element {
            format!("<iq xmlns='jabber:client' type='error' from='{room}' id='{id}'><error type='modify'><{cond} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>").parse().unwrap()
        };
        match s.name() {
            "presence" => {
                let created = self.existing.insert(room.to_owned());
                let text = fixture_text("muc-create-02-self-presence-110-201.recv.xml").replace(CAPTURED_ROOM, room);
                let text = if created { text } else { text.replace("<status code=\"201\"/>", "") };
                vec![text.trim().parse().unwrap()]
            }
            "iq" => {
                if let Some(q) = s.get_child("query", NS_MUC_OWNER) {
                    if s.attr("type") == Some("get") {
                        let form = match self.flavor {
                            Flavor::Prosody => {
                                let t = fixture_text("muc-create-04-config-form.recv.xml");
                                let start = t.find("<x xmlns=\"jabber:x:data\"").unwrap();
                                let end = t.find("</x>").unwrap() + 4;
                                t[start..end].to_owned()
                            }
                            Flavor::Ejabberd => Self::ejabberd_form(),
                        };
                        return vec![result(&format!("<query xmlns='{NS_MUC_OWNER}'>{form}</query>"))];
                    }
                    let x = q.get_child("x", NS_DATA).unwrap();
                    let offered: Element = match self.flavor {
                        Flavor::Prosody => fixture("muc-create-04-config-form.recv.xml"),
                        Flavor::Ejabberd => Self::ejabberd_form().parse().unwrap(),
                    };
                    let offered_vars: BTreeSet<String> = find_fields(&offered).into_iter().collect();
                    for f in x.children().filter(|c| c.name() == "field") {
                        let var = f.attr("var").unwrap().to_owned();
                        let values: Vec<String> = f.children().map(|v| v.text()).collect();
                        if self.flavor == Flavor::Ejabberd && !offered_vars.contains(&var) {
                            return vec![error("bad-request")];
                        }
                        self.submitted.push((var.clone(), values.clone()));
                        if let Some(v) = values.first() {
                            self.config.insert(var, v.clone());
                        }
                    }
                    if self.refuse_config {
                        return vec![error("not-acceptable")];
                    }
                    let changed =
                        fixture_text("muc-create-06-config-changed-104-170-172.recv.xml").replace(CAPTURED_ROOM, room);
                    return vec![result(""), changed.trim().parse().unwrap()];
                }
                if s.get_child("query", NS_DISCO_INFO).is_some() {
                    let on = |k: &str| self.config.get(k).is_some_and(|v| v == "1");
                    let mut features = vec!["http://jabber.org/protocol/muc"];
                    features.push(if on("muc#roomconfig_membersonly") && !self.ignore_membersonly {
                        "muc_membersonly"
                    } else {
                        "muc_open"
                    });
                    let whois = self.config.get("muc#roomconfig_whois").map(String::as_str);
                    features.push(if whois == Some("anyone") { "muc_nonanonymous" } else { "muc_semianonymous" });
                    if on("muc#roomconfig_enablearchiving") || on("mam") {
                        features.push("urn:xmpp:mam:2");
                    }
                    let f: String = features.iter().map(|f| format!("<feature var='{f}'/>")).collect();
                    return vec![result(&format!("<query xmlns='{NS_DISCO_INFO}'>{f}</query>"))];
                }
                if let Some(q) = s.get_child("query", NS_MUC_ADMIN) {
                    let items: Vec<&Element> = q.children().filter(|c| c.name() == "item").collect();
                    if s.attr("type") == Some("set") {
                        self.grant_items_per_request.push(items.len());
                        // Prosody 0.12 applies only the first item of a batch, and says `result`.
                        if let Some(first) = items.first() {
                            if !self.drop_grants {
                                self.members.insert(first.attr("jid").unwrap().to_owned());
                            }
                        }
                        return vec![result("")];
                    }
                    let list: String =
                        self.members.iter().map(|j| format!("<item jid='{j}' affiliation='member'/>")).collect();
                    return vec![result(&format!("<query xmlns='{NS_MUC_ADMIN}'>{list}</query>"))];
                }
                vec![error("feature-not-implemented")]
            }
            _ => Vec::new(),
        }
    }
}

fn find_fields(form: &Element) -> Vec<String> {
    let x = if form.is("x", NS_DATA) {
        form.clone()
    } else {
        form.get_child("query", NS_MUC_OWNER).and_then(|q| q.get_child("x", NS_DATA)).unwrap().clone()
    };
    x.children().filter(|c| c.name() == "field").filter_map(|c| c.attr("var").map(str::to_owned)).collect()
}

fn invitees() -> Vec<String> {
    vec!["bob@localhost".into(), "carol@localhost/phone".into(), "dave@localhost".into(), "bob@localhost".into()]
}

/// Runs a creation against the service; bounded.
fn run(
    service: &mut Service,
    c: &mut CreateGroup,
) -> Result<participant_resolver::private_group::CreatedGroup, CreateError> {
    let room = c.room().to_owned();
    let mut queue: Vec<Element> = c.start()?;
    for _ in 0..100 {
        let Some(out) = queue.first().cloned() else { panic!("stalled in state {}", c.state()) };
        queue.remove(0);
        for answer in service.answer(&out, &room) {
            match c.handle(&answer)? {
                Step::Send(more) => queue.extend(more),
                Step::Wait => {}
                Step::Done(g) => return Ok(g),
            }
        }
    }
    panic!("no end after 100 steps");
}

#[test]
fn prosody_creates_a_verified_private_group() {
    let mut service = Service::new(Flavor::Prosody);
    let mut c = CreateGroup::new(SERVICE, [0x5a; 16], "alice", &invitees(), Some("alice, bob, carol"));
    let room = c.room().to_owned();
    assert!(room.ends_with("@conference.localhost") && room.split('@').next().unwrap().len() == 26);
    // The join asks for no history.
    let join = c.clone().start().unwrap().remove(0);
    assert!(String::from(&join).contains("maxstanzas='0'") || String::from(&join).contains("maxstanzas=\"0\""));
    let g = run(&mut service, &mut c).unwrap();
    assert_eq!(g.room, room);
    assert_eq!(g.members, vec!["bob@localhost", "carol@localhost", "dave@localhost"]);
    assert!(g.archiving);
    // One item per grant request.
    assert_eq!(service.grant_items_per_request, vec![1, 1, 1]);
    let cfg = |k: &str| service.config.get(k).cloned();
    assert_eq!(cfg("muc#roomconfig_membersonly").as_deref(), Some("1"));
    assert_eq!(cfg("muc#roomconfig_persistentroom").as_deref(), Some("1"));
    assert_eq!(cfg("muc#roomconfig_publicroom").as_deref(), Some("0"));
    assert_eq!(cfg("muc#roomconfig_whois").as_deref(), Some("anyone"));
    assert_eq!(cfg("muc#roomconfig_changesubject").as_deref(), Some("0"));
    assert_eq!(cfg("{http://prosody.im/protocol/muc}roomconfig_allowmemberinvites").as_deref(), Some("0"));
    assert_eq!(cfg("muc#roomconfig_enablearchiving").as_deref(), Some("1"));
    assert_eq!(cfg("muc#roomconfig_moderatedroom").as_deref(), Some("0"));
    assert_eq!(cfg("muc#roomconfig_roomname").as_deref(), Some("alice, bob, carol"));
    // Only offered fields were submitted.
    let offered: BTreeSet<String> = find_fields(&fixture("muc-create-04-config-form.recv.xml")).into_iter().collect();
    assert!(service.submitted.iter().all(|(v, _)| offered.contains(v)), "{:?}", service.submitted);
    assert_eq!(c.state(), "done");
}

#[test]
fn our_submission_agrees_with_the_captured_one() {
    let form = fixture("muc-create-04-config-form.recv.xml");
    let x = form.get_child("query", NS_MUC_OWNER).unwrap().get_child("x", NS_DATA).unwrap();
    let ours: BTreeMap<String, Vec<String>> =
        private_group_submission(x, Some("alice, bob, carol")).unwrap().into_iter().collect();
    let captured = fixture("muc-create-05-config-submit.send.xml");
    let cx = captured.get_child("query", NS_MUC_OWNER).unwrap().get_child("x", NS_DATA).unwrap();
    for f in cx.children().filter(|c| c.name() == "field") {
        let var = f.attr("var").unwrap();
        let values: Vec<String> = f.children().map(|v| v.text()).collect();
        assert_eq!(ours.get(var), Some(&values), "{var}");
    }
}

#[test]
fn ejabberd_gets_only_offered_fields_and_every_default_overridden() {
    let mut service = Service::new(Flavor::Ejabberd);
    let mut c = CreateGroup::new(SERVICE, [7; 16], "alice", &invitees(), None);
    let g = run(&mut service, &mut c).unwrap();
    assert_eq!(g.members.len(), 3);
    for (k, v) in [
        ("muc#roomconfig_publicroom", "0"),
        ("public_list", "0"),
        ("muc#roomconfig_moderatedroom", "0"),
        ("muc#roomconfig_membersonly", "1"),
        ("muc#roomconfig_whois", "anyone"),
        ("muc#roomconfig_allowinvites", "0"),
        ("muc#roomconfig_passwordprotectedroom", "0"),
        ("mam", "1"),
    ] {
        assert_eq!(service.config.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert!(g.archiving);
}

#[test]
fn unsafe_rooms_and_failures_are_reported() {
    // The server does not honour members-only: reported unsafe, nothing further happens.
    let mut service = Service::new(Flavor::Prosody);
    service.ignore_membersonly = true;
    let mut c = CreateGroup::new(SERVICE, [1; 16], "alice", &invitees(), None);
    match run(&mut service, &mut c) {
        Err(CreateError::Unsafe { why, .. }) => assert!(why.contains("muc_membersonly"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(service.grant_items_per_request.is_empty(), "no member granted in an unsafe room");
    assert_eq!(c.state(), "failed");
    // The room existed already (no 201).
    let mut service = Service::new(Flavor::Prosody);
    let mut c = CreateGroup::new(SERVICE, [2; 16], "alice", &invitees(), None);
    service.existing.insert(c.room().to_owned());
    assert!(matches!(run(&mut service, &mut c), Err(CreateError::RoomExists(_))));
    // Grants answered `result` but not applied.
    let mut service = Service::new(Flavor::Prosody);
    service.drop_grants = true;
    let mut c = CreateGroup::new(SERVICE, [3; 16], "alice", &invitees(), None);
    match run(&mut service, &mut c) {
        Err(CreateError::MembershipNotApplied(m)) => assert_eq!(m.len(), 3),
        other => panic!("{other:?}"),
    }
    // The configuration refused.
    let mut service = Service::new(Flavor::Prosody);
    service.refuse_config = true;
    let mut c = CreateGroup::new(SERVICE, [4; 16], "alice", &invitees(), None);
    assert!(matches!(
        run(&mut service, &mut c),
        Err(CreateError::Refused { step: "configuring the room", ref condition }) if condition == "not-acceptable"
    ));
    // A form that cannot make a private group.
    let no_anyone: Element = "<x xmlns='jabber:x:data' type='form'><field var='muc#roomconfig_persistentroom'/><field var='muc#roomconfig_membersonly'/><field var='muc#roomconfig_whois' type='list-single'><option><value>moderators</value></option></field></x>".parse().unwrap();
    assert!(matches!(private_group_submission(&no_anyone, None), Err(CreateError::FormLacks(_))));
    let no_members_only: Element =
        "<x xmlns='jabber:x:data' type='form'><field var='muc#roomconfig_persistentroom'/></x>".parse().unwrap();
    assert!(matches!(private_group_submission(&no_members_only, None), Err(CreateError::FormLacks(_))));
}

#[test]
fn invitations_are_attributed_deduplicated_and_sanitized() {
    let direct = fixture("muc-invite-direct-xep0249.recv.xml");
    let none = |_: &str| false;
    let contacts = |j: &str| j == "alice@localhost";
    let plain = InvitationContext { subscribed: &none, encrypted_from_trusted: false, encrypted: false };
    let inv = read_invitation(&direct, None, &plain).unwrap();
    assert_eq!(inv.room, CAPTURED_ROOM);
    assert_eq!(inv.invited_by, InvitedBy::Unverified("alice@localhost".into()));
    assert_eq!(inv.reason.as_deref(), Some("join our private group"));
    assert_eq!((inv.members_only, inv.non_anonymous), (None, None));
    let subscribed = InvitationContext { subscribed: &contacts, encrypted_from_trusted: false, encrypted: false };
    let from_contact = read_invitation(&direct, None, &subscribed).unwrap();
    assert_eq!(from_contact.invited_by, InvitedBy::Contact("alice@localhost".into()));
    // Mediated by the room: never attributed to the person it names.
    let mediated: Element = format!(
        "<message xmlns='jabber:client' from='{CAPTURED_ROOM}' to='bob@localhost'><x xmlns='http://jabber.org/protocol/muc#user'><invite from='alice@localhost/r'><reason>hi\t\u{85}\u{9b}31m\n\u{202e}there</reason><continue thread='t1'/></invite></x></message>"
    )
    .parse()
    .unwrap();
    let m = read_invitation(&mediated, None, &subscribed).unwrap();
    assert_eq!(m.invited_by, InvitedBy::Room { room: CAPTURED_ROOM.into(), claimed: Some("alice@localhost".into()) });
    assert_eq!(m.invited_by.inviter(), None);
    assert_eq!(m.reason.as_deref(), Some("hi 31m there"));
    assert_eq!(m.continues, Some(Some("t1".into())));
    // A "mediated" invitation from an occupant JID is no room's word.
    let forged: Element = String::from(&mediated)
        .replacen(&format!("from='{CAPTURED_ROOM}'"), &format!("from='{CAPTURED_ROOM}/mallory'"), 1)
        .parse()
        .unwrap();
    assert!(read_invitation(&forged, None, &subscribed).is_none());
    // Collapsed into one per room, the stronger attribution kept; rooms we are in are dropped.
    let mut all = Invitations::default();
    assert_eq!(all.offer(m, false), Offered::New);
    assert_eq!(all.offer(from_contact, false), Offered::Merged);
    assert_eq!(all.pending().count(), 1);
    assert_eq!(all.pending().next().unwrap().invited_by, InvitedBy::Contact("alice@localhost".into()));
    all.learn_safety(CAPTURED_ROOM, true, true);
    assert_eq!(all.pending().next().unwrap().members_only, Some(true));
    assert_eq!(all.offer(inv, true), Offered::AlreadyJoined);
    assert_eq!(all.pending().count(), 0);
    // Long reasons are cut.
    assert_eq!(sanitize_reason(&"x".repeat(5000)).chars().count(), 300);
}
