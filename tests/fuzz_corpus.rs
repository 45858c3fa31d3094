#![allow(clippy::unwrap_used, clippy::panic)]
//! Replays the committed fuzz seed corpora (`fuzz/corpus/<target>/`) through the fuzz targets' entry
//! points on stable Rust, so that every seed (and every crash turned into a seed) stays covered.

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        f(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n > 0, "empty corpus {target}");
    n
}

#[test]
fn ratchet_message_corpus() {
    replay("ratchet_message", session_store::fuzzing::ratchet_message);
}

#[test]
fn store_record_corpus() {
    replay("store_record", session_store::fuzzing::store_record);
}

#[test]
fn omemo_xml_corpus() {
    replay("omemo_xml", fan_out_encryptor::fuzzing::omemo_xml);
}

#[test]
fn sce_envelope_corpus() {
    replay("sce_envelope", fan_out_encryptor::fuzzing::sce_envelope);
}

#[test]
fn muc_presence_and_mam_corpus() {
    replay("muc_presence_and_mam", participant_resolver::fuzzing::room_input);
}
