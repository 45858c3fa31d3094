//! Errors.

/// Why OMEMO messages may not be sent into a room now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// We do not know the room's configuration yet (no disco#info answer).
    #[error("room configuration unknown: waiting for its disco#info")]
    ConfigurationUnknown,
    /// The room's configuration changed (status 104) and has not been re-checked yet.
    #[error("room configuration changed: waiting for its new disco#info")]
    ConfigurationChanged,
    /// Real JIDs are hidden from us: OMEMO needs them to encrypt to members.
    #[error("room is not non-anonymous: real JIDs are hidden, OMEMO cannot be used")]
    Anonymous,
    /// Anyone may join: messages would reach people who are not members.
    #[error("room is not members-only: OMEMO is refused by the policy")]
    NotMembersOnly,
    /// We are not in the room (not joined yet, left, kicked, banned, or the room shut down).
    #[error("not in the room: {0}")]
    NotJoined(&'static str),
}

/// An input that the room model cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// The stanza is not from this room.
    #[error("stanza is not from room {0}")]
    NotFromRoom(String),
    /// A MAM result that does not come from the room's archive (the room's bare JID): whoever relays
    /// it, it is not the room's word on who sent what.
    #[error("MAM result from {from}, not from the archive of room {room}")]
    NotFromArchive {
        /// Who sent the result.
        from: String,
        /// The room.
        room: String,
    },
    /// An IQ answer to no request of ours.
    #[error("IQ {0} answers no request of this room")]
    UnknownRequest(String),
    /// The stanza lacks what this input needs.
    #[error("malformed {0}")]
    Malformed(&'static str),
}
