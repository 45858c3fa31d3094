//! # participant-resolver
//!
//! Who is in a MUC room (XEP-0045), who gets OMEMO keys, and who sent a message. A sans-IO model: feed
//! it the room's stanzas (presences, IQ answers, messages from the room), send the requests it returns,
//! and ask it for [`Room::recipients`] and [`Room::attribute`].
//!
//! OMEMO is used only in rooms that are non-anonymous and (unless the [`Policy`] allows otherwise)
//! members-only; a room that degrades makes [`Room::recipients`] fail, never fall back to plaintext.
#![forbid(unsafe_code)]

mod attribution;
pub mod error;
pub mod fuzzing;
pub mod invitation;
pub mod policy;
pub mod private_group;
mod recipients;
pub mod room;
pub mod token;
pub mod xml;

pub use attribution::{Attribution, AttributionSource, Conflict, MessageIds};
pub use error::{InputError, ResolveError};
pub use policy::{Policy, RoomFeatures};
pub use recipients::{Exclusion, RecipientJids, Recipients};
pub use room::{Occupant, Presence, Request, RequestKind, Room, RoomEvent};
pub use xml::{Affiliation, Role};
