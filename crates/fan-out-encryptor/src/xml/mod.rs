//! OMEMO XML: device lists, bundles and `<encrypted>` elements, and the `<message>` around them.

pub mod pep;
pub mod sce;
pub mod stanza;
pub mod v0_3;
pub mod v2;

use minidom::Element;

use crate::error::XmlError;

/// An attribute name from a literal of this crate.
#[allow(clippy::expect_used)] // only called with fixed literals, every one exercised by the tests
pub(crate) fn attr_name(s: &'static str) -> minidom::rxml::NcName {
    minidom::rxml::NcName::try_from(s).expect("literal attribute names are valid")
}

/// Parses XML text into an element. Malformed input, and nesting deeper than
/// [`participant_resolver::xml::MAX_XML_DEPTH`], is an error value, never a panic.
pub fn parse_element(text: &str) -> Result<Element, XmlError> {
    participant_resolver::xml::parse_text(text).map_err(XmlError::Syntax)
}

/// Finds the first element named `name` in namespace `ns` at or below `root` (depth-first), the way the
/// oracle looks for an item's payload inside a PEP file or a wrapping `<item>`.
pub fn find_descendant<'a>(root: &'a Element, name: &str, ns: &str) -> Option<&'a Element> {
    if root.is(name, ns) {
        return Some(root);
    }
    // Iterative, so that deep nesting cannot exhaust the stack.
    let mut stack: Vec<&Element> = root.children().collect();
    stack.reverse();
    while let Some(e) = stack.pop() {
        if e.is(name, ns) {
            return Some(e);
        }
        let before = stack.len();
        stack.extend(e.children());
        stack[before..].reverse();
    }
    None
}

/// The most `<key>` elements one `<encrypted>` element may carry (rooms of 10,000 devices need 10,000).
pub const MAX_KEYS_PER_MESSAGE: usize = 65_536;

/// The largest key element accepted, in bytes of key material: a key exchange is about 200 bytes.
pub const MAX_KEY_ELEMENT_BYTES: usize = 1024;

/// Checks an `<encrypted>` element's header against [`MAX_KEYS_PER_MESSAGE`] and
/// [`MAX_KEY_ELEMENT_BYTES`] before anything is decoded.
pub(crate) fn check_header_limits(encrypted: &Element) -> Result<(), XmlError> {
    let Some(header) = encrypted.children().find(|c| c.name() == "header") else { return Ok(()) };
    let max_base64 = MAX_KEY_ELEMENT_BYTES.div_ceil(3) * 4;
    let mut n = 0usize;
    let keys = header.children().flat_map(|c| {
        let nested = if c.name() == "keys" { Some(c.children().filter(|k| k.name() == "key")) } else { None };
        std::iter::once(c).filter(|c| c.name() == "key").chain(nested.into_iter().flatten())
    });
    for k in keys {
        n += 1;
        let len: usize = k.texts().map(|t| t.bytes().filter(|b| !b.is_ascii_whitespace()).count()).sum();
        if len > max_base64 {
            return Err(XmlError::Invalid {
                element: "key",
                detail: format!("{len} characters of base64; at most {MAX_KEY_ELEMENT_BYTES} bytes of key material"),
            });
        }
    }
    if n > MAX_KEYS_PER_MESSAGE {
        return Err(XmlError::Invalid {
            element: "header",
            detail: format!("{n} keys; at most {MAX_KEYS_PER_MESSAGE}"),
        });
    }
    Ok(())
}

/// The valid device ids (1..2^31-1) of a published list, deduplicated, in order.
pub(crate) fn valid_device_ids(ids: impl IntoIterator<Item = u32>) -> Vec<session_store::DeviceId> {
    let mut out: Vec<session_store::DeviceId> = Vec::new();
    for id in ids {
        if session_store::keys::valid_device_id(id) && !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

/// Removes whitespace from every text node below `elem`. OMEMO elements carry only base64 text, which
/// some clients wrap over several lines. Iterative, so that deep nesting cannot exhaust the stack.
pub(crate) fn strip_base64_whitespace(elem: &mut Element) {
    let mut stack = vec![elem];
    while let Some(e) = stack.pop() {
        for t in e.texts_mut() {
            if t.bytes().any(|b| b.is_ascii_whitespace()) {
                t.retain(|c| !c.is_ascii_whitespace());
            }
        }
        stack.extend(e.children_mut());
    }
}

/// Loads a captured stanza from `../shared/realworld/fixtures/` (for tests): the fixtures' XML comments
/// (where it was captured, what was trimmed) are dropped; XMPP streams carry no comments.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
pub(crate) fn fixture(name: &str) -> Element {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/realworld/fixtures").join(name);
    let mut text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    while let Some(start) = text.find("<!--") {
        let end = text[start..].find("-->").map(|e| start + e + 3).unwrap_or(text.len());
        text.replace_range(start..end, "");
    }
    parse_element(&text).unwrap()
}

/// The longest escape of a character in XML text or an attribute value (`&quot;`, `&apos;`, `&#xD;`).
const LONGEST_ESCAPE: usize = 6;

/// Bit `b` is set for each byte `b` (all below 64) that a writer may escape: `\t \n \r " & ' < >`.
const SPECIAL: u64 =
    (1 << b'\t') | (1 << b'\n') | (1 << b'\r') | (1 << b'"') | (1 << b'&') | (1 << b'\'') | (1 << b'<') | (1 << b'>');

/// Is `b` a byte a writer may escape? Branch-free, so that scans of long base64 texts vectorise.
#[inline]
fn special(b: u8) -> bool {
    b < 64 && (SPECIAL >> (b & 63)) & 1 == 1
}

/// The length of `s` with every character that may be escaped counted at its longest escape.
fn escaped_len(s: &str) -> usize {
    let specials: usize = s.as_bytes().iter().map(|&b| usize::from(special(b))).sum();
    s.len() + specials * (LONGEST_ESCAPE - 1)
}

/// An upper bound of the length of `e` as text (what `String::from(&e)` writes), found without writing
/// it: names, a namespace declaration where the namespace changes, attributes and text, every character
/// that may be escaped counted at its longest escape, every element as `<n …></n>` and a prefix
/// declaration for every namespaced attribute. Valid for elements that declare no prefixes of their own
/// (everything this crate builds). A group message checks its size budget with this, and writes the
/// stanza only when the bound is over the budget.
pub fn size_bound(e: &Element) -> usize {
    bound_within(e, None, WIDE)
}

/// From this many child elements on, [`size_bound`] sums the children in parallel (a group message's
/// `<header>` holds one per recipient JID or device).
const WIDE: usize = 256;

/// [`size_bound`] of `e` inside an element of namespace `scope`. Iterative; the children of an element
/// with at least `wide` of them are summed in parallel (each with its own walk), so the recursion is
/// only as deep as wide elements are nested.
fn bound_within(e: &Element, scope: Option<&str>, wide: usize) -> usize {
    use rayon::prelude::*;
    // The namespaces met so far; the stack holds (element, index of the namespace in scope around it).
    let mut namespaces: Vec<String> = scope.map(str::to_owned).into_iter().collect();
    let mut total = 0;
    let mut stack: Vec<(&Element, Option<usize>)> = vec![(e, scope.map(|_| 0))];
    while let Some((el, parent)) = stack.pop() {
        let name = el.name().len();
        // `<name` + `>` + `</name>`
        total += 1 + name + 1 + 2 + name + 1;
        let inherited = parent.filter(|&i| namespaces.get(i).is_some_and(|p| el.has_ns(p.as_str())));
        let own = match inherited {
            Some(i) => i,
            None => {
                let ns = el.ns();
                total += " xmlns=''".len() + escaped_len(&ns);
                namespaces.push(ns);
                namespaces.len() - 1
            }
        };
        for ((ns, key), value) in el.attrs().iter() {
            total += " =''".len() + key.len() + escaped_len(value);
            if !ns.is_none() {
                // A generated prefix (`tns123:`) and its declaration.
                total += 2 * 16 + " xmlns:=''".len() + escaped_len(ns.as_str());
            }
        }
        total += el.texts().map(escaped_len).sum::<usize>();
        if el.children().nth(wide.saturating_sub(1)).is_some() {
            let ns = namespaces.get(own).map(String::as_str);
            let children: Vec<&Element> = el.children().collect();
            total += children.par_iter().map(|c| bound_within(c, ns, wide)).sum::<usize>();
        } else {
            stack.extend(el.children().map(|c| (c, Some(own))));
        }
    }
    total
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn size_bound_is_never_below_the_written_length() {
        let lang = (minidom::rxml::Namespace::xml().clone(), attr_name("lang"));
        let mut cases = Vec::new();
        for text in ["plain", "a & b < c > d 'q' \"dq\"\r\n\tend", "ünïcödé ✓"] {
            let mut inner = Element::builder("key", "urn:xmpp:omemo:2").attr(attr_name("rid"), "12'3&\"").build();
            inner.append_text_node(text);
            let mut body = Element::builder("body", "jabber:client").build();
            body.append_text_node(text);
            body.attrs_mut().insert(lang.0.clone(), lang.1.clone(), "en".to_owned());
            let other = Element::builder("x", "urn:example:other").append(Element::bare("y", "urn:example:third"));
            let root = Element::builder("message", "jabber:client")
                .attr(attr_name("to"), text)
                .append(Element::builder("encrypted", "urn:xmpp:omemo:2").append(inner).build())
                .append(body)
                .append(other.build())
                .build();
            cases.push(root);
        }
        let mut nested = Element::bare("deep", "urn:example:deep");
        for i in 0..100 {
            nested = Element::builder("deep", if i % 2 == 0 { "urn:a" } else { "urn:b" }).append(nested).build();
        }
        cases.push(nested);
        let mut odd = Element::builder("x", "urn:example:attrs").build();
        odd.attrs_mut().insert(
            minidom::rxml::Namespace::from(String::from("urn:example:attr-ns")),
            attr_name("a"),
            "v".to_owned(),
        );
        cases.push(odd);
        // Wide elements (summed in parallel): children in the parent's namespace, in another one, and
        // wide elements nested in wide elements.
        for child_ns in ["urn:xmpp:omemo:2", "urn:example:other"] {
            let mut header = Element::bare("header", "urn:xmpp:omemo:2");
            for i in 0..(WIDE + 44) {
                let mut keys = Element::builder("keys", child_ns).attr(attr_name("jid"), format!("m{i}@example.org"));
                for d in 0..if i == 7 { WIDE + 1 } else { 2 } {
                    keys = keys
                        .append(Element::builder("key", child_ns).attr(attr_name("rid"), d.to_string()).append("a&b"));
                }
                header.append_child(keys.build());
            }
            header.append_text_node("x<y");
            cases.push(Element::builder("message", "jabber:client").append(header).build());
        }
        for e in &cases {
            let exact = String::from(e).len();
            let bound = size_bound(e);
            assert!(bound >= exact, "bound {bound} < {exact}: {}", String::from(e));
            assert!(bound <= exact * 2 + 200, "bound {bound} far above {exact}");
            // Summed in parallel or in one walk: the same bound.
            assert_eq!(bound, bound_within(e, None, usize::MAX));
        }
    }
}
