//! The demo (`omemo-muc demo`): the whole engine through the async driver, over the in-process server,
//! with every member's device on its own SQLite store in a temporary directory. A 1:1 chat becomes a
//! private group, invitations arrive encrypted, messages go between OMEMO 0.3 and OMEMO 2 devices, a
//! member is banned, one catches up from the archive after a restart, and a message goes to a room of
//! `crowd` members (default 1,000), cold and then steady.

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use fan_out_encryptor::group::{GroupError, GroupOptions, MissingDevicePolicy, DEFAULT_MAX_STANZA_BYTES};
use participant_resolver::invitation::InvitedBy;
use session_store::{AccountStore, MemoryStore, Namespace, NamespaceSet, SqliteStore, TrustLevel};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::{
    driver::{Config, DriverError, Event, OmemoMuc, Sent, Source},
    local::LocalServer,
};

const MUC: &str = "conference.localhost";
const WAIT: Duration = Duration::from_secs(20);

type Db = SqliteStore<rusqlite::Connection>;

/// A demo failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DemoError(String);

impl From<DriverError> for DemoError {
    fn from(e: DriverError) -> Self {
        DemoError(e.to_string())
    }
}
impl From<std::io::Error> for DemoError {
    fn from(e: std::io::Error) -> Self {
        DemoError(e.to_string())
    }
}
impl From<session_store::StoreError> for DemoError {
    fn from(e: session_store::StoreError) -> Self {
        DemoError(e.to_string())
    }
}
impl From<crate::driver::TransportError> for DemoError {
    fn from(e: crate::driver::TransportError) -> Self {
        DemoError(e.to_string())
    }
}

struct Member {
    name: &'static str,
    driver: OmemoMuc<Db>,
    events: UnboundedReceiver<Event>,
}

fn ns_name(ns: NamespaceSet) -> &'static str {
    match (ns.contains(Namespace::Oldmemo), ns.contains(Namespace::Twomemo)) {
        (true, true) => "OMEMO 0.3 + OMEMO 2",
        (true, false) => "OMEMO 0.3 (as Conversations, Dino, Gajim)",
        _ => "OMEMO 2 (as Kaidan, Converse.js)",
    }
}

fn namespace(ns: Namespace) -> &'static str {
    match ns {
        Namespace::Oldmemo => "OMEMO 0.3",
        _ => "OMEMO 2",
    }
}

fn trust_mark(t: TrustLevel) -> &'static str {
    match t {
        TrustLevel::Verified => "verified",
        TrustLevel::Blind => "blind trust",
        TrustLevel::Undecided => "UNDECIDED",
        TrustLevel::Distrusted => "DISTRUSTED",
        _ => "unknown trust",
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn config(ns: NamespaceSet) -> Config {
    let mut c = Config::new(MUC);
    c.namespaces = ns;
    c
}

async fn start(
    server: &LocalServer,
    dir: &Path,
    name: &'static str,
    full_jid: &str,
    ns: NamespaceSet,
) -> Result<Member, DemoError> {
    let store = SqliteStore::open(dir.join(format!("{name}.sqlite3")))?;
    let (driver, events, _) = OmemoMuc::start(server.connect(full_jid)?, store, config(ns)).await?;
    Ok(Member { name, driver, events })
}

/// Waits for the next event `pick` accepts (others are skipped).
async fn next<T>(m: &mut Member, what: &str, mut pick: impl FnMut(&Event) -> Option<T>) -> Result<T, DemoError> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, m.events.recv()).await {
            Ok(Some(e)) => {
                if let Some(t) = pick(&e) {
                    return Ok(t);
                }
            }
            _ => return Err(DemoError(format!("{}: {what}: nothing arrived", m.name))),
        }
    }
}

/// Prints how `reader` sees the next message.
async fn read(out: &mut impl Write, reader: &mut Member) -> Result<(), DemoError> {
    let name = reader.name;
    let line = next(reader, "a message", |e| match e {
        Event::Message(m) => Some(format!(
            "    {name:<15} reads  {:<8} [{}, {}{}]: {}",
            m.nick.clone().unwrap_or_else(|| m.from_jid.clone()),
            namespace(m.namespace),
            trust_mark(m.trust),
            if m.source == Source::Archive { ", from the archive" } else { "" },
            m.text
        )),
        Event::Undecryptable { cause, from_jid, .. } => Some(format!(
            "    {name:<15} cannot read a message from {}: {cause:?}",
            from_jid.clone().unwrap_or_default()
        )),
        _ => None,
    })
    .await?;
    writeln!(out, "{line}")?;
    Ok(())
}

fn coverage_line(sent: &Sent) -> String {
    let kex = sent.coverage.keyed.iter().filter(|(_, k)| *k).count();
    let mut s = format!("keys for {} devices ({kex} carrying a key exchange)", sent.coverage.keyed.len());
    for (who, why) in &sent.coverage.members_left_out {
        s.push_str(&format!("; left out {who}: {why:?}"));
    }
    s
}

async fn say(out: &mut impl Write, m: &Member, room: &str, text: &str) -> Result<Sent, DemoError> {
    let t = Instant::now();
    let sent = m.driver.send_confirmed(room, text, WAIT).await?;
    writeln!(out, "  {:<15} writes {text:?}: {} in {}", m.name, coverage_line(&sent), ms(t.elapsed()))?;
    Ok(sent)
}

/// Runs the demo, writing the transcript to `out` and the progress of long steps to `progress`.
pub async fn run(out: &mut impl Write, progress: &mut impl Write, crowd: usize) -> Result<(), DemoError> {
    let dir: PathBuf = std::env::temp_dir().join(format!("omemo-muc-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run_in(out, progress, crowd, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(out: &mut impl Write, progress: &mut impl Write, crowd: usize, dir: &Path) -> Result<(), DemoError> {
    let server = LocalServer::new(MUC);
    let total = Instant::now();
    writeln!(out, "omemo-muc demo: an in-process XMPP server (MUC, MAM, PEP); each device has its own SQLite store")?;
    writeln!(out, "in {}\n\n== Devices (keys published to PEP in both namespaces each speaks)", dir.display())?;
    let specs: [(&'static str, &str, NamespaceSet); 5] = [
        ("alice (phone)", "alice@localhost/phone", NamespaceSet::BOTH),
        ("alice (laptop)", "alice@localhost/laptop", NamespaceSet::OLDMEMO),
        ("bob", "bob@localhost/phone", NamespaceSet::OLDMEMO),
        ("carol", "carol@localhost/tablet", NamespaceSet::TWOMEMO),
        ("dave", "dave@localhost/desktop", NamespaceSet::BOTH),
    ];
    let mut members = Vec::new();
    for (name, jid, ns) in specs {
        let m = start(&server, dir, name, jid, ns).await?;
        let acc =
            m.driver.with_store(|s| s.account()).await??.ok_or_else(|| DemoError(format!("{name}: no account")))?;
        writeln!(out, "  {name:<15} device {:>10}  {}", acc.device_id, ns_name(ns))?;
        members.push(m);
    }
    let [alice, laptop, bob, carol, dave] =
        <[Member; 5]>::try_from(members).map_err(|_| DemoError("five members expected".into()))?;
    let (mut alice, mut laptop, mut bob, mut carol, mut dave) = (alice, laptop, bob, carol, dave);

    writeln!(out, "\n== Alice turns her 1:1 chat with Bob into a private group with Carol and Dave")?;
    let t = Instant::now();
    let invitees = ["bob@localhost", "carol@localhost", "dave@localhost"].map(String::from);
    let created = alice.driver.create_group(&invitees, "alice", Some("weekend plans")).await?;
    let room = created.group.room.clone();
    writeln!(
        out,
        "  room {room}: members-only, non-anonymous, archived ({} form fields set), members {} checked on the member list, in {}",
        created.group.configured.len(),
        created.group.members.join(", "),
        ms(t.elapsed())
    )?;
    for (who, r) in &created.invited {
        match r {
            Ok(n) => writeln!(out, "  encrypted invitation to {who}: {n} device(s)")?,
            Err(e) => writeln!(out, "  invitation to {who} not sent: {e}")?,
        }
    }
    for m in [&mut bob, &mut carol, &mut dave] {
        let inv = next(m, "an invitation", |e| match e {
            Event::Invitation { invitation, .. } => Some(invitation.clone()),
            _ => None,
        })
        .await?;
        let by = match &inv.invited_by {
            InvitedBy::TrustedDevice(j) => format!("{j} (OMEMO, trusted device)"),
            InvitedBy::Contact(j) => format!("{j} (contact)"),
            InvitedBy::Room { room, claimed } => format!("{room}, claimed by {claimed:?}"),
            InvitedBy::Unverified(j) => format!("{j} (unverified)"),
        };
        let t = Instant::now();
        let caught = m.driver.join(&inv.room, m.name).await?;
        writeln!(
            out,
            "  {:<15} invited by {by}, encrypted: {}; joins ({caught} archived messages) in {}",
            m.name,
            inv.encrypted,
            ms(t.elapsed())
        )?;
    }
    laptop.driver.join(&room, "alice-laptop").await?;
    writeln!(out, "  {:<15} joins too (same account, second device)", laptop.name)?;

    writeln!(out, "\n== Messages: one stanza carries both namespaces; every device reads the one meant for it")?;
    say(out, &alice, &room, "Hi all, this group is end-to-end encrypted.").await?;
    for m in [&mut laptop, &mut bob, &mut carol, &mut dave] {
        read(out, m).await?;
    }
    say(out, &dave, &room, "Dave here, with both namespaces.").await?;
    for m in [&mut alice, &mut laptop, &mut bob, &mut carol] {
        read(out, m).await?;
    }

    writeln!(out, "  bob speaks OMEMO 0.3 only and carol OMEMO 2 only: his client refuses to send unless told")?;
    writeln!(out, "  to go ahead without her (best effort), and the report says who was left out")?;
    match bob.driver.send(&room, "Can everyone read me?").await {
        Err(e) => writeln!(out, "  {:<15} default policy (block): {e}", bob.name)?,
        Ok(_) => return Err(DemoError("bob's send should have been refused".into())),
    }
    let best_effort = GroupOptions { missing: MissingDevicePolicy::BestEffort, ..GroupOptions::default() };
    let sent = bob.driver.send_with(&room, "Can everyone read me?", best_effort).await?;
    writeln!(out, "  {:<15} writes \"Can everyone read me?\" (best effort): {}", bob.name, coverage_line(&sent))?;
    for m in [&mut alice, &mut laptop, &mut carol] {
        read(out, m).await?;
    }

    writeln!(out, "\n== Alice bans Dave: the very next message has no key for him")?;
    alice.driver.ban(&room, "dave@localhost").await?;
    let why = next(&mut dave, "the ban", |e| match e {
        Event::Room { change: crate::driver::RoomChange::Left(why), .. } => Some(*why),
        _ => None,
    })
    .await?;
    writeln!(out, "  dave is out of the room: {why}")?;
    let sent = say(out, &alice, &room, "Dave is gone; this one is not for him.").await?;
    let dave_keyed = sent.coverage.keyed.iter().any(|(a, _)| a.jid == "dave@localhost");
    writeln!(out, "  a key for any device of dave: {dave_keyed}")?;
    for m in [&mut laptop, &mut bob, &mut carol] {
        read(out, m).await?;
    }

    writeln!(out, "\n== Carol goes offline; the room goes on; she restarts from her SQLite file and catches up")?;
    carol.driver.close().await;
    drop(carol);
    say(out, &alice, &room, "Carol, you will read this later.").await?;
    say(out, &alice, &room, "And this one too.").await?;
    for m in [&mut laptop, &mut bob] {
        read(out, m).await?;
        read(out, m).await?;
    }
    let mut carol = start(&server, dir, "carol", "carol@localhost/tablet", NamespaceSet::TWOMEMO).await?;
    let t = Instant::now();
    let pages = carol.driver.join(&room, "carol").await?;
    writeln!(out, "  carol rejoins and reads the archive ({pages} page(s)) in {}", ms(t.elapsed()))?;
    read(out, &mut carol).await?;
    read(out, &mut carol).await?;
    writeln!(out, "  (messages she had already read are recognised in the archive and not shown twice)")?;

    if crowd > 0 {
        large_room(out, progress, &server, &alice, crowd).await?;
    }
    writeln!(
        out,
        "\n{} stanzas crossed the server; the demo took {}",
        server.with_hub(|h| h.handled),
        ms(total.elapsed())
    )?;
    Ok(())
}

async fn large_room(
    out: &mut impl Write,
    progress: &mut impl Write,
    server: &LocalServer,
    alice: &Member,
    crowd: usize,
) -> Result<(), DemoError> {
    writeln!(out, "\n== A room of {crowd} members: each publishes its keys; Alice writes to all of them")?;
    let t = Instant::now();
    let mut jids = Vec::with_capacity(crowd);
    let mut readers = Vec::new();
    for i in 0..crowd {
        let ns = match i % 3 {
            0 => NamespaceSet::OLDMEMO,
            1 => NamespaceSet::TWOMEMO,
            _ => NamespaceSet::BOTH,
        };
        let jid = format!("member{i:04}@localhost");
        let (driver, events, _) =
            OmemoMuc::start(server.connect(&format!("{jid}/app"))?, MemoryStore::default(), config(ns)).await?;
        // Three members stay online to read the messages from the archive later; the rest go offline.
        if i < 3 {
            readers.push((driver, events, ns));
        } else {
            driver.close().await;
        }
        jids.push(jid);
        if (i + 1) % 50 == 0 || i + 1 == crowd {
            write!(progress, "\r  members ready: {:>5}/{crowd}", i + 1)?;
            progress.flush()?;
        }
    }
    writeln!(progress)?;
    writeln!(out, "  {crowd} members created and published in {}", ms(t.elapsed()))?;
    let room = alice.driver.create_group(&[], "alice", Some("everyone")).await?.group.room;
    let t = Instant::now();
    alice.driver.grant_membership(&room, &jids).await?;
    alice.driver.refresh_device_lists(&jids).await?;
    writeln!(out, "  {crowd} members granted and their device lists read in {}", ms(t.elapsed()))?;
    // Prosody's default stanza limit is 256 KiB: about 800 keys. The engine says so before sending.
    let probe = GroupOptions { max_stanza_bytes: 1, ..GroupOptions::default() };
    if let Err(DriverError::Group(GroupError::TooLarge { bytes, keys, .. })) =
        alice.driver.send_with(&room, "Welcome, everyone!", probe).await
    {
        let verdict = if bytes > DEFAULT_MAX_STANZA_BYTES { "refused" } else { "within it" };
        writeln!(
            out,
            "  the stanza would be {bytes} bytes with {keys} keys: with Prosody's default limit (256 KiB) {verdict}"
        )?;
    }
    let big = GroupOptions { max_stanza_bytes: 4 << 20, ..GroupOptions::default() };
    writeln!(out, "  the room's server allows larger stanzas: the budget is 4 MiB for this room")?;
    let t = Instant::now();
    let first = alice.driver.send_confirmed_with(&room, "Welcome, everyone!", big, WAIT).await?;
    writeln!(
        out,
        "  cold start  (bundles fetched, X3DH per device): {} in {}",
        coverage_line(&first),
        ms(t.elapsed())
    )?;
    let mut steady = Vec::new();
    for i in 0..5 {
        let t = Instant::now();
        let s = alice.driver.send_confirmed_with(&room, &format!("Steady message {i}"), big, WAIT).await?;
        steady.push((t.elapsed(), s));
    }
    steady.sort_by_key(|(d, _)| *d);
    let (median, s) = &steady[steady.len() / 2];
    writeln!(
        out,
        "  steady state (sessions established), median of 5: {} in {} (SQLite commit and the room's reflection included)",
        coverage_line(s),
        ms(*median)
    )?;
    for (i, (driver, mut events, ns)) in readers.into_iter().enumerate() {
        driver.join(&room, &format!("reader{i}")).await?;
        let mut read = 0;
        while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(500), events.recv()).await {
            if matches!(e, Event::Message(ref m) if m.source == Source::Archive) {
                read += 1;
            }
        }
        writeln!(out, "  member{i:04} ({}) joins and reads {read} of 6 messages from the archive", ns_name(ns))?;
    }
    Ok(())
}
