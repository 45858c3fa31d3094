//! Crash safety (issue 8): a child process sends and receives group messages between two devices with
//! SQLite stores in a loop, and is killed with SIGKILL at random points, a few hundred times. Then the
//! stores are reopened and checked against what went over the "network" (an append-only, fsynced file):
//!
//! - every message that went out decrypts for its recipient, exactly once: no sender state was ever
//!   behind what it sent (a reused message key would show as a duplicate), and no receiver state ran
//!   ahead of what the application kept (the application's history row is written in the same
//!   transaction as the ratchet step, with `SqliteStore::apply_with`);
//! - every message the application acknowledged has the text that was sent;
//! - the sessions still work both ways afterwards.
//!
//! A sender commits before it hands a stanza out, so a crash in between leaves its chain ahead by a
//! message that never went out; the receiver skips that key. That is the only divergence allowed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use fan_out_encryptor::group::{
    encrypt_group_message, plan_group_message, receive_group_message, GroupOptions, Inbound, MissingDevicePolicy,
};
use minidom::Element;
use omemo_muc::world::{DeviceSpec, Posted, World};
use rand_chacha::{rand_core::SeedableRng, ChaCha20Rng};
use session_store::{session::PreKeyMode, NamespaceSet, SqliteStore};

const ROOM: &str = "crash@muc.example.org";
const CHILD_ENV: &str = "OMEMO_MUC_CRASH_CHILD";

type Sql = SqliteStore<rusqlite::Connection>;

fn specs() -> Vec<DeviceSpec> {
    vec![
        DeviceSpec::new("alice@example.org", "alice", NamespaceSet::BOTH),
        DeviceSpec::new("bob@example.org", "bob", NamespaceSet::OLDMEMO),
    ]
}

fn store_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("device{i}.sqlite3"))
}

/// The world as a (re)started process sees it: the stores from their files, the wire from its file. A
/// torn line at the end of the wire (the process died while writing it) never went out: it is cut off
/// here, before anything is appended after it.
fn open_world(dir: &Path, seed: u64) -> World<Sql> {
    let stores = specs().into_iter().enumerate().map(|(i, s)| (s, SqliteStore::open(store_path(dir, i)).unwrap()));
    let mut w = World::with_stores(ROOM, stores.collect(), &[], ChaCha20Rng::seed_from_u64(seed)).unwrap();
    let (posted, whole) = read_wire(dir);
    if let Ok(f) = std::fs::OpenOptions::new().write(true).open(dir.join("wire.jsonl")) {
        if f.metadata().unwrap().len() > whole {
            f.set_len(whole).unwrap();
            f.sync_all().unwrap();
        }
    }
    w.posted = posted;
    w
}

/// The network: one JSON line per stanza that went out, fsynced. Gives the stanzas of the whole lines
/// and their length in bytes; a line that is torn (cut short, or without its newline) and everything
/// after it never went out.
fn read_wire(dir: &Path) -> (Vec<Posted>, u64) {
    let Ok(bytes) = std::fs::read(dir.join("wire.jsonl")) else { return (Vec::new(), 0) };
    let mut out = Vec::new();
    let mut whole = 0;
    for line in bytes.split_inclusive(|b| *b == b'\n') {
        let Some(text) = line.strip_suffix(b"\n") else { break };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(text) else { break };
        let e = |k: &str| v[k].as_str().unwrap().parse::<Element>().unwrap();
        out.push(Posted {
            from: v["from"].as_u64().unwrap() as usize,
            text: v["text"].as_str().unwrap().to_owned(),
            live: e("live"),
            archived: e("archived"),
        });
        whole += line.len() as u64;
    }
    (out, whole)
}

fn append_wire(dir: &Path, p: &Posted) {
    let line = serde_json::json!({
        "from": p.from, "text": p.text, "live": String::from(&p.live), "archived": String::from(&p.archived),
    });
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("wire.jsonl")).unwrap();
    f.write_all(format!("{line}\n").as_bytes()).unwrap();
    f.sync_all().unwrap();
}

/// The application's history of device `to`: wire index to text.
fn history(dir: &Path, to: usize) -> std::collections::BTreeMap<usize, String> {
    let conn = rusqlite::Connection::open(store_path(dir, to)).unwrap();
    let mut stmt = conn.prepare("SELECT idx, text FROM app_history").unwrap();
    let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)? as usize, r.get::<_, String>(1)?))).unwrap();
    rows.map(|r| r.unwrap()).collect()
}

/// Device `to` processes wire message `m`: the engine's changes and the history row in one transaction.
fn receive(w: &mut World<Sql>, to: usize, m: usize, rng: &mut ChaCha20Rng) -> Inbound {
    w.sync_device_lists(to).unwrap();
    let owners = w.device_owners();
    let stanza = w.posted[m].live.clone();
    let d = &w.devices[to];
    let (inbound, changes) = receive_group_message(&d.store, &d.room, &stanza, &owners, PreKeyMode::Live, rng).unwrap();
    let text = match &inbound {
        Inbound::Decrypted { message, .. } => {
            Some(String::from_utf8(message.plaintext.as_ref().unwrap().to_vec()).unwrap())
        }
        _ => None,
    };
    w.devices[to]
        .store
        .apply_with(&changes, |tx| {
            if let Some(text) = &text {
                tx.execute("INSERT INTO app_history (idx, text) VALUES (?1, ?2)", rusqlite::params![m as i64, text])?;
            }
            Ok(())
        })
        .unwrap();
    inbound
}

/// Why a send failed: the coverage the same send reports when it may leave members out (nothing is
/// committed).
fn explain(w: &mut World<Sql>, from: usize) -> String {
    let opts = GroupOptions { missing: MissingDevicePolicy::BestEffort, ..GroupOptions::default() };
    let d = &w.devices[from];
    let plan = match plan_group_message(&d.store, &d.room, opts.choice) {
        Ok(p) => p,
        Err(e) => return format!("no plan: {e:?}"),
    };
    let bundles: Vec<_> = plan.need_bundles.iter().map(|a| (a.clone(), w.bundle(a))).collect();
    let mut rng = ChaCha20Rng::seed_from_u64(0);
    match encrypt_group_message(&d.store, &d.room, "?", &bundles, &opts, w.now() + 1, &mut rng) {
        Ok(msg) => format!("plan {plan:?}; best effort: {:?}", msg.coverage),
        Err(e) => format!("plan {plan:?}; best effort fails too: {e:?}"),
    }
}

/// The child: sends and receives until it is killed (bounded in steps and time all the same).
fn child(dir: &Path) {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let seed = u64::from(std::process::id()) ^ nanos as u64;
    let mut w = open_world(dir, seed);
    let mut rng = ChaCha20Rng::seed_from_u64(seed.rotate_left(17));
    let mut x = seed | 1;
    let started = Instant::now();
    for _ in 0..2_000 {
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let who = (x % 2) as usize;
        if x % 5 < 2 {
            let text = format!("message {} from {who}", w.posted.len());
            let m = match w.send(who, &text, &GroupOptions::default()) {
                Ok((m, _)) => m,
                Err(e) => panic!("child: device {who} could not send: {e:?}; {}", explain(&mut w, who)),
            };
            append_wire(dir, &w.posted[m]);
        } else {
            // Read the next message from the other device that is not in the history yet.
            let seen = history(dir, who);
            let next = (0..w.posted.len()).find(|&m| w.posted[m].from != who && !seen.contains_key(&m));
            if let Some(m) = next {
                match receive(&mut w, who, m, &mut rng) {
                    Inbound::Decrypted { .. } => {}
                    other => panic!("child: message {m} for {who}: {other:?}"),
                }
            }
        }
    }
}

#[test]
fn sigkill_at_random_points_loses_nothing() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&dir));
        return;
    }
    let dir = std::env::temp_dir().join(format!("omemo-muc-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Accounts, and the application's history table beside the engine's.
    drop(open_world(&dir, 1));
    for i in 0..2 {
        let conn = rusqlite::Connection::open(store_path(&dir, i)).unwrap();
        conn.execute_batch("CREATE TABLE app_history (idx INTEGER PRIMARY KEY, text TEXT NOT NULL)").unwrap();
    }
    let kills = 200;
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut exited_early = 0;
    let started = Instant::now();
    // Kill points are random within a window that widens when the children make no progress (a slow or
    // busy machine), so that sends and receives are interrupted at every stage either way.
    let mut window_ms = 150u64;
    let progress = |dir: &Path| read_wire(dir).0.len() + history(dir, 0).len() + history(dir, 1).len();
    let mut last_progress = 0;
    for k in 0..kills {
        if k % 20 == 19 {
            let now = progress(&dir);
            if now < last_progress + 10 {
                window_ms = (window_ms * 2).min(4_000);
            }
            last_progress = now;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut c = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["sigkill_at_random_points_loses_nothing", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(5 + x % window_ms));
        if c.try_wait().unwrap().is_some() {
            exited_early += 1;
        }
        c.kill().unwrap(); // SIGKILL
        let out = c.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "the child failed:\n{err}");
    }
    let elapsed = started.elapsed();
    // After the last kill: reopen everything and check it against the wire.
    let mut w = open_world(&dir, 2);
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let wire = w.posted.clone();
    let mut acknowledged = 0;
    let mut delivered_now = 0;
    for to in 0..2 {
        let kept = history(&dir, to);
        for (m, p) in wire.iter().enumerate() {
            if p.from == to {
                continue;
            }
            match kept.get(&m) {
                Some(text) => {
                    assert_eq!(*text, p.text, "acknowledged message {m} on device {to}");
                    acknowledged += 1;
                    assert!(matches!(receive(&mut w, to, m, &mut rng), Inbound::Duplicate), "message {m} again");
                }
                None => {
                    match receive(&mut w, to, m, &mut rng) {
                        Inbound::Decrypted { message, .. } => {
                            assert_eq!(message.plaintext.as_deref().map(|p| p.as_slice()), Some(p.text.as_bytes()));
                        }
                        other => panic!("message {m} that went out did not decrypt on device {to}: {other:?}"),
                    }
                    delivered_now += 1;
                }
            }
        }
    }
    // The sessions work both ways.
    for (from, to) in [(0, 1), (1, 0)] {
        let (m, _) = w.send(from, "after the crashes", &GroupOptions::default()).unwrap();
        assert!(matches!(receive(&mut w, to, m, &mut rng), Inbound::Decrypted { .. }));
    }
    eprintln!(
        "{kills} SIGKILLs in {elapsed:?} (kill window up to {window_ms} ms; {exited_early} children had already \
         finished): {} messages went out, {acknowledged} were acknowledged before a kill, {delivered_now} \
         delivered after the last one",
        wire.len()
    );
    assert!(wire.len() >= 20 && acknowledged >= 10, "too little happened to mean anything");
    let _ = std::fs::remove_dir_all(&dir);
}
