//! Turning a 1:1 chat into a private group, safely (XEP-0045 §7.9 done right), as a sans-IO state
//! machine: [`CreateGroup`] returns the stanzas to send and consumes the answers.
//!
//! 1. Join a room with a random, unguessable local part (128 bits) on the user's MUC service, asking
//!    for no history. The room must be new (status 201); an existing room is never taken over.
//! 2. Fetch the owner form and submit exactly the fields it offers, set for a private group:
//!    persistent, members-only, not public, real JIDs visible to anyone, subject changes and
//!    invitations for owners/moderators only, not moderated, no password, archiving on (Prosody
//!    `muc#roomconfig_enablearchiving`, ejabberd `mam`, or `muc#roomconfig_mam`). A form that lacks
//!    members-only, whois=anyone or persistence cannot make a private group: the creation fails.
//! 3. Fetch disco#info again: `muc_membersonly` and `muc_nonanonymous` must be there, or the room is
//!    reported unsafe.
//! 4. Grant `member` to every invitee, one request per invitee (Prosody 0.12 applies only the first item
//!    of a batched request and still answers `result`), then fetch the member list and check that every
//!    invitee is on it.
//!
//! Nothing of the 1:1 history is copied into the room. Invitations are built by the caller afterwards
//! (see [`crate::invitation`]).

use std::collections::BTreeSet;

use minidom::Element;

use crate::xml::{bare, NS_CLIENT, NS_DISCO_INFO, NS_MUC, NS_MUC_ADMIN, NS_MUC_USER};

/// `http://jabber.org/protocol/muc#owner`.
pub const NS_MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
/// `jabber:x:data`.
pub const NS_DATA: &str = "jabber:x:data";

/// Why creating the private group failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CreateError {
    /// The room existed already (no status 201): it is not ours to configure.
    #[error("room {0} exists already")]
    RoomExists(String),
    /// The server refused a step.
    #[error("{step}: the server answered {condition}")]
    Refused {
        /// The step.
        step: &'static str,
        /// The error condition (or the whole error element).
        condition: String,
    },
    /// The owner form does not offer what a private group needs.
    #[error("the room configuration form cannot make a private group: {0}")]
    FormLacks(String),
    /// After configuration the room is not members-only and non-anonymous.
    #[error("room {room} is not safe for encrypted messages: {why}")]
    Unsafe {
        /// The room.
        room: String,
        /// What is missing.
        why: String,
    },
    /// The member list lacks invitees after granting them membership.
    #[error("membership was not applied for {}", .0.join(", "))]
    MembershipNotApplied(Vec<String>),
    /// A stanza did not have the expected shape.
    #[error("malformed answer to {step}: {detail}")]
    Malformed {
        /// The step.
        step: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// A stanza arrived in a state that does not expect it.
    #[error("unexpected stanza in state {0}")]
    Unexpected(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Joining,
    AwaitForm { id: String },
    AwaitSubmit { id: String },
    AwaitDisco { id: String },
    Granting { pending: Vec<(String, String)> },
    AwaitMembers { id: String },
    Done,
    Failed,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Joining => "joining",
            State::AwaitForm { .. } => "awaiting the owner form",
            State::AwaitSubmit { .. } => "awaiting the configuration result",
            State::AwaitDisco { .. } => "awaiting disco#info",
            State::Granting { .. } => "granting membership",
            State::AwaitMembers { .. } => "awaiting the member list",
            State::Done => "done",
            State::Failed => "failed",
        }
    }
}

/// What the creation did, once it succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedGroup {
    /// The room's bare JID.
    pub room: String,
    /// The form fields we submitted (variable, values).
    pub configured: Vec<(String, Vec<String>)>,
    /// The invitees, now members (checked on the member list).
    pub members: Vec<String>,
    /// The room archives messages (as far as disco#info says).
    pub archiving: bool,
}

/// The next thing to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Send these stanzas, then feed the answers to [`CreateGroup::handle`].
    Send(Vec<Element>),
    /// The stanza was not for us (or changed nothing): keep waiting.
    Wait,
    /// The group exists, is configured, verified, and the invitees are members.
    Done(CreatedGroup),
}

/// Creating a private group: see the module documentation.
#[derive(Debug, Clone)]
pub struct CreateGroup {
    room: String,
    nick: String,
    name: Option<String>,
    invitees: Vec<String>,
    state: State,
    next_id: u64,
    id_prefix: String,
    configured: Vec<(String, Vec<String>)>,
    archiving: bool,
}

/// A random room local part with 128 bits of entropy: 26 characters of lowercase base32.
pub fn random_local_part(random: [u8; 16]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut bits: u128 = u128::from_be_bytes(random);
    let mut out = String::with_capacity(26);
    for _ in 0..26 {
        out.push(char::from(ALPHABET[(bits & 31) as usize]));
        bits >>= 5;
    }
    out
}

fn element(text: String) -> Result<Element, CreateError> {
    crate::xml::parse_text(&text).map_err(|e| CreateError::Malformed { step: "building a request", detail: e })
}

use crate::xml::escape as esc;

fn iq_error(iq: &Element) -> String {
    iq.get_child("error", NS_CLIENT)
        .and_then(|e| {
            e.children().find(|c| c.ns() == "urn:ietf:params:xml:ns:xmpp-stanzas").map(|c| c.name().to_owned())
        })
        .unwrap_or_else(|| "an error".to_owned())
}

impl CreateGroup {
    /// A new private group on `service` (the user's MUC service, e.g. `conference.example.org`), joined
    /// as `nick`, for `invitees` (bare JIDs). `random` makes the room's local part; `name` is the room's
    /// title, if wanted.
    pub fn new(service: &str, random: [u8; 16], nick: &str, invitees: &[String], name: Option<&str>) -> Self {
        let local = random_local_part(random);
        let mut seen = BTreeSet::new();
        let invitees = invitees.iter().map(|j| bare(j)).filter(|j| seen.insert(j.clone())).collect();
        Self {
            room: format!("{local}@{service}"),
            nick: nick.to_owned(),
            name: name.map(str::to_owned),
            invitees,
            state: State::Joining,
            next_id: 0,
            id_prefix: local[..8].to_owned(),
            configured: Vec::new(),
            archiving: false,
        }
    }

    /// The room's bare JID.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// An IQ of `kind` (`get`/`set`) to the room with `query` as its payload, and its fresh id.
    fn request(&mut self, kind: &str, query: &str) -> Result<(String, Element), CreateError> {
        self.next_id += 1;
        let id = format!("create-{}-{}", self.id_prefix, self.next_id);
        let iq = element(format!(
            "<iq xmlns='jabber:client' type='{kind}' id='{id}' to='{}'>{query}</iq>",
            esc(&self.room)
        ))?;
        Ok((id, iq))
    }

    /// The member list request, after which the creation checks the grants.
    fn request_members(&mut self) -> Result<Step, CreateError> {
        let (id, q) =
            self.request("get", &format!("<query xmlns='{NS_MUC_ADMIN}'><item affiliation='member'/></query>"))?;
        self.state = State::AwaitMembers { id };
        Ok(Step::Send(vec![q]))
    }

    /// The first stanza: our presence into the new room, asking for no history.
    pub fn start(&mut self) -> Result<Vec<Element>, CreateError> {
        let p = element(format!(
            "<presence xmlns='jabber:client' to='{}/{}'><x xmlns='{NS_MUC}'><history maxstanzas='0'/></x></presence>",
            esc(&self.room),
            esc(&self.nick)
        ))?;
        self.state = State::Joining;
        Ok(vec![p])
    }

    fn fail(&mut self, e: CreateError) -> Result<Step, CreateError> {
        self.state = State::Failed;
        Err(e)
    }

    /// Feeds a stanza from the server. Stanzas that are not about this creation give [`Step::Wait`].
    pub fn handle(&mut self, stanza: &Element) -> Result<Step, CreateError> {
        let from_room = stanza.attr("from").is_some_and(|f| bare(f) == self.room);
        if !from_room {
            return Ok(Step::Wait);
        }
        match (&self.state, stanza.name()) {
            (State::Joining, "presence") => self.on_self_presence(stanza),
            (State::AwaitForm { id }, "iq") if stanza.attr("id") == Some(id.as_str()) => self.on_form(stanza),
            (State::AwaitSubmit { id }, "iq") if stanza.attr("id") == Some(id.as_str()) => {
                if stanza.attr("type") != Some("result") {
                    let condition = iq_error(stanza);
                    return self.fail(CreateError::Refused { step: "configuring the room", condition });
                }
                let (id, q) = self.request("get", &format!("<query xmlns='{NS_DISCO_INFO}'/>"))?;
                self.state = State::AwaitDisco { id };
                Ok(Step::Send(vec![q]))
            }
            (State::AwaitDisco { id }, "iq") if stanza.attr("id") == Some(id.as_str()) => self.on_disco(stanza),
            (State::Granting { pending }, "iq") => {
                let Some(pos) = pending.iter().position(|(id, _)| stanza.attr("id") == Some(id.as_str())) else {
                    return Ok(Step::Wait);
                };
                if stanza.attr("type") != Some("result") {
                    let condition = iq_error(stanza);
                    let who = pending[pos].1.clone();
                    return self.fail(CreateError::Refused {
                        step: "granting membership",
                        condition: format!("{condition} for {who}"),
                    });
                }
                let mut pending = pending.clone();
                pending.remove(pos);
                if !pending.is_empty() {
                    self.state = State::Granting { pending };
                    return Ok(Step::Wait);
                }
                self.request_members()
            }
            (State::AwaitMembers { id }, "iq") if stanza.attr("id") == Some(id.as_str()) => self.on_members(stanza),
            (State::Joining, "message")
            | (State::AwaitForm { .. }, "message")
            | (State::AwaitSubmit { .. }, "message")
            | (State::AwaitDisco { .. }, "message") => Ok(Step::Wait), // subject, status 104/170/172
            _ => Ok(Step::Wait),
        }
    }

    fn on_self_presence(&mut self, p: &Element) -> Result<Step, CreateError> {
        if p.attr("type") == Some("error") {
            let condition = p
                .get_child("error", NS_CLIENT)
                .and_then(|e| e.children().next().map(|c| c.name().to_owned()))
                .unwrap_or_else(|| "an error".to_owned());
            return self.fail(CreateError::Refused { step: "joining the new room", condition });
        }
        let Some(x) = p.get_child("x", NS_MUC_USER) else { return Ok(Step::Wait) };
        let codes: Vec<&str> = x.children().filter(|c| c.name() == "status").filter_map(|c| c.attr("code")).collect();
        if !codes.contains(&"110") {
            return Ok(Step::Wait); // another occupant's presence
        }
        if !codes.contains(&"201") {
            let room = self.room.clone();
            return self.fail(CreateError::RoomExists(room));
        }
        let (id, q) = self.request("get", &format!("<query xmlns='{NS_MUC_OWNER}'/>"))?;
        self.state = State::AwaitForm { id };
        Ok(Step::Send(vec![q]))
    }

    fn on_form(&mut self, iq: &Element) -> Result<Step, CreateError> {
        if iq.attr("type") != Some("result") {
            let condition = iq_error(iq);
            return self.fail(CreateError::Refused { step: "fetching the owner form", condition });
        }
        let Some(form) = iq.get_child("query", NS_MUC_OWNER).and_then(|q| q.get_child("x", NS_DATA)) else {
            return self.fail(CreateError::Malformed { step: "the owner form", detail: "no data form".into() });
        };
        match private_group_submission(form, self.name.as_deref()) {
            Ok(fields) => {
                self.configured = fields.clone();
                self.archiving = fields.iter().any(|(v, val)| is_archiving_field(v) && val == &["1"]);
                let mut x = String::new();
                for (var, values) in &fields {
                    let vals: String = values.iter().map(|v| format!("<value>{}</value>", esc(v))).collect();
                    x.push_str(&format!("<field var='{}'>{vals}</field>", esc(var)));
                }
                let query = format!("<query xmlns='{NS_MUC_OWNER}'><x xmlns='{NS_DATA}' type='submit'>{x}</x></query>");
                let (id, submit) = self.request("set", &query)?;
                self.state = State::AwaitSubmit { id };
                Ok(Step::Send(vec![submit]))
            }
            Err(e) => self.fail(e),
        }
    }

    fn on_disco(&mut self, iq: &Element) -> Result<Step, CreateError> {
        if iq.attr("type") != Some("result") {
            let condition = iq_error(iq);
            return self.fail(CreateError::Refused { step: "reading the room's features", condition });
        }
        let features: BTreeSet<&str> = iq
            .get_child("query", NS_DISCO_INFO)
            .map(|q| q.children().filter(|c| c.name() == "feature").filter_map(|c| c.attr("var")).collect())
            .unwrap_or_default();
        let missing: Vec<&str> =
            ["muc_membersonly", "muc_nonanonymous"].into_iter().filter(|f| !features.contains(f)).collect();
        if !missing.is_empty() {
            let e = CreateError::Unsafe {
                room: self.room.clone(),
                why: format!("disco#info lacks {}", missing.join(", ")),
            };
            return self.fail(e);
        }
        if features.contains("urn:xmpp:mam:2") {
            self.archiving = true;
        }
        if self.invitees.is_empty() {
            return self.request_members();
        }
        // One item per request.
        let mut out = Vec::new();
        let mut pending = Vec::new();
        for jid in self.invitees.clone() {
            let query =
                format!("<query xmlns='{NS_MUC_ADMIN}'><item affiliation='member' jid='{}'/></query>", esc(&jid));
            let (id, iq) = self.request("set", &query)?;
            out.push(iq);
            pending.push((id, jid));
        }
        self.state = State::Granting { pending };
        Ok(Step::Send(out))
    }

    fn on_members(&mut self, iq: &Element) -> Result<Step, CreateError> {
        if iq.attr("type") != Some("result") {
            let condition = iq_error(iq);
            return self.fail(CreateError::Refused { step: "reading the member list", condition });
        }
        let listed: BTreeSet<String> = iq
            .get_child("query", NS_MUC_ADMIN)
            .map(|q| {
                q.children()
                    .filter(|c| c.name() == "item" && c.attr("affiliation") == Some("member"))
                    .filter_map(|c| c.attr("jid"))
                    .map(bare)
                    .collect()
            })
            .unwrap_or_default();
        let missing: Vec<String> = self.invitees.iter().filter(|j| !listed.contains(*j)).cloned().collect();
        if !missing.is_empty() {
            return self.fail(CreateError::MembershipNotApplied(missing));
        }
        self.state = State::Done;
        Ok(Step::Done(CreatedGroup {
            room: self.room.clone(),
            configured: self.configured.clone(),
            members: self.invitees.clone(),
            archiving: self.archiving,
        }))
    }

    /// Where the creation is.
    pub fn state(&self) -> &'static str {
        self.state.name()
    }
}

fn is_archiving_field(var: &str) -> bool {
    matches!(var, "muc#roomconfig_enablearchiving" | "mam" | "muc#roomconfig_mam")
}

/// The fields to submit for a private group, from the fields the form offers: only offered fields,
/// each one that matters set explicitly. Fails if the form cannot make a private group.
pub fn private_group_submission(form: &Element, name: Option<&str>) -> Result<Vec<(String, Vec<String>)>, CreateError> {
    let offered: Vec<&Element> = form.children().filter(|c| c.name() == "field" && c.attr("var").is_some()).collect();
    let field = |var: &str| offered.iter().copied().find(|f| f.attr("var") == Some(var));
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut set = |var: &str, value: &str| out.push((var.to_owned(), vec![value.to_owned()]));
    if let Some(f) = field("FORM_TYPE") {
        let v = f.get_child("value", NS_DATA).map(|v| v.text()).unwrap_or_default();
        set("FORM_TYPE", &v);
    }
    if let (Some(name), Some(_)) = (name, field("muc#roomconfig_roomname")) {
        set("muc#roomconfig_roomname", name);
    }
    // Required for a private group.
    for var in ["muc#roomconfig_persistentroom", "muc#roomconfig_membersonly"] {
        if field(var).is_none() {
            return Err(CreateError::FormLacks(format!("no field {var}")));
        }
        set(var, "1");
    }
    match field("muc#roomconfig_whois") {
        Some(f) => {
            let options: Vec<String> = f
                .children()
                .filter(|o| o.name() == "option")
                .filter_map(|o| o.get_child("value", NS_DATA).map(|v| v.text()))
                .collect();
            if f.attr("type") == Some("list-single") && !options.is_empty() && !options.iter().any(|o| o == "anyone") {
                return Err(CreateError::FormLacks("muc#roomconfig_whois offers no 'anyone'".into()));
            }
            set("muc#roomconfig_whois", "anyone");
        }
        None => return Err(CreateError::FormLacks("no field muc#roomconfig_whois".into())),
    }
    // Set explicitly when offered: servers' defaults differ (ejabberd's rooms are public and moderated).
    for (var, value) in [
        ("muc#roomconfig_publicroom", "0"),
        ("public_list", "0"),
        ("muc#roomconfig_changesubject", "0"),
        ("muc#roomconfig_allowinvites", "0"),
        ("{http://prosody.im/protocol/muc}roomconfig_allowmemberinvites", "0"),
        ("muc#roomconfig_moderatedroom", "0"),
        ("muc#roomconfig_passwordprotectedroom", "0"),
        ("muc#roomconfig_enablearchiving", "1"),
        ("mam", "1"),
        ("muc#roomconfig_mam", "1"),
    ] {
        if field(var).is_some() {
            set(var, value);
        }
    }
    Ok(out)
}

/// The disco#info features of a room, as far as known, for the safety facts of an invitation.
pub fn room_safety(disco_info: &Element) -> (bool, bool) {
    let q = disco_info.get_child("query", NS_DISCO_INFO).unwrap_or(disco_info);
    let has = |f: &str| q.children().any(|c| c.name() == "feature" && c.attr("var") == Some(f));
    (has("muc_membersonly"), has("muc_nonanonymous"))
}
