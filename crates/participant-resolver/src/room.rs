//! The room model: what we know of a MUC room, fed with stanzas, producing the requests it needs.

use std::collections::{BTreeMap, BTreeSet};

use minidom::Element;

use crate::{
    error::InputError,
    policy::{Policy, RoomFeatures},
    xml::{self, bare, resource, Affiliation, Role, NS_DISCO_INFO, NS_MUC_ADMIN},
};

/// Where an affiliation fact came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactSource {
    /// An owner/admin/member list (`muc#admin` query result).
    AffiliationList,
    /// An occupant's presence.
    Presence,
    /// An affiliation-change message from the room (for someone not in the room).
    AffiliationMessage,
}

/// The latest known affiliation of a bare JID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AffiliationFact {
    /// The affiliation.
    pub affiliation: Affiliation,
    /// Who said so last.
    pub source: FactSource,
    /// Was the JID ever owner, admin or member of the room (as far as we saw)?
    pub was_member: bool,
}

/// The state of one affiliation-list query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListState {
    /// Not asked.
    NotRequested,
    /// Asked, no answer yet.
    Pending,
    /// Answered with this many items.
    Received(usize),
    /// Refused (many servers refuse lists to non-admins): presences still count.
    Refused(String),
}

/// One occupant present in the room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occupant {
    /// The nick.
    pub nick: String,
    /// The real bare JID, when the room shows it.
    pub real_jid: Option<String>,
    /// The affiliation its presence carries.
    pub affiliation: Affiliation,
    /// The role.
    pub role: Role,
    /// XEP-0421 occupant-id, when the room adds it.
    pub occupant_id: Option<String>,
}

/// A period during which a nick belonged to someone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NickSpan {
    /// The nick.
    pub nick: String,
    /// Who held it (real bare JID), if known.
    pub real_jid: Option<String>,
    /// From this event number on...
    pub from: u64,
    /// ...until this one (`None`: still held).
    pub until: Option<u64>,
}

/// Are we in the room?
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// No self-presence seen yet.
    NotJoined,
    /// In the room.
    Joined,
    /// Out of it, with the reason.
    Left(&'static str),
}

/// What a request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// A `muc#admin` list of one affiliation.
    AffiliationList(Affiliation),
    /// The room's disco#info.
    DiscoInfo,
}

/// An IQ to send to the room; its answer goes back into [`Room::handle_iq`].
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The IQ id.
    pub id: String,
    /// What it asks.
    pub kind: RequestKind,
    /// The stanza.
    pub stanza: Element,
}

/// Something the caller may want to act on.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum RoomEvent {
    /// Send this request.
    Request(Request),
    /// A JID's affiliation changed.
    AffiliationChanged {
        /// Bare JID.
        jid: String,
        /// New affiliation.
        affiliation: Affiliation,
    },
    /// The room's configuration changed or was (re)read: check eligibility again.
    ConfigurationChanged,
    /// We are out of the room.
    SelfLeft(&'static str),
}

/// A MUC room as OMEMO needs to know it.
#[derive(Debug, Clone)]
pub struct Room {
    pub(crate) jid: String,
    pub(crate) own_jid: String,
    pub(crate) policy: Policy,
    pub(crate) features: Option<RoomFeatures>,
    pub(crate) config_changed: bool,
    pub(crate) presence: Presence,
    pub(crate) own_nick: Option<String>,
    pub(crate) affiliations: BTreeMap<String, AffiliationFact>,
    pub(crate) lists: BTreeMap<Affiliation, ListState>,
    pub(crate) occupants: BTreeMap<String, Occupant>,
    pub(crate) nick_history: Vec<NickSpan>,
    pub(crate) occupant_ids: BTreeMap<String, BTreeSet<String>>,
    pending: BTreeMap<String, RequestKind>,
    pub(crate) clock: u64,
    member_since: Option<u64>,
    next_id: u64,
}

const LISTS: [Affiliation; 3] = [Affiliation::Owner, Affiliation::Admin, Affiliation::Member];

impl Room {
    /// A room we are about to join. `room` and `own_jid` are bare JIDs.
    pub fn new(room: &str, own_jid: &str, policy: Policy) -> Self {
        Self {
            jid: bare(room),
            own_jid: bare(own_jid),
            policy,
            features: None,
            config_changed: false,
            presence: Presence::NotJoined,
            own_nick: None,
            affiliations: BTreeMap::new(),
            lists: LISTS.iter().map(|a| (*a, ListState::NotRequested)).collect(),
            occupants: BTreeMap::new(),
            nick_history: Vec::new(),
            occupant_ids: BTreeMap::new(),
            pending: BTreeMap::new(),
            clock: 0,
            member_since: None,
            next_id: 0,
        }
    }

    /// Since when (seconds since the epoch) this device is in the room: messages from before then were
    /// not encrypted for it. The client sets it when it first joins (and keeps it across restarts).
    pub fn set_member_since(&mut self, secs: u64) {
        self.member_since = Some(secs);
    }

    /// See [`Room::set_member_since`].
    pub fn member_since(&self) -> Option<u64> {
        self.member_since
    }

    /// When a message was sent, as far as it says: the XEP-0203 `<delay>` of a MAM result's forwarded
    /// message (or of a delayed live one), in seconds since the epoch.
    pub fn message_time(&self, stanza: &Element) -> Option<u64> {
        let forwarded = stanza.get_child("result", xml::NS_MAM).and_then(|r| r.get_child("forwarded", xml::NS_FORWARD));
        let delay = forwarded
            .and_then(|f| f.get_child("delay", xml::NS_DELAY))
            .or_else(|| {
                forwarded
                    .and_then(|f| f.get_child("message", xml::NS_CLIENT))
                    .and_then(|m| m.get_child("delay", xml::NS_DELAY))
            })
            .or_else(|| stanza.get_child("delay", xml::NS_DELAY))?;
        xml::parse_timestamp(delay.attr("stamp")?)
    }

    /// The room's bare JID.
    pub fn jid(&self) -> &str {
        &self.jid
    }

    /// Our bare JID.
    pub fn own_jid(&self) -> &str {
        &self.own_jid
    }

    /// What disco#info (and status codes since) say, if known.
    pub fn features(&self) -> Option<RoomFeatures> {
        self.features
    }

    /// Are we in the room?
    pub fn presence(&self) -> &Presence {
        &self.presence
    }

    /// Our nick, once the room told us.
    pub fn own_nick(&self) -> Option<&str> {
        self.own_nick.as_deref()
    }

    /// The occupants present now, by nick.
    pub fn occupants(&self) -> impl Iterator<Item = &Occupant> {
        self.occupants.values()
    }

    /// The latest affiliation known for each bare JID.
    pub fn affiliations(&self) -> &BTreeMap<String, AffiliationFact> {
        &self.affiliations
    }

    /// The state of the owner, admin and member list queries.
    pub fn list_states(&self) -> &BTreeMap<Affiliation, ListState> {
        &self.lists
    }

    /// Who held which nick, and when (in event numbers).
    pub fn nick_history(&self) -> &[NickSpan] {
        &self.nick_history
    }

    fn request(&mut self, kind: RequestKind) -> Request {
        self.next_id += 1;
        let id = format!("omemo-muc-{}", self.next_id);
        let query = match kind {
            RequestKind::AffiliationList(a) => Element::builder("query", NS_MUC_ADMIN)
                .append(Element::builder("item", NS_MUC_ADMIN).attr(xml::name("affiliation"), a.as_str()).build())
                .build(),
            RequestKind::DiscoInfo => Element::builder("query", NS_DISCO_INFO).build(),
        };
        let stanza = Element::builder("iq", xml::NS_CLIENT)
            .attr(xml::name("type"), "get")
            .attr(xml::name("id"), id.as_str())
            .attr(xml::name("to"), self.jid.as_str())
            .append(query)
            .build();
        self.pending.insert(id.clone(), kind);
        if let RequestKind::AffiliationList(a) = kind {
            self.lists.insert(a, ListState::Pending);
        }
        Request { id, kind, stanza }
    }

    /// The requests to send once joined: the owner, admin and member lists and the room's disco#info.
    pub fn join_requests(&mut self) -> Vec<Request> {
        let mut out: Vec<Request> = LISTS.iter().map(|a| self.request(RequestKind::AffiliationList(*a))).collect();
        out.push(self.request(RequestKind::DiscoInfo));
        out
    }

    fn set_affiliation(&mut self, jid: &str, affiliation: Affiliation, source: FactSource) -> Option<RoomEvent> {
        let jid = bare(jid);
        let was_member = affiliation.is_member() || self.affiliations.get(&jid).is_some_and(|f| f.was_member);
        let changed = self.affiliations.get(&jid).map(|f| f.affiliation) != Some(affiliation);
        self.affiliations.insert(jid.clone(), AffiliationFact { affiliation, source, was_member });
        changed.then_some(RoomEvent::AffiliationChanged { jid, affiliation })
    }

    /// An IQ answer (result or error) to one of our requests.
    pub fn handle_iq(&mut self, iq: &Element) -> Result<Vec<RoomEvent>, InputError> {
        let id = iq.attr("id").unwrap_or_default().to_owned();
        let kind = self.pending.remove(&id).ok_or(InputError::UnknownRequest(id))?;
        if iq.attr("from").map(bare).as_deref() != Some(self.jid.as_str()) {
            return Err(InputError::NotFromRoom(self.jid.clone()));
        }
        let error = (iq.attr("type") == Some("error")).then(|| {
            iq.get_child("error", xml::NS_CLIENT)
                .and_then(|e| e.children().next())
                .map(|c| c.name().to_owned())
                .unwrap_or_else(|| "error".into())
        });
        match (kind, error) {
            (RequestKind::AffiliationList(a), Some(condition)) => {
                self.lists.insert(a, ListState::Refused(condition));
                Ok(Vec::new())
            }
            (RequestKind::AffiliationList(a), None) => {
                let query = iq.get_child("query", NS_MUC_ADMIN).ok_or(InputError::Malformed("muc#admin result"))?;
                Ok(self.apply_affiliation_list(a, query))
            }
            (RequestKind::DiscoInfo, Some(_)) => Ok(Vec::new()),
            (RequestKind::DiscoInfo, None) => {
                let query = iq.get_child("query", NS_DISCO_INFO).ok_or(InputError::Malformed("disco#info result"))?;
                Ok(self.apply_disco_info(query))
            }
        }
    }

    /// The items of an affiliation list (`<query xmlns='muc#admin'>` of a result) for `list`. Items
    /// without a JID are skipped; an item's own affiliation attribute wins over the list's.
    pub fn apply_affiliation_list(&mut self, list: Affiliation, query: &Element) -> Vec<RoomEvent> {
        self.clock += 1;
        let mut events = Vec::new();
        let mut n = 0;
        let mut listed = BTreeSet::new();
        for item in query.children().filter(|c| c.name() == "item").map(xml::item) {
            let Some(jid) = item.jid else { continue };
            n += 1;
            listed.insert(bare(&jid));
            events.extend(self.set_affiliation(&jid, item.affiliation.unwrap_or(list), FactSource::AffiliationList));
        }
        // The list is the room's whole answer: whoever we knew with this affiliation and is not on it any
        // more lost it (banned or removed while we were not looking).
        let gone: Vec<String> = self
            .affiliations
            .iter()
            .filter(|(jid, f)| f.affiliation == list && !listed.contains(*jid))
            .map(|(jid, _)| jid.clone())
            .collect();
        for jid in gone {
            events.extend(self.set_affiliation(&jid, Affiliation::None, FactSource::AffiliationList));
        }
        self.lists.insert(list, ListState::Received(n));
        events
    }

    /// The room's disco#info (`<query xmlns='disco#info'>` of a result).
    pub fn apply_disco_info(&mut self, query: &Element) -> Vec<RoomEvent> {
        self.clock += 1;
        let has = |var: &str| query.children().any(|c| c.name() == "feature" && c.attr("var") == Some(var));
        self.features = Some(RoomFeatures {
            nonanonymous: has("muc_nonanonymous"),
            membersonly: has("muc_membersonly"),
            occupant_id: has(xml::NS_OCCUPANT_ID),
            mam: has(xml::NS_MAM),
        });
        self.config_changed = false;
        vec![RoomEvent::ConfigurationChanged]
    }

    fn close_span(&mut self, nick: &str) {
        let now = self.clock;
        if let Some(span) = self.nick_history.iter_mut().rev().find(|s| s.nick == nick && s.until.is_none()) {
            span.until = Some(now);
        }
    }

    /// A presence from the room (an occupant's, or our own).
    pub fn handle_presence(&mut self, presence: &Element) -> Result<Vec<RoomEvent>, InputError> {
        let from = presence.attr("from").ok_or(InputError::Malformed("presence without from"))?;
        if bare(from) != self.jid {
            return Err(InputError::NotFromRoom(self.jid.clone()));
        }
        let Some(nick) = resource(from).map(str::to_owned) else { return Ok(Vec::new()) };
        self.clock += 1;
        let (codes, items) = xml::muc_user(presence).unwrap_or_default();
        let item =
            items.into_iter().next().unwrap_or(xml::MucItem { affiliation: None, role: None, jid: None, nick: None });
        let is_self = codes.contains(&110) || self.own_nick.as_deref() == Some(nick.as_str());
        let mut events = Vec::new();
        match presence.attr("type") {
            Some("error") => {
                if is_self || self.presence == Presence::NotJoined {
                    self.presence = Presence::Left("join refused");
                    events.push(RoomEvent::SelfLeft("join refused"));
                }
            }
            Some("unavailable") => {
                self.occupants.remove(&nick);
                self.close_span(&nick);
                if let (Some(jid), Some(aff)) =
                    (item.jid.clone().or_else(|| is_self.then(|| self.own_jid.clone())), item.affiliation)
                {
                    events.extend(self.set_affiliation(&jid, aff, FactSource::Presence));
                }
                if codes.contains(&303) {
                    if is_self {
                        self.own_nick = item.nick.clone();
                    }
                } else if is_self {
                    let reason = if codes.contains(&301) {
                        "banned"
                    } else if codes.contains(&307) {
                        "kicked"
                    } else if codes.contains(&321) {
                        "removed by an affiliation change"
                    } else if codes.contains(&322) {
                        "removed: the room became members-only"
                    } else if codes.contains(&332) {
                        "the room service shut down"
                    } else {
                        "left"
                    };
                    self.presence = Presence::Left(reason);
                    events.push(RoomEvent::SelfLeft(reason));
                }
            }
            _ => {
                let real_jid = if is_self { Some(self.own_jid.clone()) } else { item.jid.clone() };
                if is_self {
                    self.own_nick = Some(nick.clone());
                    self.presence = Presence::Joined;
                }
                let occupant_id = xml::occupant_id(presence);
                let known = self.occupants.get(&nick).map(|o| o.real_jid.clone());
                if known != Some(real_jid.clone()) {
                    if known.is_some() {
                        self.close_span(&nick);
                    }
                    self.nick_history.push(NickSpan {
                        nick: nick.clone(),
                        real_jid: real_jid.clone(),
                        from: self.clock,
                        until: None,
                    });
                }
                let affiliation = item.affiliation.unwrap_or(Affiliation::None);
                if let Some(jid) = &real_jid {
                    events.extend(self.set_affiliation(jid, affiliation, FactSource::Presence));
                    if let Some(oid) = &occupant_id {
                        self.occupant_ids.entry(oid.clone()).or_default().insert(jid.clone());
                    }
                }
                self.occupants.insert(
                    nick.clone(),
                    Occupant { nick, real_jid, affiliation, role: item.role.unwrap_or(Role::Participant), occupant_id },
                );
            }
        }
        Ok(events)
    }

    /// A message from the room's bare JID: affiliation changes for people not in the room, and status
    /// codes about the configuration (104 changed, 172 now non-anonymous, 173/174 now (semi-)anonymous).
    /// Messages from occupants change nothing here.
    pub fn handle_message(&mut self, message: &Element) -> Result<Vec<RoomEvent>, InputError> {
        let from = message.attr("from").ok_or(InputError::Malformed("message without from"))?;
        if bare(from) != self.jid {
            return Err(InputError::NotFromRoom(self.jid.clone()));
        }
        if resource(from).is_some() {
            return Ok(Vec::new());
        }
        let Some((codes, items)) = xml::muc_user(message) else { return Ok(Vec::new()) };
        self.clock += 1;
        let mut events = Vec::new();
        for item in items {
            if let (Some(jid), Some(aff)) = (item.jid, item.affiliation) {
                events.extend(self.set_affiliation(&jid, aff, FactSource::AffiliationMessage));
            }
        }
        if let Some(f) = &mut self.features {
            if codes.contains(&172) {
                f.nonanonymous = true;
            }
            if codes.contains(&173) || codes.contains(&174) {
                f.nonanonymous = false;
            }
        }
        if codes.contains(&104) {
            self.config_changed = true;
            events.push(RoomEvent::Request(self.request(RequestKind::DiscoInfo)));
        }
        if codes.iter().any(|c| matches!(c, 104 | 172 | 173 | 174)) {
            events.push(RoomEvent::ConfigurationChanged);
        }
        Ok(events)
    }

    /// Applies a stanza from a captured stream (a replay, or a test): presences and messages as live, and
    /// IQ results from the room by their content (an affiliation list, a disco#info), since their ids
    /// answer requests of another session. Other stanzas are ignored. Live clients use
    /// [`Room::handle_iq`], which accepts only answers to this room's own requests.
    pub fn apply_captured(&mut self, stanza: &Element) -> Result<Vec<RoomEvent>, InputError> {
        match stanza.name() {
            "presence" => self.handle_presence(stanza),
            "message" => match stanza.attr("from") {
                Some(from) if bare(from) == self.jid => self.handle_message(stanza),
                _ => Ok(Vec::new()),
            },
            "iq" if stanza.attr("type") == Some("result")
                && stanza.attr("from").map(bare).as_deref() == Some(self.jid.as_str()) =>
            {
                if let Some(query) = stanza.get_child("query", NS_MUC_ADMIN) {
                    let list = query.children().find_map(|c| c.attr("affiliation").and_then(Affiliation::parse));
                    Ok(list.map(|a| self.apply_affiliation_list(a, query)).unwrap_or_default())
                } else if let Some(query) = stanza.get_child("query", NS_DISCO_INFO) {
                    Ok(self.apply_disco_info(query))
                } else {
                    Ok(Vec::new())
                }
            }
            _ => Ok(Vec::new()),
        }
    }
}
