//! Entry points for the fuzz targets in `fuzz/`: XML inputs from the network.

use session_store::Namespace;

use crate::xml::{find_descendant, parse_element, pep, sce, v0_3, v2};

/// Arbitrary text as a stanza holding device lists, bundles or `<encrypted>` elements: errors are fine,
/// panics are not; a bundle that parses re-serializes to an equal bundle.
pub fn bundle_and_device_list(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(root) = parse_element(text) else { return };
    if let Some(l) = find_descendant(&root, "list", v0_3::NS) {
        let _ = v0_3::parse_device_list(l);
    }
    if let Some(b) = find_descendant(&root, "bundle", v0_3::NS) {
        if let Ok(parsed) = v0_3::parse_bundle(b) {
            batch_agrees(&parsed, Namespace::Oldmemo);
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
    for ns in [Namespace::Oldmemo, Namespace::Twomemo] {
        let _ = pep::read_device_list(ns, &root);
        let _ = pep::read_bundle(ns, 1, &root);
    }
    if let Some(l) = find_descendant(&root, "devices", v2::NS) {
        let _ = v2::parse_device_list(l);
    }
    if let Some(b) = find_descendant(&root, "bundle", v2::NS) {
        // The direct reader accepts what the derived one accepts, with the same result.
        let direct = v2::parse_bundle(b);
        assert_eq!(direct.as_ref().ok(), v2::parse_bundle_derived(b).as_ref().ok(), "{b:?}");
        if let Ok(parsed) = direct {
            batch_agrees(&parsed, Namespace::Twomemo);
            let again = v2::bundle(&parsed).map(|e| v2::parse_bundle(&e));
            assert!(matches!(again, Some(Ok(ref x)) if *x == parsed));
        }
    }
    if let Some(e) = find_descendant(&root, "encrypted", v2::NS) {
        if let Ok(enc) = v2::parse_encrypted(e) {
            for k in enc.header.keys.iter().flat_map(|k| &k.keys) {
                session_store::fuzzing::ratchet_message(&k.data);
            }
        }
    }
}

/// Checking a bundle in a batch (eight copies) answers as checking it alone, except that the batch
/// may accept a signature that is off only by a small-order component (its documented difference).
fn batch_agrees(bundle: &session_store::PreKeyBundle, ns: Namespace) {
    let alone = bundle.check(ns).map(|_| ());
    let copies = vec![(bundle, ns); 8];
    let mut rng = <rand_chacha::ChaCha20Rng as rand_chacha::rand_core::SeedableRng>::seed_from_u64(0);
    for got in session_store::check_bundles(&copies, &mut rng) {
        match (&alone, got) {
            (Ok(()), got) => assert!(got.is_ok(), "a bundle that checks alone fails in a batch"),
            (Err(e), Err(got)) => assert_eq!(*e, got),
            (Err(_), Ok(_)) => {}
        }
    }
}

/// Decrypted bytes as an SCE envelope, with affix checks against fixed expectations: errors are fine,
/// panics are not.
pub fn sce_envelope(data: &[u8]) {
    for group in [false, true] {
        if let Ok(env) = sce::open(data, "alice@example.org", "room@muc.example.org", group) {
            let _ = env.body();
            // A checked envelope re-serializes to one that passes the same checks.
            let text = String::from(&minidom::Element::from(env));
            assert!(sce::open(text.as_bytes(), "alice@example.org", "room@muc.example.org", group).is_ok());
        }
    }
}
