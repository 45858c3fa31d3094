//! The demo runs to the end (with a small crowd) and its transcript shows what it claims.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_and_shows_each_step() {
    let mut out = Vec::new();
    let mut progress = Vec::new();
    omemo_muc::demo::run(&mut out, &mut progress, 12).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    for expected in [
        "encrypted invitation to bob@localhost: 1 device(s)",
        "invited by alice@localhost (OMEMO, trusted device), encrypted: true",
        "carol           reads  alice    [OMEMO 2, blind trust]: Hi all, this group is end-to-end encrypted.",
        "bob             reads  alice    [OMEMO 0.3, blind trust]: Hi all, this group is end-to-end encrypted.",
        "default policy (block): 1 member(s) have no usable device: carol@localhost",
        "carol           cannot read a message from bob@localhost: NotForThisDevice",
        "dave is out of the room: banned",
        "a key for any device of dave: false",
        "carol           reads  alice    [OMEMO 2, blind trust, from the archive]: And this one too.",
        "keys for 13 devices",
        "joins and reads 6 of 6 messages from the archive",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    assert!(!text.contains("dave            reads  alice    [OMEMO 2, blind trust]: Dave is gone"), "{text}");
    assert!(String::from_utf8(progress).unwrap().contains("12/12"));
}
