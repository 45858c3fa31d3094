//! Invitations into rooms: building XEP-0249 direct invitations, and reading received ones (direct or
//! mediated through the room, XEP-0045 §7.8.2) into an [`Invitation`] for the user to accept. Nothing
//! here joins anything.
//!
//! Who invited is a claim that has to be earned:
//! - a direct invitation is attributed to its sender only if the sender is a contact with a presence
//!   subscription (the caller passes its roster), or if it arrived OMEMO-encrypted from a trusted device
//!   (the caller says so after decrypting);
//! - a mediated invitation is relayed by the room, so the person it names is never taken as the
//!   inviter: it is attributed to the room.

use std::collections::BTreeMap;

use minidom::Element;

use crate::xml::{bare, resource, NS_MUC_USER};

/// `jabber:x:conference` (XEP-0249).
pub const NS_CONFERENCE: &str = "jabber:x:conference";

/// The longest `reason` kept, in characters.
pub const MAX_REASON_CHARS: usize = 300;

/// A direct invitation's content (XEP-0249).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectInvitation {
    /// The room's bare JID.
    pub room: String,
    /// Why (free text).
    pub reason: Option<String>,
    /// A room password (never set for our private groups).
    pub password: Option<String>,
    /// The invitation continues a 1:1 chat.
    pub continues: bool,
    /// The 1:1 chat's thread.
    pub thread: Option<String>,
}

use crate::xml::escape as esc;

impl DirectInvitation {
    /// The `<x xmlns='jabber:x:conference'/>` element.
    pub fn to_element(&self) -> Element {
        let mut attrs = format!(" jid='{}'", esc(&self.room));
        if let Some(r) = &self.reason {
            attrs.push_str(&format!(" reason='{}'", esc(r)));
        }
        if let Some(p) = &self.password {
            attrs.push_str(&format!(" password='{}'", esc(p)));
        }
        if self.continues {
            attrs.push_str(" continue='true'");
        }
        if let Some(t) = &self.thread {
            attrs.push_str(&format!(" thread='{}'", esc(t)));
        }
        let text = format!("<x xmlns='{NS_CONFERENCE}'{attrs}/>");
        // Built from escaped values only: it always parses.
        crate::xml::parse_text(&text).unwrap_or_else(|_| Element::bare("x", NS_CONFERENCE))
    }

    /// Reads an `<x xmlns='jabber:x:conference'/>` element.
    pub fn from_element(x: &Element) -> Option<Self> {
        if !x.is("x", NS_CONFERENCE) {
            return None;
        }
        let room = x.attr("jid").map(bare).filter(|j| j.contains('@'))?;
        Some(Self {
            room,
            reason: x.attr("reason").map(sanitize_reason),
            password: x.attr("password").map(str::to_owned),
            continues: matches!(x.attr("continue"), Some("true" | "1")),
            thread: x.attr("thread").map(|t| sanitize_reason(t).chars().take(256).collect()),
        })
    }
}

/// A reason as shown to the user: control characters (line breaks and tabs included) become spaces,
/// bidirectional overrides are removed, runs of spaces collapse, at most [`MAX_REASON_CHARS`] characters.
pub fn sanitize_reason(reason: &str) -> String {
    let bidi = |c: char| matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    let mut out = String::new();
    for c in reason.chars().filter(|c| !bidi(*c)).map(|c| if c.is_control() { ' ' } else { c }) {
        if c == ' ' && (out.is_empty() || out.ends_with(' ')) {
            continue;
        }
        out.push(c);
    }
    out.trim_end().chars().take(MAX_REASON_CHARS).collect()
}

/// Who the invitation may be attributed to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum InvitedBy {
    /// The sender, a contact with a presence subscription.
    Contact(String),
    /// The sender, proven by an OMEMO message from a trusted device of theirs.
    TrustedDevice(String),
    /// Relayed by the room: the room vouches for nothing about who asked it to.
    Room {
        /// The room.
        room: String,
        /// Whom the room names as the inviter (a claim, not an attribution).
        claimed: Option<String>,
    },
    /// A sender we cannot vouch for (no subscription, not encrypted from a trusted device).
    Unverified(String),
}

impl InvitedBy {
    /// How much the attribution is worth: higher is stronger.
    fn strength(&self) -> u8 {
        match self {
            InvitedBy::TrustedDevice(_) => 3,
            InvitedBy::Contact(_) => 2,
            InvitedBy::Unverified(_) => 1,
            InvitedBy::Room { .. } => 0,
        }
    }

    /// The attributed inviter, if any.
    pub fn inviter(&self) -> Option<&str> {
        match self {
            InvitedBy::Contact(j) | InvitedBy::TrustedDevice(j) => Some(j),
            _ => None,
        }
    }
}

/// An invitation for the user to accept or ignore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitation {
    /// The room's bare JID.
    pub room: String,
    /// Who invited, as far as it can be told.
    pub invited_by: InvitedBy,
    /// The reason, sanitized.
    pub reason: Option<String>,
    /// A password, if one came with it.
    pub password: Option<String>,
    /// It continues a 1:1 chat (and its thread).
    pub continues: Option<Option<String>>,
    /// Arrived OMEMO-encrypted.
    pub encrypted: bool,
    /// The room is members-only, as far as known (`None`: not known yet; fetch its disco#info).
    pub members_only: Option<bool>,
    /// The room is non-anonymous, as far as known.
    pub non_anonymous: Option<bool>,
}

/// What the caller knows when reading an invitation.
#[derive(Clone, Copy)]
pub struct InvitationContext<'a> {
    /// Is this bare JID a contact with a presence subscription (either direction that lets us see them)?
    pub subscribed: &'a dyn Fn(&str) -> bool,
    /// The stanza arrived OMEMO-encrypted from a trusted device of its sender (set after decrypting;
    /// `content` is then the decrypted content).
    pub encrypted_from_trusted: bool,
    /// The stanza arrived OMEMO-encrypted (trusted or not).
    pub encrypted: bool,
}

impl std::fmt::Debug for InvitationContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InvitationContext")
            .field("encrypted_from_trusted", &self.encrypted_from_trusted)
            .field("encrypted", &self.encrypted)
            .finish_non_exhaustive()
    }
}

/// Reads an invitation from a `<message>` (direct, or mediated by a room). For an encrypted direct
/// invitation pass the decrypted content element (`<x xmlns='jabber:x:conference'/>`) as `content`.
/// Returns `None` when the message carries no invitation.
pub fn read_invitation(
    message: &Element,
    content: Option<&Element>,
    ctx: &InvitationContext<'_>,
) -> Option<Invitation> {
    let from = message.attr("from").unwrap_or_default();
    // Mediated: from the room, <x muc#user><invite from=...>.
    if let Some(invite) = message.get_child("x", NS_MUC_USER).and_then(|x| x.get_child("invite", NS_MUC_USER)) {
        if resource(from).is_some() || !from.contains('@') {
            return None; // a room speaks from its bare JID
        }
        let x = message.get_child("x", NS_MUC_USER)?;
        let password = x.get_child("password", NS_MUC_USER).map(|p| p.text());
        let reason =
            invite.get_child("reason", NS_MUC_USER).map(|r| sanitize_reason(&r.text())).filter(|r| !r.is_empty());
        let continues = invite.get_child("continue", NS_MUC_USER).map(|c| c.attr("thread").map(str::to_owned));
        return Some(Invitation {
            room: bare(from),
            invited_by: InvitedBy::Room { room: bare(from), claimed: invite.attr("from").map(bare) },
            reason,
            password,
            continues,
            encrypted: false,
            members_only: None,
            non_anonymous: None,
        });
    }
    let x = match content {
        Some(c) => Some(c),
        None if ctx.encrypted => None,
        None => message.get_child("x", crate::invitation::NS_CONFERENCE),
    }?;
    let d = DirectInvitation::from_element(x)?;
    let sender = bare(from);
    let invited_by = if ctx.encrypted_from_trusted {
        InvitedBy::TrustedDevice(sender)
    } else if (ctx.subscribed)(&sender) {
        InvitedBy::Contact(sender)
    } else {
        InvitedBy::Unverified(sender)
    };
    Some(Invitation {
        room: d.room,
        invited_by,
        reason: d.reason.filter(|r| !r.is_empty()),
        password: d.password,
        continues: d.continues.then_some(d.thread),
        encrypted: ctx.encrypted,
        members_only: None,
        non_anonymous: None,
    })
}

/// Collects invitations for the user: one per room (a mediated and a direct invitation to the same room
/// collapse, keeping the stronger attribution), none for rooms we are in already.
#[derive(Debug, Clone, Default)]
pub struct Invitations {
    by_room: BTreeMap<String, Invitation>,
}

/// What [`Invitations::offer`] did with an invitation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offered {
    /// A new invitation for the user.
    New,
    /// Merged into an invitation to the same room (its attribution kept if stronger).
    Merged,
    /// Dropped: we are in that room already.
    AlreadyJoined,
}

impl Invitations {
    /// Offers an invitation; `joined` says whether we are in its room already.
    pub fn offer(&mut self, inv: Invitation, joined: bool) -> Offered {
        if joined {
            self.by_room.remove(&inv.room);
            return Offered::AlreadyJoined;
        }
        match self.by_room.get_mut(&inv.room) {
            Some(old) => {
                if inv.invited_by.strength() > old.invited_by.strength() {
                    old.invited_by = inv.invited_by;
                }
                old.reason = old.reason.take().or(inv.reason);
                old.password = old.password.take().or(inv.password);
                old.continues = old.continues.take().or(inv.continues);
                old.encrypted |= inv.encrypted;
                Offered::Merged
            }
            None => {
                self.by_room.insert(inv.room.clone(), inv);
                Offered::New
            }
        }
    }

    /// Records what the room's disco#info says about its safety.
    pub fn learn_safety(&mut self, room: &str, members_only: bool, non_anonymous: bool) {
        if let Some(i) = self.by_room.get_mut(room) {
            i.members_only = Some(members_only);
            i.non_anonymous = Some(non_anonymous);
        }
    }

    /// The pending invitations, by room.
    pub fn pending(&self) -> impl Iterator<Item = &Invitation> {
        self.by_room.values()
    }

    /// The user accepted or declined: the invitation is gone.
    pub fn take(&mut self, room: &str) -> Option<Invitation> {
        self.by_room.remove(room)
    }
}
