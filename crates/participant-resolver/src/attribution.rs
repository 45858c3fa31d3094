//! Who sent a groupchat message: `Room::attribute()`.

use std::collections::BTreeSet;

use minidom::Element;

use crate::{
    error::InputError,
    room::Room,
    xml::{self, bare, resource, NS_CLIENT, NS_FORWARD, NS_MAM},
};

/// What decided an attribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributionSource {
    /// The real JID in a MAM result from the room's own archive.
    MamRealJid,
    /// XEP-0421 occupant-id, mapped through presences.
    OccupantId,
    /// The nick and who held it.
    NickHistory,
    /// The OMEMO sender device id, found in exactly one member's device list.
    DeviceId,
}

impl AttributionSource {
    /// A short name for reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MamRealJid => "mam-real-jid",
            Self::OccupantId => "occupant-id",
            Self::NickHistory => "nick-history",
            Self::DeviceId => "device-id",
        }
    }
}

/// Two real JIDs behind one identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// Which identifier (`occupant-id` or `nick`).
    pub source: AttributionSource,
    /// The real JIDs it maps to.
    pub jids: Vec<String>,
}

/// The answer of [`Room::attribute`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribution {
    /// The sender's real bare JID, if decided.
    pub real_jid: Option<String>,
    /// What decided it.
    pub decided_by: Option<AttributionSource>,
    /// Conflicts met on the way (an identifier mapping to several people).
    pub conflicts: Vec<Conflict>,
    /// When not decided: the members who could have sent it (by device id).
    pub candidates: Vec<String>,
    /// The sender's nick.
    pub nick: Option<String>,
    /// Was it a MAM result from the room's own archive?
    pub from_archive: bool,
    /// The OMEMO sender device id, if the message is encrypted.
    pub sender_device: Option<u32>,
    /// The message's id, origin-id and stanza-id (the archive id for MAM results).
    pub ids: MessageIds,
}

/// The identifiers of a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageIds {
    /// `id` attribute.
    pub id: Option<String>,
    /// XEP-0359 origin-id.
    pub origin_id: Option<String>,
    /// XEP-0359 stanza-id by the room, or the MAM result id.
    pub stanza_id: Option<String>,
}

/// For a stanza that is a groupchat message or a MAM result wrapping one: the inner message, whether it
/// came from the room's own archive, and the archive id.
fn unwrap_mam<'a>(room: &str, stanza: &'a Element) -> Result<(&'a Element, bool, Option<String>), InputError> {
    let Some(result) = stanza.get_child("result", NS_MAM) else { return Ok((stanza, false, None)) };
    let inner = result
        .get_child("forwarded", NS_FORWARD)
        .and_then(|f| f.get_child("message", NS_CLIENT))
        .ok_or(InputError::Malformed("MAM result without a forwarded message"))?;
    // A room's archive answers from the room's bare JID; a result relayed from anywhere else is not the
    // room's word on real JIDs or stanza-ids, and is refused.
    let from = stanza.attr("from").unwrap_or_default();
    if bare(from) != room || resource(from).is_some() {
        return Err(InputError::NotFromArchive { from: from.to_owned(), room: room.to_owned() });
    }
    Ok((inner, true, result.attr("id").map(str::to_owned)))
}

impl Room {
    /// The identifiers of a (possibly MAM-wrapped) message.
    pub fn message_ids(&self, stanza: &Element) -> MessageIds {
        let (inner, _, archive_id) = unwrap_mam(&self.jid, stanza).unwrap_or((stanza, false, None));
        let stanza_id = archive_id.or_else(|| {
            inner
                .children()
                .find(|c| {
                    c.is("stanza-id", xml::NS_SID) && c.attr("by").map(bare).as_deref() == Some(self.jid.as_str())
                })
                .and_then(|c| c.attr("id"))
                .map(str::to_owned)
        });
        MessageIds {
            id: inner.attr("id").map(str::to_owned),
            origin_id: inner.get_child("origin-id", xml::NS_SID).and_then(|o| o.attr("id")).map(str::to_owned),
            stanza_id,
        }
    }

    /// Attributes a groupchat message (live, or a MAM result wrapping one) to a real JID, trying in order:
    /// the real JID of a MAM result from the room's own archive (never the `<x muc#user><item jid>` of a
    /// live message: anyone can put one there), the occupant-id, the nick (who holds it now, else who held
    /// it), and the OMEMO sender device among the members (`device_owners` gives the bare JIDs whose
    /// device lists contain an id).
    pub fn attribute(
        &self,
        stanza: &Element,
        device_owners: &dyn Fn(u32) -> Vec<String>,
    ) -> Result<Attribution, InputError> {
        let (message, from_archive, _) = unwrap_mam(&self.jid, stanza)?;
        let from = message.attr("from").ok_or(InputError::Malformed("message without from"))?;
        if bare(from) != self.jid {
            return Err(InputError::NotFromRoom(self.jid.clone()));
        }
        let nick = resource(from).map(str::to_owned);
        let mut answer = Attribution {
            real_jid: None,
            decided_by: None,
            conflicts: Vec::new(),
            candidates: Vec::new(),
            nick: nick.clone(),
            from_archive,
            sender_device: xml::omemo_sender_device(message),
            ids: self.message_ids(stanza),
        };
        let decide = |a: &mut Attribution, jid: String, by| {
            a.real_jid = Some(jid);
            a.decided_by = Some(by);
        };

        // 1. The room's archive says who it was.
        if from_archive {
            if let Some(jid) = xml::muc_user(message).and_then(|(_, items)| items.into_iter().find_map(|i| i.jid)) {
                decide(&mut answer, jid, AttributionSource::MamRealJid);
                return Ok(answer);
            }
        }
        // 2. occupant-id, through the presences that carried it.
        if let Some(oid) = xml::occupant_id(message) {
            if let Some(jids) = self.occupant_ids.get(&oid) {
                if jids.len() == 1 {
                    if let Some(jid) = jids.iter().next() {
                        decide(&mut answer, jid.clone(), AttributionSource::OccupantId);
                        return Ok(answer);
                    }
                } else {
                    answer
                        .conflicts
                        .push(Conflict { source: AttributionSource::OccupantId, jids: jids.iter().cloned().collect() });
                }
            }
        }
        // 3. The nick: who holds it now (a live message), else who held it.
        if let Some(nick) = &nick {
            let current = (!from_archive).then(|| self.occupants.get(nick).and_then(|o| o.real_jid.clone())).flatten();
            if let Some(jid) = current {
                decide(&mut answer, jid, AttributionSource::NickHistory);
                return Ok(answer);
            }
            let holders: BTreeSet<String> =
                self.nick_history.iter().filter(|s| &s.nick == nick).filter_map(|s| s.real_jid.clone()).collect();
            match holders.len() {
                0 => {}
                1 => {
                    if let Some(jid) = holders.into_iter().next() {
                        decide(&mut answer, jid, AttributionSource::NickHistory);
                        return Ok(answer);
                    }
                }
                _ => answer
                    .conflicts
                    .push(Conflict { source: AttributionSource::NickHistory, jids: holders.into_iter().collect() }),
            }
        }
        // 4. The sender device among the members.
        if let Some(sid) = answer.sender_device {
            let members = self.recipient_jids_unchecked().included;
            let mut owners: Vec<String> = device_owners(sid)
                .into_iter()
                .map(|j| bare(&j))
                .filter(|j| members.binary_search(&j.as_str()).is_ok())
                .collect();
            owners.sort();
            owners.dedup();
            if owners.len() == 1 {
                if let Some(jid) = owners.pop() {
                    decide(&mut answer, jid, AttributionSource::DeviceId);
                    return Ok(answer);
                }
            }
            answer.candidates = owners;
        }
        Ok(answer)
    }
}
