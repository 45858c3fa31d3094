//! OMEMO XML: device lists, bundles and `<encrypted>` elements, and the `<message>` around them.

pub mod pep;
pub mod sce;
pub mod stanza;
pub(crate) mod text;
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

/// An [`XmlError::Invalid`] for `element`.
pub(crate) fn invalid(element: &'static str, detail: impl ToString) -> XmlError {
    XmlError::Invalid { element, detail: detail.to_string() }
}

/// Reads an `<encrypted>` element as the struct of its namespace: the header limits checked first,
/// base64 whitespace tolerated.
pub(crate) fn read_encrypted<T, E>(elem: &Element) -> Result<T, XmlError>
where
    T: TryFrom<Element, Error = E>,
    E: std::fmt::Display,
{
    check_header_limits(elem)?;
    let mut elem = elem.clone();
    strip_base64_whitespace(&mut elem);
    T::try_from(elem).map_err(|e| invalid("encrypted", e))
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
