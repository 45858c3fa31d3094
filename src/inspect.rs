//! `omemo-muc inspect-room`: replays a captured stream of stanzas into the room model and reports what
//! it knows: eligibility, recipients, exclusions, occupants, and the attribution of one message.

use minidom::Element;
use participant_resolver::{Policy, Room};
use serde_json::{json, Value};

use crate::cli::CliError;

/// Parses concatenated XML elements (as captured from a stream). XML comments and declarations are
/// dropped: XMPP streams carry none, but captures often do.
pub fn parse_stream(text: &str) -> Result<Vec<Element>, CliError> {
    let mut clean = text.to_owned();
    for (open, close) in [("<!--", "-->"), ("<?", "?>")] {
        while let Some(start) = clean.find(open) {
            let end = clean[start..].find(close).map(|e| start + e + close.len()).unwrap_or(clean.len());
            clean.replace_range(start..end, "");
        }
    }
    let wrapped = format!("<stream xmlns='jabber:client'>{clean}</stream>");
    let root: Element = participant_resolver::xml::parse_text(&wrapped)
        .map_err(|e| CliError::usage(format!("the input is not a sequence of XML stanzas: {e}")))?;
    Ok(root.children().cloned().collect())
}

/// Replays `stanzas` and builds the report. `sender_of` names a message (id, origin-id, stanza-id or
/// MAM result id) to attribute, as of the moment it arrived.
pub fn inspect(room_jid: &str, own_jid: &str, policy: Policy, stanzas: &[Element], sender_of: Option<&str>) -> Value {
    let mut room = Room::new(room_jid, own_jid, policy);
    let mut ignored = Vec::new();
    let mut attribution = None;
    for (i, stanza) in stanzas.iter().enumerate() {
        if let Err(e) = room.apply_captured(stanza) {
            ignored.push(json!({"index": i, "reason": e.to_string()}));
        }
        if let (Some(wanted), None, "message") = (sender_of, &attribution, stanza.name()) {
            let ids = room.message_ids(stanza);
            if [&ids.id, &ids.origin_id, &ids.stanza_id].iter().any(|v| v.as_deref() == Some(wanted)) {
                attribution = Some(match room.attribute(stanza, &|_| Vec::new()) {
                    Ok(a) => json!({
                        "real_jid": a.real_jid,
                        "decided_by": a.decided_by.map(|s| s.as_str()),
                        "nick": a.nick,
                        "from_archive": a.from_archive,
                        "sender_device_id": a.sender_device,
                        "conflicts": a.conflicts.iter().map(|c| json!({"source": c.source.as_str(), "jids": c.jids})).collect::<Vec<_>>(),
                        "candidates": a.candidates,
                        "id": a.ids.id, "origin_id": a.ids.origin_id, "stanza_id": a.ids.stanza_id,
                    }),
                    Err(e) => json!({"error": e.to_string()}),
                });
            }
        }
    }
    let eligible = room.eligibility();
    let recipients = room.recipients_unchecked();
    let mut out = json!({
        "room": room.jid(),
        "own_jid": room.own_jid(),
        "eligible": eligible.is_ok(),
        "why_not": eligible.err().map(|e| e.to_string()),
        "features": room.features().map(|f| json!({
            "nonanonymous": f.nonanonymous, "membersonly": f.membersonly, "occupant_id": f.occupant_id, "mam": f.mam,
        })),
        "lists": room.list_states().iter().map(|(a, s)| (a.as_str().to_owned(), json!(format!("{s:?}")))).collect::<serde_json::Map<_, _>>(),
        "recipients": recipients.included,
        "excluded": recipients.excluded.iter().map(|(who, why)| json!({"who": who, "reason": why.as_str()})).collect::<Vec<_>>(),
        "occupants": room.occupants().map(|o| json!({
            "nick": o.nick, "real_jid": o.real_jid, "affiliation": o.affiliation.as_str(), "role": o.role.as_str(),
            "occupant_id": o.occupant_id,
        })).collect::<Vec<_>>(),
        "stanzas": stanzas.len(),
        "ignored": ignored,
    });
    if let Some(wanted) = sender_of {
        out["attribution"] =
            attribution.unwrap_or_else(|| json!({"error": format!("no message {wanted} in the input")}));
    }
    out
}
