//! Stanza Content Encryption (XEP-0420) envelopes, as OMEMO 2 uses them (XEP-0384 §"SCE profile"):
//! `<rpad>` required, `<time>` optional, `<from>` recommended, `<to>` required in group chats.

use minidom::Element;
use xso::{AsXml, FromXml};

use crate::error::XmlError;

/// The namespace.
pub const NS: &str = "urn:xmpp:sce:1";

/// `<content>`: the elements that would have been in the stanza.
#[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
#[xml(namespace = NS, name = "content")]
pub struct Content {
    /// The payload elements (`<body>`, ...).
    #[xml(element(n = ..))]
    pub payloads: Vec<Element>,
}

/// `<rpad>`: random padding.
#[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
#[xml(namespace = NS, name = "rpad")]
pub struct Rpad {
    /// The padding text.
    #[xml(text)]
    pub pad: String,
}

/// `<time stamp>`.
#[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
#[xml(namespace = NS, name = "time")]
pub struct Time {
    /// XEP-0082 date-time.
    #[xml(attribute)]
    pub stamp: String,
}

/// `<to jid>`.
#[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
#[xml(namespace = NS, name = "to")]
pub struct To {
    /// The intended recipient (a bare JID, or the room).
    #[xml(attribute)]
    pub jid: String,
}

/// `<from jid>`.
#[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
#[xml(namespace = NS, name = "from")]
pub struct From {
    /// The sender's bare JID.
    #[xml(attribute)]
    pub jid: String,
}

/// `<envelope>`.
#[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
#[xml(namespace = NS, name = "envelope")]
pub struct Envelope {
    /// The content.
    #[xml(child)]
    pub content: Content,
    /// Padding.
    #[xml(child(default))]
    pub rpad: Option<Rpad>,
    /// Time.
    #[xml(child(default))]
    pub time: Option<Time>,
    /// Recipient.
    #[xml(child(default))]
    pub to: Option<To>,
    /// Sender.
    #[xml(child(default))]
    pub from: Option<From>,
}

/// Why an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AffixError {
    /// Not a well-formed envelope.
    #[error(transparent)]
    Xml(#[from] XmlError),
    /// `<from>` names someone other than the sender.
    #[error("SCE <from> is {claimed}, but the sender is {sender}")]
    ForgedFrom {
        /// What the envelope says.
        claimed: String,
        /// Who sent it.
        sender: String,
    },
    /// `<to>` names another recipient (e.g. a message for another room or a 1:1 message replayed).
    #[error("SCE <to> is {claimed}, expected {expected}")]
    WrongTo {
        /// What the envelope says.
        claimed: String,
        /// What we expected.
        expected: String,
    },
    /// A group message without `<to>`: it could be a private message replayed into the room.
    #[error("group message without SCE <to>")]
    MissingTo,
    /// No `<rpad>`.
    #[error("SCE envelope without <rpad>")]
    MissingRpad,
}

/// Builds an envelope around `content`: random padding of 1–200 characters, our bare JID, the intended
/// recipient and the time if given.
pub fn build(
    content: Vec<Element>,
    from: &str,
    to: Option<&str>,
    time: Option<&str>,
    rng: &mut impl rand_core::CryptoRngCore,
) -> Envelope {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let len = 1 + (rng.next_u32() % 200) as usize;
    let pad: String = (0..len).map(|_| ALPHABET[(rng.next_u32() % ALPHABET.len() as u32) as usize] as char).collect();
    Envelope {
        content: Content { payloads: content },
        rpad: Some(Rpad { pad }),
        time: time.map(|stamp| Time { stamp: stamp.to_owned() }),
        to: to.map(|jid| To { jid: jid.to_owned() }),
        from: Some(From { jid: from.to_owned() }),
    }
}

/// Parses decrypted bytes as an envelope and checks its affixes: `<from>` must be `sender` when present;
/// `<to>` must be `expected_to` when present, and is required when `group` is true.
pub fn open(bytes: &[u8], sender: &str, expected_to: &str, group: bool) -> Result<Envelope, AffixError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| XmlError::Invalid { element: "envelope", detail: "not UTF-8".into() })?;
    let elem = super::parse_element(text)?;
    let env = Envelope::try_from(elem).map_err(|e| XmlError::Invalid { element: "envelope", detail: e.to_string() })?;
    if env.rpad.is_none() {
        return Err(AffixError::MissingRpad);
    }
    if let Some(f) = &env.from {
        if f.jid != sender {
            return Err(AffixError::ForgedFrom { claimed: f.jid.clone(), sender: sender.to_owned() });
        }
    }
    match &env.to {
        Some(t) if t.jid != expected_to => {
            Err(AffixError::WrongTo { claimed: t.jid.clone(), expected: expected_to.to_owned() })
        }
        None if group => Err(AffixError::MissingTo),
        _ => Ok(env),
    }
}

impl Envelope {
    /// The text of the `<body xmlns='jabber:client'>` in the content, if any.
    pub fn body(&self) -> Option<String> {
        self.content.payloads.iter().find(|e| e.is("body", "jabber:client")).map(|e| e.text())
    }
}
