//! Entry point for the fuzz target `muc_presence_and_mam` (and the stable corpus replay test).

use crate::{policy::Policy, room::Room};

/// Arbitrary text as a stream of stanzas for a room: every stanza is applied (errors are fine, panics
/// are not), every message attributed, and the answers keep their invariants.
pub fn room_input(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(root) = crate::xml::parse_text(&format!("<s xmlns='jabber:client'>{text}</s>")) else { return };
    let mut room = Room::new("room@muc.example.org", "me@example.org", Policy::default());
    for stanza in root.children() {
        let _ = room.apply_captured(stanza);
        let _ = room.handle_iq(stanza);
        if stanza.name() == "message" {
            let _ = room.attribute(stanza, &|_| vec!["someone@example.org".to_owned()]);
        }
        let r = room.recipients_unchecked();
        assert!(r.included.contains("me@example.org"));
        assert!(r.excluded.iter().all(|(who, _)| !r.included.contains(who)));
    }
}
