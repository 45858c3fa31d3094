//! Captured stanzas from a real Prosody 0.12 (../shared/realworld/fixtures), without their comments
//! (minidom refuses XML comments).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use minidom::Element;

pub fn fixture_text(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/realworld/fixtures").join(name);
    let mut text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    while let Some(start) = text.find("<!--") {
        let end = text[start..].find("-->").map(|e| start + e + 3).unwrap_or(text.len());
        text.replace_range(start..end, "");
    }
    text
}

pub fn fixture(name: &str) -> Element {
    fixture_text(name).trim().parse().unwrap()
}
