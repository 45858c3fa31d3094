//! The fan-out measurement, shared by `benches/fan_out.rs` and `omemo-muc bench fanout`: a room of N
//! members with one OMEMO 2 device each, and the whole send path (recipients, wrap, stanza, commit; on a
//! cold start also the bundles read from the server's answers and the sessions built from them).

use std::time::{Duration, Instant};

use fan_out_encryptor::{
    group::{encrypt_group_message, GroupOptions},
    xml::{pep, v2},
};
use minidom::Element;
use participant_resolver::{Policy, Room};
use rand_core::CryptoRngCore;
use session_store::{
    account, session, Account, AccountStore, Changes, MemoryStore, Namespace, NamespaceSet, PreKeyBundle,
    SessionAddress, SessionError, Store, StoreError,
};

/// The room's bare JID.
pub const ROOM: &str = "big@muc.example.org";
/// The sender's bare JID.
pub const SENDER: &str = "sender@example.org";

/// A prepared room.
#[derive(Debug)]
pub struct FanOutRoom {
    /// The sender's view of the room.
    pub room: Room,
    /// For a cold start (no sessions yet): the server's answers to the bundle requests, as they come off
    /// the stream (parsed XML), one per member device.
    pub bundle_answers: Vec<(SessionAddress, Element)>,
}

/// A setup step failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A session step failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// A stanza of the setup did not parse.
    #[error("setup stanza: {0}")]
    Stanza(String),
}

fn room_of(members: &[String]) -> Result<Room, SetupError> {
    let mut room = Room::new(ROOM, SENDER, Policy::default());
    let items: String = members.iter().map(|j| format!("<item jid='{j}' affiliation='member'/>")).collect();
    for s in [
        format!("<presence xmlns='jabber:client' from='{ROOM}/me'><x xmlns='http://jabber.org/protocol/muc#user'><status code='110'/><item jid='{SENDER}/r' affiliation='owner' role='moderator'/></x></presence>"),
        format!("<iq xmlns='jabber:client' type='result' from='{ROOM}' id='d'><query xmlns='http://jabber.org/protocol/disco#info'><feature var='muc_nonanonymous'/><feature var='muc_membersonly'/></query></iq>"),
        format!("<iq xmlns='jabber:client' type='result' from='{ROOM}' id='l'><query xmlns='http://jabber.org/protocol/muc#admin'>{items}</query></iq>"),
    ] {
        let e: Element = s.parse().map_err(|e: minidom::Error| SetupError::Stanza(e.to_string()))?;
        room.apply_captured(&e).map_err(|e| SetupError::Stanza(e.to_string()))?;
    }
    Ok(room)
}

/// A member's new device. A cold start fetches real bundles (100 pre-keys each); in the steady state
/// the member only answers the first message, so one pre-key will do and the setup stays quick.
fn member_account(jid: &str, established: bool, rng: &mut impl CryptoRngCore) -> Changes {
    let pre_keys = if established { 1 } else { session_store::account::PRE_KEY_COUNT };
    Account::create_with_pre_keys(jid, NamespaceSet::TWOMEMO, &[], 0, pre_keys, rng)
}

/// Creates the sender's account in `sender` and `n` members with one OMEMO 2 device each. With
/// `established`, every session is built and confirmed (the member answered), so messages carry no key
/// exchange; otherwise the members' bundles are returned for a cold start.
pub fn prepare(
    sender: &mut impl Store,
    n: usize,
    established: bool,
    rng: &mut impl CryptoRngCore,
) -> Result<FanOutRoom, SetupError> {
    sender.apply(&Account::create(SENDER, NamespaceSet::TWOMEMO, &[], 0, rng))?;
    let me = sender.account()?.ok_or(SessionError::NoAccount)?;
    let from = SessionAddress::new(Namespace::Twomemo, SENDER, me.device_id);
    let mut members = Vec::with_capacity(n);
    let mut bundle_answers = Vec::new();
    let mut lists = Changes::default();
    for i in 0..n {
        let jid = format!("member{i}@example.org");
        let mut peer = MemoryStore::default();
        peer.apply(&member_account(&jid, established, rng))?;
        let them = peer.account()?.ok_or(SessionError::NoAccount)?;
        let to = SessionAddress::new(Namespace::Twomemo, jid.clone(), them.device_id);
        let bundle = account::own_bundle_for(&peer, Namespace::Twomemo)?;
        if established {
            let mut ch = Changes::default();
            session::initiate(sender, &me, &to, &bundle, &mut ch, rng)?;
            let k = session::encrypt(sender, &me, &to, &[0; 48], &mut ch)?;
            sender.apply(&ch)?;
            let (_, pch) = session::decrypt(&peer, &them, &from, &k.data, rng)?;
            peer.apply(&pch)?;
            let mut pch = Changes::default();
            let reply = session::encrypt(&peer, &them, &from, &[0; 48], &mut pch)?;
            let (_, sch) = session::decrypt(sender, &me, &to, &reply.data, rng)?;
            sender.apply(&sch)?;
        } else {
            bundle_answers.push((to.clone(), bundle_answer(&to, &bundle)?));
        }
        lists.device_lists.push((Namespace::Twomemo, jid.clone(), vec![them.device_id]));
        members.push(jid);
    }
    sender.apply(&lists)?;
    Ok(FanOutRoom { room: room_of(&members)?, bundle_answers })
}

/// The IQ result a server sends for a bundle request of `to` (XEP-0060 items, the bundle as published).
fn bundle_answer(to: &SessionAddress, bundle: &PreKeyBundle) -> Result<Element, SetupError> {
    let (node, item) = pep::bundle_node_and_item(to.namespace, to.device);
    let payload = v2::bundle(bundle).ok_or_else(|| SetupError::Stanza("bundle without an Ed25519 key".into()))?;
    let mut text = format!(
        "<iq xmlns='jabber:client' type='result' from='{}' id='b{}'><pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='{node}'><item id='{item}'>",
        to.jid, to.device
    );
    text.push_str(&String::from(&payload));
    text.push_str("</item></items></pubsub></iq>");
    text.parse().map_err(|e: minidom::Error| SetupError::Stanza(e.to_string()))
}

/// One message through the whole send path: encrypt (building sessions from the bundles on a cold
/// start), commit in one transaction, and the stanza as text. Returns the time it took.
pub fn send_once(
    store: &mut impl Store,
    room: &FanOutRoom,
    rng: &mut impl CryptoRngCore,
) -> Result<Duration, Box<dyn std::error::Error>> {
    let start = Instant::now();
    // The stanza budget is lifted: past about 1,100 OMEMO 2 devices (about 237 bytes each) a message
    // exceeds Prosody's default 256 KiB and the real send path refuses it; this measures the path itself.
    let opts = GroupOptions { max_stanza_bytes: usize::MAX, ..GroupOptions::default() };
    // The bundles read from the answers on every core, as the driver's concurrent fetches read each
    // answer when it arrives, on the runtime's threads.
    let bundles: Vec<(SessionAddress, Result<PreKeyBundle, String>)> = {
        use rayon::prelude::*;
        room.bundle_answers
            .par_iter()
            .map(|(to, answer)| {
                let bundle = pep::read_bundle(to.namespace, to.device, answer).map_err(|e| e.to_string());
                (to.clone(), bundle)
            })
            .collect()
    };
    let msg = encrypt_group_message(store, &room.room, "hello", &bundles, &opts, 1, rng)?;
    let (stanza, _) = msg.commit(store)?;
    let elapsed = start.elapsed();
    std::hint::black_box(stanza);
    Ok(elapsed)
}

/// What `omemo-muc bench fanout` measured.
#[derive(Debug, Clone, PartialEq)]
pub struct FanOutFigures {
    /// Recipient devices.
    pub devices: usize,
    /// `memory` or `sqlite`.
    pub store: &'static str,
    /// Cold start (sessions built from bundles) or steady state.
    pub cold: bool,
    /// Median time per message, milliseconds.
    pub median_ms: f64,
    /// The fastest message, milliseconds (steadier than the median on a machine shared with others: use
    /// it to compare two builds).
    pub min_ms: f64,
    /// The mean, milliseconds: unlike the median it includes the occasional slow message (a slow commit,
    /// for instance).
    pub mean_ms: f64,
    /// The slowest message, milliseconds.
    pub max_ms: f64,
    /// The same per recipient device, microseconds.
    pub per_device_us: f64,
    /// Messages measured.
    pub runs: usize,
    /// Peak resident memory while the messages were sent (the prepared store and room included, the
    /// setup's temporary peaks not), in MiB; Linux only.
    pub peak_rss_mib: Option<f64>,
}

/// Resets the process's peak resident memory to its current size (Linux: `/proc/self/clear_refs`).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak resident memory since the last reset, in MiB (Linux: `VmHWM`).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// The most messages a steady-state run measures. Its members never answer, and a device that did not
/// answer [`session_store::ratchet::STALE_AFTER`] messages is left out as stale (XEP-0384): with the
/// message that is not counted, 105 is the last run in which every member still gets a key.
pub const MAX_STEADY_RUNS: usize = session_store::ratchet::STALE_AFTER as usize - 1;

/// Measures the send path for `devices` recipients: the median over `runs` messages (default 5 cold, 9
/// steady; at most [`MAX_STEADY_RUNS`] steady), after one that is not counted. A cold run starts each
/// message from a store without sessions.
pub fn measure(
    devices: usize,
    sqlite: bool,
    cold: bool,
    runs: Option<usize>,
    rng: &mut impl CryptoRngCore,
) -> Result<FanOutFigures, Box<dyn std::error::Error>> {
    let runs = runs.unwrap_or(if cold { 5 } else { 9 }).max(1);
    if !cold && runs > MAX_STEADY_RUNS {
        return Err(format!(
            "{runs} messages in the steady state: at most {MAX_STEADY_RUNS} (the members never answer, and \
             after {} unanswered messages a device counts as stale)",
            session_store::ratchet::STALE_AFTER
        )
        .into());
    }
    let mut times = Vec::with_capacity(runs);
    if sqlite {
        let dir = std::env::temp_dir().join(format!("omemo-muc-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let base = dir.join("base.sqlite3");
        let _ = std::fs::remove_file(&base);
        let room = {
            let mut store = session_store::SqliteStore::open(&base)?;
            prepare(&mut store, devices, !cold, rng)?
        };
        reset_peak_rss();
        if cold {
            for i in 0..=runs {
                let copy = dir.join(format!("run{i}.sqlite3"));
                std::fs::copy(&base, &copy)?;
                let mut store = session_store::SqliteStore::open(&copy)?;
                let t = send_once(&mut store, &room, rng)?;
                if i > 0 {
                    times.push(t);
                }
            }
        } else {
            let mut store = session_store::SqliteStore::open(&base)?;
            send_once(&mut store, &room, rng)?;
            for _ in 0..runs {
                times.push(send_once(&mut store, &room, rng)?);
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        let mut base = MemoryStore::default();
        let room = prepare(&mut base, devices, !cold, rng)?;
        reset_peak_rss();
        if cold {
            // Each message from a copy of the store without sessions.
            for i in 0..=runs {
                let t = send_once(&mut base.clone(), &room, rng)?;
                if i > 0 {
                    times.push(t);
                }
            }
        } else {
            // One store, as a client has (a copy kept beside it would double the memory measured).
            let mut store = base;
            send_once(&mut store, &room, rng)?;
            for _ in 0..runs {
                times.push(send_once(&mut store, &room, rng)?);
            }
        }
    }
    let peak_rss_mib = peak_rss_mib();
    let min_ms = times.iter().min().copied().unwrap_or_default().as_secs_f64() * 1e3;
    let max_ms = times.iter().max().copied().unwrap_or_default().as_secs_f64() * 1e3;
    let mean_ms = times.iter().sum::<Duration>().as_secs_f64() * 1e3 / times.len().max(1) as f64;
    let m = median(times);
    Ok(FanOutFigures {
        peak_rss_mib,
        devices,
        store: if sqlite { "sqlite" } else { "memory" },
        cold,
        median_ms: m.as_secs_f64() * 1e3,
        min_ms,
        mean_ms,
        max_ms,
        per_device_us: m.as_secs_f64() * 1e6 / devices.max(1) as f64,
        runs,
    })
}
