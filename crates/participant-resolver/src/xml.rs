//! Reading the MUC parts of stanzas (XEP-0045 `muc#user`, `muc#admin`, XEP-0421 occupant-id, XEP-0313
//! results) leniently: real servers put bare JIDs where `xmpp-parsers`' `MucUser` expects full ones
//! (Prosody in MAM results and affiliation lists), which would make its strict parse refuse real stanzas.

use minidom::Element;

/// `http://jabber.org/protocol/muc#user`.
pub const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
/// `http://jabber.org/protocol/muc#admin`.
pub const NS_MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
/// `http://jabber.org/protocol/muc`.
pub const NS_MUC: &str = "http://jabber.org/protocol/muc";
/// `http://jabber.org/protocol/disco#info`.
pub const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
/// XEP-0421.
pub const NS_OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";
/// XEP-0313.
pub const NS_MAM: &str = "urn:xmpp:mam:2";
/// XEP-0297.
pub const NS_FORWARD: &str = "urn:xmpp:forward:0";
/// XEP-0359.
pub const NS_SID: &str = "urn:xmpp:sid:0";
/// The client namespace.
pub const NS_CLIENT: &str = "jabber:client";
/// XEP-0199 ping.
pub const NS_PING: &str = "urn:xmpp:ping";

/// The deepest element nesting [`parse_text`] accepts. Stanzas nest about ten levels deep (a MAM result
/// around a message around an OMEMO header); the XML parser recurses, so unbounded depth from the
/// network would exhaust the stack.
pub const MAX_XML_DEPTH: usize = 128;

/// The deepest element nesting in `text`, counting only until it passes `limit` (then `limit + 1`).
/// For well-formed XML it is exact; for anything else it is an estimate, and the parser refuses the
/// text anyway. Comments, CDATA sections, processing instructions and quoted attribute values are
/// skipped.
pub fn nesting_depth(text: &str, limit: usize) -> usize {
    let b = text.as_bytes();
    let (mut i, mut depth, mut deepest) = (0usize, 0usize, 0usize);
    let skip_to = |from: usize, end: &[u8]| -> usize {
        b[from..].windows(end.len()).position(|w| w == end).map_or(b.len(), |p| from + p + end.len())
    };
    while i < b.len() {
        if b[i] != b'<' {
            i += 1;
            continue;
        }
        let rest = &b[i + 1..];
        if rest.starts_with(b"!--") {
            i = skip_to(i + 4, b"-->");
        } else if rest.starts_with(b"![CDATA[") {
            i = skip_to(i + 9, b"]]>");
        } else if rest.starts_with(b"?") || rest.starts_with(b"!") {
            i = skip_to(i + 2, b">");
        } else if rest.starts_with(b"/") {
            depth = depth.saturating_sub(1);
            i = skip_to(i + 2, b">");
        } else {
            // A start tag: find its end outside quoted attribute values.
            let mut j = i + 1;
            let mut quote = None;
            while j < b.len() {
                match (quote, b[j]) {
                    (None, q @ (b'\'' | b'"')) => quote = Some(q),
                    (Some(q), c) if c == q => quote = None,
                    (None, b'>') => break,
                    _ => {}
                }
                j += 1;
            }
            if j >= b.len() || b[j - 1] != b'/' {
                depth += 1;
                deepest = deepest.max(depth);
                if deepest > limit {
                    return limit + 1;
                }
            }
            i = j + 1;
        }
    }
    deepest
}

/// XEP-0203 delayed delivery.
pub const NS_DELAY: &str = "urn:xmpp:delay";

/// Seconds since the Unix epoch of an XEP-0082 DateTime (`2026-11-22T08:15:00Z`, with optional
/// fractional seconds and a `Z` or `±hh:mm` offset); `None` if it is not one.
pub fn parse_timestamp(s: &str) -> Option<u64> {
    let b = s.trim().as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = b.get(r)?;
        t.iter().all(u8::is_ascii_digit).then(|| t.iter().fold(0i64, |a, d| a * 10 + i64::from(d - b'0')))
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d, h, mi, sec) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
    }
    let offset = match b.get(i)? {
        b'Z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let o = num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60;
            if *sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    // Days from the civil date (proleptic Gregorian), after Howard Hinnant's algorithm.
    let (y, m) = if mo <= 2 { (y - 1, mo + 9) } else { (y, mo - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + mi * 60 + sec - offset).ok()
}

/// Formats seconds since the epoch as an XEP-0082 DateTime in UTC.
pub fn format_timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// Escapes text for an XML attribute value or a text node.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// Parses XML text into an element after checking its nesting depth against [`MAX_XML_DEPTH`].
pub fn parse_text(text: &str) -> Result<Element, String> {
    let depth = nesting_depth(text, MAX_XML_DEPTH);
    if depth > MAX_XML_DEPTH {
        return Err(format!("elements nested deeper than {MAX_XML_DEPTH} levels"));
    }
    text.trim().parse::<Element>().map_err(|e| e.to_string())
}

/// A room affiliation (XEP-0045 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Affiliation {
    /// Owner.
    Owner,
    /// Admin.
    Admin,
    /// Member.
    Member,
    /// No affiliation.
    None,
    /// Banned.
    Outcast,
}

impl Affiliation {
    /// Parses the attribute value.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "owner" => Self::Owner,
            "admin" => Self::Admin,
            "member" => Self::Member,
            "none" => Self::None,
            "outcast" => Self::Outcast,
            _ => return None,
        })
    }

    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Admin => "admin",
            Self::Member => "member",
            Self::None => "none",
            Self::Outcast => "outcast",
        }
    }

    /// Owner, admin or member: someone OMEMO messages are encrypted to.
    pub fn is_member(self) -> bool {
        matches!(self, Self::Owner | Self::Admin | Self::Member)
    }
}

/// A room role (XEP-0045 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Moderator.
    Moderator,
    /// Participant.
    Participant,
    /// Visitor.
    Visitor,
    /// Not in the room.
    None,
}

impl Role {
    /// Parses the attribute value.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "moderator" => Self::Moderator,
            "participant" => Self::Participant,
            "visitor" => Self::Visitor,
            "none" => Self::None,
            _ => return None,
        })
    }

    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Moderator => "moderator",
            Self::Participant => "participant",
            Self::Visitor => "visitor",
            Self::None => "none",
        }
    }
}

/// An `<item>` of `muc#user` or `muc#admin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MucItem {
    /// The affiliation, if given.
    pub affiliation: Option<Affiliation>,
    /// The role, if given.
    pub role: Option<Role>,
    /// The real JID made bare (servers send full or bare JIDs).
    pub jid: Option<String>,
    /// The nick (in a 303 presence: the new nick).
    pub nick: Option<String>,
}

/// The bare part of a JID: everything before the first `/`, lower-cased in its node and domain parts
/// (JID comparison is case-insensitive there).
pub fn bare(jid: &str) -> String {
    jid.split('/').next().unwrap_or(jid).to_lowercase()
}

/// The resource of a JID (the nick of an occupant JID), if any.
pub fn resource(jid: &str) -> Option<&str> {
    jid.split_once('/').map(|(_, r)| r)
}

/// Reads one `<item>`.
pub fn item(e: &Element) -> MucItem {
    MucItem {
        affiliation: e.attr("affiliation").and_then(Affiliation::parse),
        role: e.attr("role").and_then(Role::parse),
        jid: e.attr("jid").map(bare).filter(|j| !j.is_empty()),
        nick: e.attr("nick").map(str::to_owned),
    }
}

/// The `<x xmlns='muc#user'>` of a stanza: its status codes and items.
pub fn muc_user(stanza: &Element) -> Option<(Vec<u16>, Vec<MucItem>)> {
    let x = stanza.get_child("x", NS_MUC_USER)?;
    let codes = x
        .children()
        .filter(|c| c.name() == "status")
        .filter_map(|c| c.attr("code").and_then(|v| v.parse().ok()))
        .collect();
    let items = x.children().filter(|c| c.name() == "item").map(item).collect();
    Some((codes, items))
}

/// The XEP-0421 occupant-id of a stanza.
pub fn occupant_id(stanza: &Element) -> Option<String> {
    stanza.get_child("occupant-id", NS_OCCUPANT_ID).and_then(|o| o.attr("id")).map(str::to_owned)
}

/// The OMEMO sender device id (`<encrypted><header sid>`) of a message, in either namespace.
pub fn omemo_sender_device(message: &Element) -> Option<u32> {
    message
        .children()
        .filter(|c| {
            c.name() == "encrypted" && (c.ns() == "urn:xmpp:omemo:2" || c.ns() == "eu.siacs.conversations.axolotl")
        })
        .find_map(|e| {
            e.children().find(|h| h.name() == "header").and_then(|h| h.attr("sid")).and_then(|s| s.parse().ok())
        })
}

/// An attribute name from a literal of this crate.
#[allow(clippy::expect_used)] // only called with fixed literals, every one exercised by the tests
pub(crate) fn name(s: &'static str) -> minidom::rxml::NcName {
    minidom::rxml::NcName::try_from(s).expect("literal attribute names are valid")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_timestamp("2026-11-22T08:15:00Z"), Some(1_795_335_300));
        assert_eq!(parse_timestamp("2026-11-22T08:15:00.123456Z"), Some(1_795_335_300));
        assert_eq!(parse_timestamp("2026-11-22T09:15:00+01:00"), Some(1_795_335_300));
        assert_eq!(parse_timestamp("2000-02-29T12:00:00Z"), Some(951_825_600));
        for bad in [
            "",
            "2026-11-22",
            "2026-13-01T00:00:00Z",
            "2026-11-22T08:15:00",
            "2026-11-22T08:15:00Zx",
            "1969-12-31T23:59:59Z",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
        for t in [0, 951_825_600, 1_795_335_300, 4_102_444_800] {
            assert_eq!(parse_timestamp(&format_timestamp(t)), Some(t));
        }
    }
}
