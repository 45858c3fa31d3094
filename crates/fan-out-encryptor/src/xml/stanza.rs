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
