//! Which rooms OMEMO may be used in.

/// The room policy. The default refuses rooms that are not members-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Policy {
    /// Allow rooms that are not members-only (XEP-0384 only says SHOULD be members-only). Off by default:
    /// in an open room anyone can join and then receives keys. Non-anonymous stays mandatory, since
    /// without real JIDs there is nobody to encrypt to.
    pub allow_open_rooms: bool,
}

/// The room features that matter, from disco#info and status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoomFeatures {
    /// `muc_nonanonymous`: every occupant sees real JIDs.
    pub nonanonymous: bool,
    /// `muc_membersonly`.
    pub membersonly: bool,
    /// XEP-0421 occupant-ids are added by the room.
    pub occupant_id: bool,
    /// The room has an archive (XEP-0313).
    pub mam: bool,
}
