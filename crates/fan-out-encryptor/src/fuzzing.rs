//! Entry points for the fuzz targets in `fuzz/`: XML inputs from the network.

use crate::xml::{find_descendant, parse_element, v0_3};

/// Arbitrary text as a stanza holding device lists, bundles or `<encrypted>` elements: errors are fine,
/// panics are not; a bundle that parses re-serializes to an equal bundle.
pub fn omemo_xml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(root) = parse_element(text) else { return };
    if let Some(l) = find_descendant(&root, "list", v0_3::NS) {
        let _ = v0_3::parse_device_list(l);
    }
    if let Some(b) = find_descendant(&root, "bundle", v0_3::NS) {
        if let Ok(parsed) = v0_3::parse_bundle(b) {
            let _ = parsed.verify_0_3();
            assert_eq!(v0_3::parse_bundle(&v0_3::bundle(&parsed)).ok(), Some(parsed));
        }
    }
    if let Some(e) = find_descendant(&root, "encrypted", v0_3::NS) {
        if let Ok(enc) = v0_3::parse_encrypted(e) {
            for k in &enc.header.keys {
                session_store::fuzzing::ratchet_message(&k.data);
            }
        }
    }
}
