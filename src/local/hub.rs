//! The in-process XMPP server's logic, synchronous and deterministic: a stanza in from a connected
//! resource, the stanzas out (each with the full JID it goes to). [`super::LocalServer`] runs it on a
//! task; tests may drive it directly.
//!
//! What it serves, as a real server does for OMEMO group chats:
//! - routing between resources (a message to a bare JID goes to every resource of it, and waits for
//!   the account's next connection when none is online);
//! - PEP (XEP-0163): publish with publish-options (a node is created with them; a later publish whose
//!   options contradict the node's configuration gets `precondition-not-met`), items by id or newest,
//!   the owner configuration form, subscriptions, notifications to subscribers and the owner's
//!   resources;
//! - MUC (XEP-0045): rooms created locked by their first occupant (status 201) until the owner submits
//!   the configuration form; members-only, non-anonymous, persistent and archiving settings; joins
//!   refused with `registration-required`, `forbidden` or `conflict`; affiliation lists and changes;
//!   bans (301), kicks (307), removal from a members-only room (321), nick changes (303); reflection
//!   with a stanza-id (XEP-0359) and an occupant-id (XEP-0421), spoofed ones stripped;
//! - MAM (XEP-0313) on rooms, with RSM paging (`max`, `after`) and the sender's real JID in results.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use minidom::Element;
use participant_resolver::{
    private_group::{NS_DATA, NS_MUC_OWNER},
    xml::{
        bare, escape, format_timestamp, parse_text, NS_CLIENT, NS_DISCO_INFO, NS_MAM, NS_MUC, NS_MUC_ADMIN,
        NS_MUC_USER, NS_OCCUPANT_ID, NS_SID,
    },
};

const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const NS_PUBSUB_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
const NS_PUBSUB_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const NS_PUBSUB_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
const NS_RSM: &str = "http://jabber.org/protocol/rsm";
/// The largest page a MAM query gets, whatever it asks.
pub const MAM_MAX_PAGE: usize = 100;
/// Messages kept for an account while none of its resources is online.
pub const OFFLINE_LIMIT: usize = 1000;

/// A PEP node.
#[derive(Debug, Clone)]
struct Node {
    open: bool,
    /// `None`: unlimited (`max`).
    max_items: Option<usize>,
    items: Vec<(String, Element)>,
}

/// A room.
#[derive(Debug, Clone)]
struct HubRoom {
    locked: bool,
    members_only: bool,
    non_anonymous: bool,
    persistent: bool,
    archiving: bool,
    affiliations: BTreeMap<String, String>,
    /// nick → full JID.
    occupants: BTreeMap<String, String>,
    occupant_ids: BTreeMap<String, String>,
    /// (stanza-id, time, reflected message without `to`, sender's bare JID).
    archive: Vec<(String, u64, Element, String)>,
}

impl HubRoom {
    fn new(owner: &str) -> Self {
        HubRoom {
            locked: true,
            members_only: false,
            non_anonymous: false,
            persistent: false,
            archiving: false,
            affiliations: BTreeMap::from([(owner.to_owned(), "owner".to_owned())]),
            occupants: BTreeMap::new(),
            occupant_ids: BTreeMap::new(),
            archive: Vec::new(),
        }
    }

    fn affiliation(&self, jid: &str) -> &str {
        self.affiliations.get(&bare(jid)).map(String::as_str).unwrap_or("none")
    }

    fn nick_of(&self, full: &str) -> Option<String> {
        self.occupants.iter().find(|(_, f)| f.as_str() == full).map(|(n, _)| n.clone())
    }

    fn role(&self, jid: &str) -> &'static str {
        match self.affiliation(jid) {
            "owner" | "admin" => "moderator",
            _ => "participant",
        }
    }
}

/// The server's state.
#[derive(Debug)]
pub struct Hub {
    muc_service: String,
    online: BTreeSet<String>,
    offline: BTreeMap<String, VecDeque<Element>>,
    pep: BTreeMap<(String, String), Node>,
    subscribers: BTreeMap<(String, String), BTreeSet<String>>,
    rooms: BTreeMap<String, HubRoom>,
    next_sid: u64,
    /// Seconds since the epoch, for archive stamps (advanced by the caller).
    pub now: u64,
    /// Stanzas handled, for the demo's statistics.
    pub handled: u64,
    /// Behave like ejabberd: refuse `pubsub#max_items` as a publish-option (`resource-constraint`).
    pub refuse_max_items_option: bool,
    /// Answer this many of the next node-creating publishes with `item-not-found` (as ejabberd does
    /// when several accounts create nodes at once).
    pub fail_node_creations: u32,
    /// IQs to these bare JIDs are swallowed without an answer (a peer whose server does not respond).
    pub silent: BTreeSet<String>,
    /// IQs handled, per kind (`pubsub items`, `pubsub publish`, `muc#admin` ...), for tests.
    pub iq_counts: BTreeMap<String, u64>,
}

type Out = Vec<(String, Element)>;

/// Sets an attribute (no namespace).
pub fn set_attr(e: &mut Element, name: &str, value: &str) {
    if let Ok(n) = minidom::rxml::NcName::try_from(name) {
        e.set_attr(minidom::rxml::Namespace::NONE, n, value);
    }
}

/// Removes an attribute (no namespace).
pub fn remove_attr(e: &mut Element, name: &str) {
    if let Ok(n) = minidom::rxml::NcName::try_from(name) {
        e.attrs_mut().remove(&minidom::rxml::Namespace::NONE, &n);
    }
}

fn parse(text: &str) -> Element {
    // Every stanza the hub builds escapes what it interpolates; a failure is a bug, answered as an
    // internal error element rather than a panic.
    parse_text(text).unwrap_or_else(|e| {
        let mut err = Element::builder("internal-error", NS_CLIENT).build();
        err.append_text_node(e);
        err
    })
}

fn attr_or<'a>(e: &'a Element, name: &'a str) -> &'a str {
    e.attr(name).unwrap_or("")
}

fn with_to(mut e: Element, to: &str) -> Element {
    set_attr(&mut e, "to", to);
    e
}

fn iq_result(iq: &Element, from: &str, payload: &str) -> Element {
    parse(&format!(
        "<iq xmlns='jabber:client' type='result' id='{}' from='{}'>{payload}</iq>",
        escape(attr_or(iq, "id")),
        escape(from)
    ))
}

fn iq_error(iq: &Element, from: &str, kind: &str, condition: &str, extra: &str) -> Element {
    parse(&format!(
        "<iq xmlns='jabber:client' type='error' id='{}' from='{}'><error type='{kind}'><{condition} xmlns='{NS_STANZAS}'/>{extra}</error></iq>",
        escape(attr_or(iq, "id")),
        escape(from)
    ))
}

/// The values of a submitted data form, by field.
fn form_values(x: &Element) -> BTreeMap<String, Vec<String>> {
    x.children()
        .filter(|f| f.is("field", NS_DATA))
        .map(|f| {
            let values = f.children().filter(|v| v.name() == "value").map(|v| v.text()).collect();
            (attr_or(f, "var").to_owned(), values)
        })
        .collect()
}

fn truthy(v: Option<&Vec<String>>) -> Option<bool> {
    v.and_then(|v| v.first()).map(|s| s == "1" || s == "true")
}

impl Hub {
    /// A server whose MUC service is `muc_service` (e.g. `conference.localhost`).
    pub fn new(muc_service: &str) -> Self {
        Hub {
            muc_service: muc_service.to_owned(),
            online: BTreeSet::new(),
            offline: BTreeMap::new(),
            pep: BTreeMap::new(),
            subscribers: BTreeMap::new(),
            rooms: BTreeMap::new(),
            next_sid: 0,
            now: 1_800_000_000,
            handled: 0,
            refuse_max_items_option: false,
            fail_node_creations: 0,
            silent: BTreeSet::new(),
            iq_counts: BTreeMap::new(),
        }
    }

    /// The MUC service's domain.
    pub fn muc_service(&self) -> &str {
        &self.muc_service
    }

    /// A resource comes online: what waited for its account is delivered.
    pub fn connect(&mut self, full: &str) -> Out {
        self.online.insert(full.to_owned());
        let waiting = self.offline.remove(&bare(full)).unwrap_or_default();
        waiting.into_iter().map(|m| (full.to_owned(), with_to(m, full))).collect()
    }

    /// A resource goes away: it leaves every room it was in.
    pub fn disconnect(&mut self, full: &str) -> Out {
        self.online.remove(full);
        let mut out = Vec::new();
        let rooms: Vec<String> =
            self.rooms.iter().filter(|(_, r)| r.nick_of(full).is_some()).map(|(j, _)| j.clone()).collect();
        for room in rooms {
            self.leave(&room, full, &[], &mut out);
        }
        out
    }

    fn resources_of(&self, bare_jid: &str) -> Vec<String> {
        self.online.iter().filter(|f| bare(f) == bare_jid).cloned().collect()
    }

    fn is_room_jid(&self, jid: &str) -> bool {
        let b = bare(jid);
        self.rooms.contains_key(&b) || b.split_once('@').is_some_and(|(_, d)| d == self.muc_service)
    }

    /// Handles one stanza from the connected resource `from`.
    pub fn handle(&mut self, from: &str, mut stanza: Element) -> Out {
        self.handled += 1;
        set_attr(&mut stanza, "from", from);
        let to = stanza.attr("to").map(str::to_owned);
        let mut out = Vec::new();
        match stanza.name() {
            "presence" => {
                if let Some(to) = to.filter(|t| self.is_room_jid(t)) {
                    self.presence_to_room(from, &to, &stanza, &mut out);
                }
            }
            "message" => match to {
                Some(to) if self.is_room_jid(&to) => self.message_to_room(from, &to, stanza, &mut out),
                Some(to) => self.route(&to, stanza, &mut out),
                None => {}
            },
            "iq" if matches!(stanza.attr("type"), Some("get" | "set")) => {
                let target = to.unwrap_or_else(|| bare(from));
                if self.silent.contains(&bare(&target)) {
                    return out;
                }
                let kind = stanza
                    .children()
                    .next()
                    .map(|q| {
                        let sub = q.children().next().map(|c| format!(" {}", c.name())).unwrap_or_default();
                        format!("{}{sub}", q.ns().rsplit('/').next().unwrap_or_default())
                    })
                    .unwrap_or_default();
                *self.iq_counts.entry(kind).or_default() += 1;
                let reply = if self.is_room_jid(&target) {
                    self.room_iq(from, &bare(&target), &stanza, &mut out)
                } else if bare(&target) == target && target.contains('@') {
                    self.pep_iq(from, &target, &stanza, &mut out)
                } else {
                    iq_error(&stanza, &target, "cancel", "service-unavailable", "")
                };
                out.push((from.to_owned(), with_to(reply, from)));
            }
            _ => {}
        }
        out
    }

    fn route(&mut self, to: &str, stanza: Element, out: &mut Out) {
        let targets = if to.contains('/') {
            if self.online.contains(to) {
                vec![to.to_owned()]
            } else {
                self.resources_of(&bare(to))
            }
        } else {
            self.resources_of(to)
        };
        if targets.is_empty() {
            let queue = self.offline.entry(bare(to)).or_default();
            if queue.len() < OFFLINE_LIMIT {
                queue.push_back(stanza);
            }
            return;
        }
        for t in targets {
            out.push((t.clone(), with_to(stanza.clone(), &t)));
        }
    }

    // ---- MUC ----

    fn occupant_presence(&self, room: &str, r: &HubRoom, nick: &str, to: &str, extra: &PresenceExtra) -> Element {
        let full = r.occupants.get(nick).cloned().unwrap_or_else(|| extra.full.clone());
        let mut codes = extra.codes.clone();
        if full == to {
            codes.push(110);
            if r.non_anonymous && !extra.unavailable {
                codes.push(100);
            }
        }
        let show_jid = r.non_anonymous || r.role(to) == "moderator";
        let jid_attr = if show_jid { format!(" jid='{}'", escape(&full)) } else { String::new() };
        let (t, role) = if extra.unavailable { (" type='unavailable'", "none") } else { ("", r.role(&full)) };
        let nick_attr = extra.new_nick.as_ref().map(|n| format!(" nick='{}'", escape(n))).unwrap_or_default();
        let aff = extra.affiliation.clone().unwrap_or_else(|| r.affiliation(&full).to_owned());
        let oid = r.occupant_ids.get(&bare(&full)).cloned().unwrap_or_default();
        let status: String = codes.iter().map(|c| format!("<status code='{c}'/>")).collect();
        parse(&format!(
            "<presence xmlns='jabber:client' from='{}/{}' to='{}'{t}><occupant-id xmlns='{NS_OCCUPANT_ID}' id='{oid}'/>\
             <x xmlns='{NS_MUC_USER}'><item{jid_attr} affiliation='{aff}' role='{role}'{nick_attr}/>{status}</x></presence>",
            escape(room),
            escape(nick),
            escape(to),
        ))
    }

    fn broadcast_presence(&self, room: &str, nick: &str, extra: &PresenceExtra, out: &mut Out) {
        let Some(r) = self.rooms.get(room) else { return };
        let mut targets: Vec<String> = r.occupants.values().cloned().collect();
        if !targets.contains(&extra.full) {
            targets.push(extra.full.clone());
        }
        for t in targets {
            out.push((t.clone(), self.occupant_presence(room, r, nick, &t, extra)));
        }
    }

    fn presence_error(&self, from: &str, to: &str, kind: &str, condition: &str, out: &mut Out) {
        out.push((
            from.to_owned(),
            parse(&format!(
                "<presence xmlns='jabber:client' type='error' from='{}' to='{}'><x xmlns='{NS_MUC}'/><error type='{kind}'><{condition} xmlns='{NS_STANZAS}'/></error></presence>",
                escape(to),
                escape(from)
            )),
        ));
    }

    fn leave(&mut self, room: &str, full: &str, codes: &[u16], out: &mut Out) {
        let Some(r) = self.rooms.get_mut(room) else { return };
        let Some(nick) = r.nick_of(full) else { return };
        let extra = PresenceExtra {
            full: full.to_owned(),
            unavailable: true,
            codes: codes.to_vec(),
            new_nick: None,
            affiliation: None,
        };
        // Everyone (the leaver included) sees the unavailable presence; then it is gone.
        self.broadcast_presence(room, &nick, &extra, out);
        if let Some(r) = self.rooms.get_mut(room) {
            r.occupants.remove(&nick);
            if r.occupants.is_empty() && (!r.persistent || r.locked) {
                self.rooms.remove(room);
            }
        }
    }

    fn presence_to_room(&mut self, from: &str, to: &str, p: &Element, out: &mut Out) {
        let room = bare(to);
        let nick = to.split_once('/').map(|(_, n)| n.to_owned()).unwrap_or_default();
        if p.attr("type") == Some("unavailable") {
            self.leave(&room, from, &[], out);
            return;
        }
        if p.attr("type").is_some() {
            return;
        }
        if nick.is_empty() {
            return self.presence_error(from, to, "modify", "jid-malformed", out);
        }
        let who = bare(from);
        if !self.rooms.contains_key(&room) {
            let mut r = HubRoom::new(&who);
            r.occupant_ids.insert(who.clone(), format!("oid-{}", r.occupant_ids.len() + 1));
            r.occupants.insert(nick.clone(), from.to_owned());
            self.rooms.insert(room.clone(), r);
            let extra = PresenceExtra::available(from, vec![201]);
            self.broadcast_presence(&room, &nick, &extra, out);
            return;
        }
        let Some(r) = self.rooms.get(&room) else { return };
        if let Some(old) = r.nick_of(from) {
            if old != nick {
                // A nick change: 303 under the old nick, then the presence under the new one.
                if r.occupants.contains_key(&nick) {
                    return self.presence_error(from, to, "cancel", "conflict", out);
                }
                let extra = PresenceExtra {
                    full: from.to_owned(),
                    unavailable: true,
                    codes: vec![303],
                    new_nick: Some(nick.clone()),
                    affiliation: None,
                };
                self.broadcast_presence(&room, &old, &extra, out);
                if let Some(r) = self.rooms.get_mut(&room) {
                    r.occupants.remove(&old);
                    r.occupants.insert(nick.clone(), from.to_owned());
                }
                self.broadcast_presence(&room, &nick, &PresenceExtra::available(from, vec![]), out);
            }
            return;
        }
        let aff = r.affiliation(from).to_owned();
        let refusal = if aff == "outcast" {
            Some(("auth", "forbidden"))
        } else if r.locked && aff != "owner" {
            Some(("cancel", "item-not-found"))
        } else if r.members_only && !matches!(aff.as_str(), "owner" | "admin" | "member") {
            Some(("auth", "registration-required"))
        } else if r.occupants.get(&nick).is_some_and(|f| bare(f) != who) {
            Some(("cancel", "conflict"))
        } else {
            None
        };
        if let Some((kind, condition)) = refusal {
            return self.presence_error(from, to, kind, condition, out);
        }
        // The newcomer first sees everyone there, then its own presence; everyone sees it.
        for (n, full) in &r.occupants {
            let extra = PresenceExtra::available(full, vec![]);
            out.push((from.to_owned(), self.occupant_presence(&room, r, n, from, &extra)));
        }
        if let Some(r) = self.rooms.get_mut(&room) {
            let next = format!("oid-{}", r.occupant_ids.len() + 1);
            r.occupant_ids.entry(who).or_insert(next);
            r.occupants.insert(nick.clone(), from.to_owned());
        }
        self.broadcast_presence(&room, &nick, &PresenceExtra::available(from, vec![]), out);
        out.push((
            from.to_owned(),
            parse(&format!(
                "<message xmlns='jabber:client' type='groupchat' from='{}' to='{}'><subject/></message>",
                escape(&room),
                escape(from)
            )),
        ));
    }

    fn message_to_room(&mut self, from: &str, to: &str, mut m: Element, out: &mut Out) {
        let room = bare(to);
        let Some(r) = self.rooms.get(&room) else {
            return self.message_error(from, to, &m, "cancel", "item-not-found", out);
        };
        if m.attr("type") != Some("groupchat") {
            // Private messages and mediated invitations are not served here.
            return self.message_error(from, to, &m, "cancel", "feature-not-implemented", out);
        }
        let Some(nick) = r.nick_of(from) else {
            return self.message_error(from, to, &m, "modify", "not-acceptable", out);
        };
        // Nobody may bring their own stanza-id or occupant-id.
        let spoofed: Vec<Element> = m
            .children()
            .filter(|c| c.is("stanza-id", NS_SID) || c.is("occupant-id", NS_OCCUPANT_ID))
            .cloned()
            .collect();
        for s in spoofed {
            m.remove_child(s.name(), s.ns().as_str());
        }
        self.next_sid += 1;
        let sid = format!("{:016x}", self.next_sid.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        set_attr(&mut m, "from", &format!("{room}/{nick}"));
        remove_attr(&mut m, "to");
        let oid = r.occupant_ids.get(&bare(from)).cloned().unwrap_or_default();
        m.append_child(parse(&format!("<occupant-id xmlns='{NS_OCCUPANT_ID}' id='{}'/>", escape(&oid))));
        m.append_child(parse(&format!("<stanza-id xmlns='{NS_SID}' id='{}' by='{}'/>", escape(&sid), escape(&room))));
        let targets: Vec<String> = r.occupants.values().cloned().collect();
        let archiving = r.archiving;
        for t in targets {
            out.push((t.clone(), with_to(m.clone(), &t)));
        }
        if archiving {
            let now = self.now;
            if let Some(r) = self.rooms.get_mut(&room) {
                r.archive.push((sid, now, m, bare(from)));
            }
        }
    }

    fn message_error(&self, from: &str, to: &str, m: &Element, kind: &str, condition: &str, out: &mut Out) {
        out.push((
            from.to_owned(),
            parse(&format!(
                "<message xmlns='jabber:client' type='error' id='{}' from='{}' to='{}'><error type='{kind}'><{condition} xmlns='{NS_STANZAS}'/></error></message>",
                escape(attr_or(m, "id")),
                escape(to),
                escape(from)
            )),
        ));
    }

    fn room_iq(&mut self, from: &str, room: &str, iq: &Element, out: &mut Out) -> Element {
        let set = iq.attr("type") == Some("set");
        let Some(r) = self.rooms.get(room) else {
            return iq_error(iq, room, "cancel", "item-not-found", "");
        };
        let aff = r.affiliation(from).to_owned();
        let Some(q) = iq.children().next() else {
            return iq_error(iq, room, "modify", "bad-request", "");
        };
        match (q.name(), q.ns().as_str(), set) {
            ("query", NS_DISCO_INFO, false) => {
                if r.members_only && !matches!(aff.as_str(), "owner" | "admin" | "member") && r.locked {
                    return iq_error(iq, room, "cancel", "item-not-found", "");
                }
                let f = |on: bool, yes: &str, no: &str| format!("<feature var='{}'/>", if on { yes } else { no });
                let mut features = String::from("<feature var='http://jabber.org/protocol/muc'/>");
                features += &f(r.members_only, "muc_membersonly", "muc_open");
                features += &f(r.non_anonymous, "muc_nonanonymous", "muc_semianonymous");
                features += &f(r.persistent, "muc_persistent", "muc_temporary");
                features += "<feature var='muc_unsecured'/><feature var='muc_hidden'/>";
                features += &format!("<feature var='{NS_OCCUPANT_ID}'/><feature var='{NS_SID}'/>");
                if r.archiving {
                    features += &format!("<feature var='{NS_MAM}'/>");
                }
                iq_result(
                    iq,
                    room,
                    &format!("<query xmlns='{NS_DISCO_INFO}'><identity category='conference' type='text'/>{features}</query>"),
                )
            }
            ("query", NS_MUC_OWNER, false) if aff == "owner" => {
                let b = |v: bool| if v { "1" } else { "0" };
                let field =
                    |var: &str, t: &str, v: &str| format!("<field var='{var}' type='{t}'><value>{v}</value></field>");
                let form = [
                    "<field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/muc#roomconfig</value></field>".to_owned(),
                    field("muc#roomconfig_roomname", "text-single", ""),
                    field("muc#roomconfig_persistentroom", "boolean", b(r.persistent)),
                    field("muc#roomconfig_publicroom", "boolean", "1"),
                    field("muc#roomconfig_roomsecret", "text-private", ""),
                    field("muc#roomconfig_membersonly", "boolean", b(r.members_only)),
                    field("{http://prosody.im/protocol/muc}roomconfig_allowmemberinvites", "boolean", "0"),
                    field("muc#roomconfig_changesubject", "boolean", "0"),
                    field("muc#roomconfig_moderatedroom", "boolean", "0"),
                    format!(
                        "<field var='muc#roomconfig_whois' type='list-single'><value>{}</value><option><value>moderators</value></option><option><value>anyone</value></option></field>",
                        if r.non_anonymous { "anyone" } else { "moderators" }
                    ),
                    field("muc#roomconfig_enablearchiving", "boolean", b(r.archiving)),
                ]
                .concat();
                iq_result(
                    iq,
                    room,
                    &format!("<query xmlns='{NS_MUC_OWNER}'><x xmlns='{NS_DATA}' type='form'>{form}</x></query>"),
                )
            }
            ("query", NS_MUC_OWNER, true) if aff == "owner" => {
                let Some(x) = q.get_child("x", NS_DATA) else {
                    return iq_error(iq, room, "modify", "bad-request", "");
                };
                if x.attr("type") == Some("cancel") {
                    return iq_result(iq, room, "");
                }
                let v = form_values(x);
                let Some(r) = self.rooms.get_mut(room) else {
                    return iq_error(iq, room, "cancel", "item-not-found", "");
                };
                r.persistent = truthy(v.get("muc#roomconfig_persistentroom")).unwrap_or(r.persistent);
                r.members_only = truthy(v.get("muc#roomconfig_membersonly")).unwrap_or(r.members_only);
                r.archiving = truthy(v.get("muc#roomconfig_enablearchiving")).unwrap_or(r.archiving);
                if let Some(w) = v.get("muc#roomconfig_whois").and_then(|w| w.first()) {
                    r.non_anonymous = w == "anyone";
                }
                r.locked = false;
                iq_result(iq, room, "")
            }
            ("query", NS_MUC_ADMIN, false) => {
                let Some(want) = q.children().find_map(|i| i.attr("affiliation")).map(str::to_owned) else {
                    return iq_error(iq, room, "modify", "bad-request", "");
                };
                let allowed = match want.as_str() {
                    "outcast" => matches!(aff.as_str(), "owner" | "admin"),
                    _ => matches!(aff.as_str(), "owner" | "admin" | "member"),
                };
                if !allowed {
                    return iq_error(iq, room, "auth", "forbidden", "");
                }
                let items: String = r
                    .affiliations
                    .iter()
                    .filter(|(_, a)| **a == want)
                    .map(|(j, a)| format!("<item jid='{}' affiliation='{a}'/>", escape(j)))
                    .collect();
                iq_result(iq, room, &format!("<query xmlns='{NS_MUC_ADMIN}'>{items}</query>"))
            }
            ("query", NS_MUC_ADMIN, true) => self.admin_set(from, room, iq, q, &aff, out),
            ("query", NS_MAM, true) => self.mam_query(from, room, iq, q, &aff, out),
            _ => iq_error(iq, room, "cancel", "service-unavailable", ""),
        }
    }

    fn admin_set(&mut self, from: &str, room: &str, iq: &Element, q: &Element, aff: &str, out: &mut Out) -> Element {
        let items: Vec<Element> = q.children().filter(|i| i.name() == "item").cloned().collect();
        if items.is_empty() {
            return iq_error(iq, room, "modify", "bad-request", "");
        }
        let is_owner = aff == "owner";
        let is_admin = is_owner || aff == "admin";
        // Check every item before changing anything: the request applies as a whole or not at all.
        for item in &items {
            if let Some(a) = item.attr("affiliation") {
                let target = bare(attr_or(item, "jid"));
                if target.is_empty() || !matches!(a, "owner" | "admin" | "member" | "none" | "outcast") {
                    return iq_error(iq, room, "modify", "bad-request", "");
                }
                let current = self.rooms.get(room).map(|r| r.affiliation(&target).to_owned()).unwrap_or_default();
                let needs_owner = matches!(a, "owner" | "admin") || matches!(current.as_str(), "owner" | "admin");
                if !is_admin || (needs_owner && !is_owner) || target == bare(from) && a != "owner" && is_owner {
                    return iq_error(iq, room, "auth", "not-allowed", "");
                }
            } else if item.attr("role") == Some("none") {
                if !is_admin {
                    return iq_error(iq, room, "auth", "not-allowed", "");
                }
            } else {
                return iq_error(iq, room, "modify", "bad-request", "");
            }
        }
        for item in items {
            if let Some(a) = item.attr("affiliation") {
                let target = bare(attr_or(&item, "jid"));
                let Some(r) = self.rooms.get_mut(room) else { break };
                if a == "none" {
                    r.affiliations.remove(&target);
                } else {
                    r.affiliations.insert(target.clone(), a.to_owned());
                }
                let members_only = r.members_only;
                let present: Vec<String> = r.occupants.values().filter(|f| bare(f) == target).cloned().collect();
                let code = match a {
                    "outcast" => Some(301),
                    "none" if members_only => Some(321),
                    _ => None,
                };
                match code {
                    Some(code) => {
                        for full in &present {
                            self.leave(room, full, &[code], out);
                        }
                        // The remaining occupants learn the change even when the member was not there.
                        if present.is_empty() {
                            self.affiliation_note(room, &target, a, code, out);
                        }
                    }
                    None => {
                        for full in &present {
                            if let Some(r) = self.rooms.get(room) {
                                if let Some(nick) = r.nick_of(full) {
                                    self.broadcast_presence(room, &nick, &PresenceExtra::available(full, vec![]), out);
                                }
                            }
                        }
                        if present.is_empty() {
                            self.affiliation_note(room, &target, a, 0, out);
                        }
                    }
                }
            } else if let Some(nick) = item.attr("nick") {
                let full = self.rooms.get(room).and_then(|r| r.occupants.get(nick).cloned());
                if let Some(full) = full {
                    self.leave(room, &full, &[307], out);
                }
            }
        }
        iq_result(iq, room, "")
    }

    /// A message to the occupants that `jid`'s affiliation changed while it was not in the room.
    fn affiliation_note(&self, room: &str, jid: &str, affiliation: &str, code: u16, out: &mut Out) {
        let Some(r) = self.rooms.get(room) else { return };
        let status = if code == 0 { String::new() } else { format!("<status code='{code}'/>") };
        for t in r.occupants.values() {
            out.push((
                t.clone(),
                parse(&format!(
                    "<message xmlns='jabber:client' from='{}' to='{}'><x xmlns='{NS_MUC_USER}'><item jid='{}' affiliation='{affiliation}'/>{status}</x></message>",
                    escape(room),
                    escape(t),
                    escape(jid)
                )),
            ));
        }
    }

    fn mam_query(&mut self, from: &str, room: &str, iq: &Element, q: &Element, aff: &str, out: &mut Out) -> Element {
        let Some(r) = self.rooms.get(room) else {
            return iq_error(iq, room, "cancel", "item-not-found", "");
        };
        if !r.archiving {
            return iq_error(iq, room, "cancel", "feature-not-implemented", "");
        }
        if r.members_only && !matches!(aff, "owner" | "admin" | "member") {
            return iq_error(iq, room, "auth", "forbidden", "");
        }
        let set = q.get_child("set", NS_RSM);
        let max = set
            .and_then(|s| s.get_child("max", NS_RSM))
            .and_then(|m| m.text().trim().parse::<usize>().ok())
            .unwrap_or(MAM_MAX_PAGE)
            .min(MAM_MAX_PAGE);
        let start = match set.and_then(|s| s.get_child("after", NS_RSM)).map(|a| a.text()) {
            Some(after) => match r.archive.iter().position(|(sid, ..)| *sid == after) {
                Some(i) => i + 1,
                None => return iq_error(iq, room, "cancel", "item-not-found", ""),
            },
            None => 0,
        };
        let queryid = q.attr("queryid").map(|s| format!(" queryid='{}'", escape(s))).unwrap_or_default();
        let page: Vec<_> = r.archive.iter().skip(start).take(max).collect();
        for (sid, stamp, m, real) in &page {
            let mut inner = (*m).clone();
            inner.append_child(parse(&format!("<x xmlns='{NS_MUC_USER}'><item jid='{}'/></x>", escape(real))));
            let wrapper = parse(&format!(
                "<message xmlns='jabber:client' from='{}' to='{}'><result xmlns='{NS_MAM}'{queryid} id='{}'><forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='urn:xmpp:delay' stamp='{}'/></forwarded></result></message>",
                escape(room),
                escape(from),
                escape(sid),
                format_timestamp(*stamp)
            ));
            let mut wrapper = wrapper;
            if let Some(fwd) = wrapper
                .get_child_mut("result", NS_MAM)
                .and_then(|res| res.get_child_mut("forwarded", "urn:xmpp:forward:0"))
            {
                fwd.append_child(inner);
            }
            out.push((from.to_owned(), wrapper));
        }
        let complete = start + page.len() >= r.archive.len();
        let rsm = match (page.first(), page.last()) {
            (Some(f), Some(l)) => {
                format!("<set xmlns='{NS_RSM}'><first>{}</first><last>{}</last></set>", escape(&f.0), escape(&l.0))
            }
            _ => format!("<set xmlns='{NS_RSM}'/>"),
        };
        iq_result(iq, room, &format!("<fin xmlns='{NS_MAM}' complete='{complete}'>{rsm}</fin>"))
    }

    // ---- PEP ----

    fn pep_iq(&mut self, from: &str, owner: &str, iq: &Element, out: &mut Out) -> Element {
        let set = iq.attr("type") == Some("set");
        let requester = bare(from);
        if let Some(ps) = iq.get_child("pubsub", NS_PUBSUB) {
            if let (Some(publish), true) = (ps.get_child("publish", NS_PUBSUB), set) {
                if requester != owner {
                    return iq_error(iq, owner, "auth", "forbidden", "");
                }
                return self.publish(owner, iq, ps, publish, out);
            }
            if let (Some(items), false) = (ps.get_child("items", NS_PUBSUB), set) {
                let node = attr_or(items, "node").to_owned();
                let Some(n) = self.pep.get(&(owner.to_owned(), node.clone())) else {
                    return iq_error(iq, owner, "cancel", "item-not-found", "");
                };
                if !n.open && requester != owner {
                    return iq_error(iq, owner, "auth", "forbidden", "");
                }
                let wanted: Vec<&str> = items.children().filter_map(|i| i.attr("id")).collect();
                let newest = items.attr("max_items").and_then(|m| m.parse::<usize>().ok());
                let chosen: Vec<&(String, Element)> = if !wanted.is_empty() {
                    n.items.iter().filter(|(id, _)| wanted.contains(&id.as_str())).collect()
                } else {
                    let skip = newest.map(|k| n.items.len().saturating_sub(k)).unwrap_or(0);
                    n.items.iter().skip(skip).collect()
                };
                if !wanted.is_empty() && chosen.is_empty() {
                    return iq_error(iq, owner, "cancel", "item-not-found", "");
                }
                let body: String = chosen.iter().map(|(id, p)| item_xml(id, p)).collect();
                return iq_result(
                    iq,
                    owner,
                    &format!("<pubsub xmlns='{NS_PUBSUB}'><items node='{}'>{body}</items></pubsub>", escape(&node)),
                );
            }
            if let (Some(sub), true) = (ps.get_child("subscribe", NS_PUBSUB), set) {
                let node = attr_or(sub, "node").to_owned();
                let jid = attr_or(sub, "jid").to_owned();
                if bare(&jid) != requester {
                    return iq_error(iq, owner, "modify", "bad-request", "");
                }
                let key = (owner.to_owned(), node.clone());
                if self.pep.get(&key).is_some_and(|n| !n.open) && requester != owner {
                    return iq_error(iq, owner, "auth", "forbidden", "");
                }
                self.subscribers.entry(key.clone()).or_default().insert(jid.clone());
                // PEP sends the newest item on subscription.
                if let Some((id, payload)) = self.pep.get(&key).and_then(|n| n.items.last()) {
                    out.push((from.to_owned(), notification(owner, &node, id, payload, from)));
                }
                return iq_result(
                    iq,
                    owner,
                    &format!(
                        "<pubsub xmlns='{NS_PUBSUB}'><subscription node='{}' jid='{}' subscription='subscribed'/></pubsub>",
                        escape(&node),
                        escape(&jid)
                    ),
                );
            }
        }
        if let Some(ps) = iq.get_child("pubsub", NS_PUBSUB_OWNER) {
            if let Some(conf) = ps.get_child("configure", NS_PUBSUB_OWNER) {
                if requester != owner {
                    return iq_error(iq, owner, "auth", "forbidden", "");
                }
                let node = attr_or(conf, "node").to_owned();
                let key = (owner.to_owned(), node.clone());
                if !set {
                    let Some(n) = self.pep.get(&key) else {
                        return iq_error(iq, owner, "cancel", "item-not-found", "");
                    };
                    let max = n.max_items.map(|m| m.to_string()).unwrap_or_else(|| "max".into());
                    return iq_result(
                        iq,
                        owner,
                        &format!(
                            "<pubsub xmlns='{NS_PUBSUB_OWNER}'><configure node='{}'><x xmlns='{NS_DATA}' type='form'>\
                             <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#node_config</value></field>\
                             <field var='pubsub#access_model' type='list-single'><value>{}</value></field>\
                             <field var='pubsub#max_items' type='text-single'><value>{max}</value></field></x></configure></pubsub>",
                            escape(&node),
                            if n.open { "open" } else { "presence" }
                        ),
                    );
                }
                let Some(x) = conf.get_child("x", NS_DATA) else {
                    return iq_error(iq, owner, "modify", "bad-request", "");
                };
                let v = form_values(x);
                let Some(n) = self.pep.get_mut(&key) else {
                    return iq_error(iq, owner, "cancel", "item-not-found", "");
                };
                if let Some(a) = v.get("pubsub#access_model").and_then(|a| a.first()) {
                    n.open = a == "open";
                }
                if let Some(m) = v.get("pubsub#max_items").and_then(|a| a.first()) {
                    n.max_items = if m == "max" { None } else { m.parse().ok().or(n.max_items) };
                }
                return iq_result(iq, owner, "");
            }
        }
        iq_error(iq, owner, "cancel", "service-unavailable", "")
    }

    fn publish(&mut self, owner: &str, iq: &Element, ps: &Element, publish: &Element, out: &mut Out) -> Element {
        let node = attr_or(publish, "node").to_owned();
        let Some(item) = publish.get_child("item", NS_PUBSUB) else {
            return iq_error(iq, owner, "modify", "bad-request", "");
        };
        let id = item.attr("id").unwrap_or("current").to_owned();
        let Some(payload) = item.children().next().cloned() else {
            return iq_error(iq, owner, "modify", "bad-request", "");
        };
        let options = ps
            .get_child("publish-options", NS_PUBSUB)
            .and_then(|o| o.get_child("x", NS_DATA))
            .map(form_values)
            .unwrap_or_default();
        let want_open = options.get("pubsub#access_model").and_then(|v| v.first()).map(|a| a == "open");
        let want_max = options.get("pubsub#max_items").and_then(|v| v.first()).map(|m| {
            if m == "max" {
                None
            } else {
                m.parse::<usize>().ok()
            }
        });
        if self.refuse_max_items_option && options.contains_key("pubsub#max_items") {
            return iq_error(iq, owner, "wait", "resource-constraint", "");
        }
        let key = (owner.to_owned(), node.clone());
        if self.fail_node_creations > 0 && !self.pep.contains_key(&key) {
            self.fail_node_creations -= 1;
            return iq_error(iq, owner, "cancel", "item-not-found", "");
        }
        match self.pep.get_mut(&key) {
            Some(n) => {
                let conflict = want_open.is_some_and(|o| o != n.open) || want_max.is_some_and(|m| m != n.max_items);
                if conflict {
                    return iq_error(
                        iq,
                        owner,
                        "cancel",
                        "conflict",
                        &format!("<precondition-not-met xmlns='{NS_PUBSUB_ERRORS}'/>"),
                    );
                }
            }
            None => {
                let n = Node {
                    open: want_open.unwrap_or(false),
                    max_items: want_max.unwrap_or(Some(1)),
                    items: Vec::new(),
                };
                self.pep.insert(key.clone(), n);
            }
        }
        if let Some(n) = self.pep.get_mut(&key) {
            n.items.retain(|(i, _)| *i != id);
            n.items.push((id.clone(), payload.clone()));
            if let Some(m) = n.max_items {
                let excess = n.items.len().saturating_sub(m.max(1));
                n.items.drain(..excess);
            }
        }
        let mut targets: BTreeSet<String> = self.resources_of(owner).into_iter().collect();
        if let Some(subs) = self.subscribers.get(&key) {
            for s in subs {
                if s.contains('/') {
                    if self.online.contains(s) {
                        targets.insert(s.clone());
                    }
                } else {
                    targets.extend(self.resources_of(s));
                }
            }
        }
        for t in targets {
            out.push((t.clone(), notification(owner, &node, &id, &payload, &t)));
        }
        iq_result(
            iq,
            owner,
            &format!(
                "<pubsub xmlns='{NS_PUBSUB}'><publish node='{}'><item id='{}'/></publish></pubsub>",
                escape(&node),
                escape(&id)
            ),
        )
    }
}

fn item_xml(id: &str, payload: &Element) -> String {
    format!("<item id='{}'>{}</item>", escape(id), String::from(payload))
}

fn notification(owner: &str, node: &str, id: &str, payload: &Element, to: &str) -> Element {
    parse(&format!(
        "<message xmlns='jabber:client' type='headline' from='{}' to='{}'><event xmlns='{NS_PUBSUB_EVENT}'><items node='{}'>{}</items></event></message>",
        escape(owner),
        escape(to),
        escape(node),
        item_xml(id, payload)
    ))
}

/// How an occupant's presence is dressed.
#[derive(Debug, Clone)]
struct PresenceExtra {
    full: String,
    unavailable: bool,
    codes: Vec<u16>,
    new_nick: Option<String>,
    affiliation: Option<String>,
}

impl PresenceExtra {
    fn available(full: &str, codes: Vec<u16>) -> Self {
        PresenceExtra { full: full.to_owned(), unavailable: false, codes, new_nick: None, affiliation: None }
    }
}
