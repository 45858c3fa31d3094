#![allow(clippy::unwrap_used, clippy::panic)]
//! Replays the committed fuzz seed corpora (`fuzz/corpus/<target>/`) through the fuzz targets' entry
//! points on stable Rust, so that every seed (and every crash turned into a seed) stays covered.

use std::path::Path;

fn corpus(target: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target)
}

/// Runs every file of a corpus through `f`; returns how many made `f` say true.
fn replay_counting(target: &str, f: impl Fn(&[u8]) -> bool) -> usize {
    let dir = corpus(target);
    let mut yes = 0;
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        yes += usize::from(f(&std::fs::read(&path).unwrap()));
        n += 1;
    }
    assert!(n > 0, "empty corpus {target}");
    yes
}

/// The seeds the engine's fixtures produce are in the corpus, byte for byte (with
/// `OMEMO_WRITE_SEEDS=1` the test writes them there instead).
#[test]
fn engine_seeds_are_in_the_corpus() {
    for target in ["decrypt_stanza_0_3", "decrypt_stanza_2", "key_exchange", "group_interaction"] {
        let seeds = omemo_muc::fuzzing::seeds(target);
        assert!(!seeds.is_empty(), "{target}");
        for (i, seed) in seeds.iter().enumerate() {
            let path = corpus(target).join(format!("seed-{i}"));
            if std::env::var_os("OMEMO_WRITE_SEEDS").is_some() {
                std::fs::create_dir_all(corpus(target)).unwrap();
                std::fs::write(&path, seed).unwrap();
            }
            let same = std::fs::read(&path).ok().as_ref() == Some(seed);
            assert!(same, "{} is stale: run this test with OMEMO_WRITE_SEEDS=1", path.display());
        }
    }
}

#[test]
fn decrypt_stanza_corpora() {
    use session_store::Namespace;
    // The seeds on the established chain decrypt (the replayed first message does not).
    assert!(replay_counting("decrypt_stanza_0_3", |d| omemo_muc::fuzzing::decrypt_stanza(Namespace::Oldmemo, d)) >= 2);
    assert!(replay_counting("decrypt_stanza_2", |d| omemo_muc::fuzzing::decrypt_stanza(Namespace::Twomemo, d)) >= 2);
}

#[test]
fn key_exchange_corpus() {
    assert!(replay_counting("key_exchange", omemo_muc::fuzzing::key_exchange) >= 2);
}

#[test]
fn group_interaction_corpus() {
    let everyone_reads = omemo_muc::fuzzing::seeds("group_interaction").remove(0);
    let n = omemo_muc::fuzzing::group_interaction(&everyone_reads);
    assert!(n >= 6, "{n}");
    replay_counting("group_interaction", |d| omemo_muc::fuzzing::group_interaction(d) > 0);
}

/// A bounded stand-in for the fuzzer on stable Rust: random event sequences through the checked group
/// interaction.
#[test]
fn group_interaction_random_sequences() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut total = 0;
    for _ in 0..12 {
        let mut data = Vec::new();
        for _ in 0..96 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.push((x >> 24) as u8);
        }
        // Mostly sends and in-order reads, so that sessions get somewhere.
        for pair in data.chunks_mut(2) {
            if pair[0] % 3 != 0 {
                pair[0] %= 2;
            }
        }
        total += omemo_muc::fuzzing::group_interaction(&data);
    }
    assert!(total > 30, "{total}");
}

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
fn bundle_and_device_list_corpus() {
    replay("bundle_and_device_list", fan_out_encryptor::fuzzing::bundle_and_device_list);
}

#[test]
fn sce_envelope_corpus() {
    replay("sce_envelope", fan_out_encryptor::fuzzing::sce_envelope);
}

#[test]
fn muc_presence_and_mam_corpus() {
    replay("muc_presence_and_mam", participant_resolver::fuzzing::room_input);
}
