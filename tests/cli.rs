//! The command-line tool's error paths: clear messages and exit codes, never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::*;

fn tool(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write;
    let mut c = Command::new(env!("CARGO_BIN_EXE_omemo-muc"));
    c.args(args).stdin(std::process::Stdio::piped());
    let mut child = spawn(c);
    child.stdin.take().unwrap().write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    let o = wait_within(child, PROGRAM_SECONDS, &format!("omemo-muc {args:?}")).unwrap_or_else(|e| panic!("{e}"));
    let (out, err) = (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned());
    assert!(!err.contains("panicked"), "panic: {err}");
    (o.status.code().unwrap_or(-1), out, err)
}

#[test]
fn usage_errors_exit_1_with_a_message() {
    let s = Scratch::new("cli-usage");
    let db = s.dir.join("x.sqlite3");
    let db = db.to_str().unwrap();
    assert_eq!(tool(&[], None).0, 1);
    assert_eq!(tool(&["--store", db, "--jid", "a@b", "frobnicate"], None).0, 1);
    assert_eq!(tool(&["--store", db, "--jid", "not a jid", "init"], None).0, 1);
    assert_eq!(tool(&["--store", db, "--jid", "a@b"], None).0, 1);
    let (code, _, err) = tool(&["--store", db, "--jid", "a@b", "fingerprint"], None);
    assert_eq!(code, 1);
    assert!(err.contains("init"), "{err}");
    let (code, _, err) = tool(&["--store", "/nonexistent/dir/x.db", "--jid", "a@b", "init"], None);
    assert_eq!(code, 1, "{err}");
    assert_eq!(tool(&["--store", db, "--jid", "a@b", "init"], None).0, 0);
    let (code, _, err) = tool(&["--store", db, "--jid", "c@d", "init"], None);
    assert_eq!(code, 1);
    assert!(err.contains("belongs to a@b"), "{err}");
    assert_eq!(
        tool(&["--store", db, "--jid", "a@b", "trust", "--peer", "x@y", "--device", "7", "--level", "maybe"], None).0,
        1
    );
    let (code, out, _) =
        tool(&["--store", db, "--jid", "a@b", "trust", "--peer", "x@y", "--device", "7", "--level", "verified"], None);
    assert_eq!(code, 2);
    assert!(out.contains("unknown-device"), "{out}");
}

#[test]
fn refused_input_exits_2_with_json() {
    let s = Scratch::new("cli-refused");
    let a = Ours::new(&s, "alice@example.org", "alice");
    let b = Ours::new(&s, "bob@example.org", "bob");
    for bad in [
        "",
        "<message",
        "<message xmlns='jabber:client' from='bob@example.org'><body>plain</body></message>",
        "<message xmlns='jabber:client'><encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='1'/></encrypted></message>",
        "<message xmlns='jabber:client'><encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='1'><key rid='1'>!!!</key><iv>AAAA</iv></header></encrypted></message>",
    ] {
        let err = a.decrypt(bad, "bob@example.org").unwrap_err();
        assert!(err["error"].is_string() && err["detail"].is_string(), "{err}");
    }
    // A stanza for another device, and a key element that is garbage for us.
    let m = b.encrypt(&["alice@example.org"], "hi");
    let other = Ours::new(&s, "carol@example.org", "carol");
    assert_eq!(other.decrypt(&m, "bob@example.org").unwrap_err()["error"], "not-for-this-device");
    let rid = a.device_id();
    let garbage = format!(
        "<message xmlns='jabber:client'><encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='5'><key rid='{rid}' prekey='1'>MwgB</key><iv>AAAAAAAAAAAAAAAA</iv></header><payload>AAAA</payload></encrypted></message>"
    );
    assert_eq!(a.decrypt(&garbage, "bob@example.org").unwrap_err()["error"], "malformed");
    // A groupchat stanza needs the sender's real JID.
    let (code, _, err) = tool(
        &[
            "--store",
            a.store.to_str().unwrap(),
            "--jid",
            "alice@example.org",
            "decrypt",
            "--pep",
            s.pep().to_str().unwrap(),
        ],
        Some(&m.replace("type='chat'", "type='groupchat'")),
    );
    assert_eq!(code, 1, "{err}");
    // After all that, the real message still decrypts: refused input changed nothing.
    assert_eq!(a.decrypt(&m, "bob@example.org").unwrap()["plaintext"], "hi");
}

/// `init --ns` fixes a device's namespaces for good; `encrypt --ns` restricts a message to one.
#[test]
fn namespace_options() {
    let s = Scratch::new("cli-ns");
    let pep = s.pep();
    let pep = pep.to_str().unwrap();
    let store = |n: &str| s.dir.join(format!("{n}.sqlite3")).to_str().unwrap().to_owned();
    let (a, b) = (store("a"), store("b"));
    let (code, out, _) = tool(&["--store", &a, "--jid", "a@example.org", "init", "--ns", "oldmemo"], None);
    assert_eq!(code, 0);
    assert!(out.contains("\"namespaces\":[\"oldmemo\"]"), "{out}");
    let (code, _, err) = tool(&["--store", &a, "--jid", "a@example.org", "init", "--ns", "both"], None);
    assert_eq!(code, 1, "namespaces cannot change: {err}");
    assert_eq!(tool(&["--store", &a, "--jid", "a@example.org", "init", "--ns", "fourmemo"], None).0, 1);
    assert_eq!(tool(&["--store", &a, "--jid", "a@example.org", "publish", "--pep", pep], None).0, 0);
    assert_eq!(tool(&["--store", &b, "--jid", "b@example.org", "init"], None).0, 0);
    assert_eq!(tool(&["--store", &b, "--jid", "b@example.org", "publish", "--pep", pep], None).0, 0);
    assert!(s.dir.join("pep/b@example.org/twomemo/devicelist.xml").exists());
    assert!(!s.dir.join("pep/a@example.org/twomemo/devicelist.xml").exists());
    // b speaks both, a only 0.3: auto picks 0.3 for a; forcing OMEMO 2 finds no device of a's.
    let (code, stanza, _) = tool(
        &[
            "--store",
            &b,
            "--jid",
            "b@example.org",
            "encrypt",
            "--pep",
            pep,
            "--to",
            "a@example.org",
            "--plaintext",
            "x",
        ],
        None,
    );
    assert_eq!(code, 0);
    assert!(
        stanza.contains("eu.siacs.conversations.axolotl") && !stanza.contains("<encrypted xmlns='urn:xmpp:omemo:2'"),
        "{stanza}"
    );
    let (code, out, _) = tool(
        &[
            "--store",
            &b,
            "--jid",
            "b@example.org",
            "encrypt",
            "--pep",
            pep,
            "--to",
            "a@example.org",
            "--ns",
            "twomemo",
            "--plaintext",
            "x",
        ],
        None,
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("no device"), "{out}");
    let (code, _, _) = tool(
        &["--store", &a, "--jid", "a@example.org", "decrypt", "--pep", pep, "--sender", "b@example.org"],
        Some(&stanza),
    );
    assert_eq!(code, 0);
}

/// `inspect-room` replays captured stanzas of a real room.
#[test]
fn inspect_room_replays_captured_stanzas() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/realworld/fixtures");
    let stream: String = [
        "muc-create-02-self-presence-110-201.recv.xml",
        "muc-create-06-config-changed-104-170-172.recv.xml",
        "muc-room-disco-info.recv.xml",
        "muc-affiliation-list-owner-by-owner.recv.xml",
        "muc-affiliation-list-member-by-owner.recv.xml",
        "muc-presence-occupant-joined.recv.xml",
        "muc-message-twomemo.recv.xml",
        "muc-presence-ban-301.recv.xml",
    ]
    .iter()
    .map(|f| std::fs::read_to_string(fixtures.join(f)).unwrap())
    .collect();
    let args = [
        "inspect-room",
        "--own-jid",
        "alice@localhost",
        "--room",
        "pelovusaho@conference.localhost",
        "--sender-of",
        "OCNyIjc-ngtXbXxePGPD3Etm",
    ];
    let (code, out, err) = tool(&args, Some(&stream));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["eligible"], true, "{v}");
    assert_eq!(v["recipients"], serde_json::json!(["alice@localhost", "bob@localhost", "carol@localhost"]));
    assert_eq!(v["excluded"], serde_json::json!([{"who": "dave@localhost", "reason": "outcast"}]));
    assert!(v["occupants"].as_array().unwrap().iter().any(|o| o["nick"] == "bob" && o["real_jid"] == "bob@localhost"));
    assert_eq!(v["attribution"]["real_jid"], "bob@localhost");
    assert_eq!(v["attribution"]["decided_by"], "occupant-id");
    // Before the configuration was read, the room is not eligible, and the report says why.
    let (_, out, _) = tool(&args[..5], Some(&stream[..stream.find("<iq").unwrap()]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["eligible"], false);
    assert!(v["why_not"].as_str().unwrap().contains("disco#info"), "{v}");
    assert_eq!(tool(&["inspect-room", "--room", "r@x"], Some("")).0, 1);
}

/// `bench fanout` measures the whole send path and reports it (tiny sizes: this is a test, not a benchmark).
#[test]
fn bench_fanout_reports_figures() {
    let (code, out, err) = tool(&["bench", "fanout", "--devices", "3", "--store", "memory", "--json"], None);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["devices"], 3);
    assert_eq!(v["store"], "memory");
    assert!(v["median_ms"].as_f64().unwrap() > 0.0 && v["runs"].as_u64().unwrap() > 0);
    let (min, mean, max) =
        (v["min_ms"].as_f64().unwrap(), v["mean_ms"].as_f64().unwrap(), v["max_ms"].as_f64().unwrap());
    assert!(min <= mean && mean <= max && min <= v["median_ms"].as_f64().unwrap(), "{v}");
    let (code, out, _) = tool(&["bench", "fanout", "--devices", "2", "--store", "sqlite", "--cold"], None);
    assert_eq!(code, 0);
    assert!(out.contains("cold start"), "{out}");
    assert_eq!(tool(&["bench", "fanout", "--devices", "2", "--store", "disk"], None).0, 1);
    assert_eq!(tool(&["bench", "other"], None).0, 1);
    // A steady-state run goes up to the last message before its members (who never answer) turn stale,
    // and refuses one more with the reason instead of failing on 'no usable device'.
    let max = omemo_muc::benchmark::MAX_STEADY_RUNS.to_string();
    let (code, out, err) =
        tool(&["bench", "fanout", "--devices", "2", "--store", "memory", "--runs", &max, "--json"], None);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["runs"].to_string(), max);
    let over = (omemo_muc::benchmark::MAX_STEADY_RUNS + 1).to_string();
    let (code, _, err) = tool(&["bench", "fanout", "--devices", "2", "--store", "memory", "--runs", &over], None);
    assert_eq!(code, 1);
    assert!(err.contains("stale") && !err.contains("no usable device"), "{err}");
    // The library says the same to a caller that skips the command line.
    let refused = omemo_muc::benchmark::measure(
        2,
        false,
        false,
        Some(omemo_muc::benchmark::MAX_STEADY_RUNS + 1),
        &mut rand_core::OsRng,
    );
    assert!(refused.is_err_and(|e| e.to_string().contains("stale")));
}

/// Two devices of one account with the same device id: the second one to publish moves to a new id
/// before anything is published under the taken one; the first keeps its entry.
#[test]
fn device_id_collision_is_resolved_before_the_first_publish() {
    use session_store::{AccountStore, Store};
    let s = Scratch::new("cli-collision");
    let pep = s.dir.join("pep");
    let pep = pep.to_str().unwrap();
    let first = s.dir.join("first.sqlite3");
    let second = s.dir.join("second.sqlite3");
    let (first, second) = (first.to_str().unwrap(), second.to_str().unwrap());
    assert_eq!(tool(&["--store", first, "--jid", "a@example.org", "init"], None).0, 0);
    assert_eq!(tool(&["--store", first, "--jid", "a@example.org", "publish", "--pep", pep], None).0, 0);
    assert_eq!(tool(&["--store", second, "--jid", "a@example.org", "init"], None).0, 0);
    let taken = session_store::SqliteStore::open(first).unwrap().account().unwrap().unwrap().device_id;
    {
        let mut st = session_store::SqliteStore::open(second).unwrap();
        let mut acc = st.account().unwrap().unwrap();
        acc.device_id = taken;
        st.apply(&session_store::Changes { account: Some(acc), ..Default::default() }).unwrap();
    }
    let (code, out, err) = tool(&["--store", second, "--jid", "a@example.org", "publish", "--pep", pep], None);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["device_id_collision"]["taken"], taken);
    let now = v["device_id"].as_u64().unwrap() as u32;
    assert_ne!(now, taken);
    let list = v["published"]["twomemo"]["devices"].as_array().unwrap();
    assert!(list.contains(&serde_json::json!(taken)) && list.contains(&serde_json::json!(now)), "{list:?}");
    // Publishing again changes nothing: the id is ours now.
    let (_, out, _) = tool(&["--store", second, "--jid", "a@example.org", "publish", "--pep", pep], None);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v.get("device_id_collision").is_none() && v["device_id"] == now);
    let (_, out, _) = tool(&["--store", first, "--jid", "a@example.org", "publish", "--pep", pep], None);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v.get("device_id_collision").is_none() && v["device_id"] == taken);
}

/// The helper every test uses to run a program: past its bound the program and what it started are
/// killed and the error says so; a daemon that keeps the pipes open does not hold the test.
#[test]
fn programs_past_their_bound_are_killed() {
    let started = std::time::Instant::now();
    let mut c = Command::new("sh");
    c.args(["-c", "echo begun >&2; sleep 60 & sleep 60"]);
    let e = run_within(c, 1, "two sleeps").unwrap_err();
    assert!(e.contains("two sleeps: not done within 1 s, killed; its stderr: begun"), "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(15), "{:?}", started.elapsed());

    let mut c = Command::new("sh");
    c.args(["-c", "echo ready; sleep 3 & exit 0"]);
    let out = run_within(c, 30, "a daemon").unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ready\n");
}
