//! The `<message>` wrapper: id = origin-id (XEP-0359), EME (XEP-0380), `<store/>` hint (XEP-0334) and a
//! fallback body.

use minidom::Element;

use super::attr_name;

/// The body shown by clients that cannot decrypt.
pub const FALLBACK_BODY: &str = "This message is OMEMO encrypted.";

const NS_CLIENT: &str = "jabber:client";

/// What goes around the `<encrypted>` elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageHeaders {
    /// `to` (a bare JID, or the room).
    pub to: Option<String>,
    /// `groupchat` when true, else `chat`.
    pub groupchat: bool,
    /// The stanza id, also used as origin-id.
    pub id: String,
    /// The namespace the EME element names.
    pub eme_namespace: &'static str,
    /// Add the fallback body (not for key-transport messages).
    pub fallback_body: bool,
}

/// Builds the `<message>` stanza.
pub fn build_message(headers: &MessageHeaders, encrypted: Vec<Element>) -> Element {
    let mut b = Element::builder("message", NS_CLIENT)
        .attr(attr_name("type"), if headers.groupchat { "groupchat" } else { "chat" })
        .attr(attr_name("id"), headers.id.as_str());
    if let Some(to) = &headers.to {
        b = b.attr(attr_name("to"), to.as_str());
    }
    let mut msg = b.build();
    if headers.fallback_body {
        msg.append_child(Element::builder("body", NS_CLIENT).append(FALLBACK_BODY).build());
    }
    for e in encrypted {
        msg.append_child(e);
    }
    msg.append_child(Element::builder("store", "urn:xmpp:hints").build());
    msg.append_child(
        Element::builder("encryption", "urn:xmpp:eme:0")
            .attr(attr_name("namespace"), headers.eme_namespace)
            .attr(attr_name("name"), "OMEMO")
            .build(),
    );
    msg.append_child(
        Element::builder("origin-id", "urn:xmpp:sid:0").attr(attr_name("id"), headers.id.as_str()).build(),
    );
    msg
}

/// Writes, as text, the `<message>` stanza [`build_message`] builds; `encrypted` appends its
/// `<encrypted>` elements (each declaring its namespace), about `len_hint` bytes.
pub(crate) fn write_message(
    headers: &MessageHeaders,
    len_hint: usize,
    encrypted: impl FnOnce(&mut String),
) -> StanzaText {
    use super::text::{end, start, text};
    let mut out = String::with_capacity(len_hint + 512);
    let kind = if headers.groupchat { "groupchat" } else { "chat" };
    match &headers.to {
        Some(to) => start(&mut out, "message", Some(NS_CLIENT), &[("type", kind), ("id", &headers.id), ("to", to)]),
        None => start(&mut out, "message", Some(NS_CLIENT), &[("type", kind), ("id", &headers.id)]),
    }
    out.push('>');
    if headers.fallback_body {
        out.push_str("<body>");
        text(&mut out, FALLBACK_BODY);
        end(&mut out, "body");
    }
    encrypted(&mut out);
    start(&mut out, "store", Some("urn:xmpp:hints"), &[]);
    out.push_str("/>");
    start(&mut out, "encryption", Some("urn:xmpp:eme:0"), &[("namespace", headers.eme_namespace), ("name", "OMEMO")]);
    out.push_str("/>");
    start(&mut out, "origin-id", Some("urn:xmpp:sid:0"), &[("id", &headers.id)]);
    out.push_str("/>");
    end(&mut out, "message");
    StanzaText(out)
}

/// A stanza as XML text, ready to be written to the stream. A group message is written as text
/// directly (its thousands of `<key>` elements in the parallel per-device step); [`StanzaText::to_element`]
/// reads it into an element for a library that sends elements.
#[derive(Clone, PartialEq, Eq)]
pub struct StanzaText(String);

impl StanzaText {
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its length in bytes (what the stanza-size budget counts).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never empty: a stanza has at least its root element.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The text, owned.
    pub fn into_string(self) -> String {
        self.0
    }

    /// The stanza as an element (parsed from the text).
    pub fn to_element(&self) -> Result<Element, crate::error::XmlError> {
        super::parse_element(&self.0)
    }
}

impl std::fmt::Debug for StanzaText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Thousands of keys: the length, and the start (the stanza's own attributes).
        let head: String = self.0.chars().take(160).collect();
        f.debug_struct("StanzaText").field("bytes", &self.0.len()).field("head", &head).finish()
    }
}

impl std::fmt::Display for StanzaText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A new random stanza id (also the origin-id): 128 bits, in hex.
pub fn new_message_id(rng: &mut impl rand_core::CryptoRngCore) -> String {
    let mut b = [0u8; 16];
    rng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The origin-id of a stanza (XEP-0359), if any.
pub fn origin_id(msg: &Element) -> Option<&str> {
    msg.get_child("origin-id", "urn:xmpp:sid:0").and_then(|e| e.attr("id"))
}

/// The bare part of a JID (everything before the first `/`).
pub fn bare(jid: &str) -> &str {
    jid.split('/').next().unwrap_or(jid)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn written_message_equals_the_built_one() {
        let encrypted = Element::builder("encrypted", "urn:xmpp:omemo:2")
            .append(Element::builder("header", "urn:xmpp:omemo:2").attr(attr_name("sid"), "5").build())
            .build();
        for (to, groupchat, fallback_body) in
            [(Some("o'brien&co@muc.example.org"), true, true), (None, false, false), (Some("a@b"), false, true)]
        {
            let headers = MessageHeaders {
                to: to.map(str::to_owned),
                groupchat,
                id: "id<1>\"".into(),
                eme_namespace: "urn:xmpp:omemo:2",
                fallback_body,
            };
            let written = write_message(&headers, 0, |out| out.push_str(&String::from(&encrypted)));
            let built = build_message(&headers, vec![encrypted.clone()]);
            assert_eq!(written.to_element().unwrap(), built, "{written}");
            assert!(format!("{written:?}").contains(&format!("bytes: {}", written.len())));
        }
    }
}
