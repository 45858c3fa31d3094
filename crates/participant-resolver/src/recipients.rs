//! Who gets keys: `Room::recipients()`.

use std::collections::BTreeSet;

use crate::{
    error::ResolveError,
    room::{Presence, Room},
    xml::Affiliation,
};

/// Why someone known to the room gets no key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Exclusion {
    /// Banned.
    Outcast,
    /// Was owner, admin or member, is not any more.
    NoLongerMember,
    /// Never a member (present in a room the policy allows to be open counts as a member there).
    NotAMember,
    /// Present, but the room shows no real JID for this nick.
    NoRealJid,
}

impl Exclusion {
    /// A short name for reports.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Outcast => "outcast",
            Self::NoLongerMember => "no longer a member",
            Self::NotAMember => "not a member",
            Self::NoRealJid => "no real JID known",
        }
    }
}

/// The answer of [`Room::recipients`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recipients {
    /// The bare JIDs to encrypt to (always including our own, for our other devices), sorted.
    pub included: BTreeSet<String>,
    /// Everyone known to the room who is left out, with the reason: a bare JID, or `room/nick` for an
    /// occupant without a known real JID. Sorted.
    pub excluded: Vec<(String, Exclusion)>,
}

/// [`Recipients`] with the included JIDs borrowed from the room (see [`Room::recipient_jids`]): a send to
/// thousands of members then copies none of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecipientJids<'a> {
    /// The bare JIDs to encrypt to (always including our own, for our other devices), sorted, each once.
    pub included: Vec<&'a str>,
    /// As [`Recipients::excluded`].
    pub excluded: Vec<(String, Exclusion)>,
}

impl From<RecipientJids<'_>> for Recipients {
    fn from(r: RecipientJids<'_>) -> Self {
        Self { included: r.included.into_iter().map(str::to_owned).collect(), excluded: r.excluded }
    }
}

impl Room {
    /// Can OMEMO messages be sent into the room now? Non-anonymous is required; members-only unless the
    /// policy allows open rooms; a configuration change (104) must have been re-read; we must be in it.
    pub fn eligibility(&self) -> Result<(), ResolveError> {
        match &self.presence {
            Presence::NotJoined => return Err(ResolveError::NotJoined("no self-presence yet")),
            Presence::Left(reason) => return Err(ResolveError::NotJoined(reason)),
            Presence::Joined => {}
        }
        if self.config_changed {
            return Err(ResolveError::ConfigurationChanged);
        }
        let features = self.features.ok_or(ResolveError::ConfigurationUnknown)?;
        if !features.nonanonymous {
            return Err(ResolveError::Anonymous);
        }
        if !features.membersonly && !self.policy.allow_open_rooms {
            return Err(ResolveError::NotMembersOnly);
        }
        Ok(())
    }

    /// The bare JIDs a message must be encrypted to, and everyone left out with the reason. Owners,
    /// admins and members are included whether present or not; `none` and `outcast` are excluded
    /// whichever source said so last. In an open room that the policy allows, present occupants with a
    /// real JID are included too. Fails when the room is not eligible (see [`Room::eligibility`]).
    pub fn recipients(&self) -> Result<Recipients, ResolveError> {
        Ok(self.recipient_jids()?.into())
    }

    /// [`Room::recipients`] without the eligibility check (for reports about rooms that are not).
    pub fn recipients_unchecked(&self) -> Recipients {
        self.recipient_jids_unchecked().into()
    }

    /// [`Room::recipients`], the included JIDs borrowed from the room.
    pub fn recipient_jids(&self) -> Result<RecipientJids<'_>, ResolveError> {
        self.eligibility()?;
        Ok(self.recipient_jids_unchecked())
    }

    /// [`Room::recipient_jids`] without the eligibility check.
    pub fn recipient_jids_unchecked(&self) -> RecipientJids<'_> {
        let open = self.policy.allow_open_rooms && !self.features.is_some_and(|f| f.membersonly);
        // Only an open room counts presence as membership.
        let present: BTreeSet<&str> = if open {
            self.occupants.values().filter_map(|o| o.real_jid.as_deref()).collect()
        } else {
            BTreeSet::new()
        };
        let mut out = RecipientJids::default();
        // The affiliations come sorted and without repeats: our own JID is skipped here and put in its
        // place below (no sort of thousands of JIDs that are already in order).
        let mut included: Vec<&str> = Vec::with_capacity(self.affiliations.len() + 1);
        for (jid, fact) in &self.affiliations {
            if *jid == self.own_jid {
                continue;
            }
            match fact.affiliation {
                a if a.is_member() => included.push(jid),
                Affiliation::Outcast => out.excluded.push((jid.clone(), Exclusion::Outcast)),
                _ if open && present.contains(jid.as_str()) => included.push(jid),
                _ if fact.was_member => out.excluded.push((jid.clone(), Exclusion::NoLongerMember)),
                _ => out.excluded.push((jid.clone(), Exclusion::NotAMember)),
            }
        }
        if let Err(at) = included.binary_search(&self.own_jid.as_str()) {
            included.insert(at, self.own_jid.as_str());
        }
        out.included = included;
        for o in self.occupants.values().filter(|o| o.real_jid.is_none()) {
            out.excluded.push((format!("{}/{}", self.jid, o.nick), Exclusion::NoRealJid));
        }
        out.excluded.sort();
        out
    }
}
