//! Entry points for the fuzz targets that need the whole engine (`fuzz/`, and the stable corpus replay in
//! `tests/fuzz_corpus.rs`): whole `<message>` stanzas against an established session, key exchanges
//! against a store with pre-keys, and a stateful group interaction in the in-process world.
//!
//! Each fixture is built once per process from a fixed seed, so the seeds in `fuzz/corpus/` (written by
//! [`seeds`]) stay valid against it.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, OnceLock,
    },
};

use fan_out_encryptor::{
    group::{receive_group_message, GroupOptions, Inbound, MissingDevicePolicy},
    xml::{parse_element, v0_3, v2},
    Context,
};
use minidom::Element;
use rand_chacha::{rand_core::SeedableRng, ChaCha20Rng};
use session_store::{
    session::{self, PreKeyMode},
    AccountStore, MemoryStore, Namespace, NamespaceSet, SessionAddress, SqliteStore, Store,
};

use crate::world::{DeviceSpec, World, WorldError};

const ROOM: &str = "fuzz@muc.example.org";
const ALICE: &str = "alice@example.org";
const BOB: &str = "bob@example.org";

/// Alice and bob in a room, with sessions both ways in one namespace.
#[derive(Debug)]
struct Pair {
    world: World<MemoryStore>,
    /// Bob's store before alice's key exchange reached it (its pre-keys unused).
    fresh_bob: MemoryStore,
    /// Alice's key exchange for bob (the raw key element).
    kex: Vec<u8>,
    /// Stanzas for bob: two on the established chain (live and archived), and the first one again.
    stanzas: Vec<Element>,
}

fn set_of(ns: Namespace) -> NamespaceSet {
    if ns == Namespace::Oldmemo {
        NamespaceSet::OLDMEMO
    } else {
        NamespaceSet::TWOMEMO
    }
}

/// The key element for `device` in a stanza's `<encrypted>` element of `ns`.
fn key_element(stanza: &Element, ns: Namespace, jid: &str, device: u32) -> Option<Vec<u8>> {
    let e = stanza.get_child("encrypted", ns.xmlns())?;
    if ns == Namespace::Oldmemo {
        v0_3::parse_encrypted(e).ok()?.header.keys.into_iter().find(|k| k.rid == device).map(|k| k.data)
    } else {
        v2::parse_encrypted(e).ok()?.key_for(jid, device).map(|k| k.data.clone())
    }
}

fn build_pair(ns: Namespace) -> Result<Pair, WorldError> {
    let specs = [DeviceSpec::new(ALICE, "alice", set_of(ns)), DeviceSpec::new(BOB, "bob", set_of(ns))];
    let mut w = World::new(ROOM, &specs, &[], 7, |_| Ok(MemoryStore::default()))?;
    let opts = GroupOptions::default();
    let fresh_bob = w.devices[1].store.clone();
    let first = w.send(0, "first", &opts)?.0;
    let kex =
        key_element(&w.posted[first].live, ns, BOB, w.devices[1].device_id).ok_or(WorldError::NoMessage(first))?;
    w.deliver(1, first, false, PreKeyMode::Live)?;
    let answer = w.send(1, "answer", &opts)?.0;
    w.deliver(0, answer, false, PreKeyMode::Live)?;
    let second = w.send(0, "second, on the established chain", &opts)?.0;
    let third = w.send(0, "third", &opts)?.0;
    let stanzas = vec![w.posted[second].live.clone(), w.posted[third].archived.clone(), w.posted[first].live.clone()];
    Ok(Pair { world: w, fresh_bob, kex, stanzas })
}

fn pair(ns: Namespace) -> Option<&'static Pair> {
    static OLD: OnceLock<Option<Pair>> = OnceLock::new();
    static TWO: OnceLock<Option<Pair>> = OnceLock::new();
    let cell = if ns == Namespace::Oldmemo { &OLD } else { &TWO };
    cell.get_or_init(|| build_pair(ns).ok()).as_ref()
}

/// A whole `<message>` (live groupchat or MAM result) for bob, from alice, in `ns`: decrypted directly
/// and through the group path on copies of bob's store. Errors are fine, panics are not; a decrypted
/// message commits cleanly and the same stanza then fails (no replay). Returns whether it decrypted.
pub fn decrypt_stanza(ns: Namespace, data: &[u8]) -> bool {
    let Some(p) = pair(ns) else { return false };
    let Ok(text) = std::str::from_utf8(data) else { return false };
    let Ok(msg) = parse_element(text) else { return false };
    let bob = &p.world.devices[1];
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let inner = msg
        .get_child("result", "urn:xmpp:mam:2")
        .and_then(|r| r.get_child("forwarded", "urn:xmpp:forward:0"))
        .and_then(|f| f.get_child("message", "jabber:client"))
        .unwrap_or(&msg);
    let ctx = Context { sender: ALICE, expected_to: ROOM, group: true, pre_keys: PreKeyMode::Live };
    let mut store = bob.store.clone();
    let decrypted = match fan_out_encryptor::decrypt_stanza(&store, inner, &ctx, &mut rng) {
        Ok((_, changes)) => {
            assert!(store.apply(&changes).is_ok());
            assert!(fan_out_encryptor::decrypt_stanza(&store, inner, &ctx, &mut rng).is_err(), "replay accepted");
            true
        }
        Err(_) => false,
    };
    let owners = p.world.device_owners();
    let mut store = bob.store.clone();
    if let Ok((inbound, changes)) = receive_group_message(&store, &bob.room, &msg, &owners, PreKeyMode::Live, &mut rng)
    {
        assert!(store.apply(&changes).is_ok());
        if let Inbound::Decrypted { message, .. } = inbound {
            assert_eq!(message.sender_jid, ALICE);
        }
    }
    decrypted
}

/// A raw key exchange (first byte: 0 for a PreKeySignalMessage, 1 for an OMEMOKeyExchange; the rest the
/// message) from alice against bob's store with its pre-keys. Errors are fine, panics are not; an
/// accepted key exchange commits cleanly and is refused the second time. Returns whether it decrypted.
pub fn key_exchange(data: &[u8]) -> bool {
    let Some((&which, message)) = data.split_first() else { return false };
    let ns = if which & 1 == 0 { Namespace::Oldmemo } else { Namespace::Twomemo };
    let Some(p) = pair(ns) else { return false };
    let mut store = p.fresh_bob.clone();
    let Ok(Some(account)) = store.account() else { return false };
    let from = SessionAddress { namespace: ns, jid: ALICE.into(), device: p.world.devices[0].device_id };
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    match session::decrypt_with(&store, &account, &from, message, PreKeyMode::Live, &mut rng) {
        Ok((_, changes)) => {
            assert!(store.apply(&changes).is_ok());
            let again = session::decrypt_with(&store, &account, &from, message, PreKeyMode::Live, &mut rng);
            assert!(again.is_err(), "key exchange accepted twice");
            true
        }
        Err(_) => false,
    }
}

/// The seed inputs of a target of this module, built from its fixture.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let stanzas = |ns| pair(ns).map(|p| p.stanzas.iter().map(|e| String::from(e).into_bytes()).collect());
    match target {
        "decrypt_stanza_0_3" => stanzas(Namespace::Oldmemo).unwrap_or_default(),
        "decrypt_stanza_2" => stanzas(Namespace::Twomemo).unwrap_or_default(),
        "key_exchange" => [(0u8, Namespace::Oldmemo), (1, Namespace::Twomemo)]
            .iter()
            .filter_map(|(b, ns)| pair(*ns).map(|p| [vec![*b], p.kex.clone()].concat()))
            .collect(),
        "group_interaction" => vec![
            // Everyone sends and everyone reads, in order.
            vec![0, 0, 1, 1, 1, 2, 1, 3, 0, 1, 1, 0, 1, 2, 1, 3, 0, 2, 1, 0, 1, 1, 1, 3, 6, 0],
            // Drops, reordering, duplicates, a restart, a nick change, a ban, a catch-up.
            vec![0, 0, 0, 0, 0, 0, 3, 1, 4, 5, 1, 1, 5, 1, 9, 1, 10, 2, 0, 2, 8, 3, 0, 0, 2, 3, 7, 2, 2, 2],
            // Leave, messages while away, come back through the archive.
            vec![7, 3, 0, 0, 0, 1, 0, 2, 7, 3, 2, 3, 2, 3, 2, 3, 0, 3, 1, 0, 1, 1],
        ],
        _ => Vec::new(),
    }
}

/// The template world of [`group_interaction`]: four devices (OMEMO 0.3, 2, both) with SQLite stores
/// in memory; every run works on file copies of them.
fn template() -> &'static Mutex<Option<World<SqliteStore<rusqlite::Connection>>>> {
    static T: OnceLock<Mutex<Option<World<SqliteStore<rusqlite::Connection>>>>> = OnceLock::new();
    T.get_or_init(|| {
        let specs = [
            DeviceSpec::new(ALICE, "alice", NamespaceSet::BOTH),
            DeviceSpec::new(ALICE, "alice-phone", NamespaceSet::OLDMEMO),
            DeviceSpec::new(BOB, "bob", NamespaceSet::TWOMEMO),
            DeviceSpec::new("carol@example.org", "carol", NamespaceSet::BOTH),
        ];
        let world = World::new(ROOM, &specs, &[], 11, |_| {
            SqliteStore::new(rusqlite::Connection::open_in_memory().map_err(session_store::StoreError::from)?)
        });
        Mutex::new(world.ok())
    })
}

fn scratch_dir(what: &str) -> std::path::PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("omemo-muc-fuzz-{}-{what}-{n}", std::process::id()))
}

/// Removes a directory when dropped.
struct DirGuard(std::path::PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the checker knows about the interaction so far.
#[derive(Default)]
struct Book {
    /// Per message, the devices that got a key.
    keyed: BTreeMap<usize, BTreeSet<usize>>,
    /// (device, message) pairs already processed once.
    seen: BTreeSet<(usize, usize)>,
    /// Per device, the next message it reads in order.
    cursor: BTreeMap<usize, usize>,
    /// Banned bare JIDs.
    banned: BTreeSet<String>,
    /// Devices that read the archive since they came back (catch-up mode).
    catching_up: BTreeSet<usize>,
    /// Deliveries that decrypted.
    decrypted: usize,
}

/// An arbitrary sequence of events in a room of four devices, as (operation, argument) byte pairs:
/// send, deliver in order, deliver from the archive, drop, reorder, duplicate, reflect, leave/join,
/// ban, restart from the SQLite file, nick change. Checked against what was sent: whatever decrypts is
/// the text sent by the device it is attributed to; a message keyed for a device decrypts the first time
/// it reaches it; a second delivery is a duplicate; our own message comes back as a reflection; a banned
/// member gets no key in any later message; the stores never fail. Returns how many deliveries
/// decrypted.
pub fn group_interaction(data: &[u8]) -> usize {
    let dir = scratch_dir("run");
    if std::fs::create_dir_all(&dir).is_err() {
        return 0;
    }
    let _guard = DirGuard(dir.clone());
    let forked = match template().lock() {
        // Durability against power loss is not what this target checks: no fsync.
        Ok(t) => t.as_ref().map(|t| {
            t.fork(|i, s| {
                let conn = s.copy_to(dir.join(format!("{i}.sqlite3")))?.into_inner();
                conn.pragma_update(None, "synchronous", "OFF")?;
                SqliteStore::new(conn)
            })
        }),
        Err(_) => return 0,
    };
    let Some(Ok(mut w)) = forked else { return 0 };
    let n = w.devices.len();
    let mut book = Book::default();
    let best_effort = GroupOptions { missing: MissingDevicePolicy::BestEffort, ..GroupOptions::default() };
    for (step, pair) in data.chunks_exact(2).take(64).enumerate() {
        let (op, arg) = (pair[0] % 11, pair[1]);
        let dev = usize::from(arg) % n;
        if std::env::var_os("OMEMO_FUZZ_TRACE").is_some() {
            eprintln!(
                "step {step}: op {op} dev {dev} arg {arg} online {:?}",
                w.devices.iter().map(|d| d.online).collect::<Vec<_>>()
            );
        }
        match op {
            0 => {
                if !w.devices[dev].online || book.banned.contains(&w.devices[dev].jid) {
                    continue;
                }
                let sent = w.send(dev, &format!("step {step} from {dev}"), &best_effort);
                assert!(matches!(sent, Ok(_) | Err(WorldError::Group(_))), "send: {sent:?}");
                if std::env::var_os("OMEMO_FUZZ_TRACE").is_some() {
                    eprintln!("  sent {:?}", sent.as_ref().map(|(m, c)| (m, &c.keyed)));
                }
                if let Ok((m, coverage)) = sent {
                    {
                        let mut keyed = BTreeSet::new();
                        for (addr, _) in &coverage.keyed {
                            assert!(!book.banned.contains(addr.jid.as_str()), "banned {} got a key", addr.jid);
                            if let Some(i) =
                                w.devices.iter().position(|d| d.jid == addr.jid && d.device_id == addr.device)
                            {
                                keyed.insert(i);
                            }
                        }
                        book.keyed.insert(m, keyed);
                    }
                }
            }
            1..=3 => {
                let m = book.cursor.get(&dev).copied().unwrap_or(0);
                if m >= w.posted.len() {
                    continue;
                }
                book.cursor.insert(dev, m + 1);
                if op != 3 {
                    deliver(&mut w, &mut book, dev, m, op == 2);
                }
            }
            4 | 5 => {
                if w.posted.is_empty() {
                    continue;
                }
                let m = usize::from(arg / 4) % w.posted.len();
                let dev = usize::from(arg) % n;
                if op == 5 && !book.seen.contains(&(dev, m)) {
                    continue;
                }
                deliver(&mut w, &mut book, dev, m, false);
            }
            6 => {
                if let Some(m) = (0..w.posted.len()).rev().find(|&m| w.posted[m].from == dev) {
                    deliver(&mut w, &mut book, dev, m, usize::from(arg) % 2 == 1);
                }
            }
            7 => {
                if book.banned.contains(&w.devices[dev].jid) {
                    continue;
                }
                if w.devices[dev].online {
                    assert!(w.leave(dev).is_ok());
                } else {
                    assert!(w.join(dev).is_ok());
                    if book.catching_up.remove(&dev) {
                        let ch = session::end_catch_up(&w.devices[dev].store);
                        assert!(ch.is_ok_and(|ch| w.devices[dev].store.apply(&ch).is_ok()));
                    }
                }
            }
            8 => {
                let jid = w.devices[dev].jid.clone();
                let remaining: BTreeSet<&String> =
                    w.devices.iter().map(|d| &d.jid).filter(|j| !book.banned.contains(*j)).collect();
                if dev == 0 || jid == w.devices[0].jid || remaining.len() <= 2 || book.banned.contains(&jid) {
                    continue;
                }
                assert!(w.ban(&jid).is_ok());
                book.banned.insert(jid);
            }
            9 => assert!(w.restart(dev).is_ok()),
            _ => {
                if w.devices[dev].online {
                    assert!(w.change_nick(dev, &format!("nick{step}")).is_ok());
                }
            }
        }
    }
    book.decrypted
}

fn deliver(w: &mut World<SqliteStore<rusqlite::Connection>>, book: &mut Book, to: usize, m: usize, archived: bool) {
    // A device out of the room reads only the archive.
    let archived = archived || !w.devices[to].online;
    let mode = if archived && !w.devices[to].online { PreKeyMode::CatchUp } else { PreKeyMode::Live };
    if mode == PreKeyMode::CatchUp {
        book.catching_up.insert(to);
    }
    let first = book.seen.insert((to, m));
    let from = w.posted[m].from;
    let expected = w.posted[m].text.clone();
    let sender = (w.devices[from].jid.clone(), w.devices[from].device_id);
    let keyed = book.keyed.get(&m).is_some_and(|k| k.contains(&to));
    // A live message names its sender by nick only: it is attributable if the sender is still there
    // under that nick (a real room delivers it before any later presence of the sender).
    let nick_then = w.posted[m].live.attr("from").and_then(|f| f.split_once('/')).map(|(_, n)| n.to_owned());
    let attributable =
        archived || w.devices[from].online && nick_then.as_deref() == Some(w.devices[from].nick.as_str());
    let outcome = w.deliver(to, m, archived, mode);
    assert!(outcome.is_ok(), "deliver {m} to {to}: {outcome:?}");
    let Ok(outcome) = outcome else { return };
    if std::env::var_os("OMEMO_FUZZ_TRACE").is_some() {
        eprintln!("  deliver m{m} (from {from}) to {to} archived {archived}: {outcome:?}");
    }
    match outcome {
        Inbound::Decrypted { message, .. } => {
            assert!(first, "message {m} decrypted twice on device {to}");
            let text = message.plaintext.as_ref().map(|p| String::from_utf8_lossy(p).into_owned());
            assert_eq!(text.as_deref(), Some(expected.as_str()), "message {m} on device {to}");
            assert_eq!((message.sender_jid.clone(), message.sender_device), sender, "message {m} misattributed");
            book.decrypted += 1;
        }
        Inbound::OwnReflection { entry, .. } => {
            assert_eq!(from, to, "message {m} from {from} taken as {to}'s own");
            assert_eq!(entry.plaintext_hash, session_store::LedgerEntry::hash(expected.as_bytes()));
        }
        Inbound::Duplicate => assert!(!first, "message {m} called a duplicate on first delivery to {to}"),
        other => {
            assert!(
                !(first && keyed && attributable && from != to),
                "message {m} keyed for {to} did not decrypt: {other:?}"
            );
        }
    }
}
