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

/// Parses XML text into an element. Malformed input is an error value, never a panic.
pub fn parse_element(text: &str) -> Result<Element, XmlError> {
    text.trim().parse::<Element>().map_err(|e| XmlError::Syntax(e.to_string()))
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
