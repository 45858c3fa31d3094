//! End to end against real servers: a private Prosody (Debian package, ../shared/realworld) or ejabberd
//! (Debian package, tests/support/start-ejabberd.sh) on a free loopback port, the driver over
//! tokio-xmpp, and the command-line tool. Our clients create a private
//! group, invite, join, exchange messages in both namespaces; a member catches up from the archive
//! after a restart from its store file; a banned member stops getting keys.
//!
//! Needs Prosody (`../shared/realworld/install-prosody.sh`) and ejabberd (`apt-get install ejabberd`);
//! CI installs both.
#![cfg(feature = "xmpp")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use omemo_muc::{
    driver::{Config, Event, OmemoMuc, RoomChange, Source},
    session_store::AccountStore,
    session_store::{Namespace, NamespaceSet, SqliteStore},
    xmpp::{connect, connect_with, Keepalive, Security},
};
use tokio::sync::mpsc::UnboundedReceiver;

/// One server test at a time: four servers (three Prosody, one ejabberd) and the oracle starting at once
/// on a two-core machine made joins and PEP fetches time out in CI. Held for a whole test; a test that
/// failed does not stop the others.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERVERS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERVERS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How long starting or stopping a server may take (ejabberd's own scripts wait up to 60 s).
const SERVER_SECONDS: u64 = 150;

/// How long one run of the command-line tool may take.
const TOOL_SECONDS: u64 = 120;

/// How long one whole test against a server may take: a test that hangs fails with a message instead
/// of stopping the test run.
const TEST_SECONDS: u64 = 360;

/// Prints the warnings and errors the libraries log (tokio-xmpp while it connects and logs in) to stderr,
/// where a failed run shows them.
struct Warnings;

impl log::Log for Warnings {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!("[{} {}] {}", r.level(), r.target(), r.args());
        }
    }
    fn flush(&self) {}
}

/// `test` within [`TEST_SECONDS`].
async fn bounded(what: &str, test: impl std::future::Future<Output = ()>) {
    if log::set_logger(&Warnings).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
    tokio::time::timeout(Duration::from_secs(TEST_SECONDS), test)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {TEST_SECONDS} s"));
}

fn realworld() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/realworld")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Prosody,
    Ejabberd,
}

/// A private server (Prosody or ejabberd) on a free loopback port; stopped on drop.
struct Prosody {
    kind: Kind,
    dir: PathBuf,
    port: u16,
}

fn installed(cmd: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {cmd}")).output().unwrap().status.success()
}

impl Prosody {
    fn start(name: &str) -> Prosody {
        Self::start_kind(Kind::Prosody, name)
    }

    fn start_kind(kind: Kind, name: &str) -> Prosody {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("omemo-muc-{kind:?}-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (cmd, what) = match kind {
            Kind::Prosody => {
                assert!(installed("prosody"), "Prosody is not installed: run ../shared/realworld/install-prosody.sh");
                let mut c = Command::new(realworld().join("start-prosody.sh"));
                c.arg(&dir).env("PROSODY_PORT", port.to_string());
                (c, "start-prosody.sh")
            }
            Kind::Ejabberd => {
                assert!(installed("ejabberdctl"), "ejabberd is not installed: apt-get install ejabberd");
                let mut c = Command::new(support().join("start-ejabberd.sh"));
                c.arg(&dir).arg(port.to_string());
                (c, "start-ejabberd.sh")
            }
        };
        let out = common::run_within(cmd, SERVER_SECONDS, what).unwrap_or_else(|e| panic!("{e}"));
        assert!(out.status.success(), "start {kind:?}: {}", String::from_utf8_lossy(&out.stderr));
        Prosody { kind, dir, port }
    }

    fn server(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

fn support() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support")
}

impl Prosody {
    /// Stops the server (bounded); its output.
    fn stop(&self) -> Result<std::process::Output, String> {
        let mut stop = match self.kind {
            Kind::Prosody => Command::new(realworld().join("stop-prosody.sh")),
            Kind::Ejabberd => Command::new(support().join("stop-ejabberd.sh")),
        };
        stop.arg(&self.dir);
        if self.kind == Kind::Ejabberd {
            stop.arg(self.port.to_string());
        }
        common::run_within(stop, SERVER_SECONDS, "stopping the server")
    }
}

impl Drop for Prosody {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("{e}");
        }
        if std::env::var_os("OMEMO_KEEP_PROSODY").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

type Db = SqliteStore<rusqlite::Connection>;

async fn client(p: &Prosody, user: &str, store: &Path, ns: NamespaceSet) -> (OmemoMuc<Db>, UnboundedReceiver<Event>) {
    let conn =
        connect(&format!("{user}@localhost"), user, &p.server(), Security::PlainLoopbackOnly, Duration::from_secs(15))
            .await
            .unwrap();
    let mut config = Config::new("conference.localhost");
    config.namespaces = ns;
    // A real server on a loaded two-core machine (CI runs everything at once) can take longer than
    // the default 15 s to answer a join or an IQ; a timeout here would be a flake, not a finding.
    config.iq_timeout = Duration::from_secs(45);
    config.join_timeout = Duration::from_secs(45);
    let (driver, events, _) = OmemoMuc::start(conn, SqliteStore::open(store).unwrap(), config).await.unwrap();
    (driver, events)
}

async fn next<T>(rx: &mut UnboundedReceiver<Event>, what: &str, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) => {
                eprintln!("{what}: {e:?}");
                if let Some(t) = pick(&e) {
                    return t;
                }
            }
            Ok(None) => panic!("{what}: the driver stopped"),
            Err(_) => panic!("{what}: nothing within 45 s"),
        }
    }
}

fn message(e: &Event) -> Option<(String, String, Source, Namespace)> {
    match e {
        Event::Message(m) => Some((m.from_jid.clone(), m.text.clone(), m.source, m.namespace)),
        _ => None,
    }
}

// The guard only makes the other server tests wait on their own threads (each has its own runtime).
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_group_on_prosody() {
    let _one = one_at_a_time();
    bounded("private_group_on_prosody", private_group(Kind::Prosody)).await;
}

/// The same on ejabberd: nothing in the client may depend on one server's ways.
// The guard only makes the other server tests wait on their own threads (each has its own runtime).
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_group_on_ejabberd() {
    let _one = one_at_a_time();
    bounded("private_group_on_ejabberd", private_group(Kind::Ejabberd)).await;
}

async fn private_group(kind: Kind) {
    let p = Prosody::start_kind(kind, "driver");
    let dir = p.dir.join("stores");
    std::fs::create_dir_all(&dir).unwrap();
    let (alice, mut alice_rx) = client(&p, "alice", &dir.join("alice.db"), NamespaceSet::BOTH).await;
    let (bob, mut bob_rx) = client(&p, "bob", &dir.join("bob.db"), NamespaceSet::OLDMEMO).await;
    let (carol, mut carol_rx) = client(&p, "carol", &dir.join("carol.db"), NamespaceSet::TWOMEMO).await;

    let created = alice.create_group(&["bob@localhost".into(), "carol@localhost".into()], "alice", None).await.unwrap();
    let room = created.group.room.clone();
    assert!(created.group.archiving, "{created:?}");
    for (who, r) in &created.invited {
        assert_eq!(r.as_ref().ok(), Some(&1), "invitation to {who}: {r:?}");
    }
    for (rx, name) in [(&mut bob_rx, "bob"), (&mut carol_rx, "carol")] {
        let inv = next(rx, name, |e| match e {
            Event::Invitation { invitation, .. } => Some(invitation.clone()),
            _ => None,
        })
        .await;
        assert_eq!(inv.room, room);
        assert!(inv.encrypted);
    }
    bob.join(&room, "bob").await.unwrap();
    carol.join(&room, "carol").await.unwrap();

    let sent = alice.send_confirmed(&room, "hello over prosody", Duration::from_secs(20)).await.unwrap();
    assert_eq!(sent.coverage.keyed.len(), 2, "{:?}", sent.coverage);
    assert!(sent.stanza_id.is_some(), "the room adds a stanza-id");
    let (from, text, source, ns) = next(&mut bob_rx, "bob reads", message).await;
    assert_eq!(
        (from.as_str(), text.as_str(), source, ns),
        ("alice@localhost", "hello over prosody", Source::Live, Namespace::Oldmemo)
    );
    let (_, text, _, ns) = next(&mut carol_rx, "carol reads", message).await;
    assert_eq!((text.as_str(), ns), ("hello over prosody", Namespace::Twomemo));

    // Bob goes offline; two messages later he restarts from his store file and catches up.
    bob.close().await;
    drop((bob, bob_rx));
    alice.send_confirmed(&room, "missed 1", Duration::from_secs(20)).await.unwrap();
    alice.send_confirmed(&room, "missed 2", Duration::from_secs(20)).await.unwrap();
    let (bob, mut bob_rx) = client(&p, "bob", &dir.join("bob.db"), NamespaceSet::OLDMEMO).await;
    bob.join(&room, "bob").await.unwrap();
    // Until Bob's events pause for 2 s; events that never stop fail the test.
    let (mut got, mut seen) = (Vec::new(), 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_secs(2), bob_rx.recv()).await {
        eprintln!("bob catches up: {e:?}");
        if let Some((_, t, s, _)) = message(&e) {
            got.push((t, s));
        }
        seen += 1;
        assert!(tokio::time::Instant::now() < deadline && seen < 1_000, "bob's events never stop");
    }
    assert_eq!(got, vec![("missed 1".to_owned(), Source::Archive), ("missed 2".to_owned(), Source::Archive)]);

    // Carol is banned: out of the room, no key in the next message, and she cannot come back.
    alice.ban(&room, "carol@localhost").await.unwrap();
    next(&mut carol_rx, "carol banned", |e| match e {
        Event::Room { change: RoomChange::Left(why), .. } => Some(*why),
        _ => None,
    })
    .await;
    let sent = alice.send_confirmed(&room, "after the ban", Duration::from_secs(20)).await.unwrap();
    assert!(sent.coverage.keyed.iter().all(|(a, _)| a.jid != "carol@localhost"), "{:?}", sent.coverage);
    let (_, text, _, _) = next(&mut bob_rx, "bob reads after the ban", message).await;
    assert_eq!(text, "after the ban");
    assert!(carol.join(&room, "carol").await.is_err());
    // And the 0.3-only member writes back to the owner.
    bob.send_confirmed(&room, "bob here", Duration::from_secs(20)).await.unwrap();
    let (from, text, _, ns) = next(&mut alice_rx, "alice reads bob", message).await;
    assert_eq!((from.as_str(), text.as_str(), ns), ("bob@localhost", "bob here", Namespace::Oldmemo));
}

/// Requests from others are answered. The connection ends, with the reason, when the server stops
/// reading or goes away: a stanza that cannot be written fails within the connection's timeout instead
/// of waiting for ever, and a server that ends the stream ends the connection at once (before, tokio-xmpp reconnected behind the
/// driver's back, on a stream where our room presences were forgotten, and held stanzas until then).
// The guard only makes the other server tests wait on their own threads (each has its own runtime).
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_or_stopped_server_ends_the_connection_with_a_reason() {
    let _one = one_at_a_time();
    bounded("a_stuck_or_stopped_server_ends_the_connection_with_a_reason", stuck_or_stopped()).await;
}

async fn connection_ends(rx: &mut UnboundedReceiver<Event>, who: &str) -> String {
    let why = next(rx, &format!("{who}'s connection ends"), |e| match e {
        Event::Error { context, detail } if context == "connection" => Some(detail.clone()),
        _ => None,
    })
    .await;
    next(rx, &format!("{who} disconnected"), |e| matches!(e, Event::Disconnected).then_some(())).await;
    why
}

fn signal(p: &Prosody, signal: &str) {
    let pid = std::fs::read_to_string(p.dir.join("prosody.pid")).unwrap();
    let out = common::run_within(
        {
            let mut c = Command::new("kill");
            c.args([signal, pid.trim()]);
            c
        },
        10,
        "kill",
    )
    .unwrap();
    assert!(out.status.success(), "kill {signal}: {}", String::from_utf8_lossy(&out.stderr));
}

async fn stuck_or_stopped() {
    let p = Prosody::start("stuck");
    let dir = p.dir.join("stores");
    std::fs::create_dir_all(&dir).unwrap();
    let quick = Duration::from_secs(3);
    let mut driven = Vec::new();
    for user in ["alice", "bob"] {
        let conn =
            connect(&format!("{user}@localhost"), user, &p.server(), Security::PlainLoopbackOnly, quick).await.unwrap();
        let full = conn.transport.jid().to_owned();
        let store = SqliteStore::open(dir.join(format!("{user}.db"))).unwrap();
        let (driver, events, _) = OmemoMuc::start(conn, store, Config::new("conference.localhost")).await.unwrap();
        driven.push((driver, events, full));
    }
    let (bob, mut bob_rx, _) = driven.pop().unwrap();
    let (alice, mut alice_rx, alice_full) = driven.pop().unwrap();

    // Requests to Alice's resource get answers (RFC 6120 8.2.3), through the server: a ping, disco#info,
    // and service-unavailable for anything else.
    let conn = connect("carol@localhost", "carol", &p.server(), Security::PlainLoopbackOnly, quick).await.unwrap();
    let mut carol = Raw { conn: conn.transport, rx: conn.incoming, backlog: Default::default(), next: 0 };
    carol.iq("<ping xmlns='urn:xmpp:ping'/>", &alice_full, "get").await;
    let info = carol.iq("<query xmlns='http://jabber.org/protocol/disco#info'/>", &alice_full, "get").await;
    let info = String::from(&info);
    assert!(info.contains("urn:xmpp:omemo:2:devices+notify") && info.contains("urn:xmpp:ping"), "{info}");
    let refused = carol.answer("<query xmlns='jabber:iq:version'/>", &alice_full, "get").await;
    assert_eq!(refused.attr("type"), Some("error"), "{}", String::from(&refused));
    assert!(String::from(&refused).contains("service-unavailable"), "{}", String::from(&refused));

    // The server stops reading (SIGSTOP): once the socket buffers are full, Alice's next stanza is not
    // written within her 3 s, and her connection ends with that reason (at most 64 MiB are tried).
    signal(&p, "-STOP");
    let big =
        format!("<message xmlns='jabber:client' to='alice@localhost'><body>{}</body></message>", "x".repeat(1 << 16));
    let mut failed = None;
    for _ in 0..1024 {
        if let Err(e) = alice.send_stanza(big.parse().unwrap()).await {
            failed = Some(e);
            break;
        }
    }
    signal(&p, "-CONT");
    let e = failed.expect("a write fails while the server reads nothing");
    assert!(e.to_string().contains("not written within 3 s"), "{e}");
    let why = connection_ends(&mut alice_rx, "alice").await;
    assert!(why.contains("not written within 3 s"), "{why}");
    let e = alice.send_stanza("<presence xmlns='jabber:client'/>".parse().unwrap()).await.unwrap_err();
    assert!(e.to_string().contains("closed"), "{e}");

    // The server stops: Bob's connection ends at once, saying so, and nothing is sent after it.
    let stopped = p.stop().unwrap();
    assert!(stopped.status.success(), "{}", String::from_utf8_lossy(&stopped.stderr));
    let why = connection_ends(&mut bob_rx, "bob").await;
    assert!(why.starts_with("the server") || why.starts_with("the connection failed"), "{why}");
    let e = bob.send_stanza("<presence xmlns='jabber:client'/>".parse().unwrap()).await.unwrap_err();
    assert!(e.to_string().contains("closed"), "{e}");
}

/// The keepalive, with its timing shortened (1 s of silence, then 4 s for an answer): a connection to a
/// server that has nothing to say stays up for several silences (each ping is answered, and the answers
/// are not handed to the driver); a server that stops answering (SIGSTOP) ends the connection by itself,
/// with a reason, within the two timeouts.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keepalive_pings_a_silent_server_and_gives_up_on_a_stopped_one() {
    let _one = one_at_a_time();
    bounded("the_keepalive_pings_a_silent_server_and_gives_up_on_a_stopped_one", keepalive()).await;
}

async fn keepalive() {
    let p = Prosody::start("keepalive");
    let timing = Keepalive { silence: Duration::from_secs(1), answer_within: Duration::from_secs(4) };
    let conn = connect_with(
        "carol@localhost",
        "carol",
        &p.server(),
        Security::PlainLoopbackOnly,
        Duration::from_secs(5),
        timing,
    )
    .await
    .unwrap();
    let mut carol = Raw { conn: conn.transport, rx: conn.incoming, backlog: Default::default(), next: 0 };
    // Ten seconds without a word from us: without the pings the stream would count as dead after five.
    let quiet_until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(quiet_until, carol.rx.recv()).await {
            Err(_) => break,
            Ok(None) => panic!("the connection ended while the server was silent: {:?}", carol.conn.end_reason()),
            Ok(Some(e)) => {
                let text = String::from(&e);
                assert!(
                    !text.contains("keepalive") && !text.contains("urn:xmpp:ping"),
                    "a ping's answer came through: {text}"
                );
                carol.backlog.push_back(e);
            }
        }
    }
    assert_eq!(carol.conn.end_reason(), None);
    carol.iq("<ping xmlns='urn:xmpp:ping'/>", "localhost", "get").await;

    // The server stops: the next ping gets no answer, and the connection ends within 1 + 4 s (and a margin).
    signal(&p, "-STOP");
    let stopped_at = std::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(15), async { while carol.rx.recv().await.is_some() {} }).await;
    let waited = stopped_at.elapsed();
    signal(&p, "-CONT");
    assert!(ended.is_ok(), "the connection to a stopped server was still up after 15 s");
    assert!(waited >= Duration::from_secs(3), "ended after {waited:?}: sooner than the answer was due");
    let why = carol.conn.end_reason().expect("a reason");
    assert!(why.starts_with("the connection failed") && why.contains("timeout"), "{why}");
    let stopped = p.stop().unwrap();
    assert!(stopped.status.success(), "{}", String::from_utf8_lossy(&stopped.stderr));
}

/// STARTTLS asked for and not offered (this Prosody has its TLS module disabled): the connection is
/// refused with that reason, never continued in plain text.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_not_offered_is_refused_not_downgraded() {
    let _one = one_at_a_time();
    bounded("starttls_not_offered_is_refused_not_downgraded", async {
        let p = Prosody::start("starttls");
        let refused =
            connect("carol@localhost", "carol", &p.server(), Security::StartTls, Duration::from_secs(10)).await;
        let Err(e) = refused else { panic!("a session without TLS") };
        let text = e.to_string();
        assert!(text.contains("cannot connect") && text.to_lowercase().contains("tls"), "{text}");
        // The same server, plain on loopback as allowed: the account works, so TLS was the only reason.
        let server = p.server();
        let plain =
            connect("carol@localhost", "carol", &server, Security::PlainLoopbackOnly, Duration::from_secs(10)).await;
        plain.unwrap().transport.close().await;
        let stopped = p.stop().unwrap();
        assert!(stopped.status.success(), "{}", String::from_utf8_lossy(&stopped.stderr));
    })
    .await;
}

/// The command-line tool against Prosody: create-group, accept-invite, send, listen --expect, and the
/// errors a user meets (wrong password, nothing listening).
#[test]
fn command_line_tool_on_prosody() {
    let _one = one_at_a_time();
    let p = Prosody::start("cli");
    let bin = env!("CARGO_BIN_EXE_omemo-muc");
    let ran = |c: Command| {
        let what = format!("{c:?}");
        common::run_within(c, TOOL_SECONDS, &what).unwrap_or_else(|e| panic!("{e}"))
    };
    let tool = |user: &str, password: &str, args: &[&str]| {
        let store = p.dir.join(format!("{user}.db"));
        let mut c = Command::new(bin);
        c.args(["--store", store.to_str().unwrap(), "--jid", &format!("{user}@localhost"), "--password", password]);
        c.args(["--server", &p.server()]);
        c.args(args);
        c
    };
    // Dave waits for an invitation while Alice creates the group.
    let accept =
        common::spawn(tool("dave", "dave", &["accept-invite", "--from", "alice@localhost", "--seconds", "40"]));
    // Dave must be online (and have published his keys) before the invitation is encrypted for him.
    let mut ready = false;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(200));
        let log = std::fs::read_to_string(p.dir.join("prosody.log")).unwrap_or_default();
        if log.contains("dave@localhost") && log.contains("urn:xmpp:omemo:2:bundles") {
            ready = true;
            break;
        }
    }
    assert!(ready, "dave never published");
    std::thread::sleep(Duration::from_millis(500));
    let out = ran(tool("alice", "alice", &["create-group", "--invite", "dave@localhost"]));
    assert!(out.status.success(), "create-group: {}", String::from_utf8_lossy(&out.stderr));
    let room: String = serde_json::from_slice(&out.stdout).unwrap();
    let accepted = common::wait_within(accept, TOOL_SECONDS, "accept-invite").unwrap();
    assert!(accepted.status.success(), "accept-invite: {}", String::from_utf8_lossy(&accepted.stderr));
    assert_eq!(serde_json::from_slice::<String>(&accepted.stdout).unwrap(), room);
    let shown = String::from_utf8_lossy(&accepted.stderr);
    assert!(shown.contains("TrustedDevice(\"alice@localhost\")"), "{shown}");
    assert!(shown.contains("members-only: true; non-anonymous: true"), "{shown}");

    let out = ran(tool("alice", "alice", &["send", &room, "hello dave"]));
    assert!(out.status.success(), "send: {}", String::from_utf8_lossy(&out.stderr));
    let coverage: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(coverage["keyed"].as_array().unwrap().len(), 1, "{coverage}");

    let out = ran(tool("dave", "dave", &["listen", &room, "--seconds", "20", "--expect", "1"]));
    assert_eq!(out.status.code(), Some(0), "listen: {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let msg = lines.iter().find(|l| l["type"] == "message").unwrap();
    assert_eq!(
        (msg["text"].as_str(), msg["source"].as_str(), msg["from_jid"].as_str()),
        (Some("hello dave"), Some("mam"), Some("alice@localhost"))
    );
    // Seen once: listening again reports nothing new, and times out with 3.
    let out = ran(tool("dave", "dave", &["listen", &room, "--seconds", "3", "--expect", "1"]));
    assert_eq!(out.status.code(), Some(3));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("hello dave"));

    // Interactive chat: Dave types a line, then /quit; Alice reads it.
    let mut chat = tool("dave", "dave", &["chat", &room]);
    chat.stdin(std::process::Stdio::piped());
    let mut chat = common::spawn(chat);
    {
        use std::io::Write;
        let mut stdin = chat.stdin.take().unwrap();
        stdin.write_all(b"typed in chat\n/quit\n").unwrap();
    }
    let chatted = common::wait_within(chat, TOOL_SECONDS, "chat").unwrap();
    assert!(chatted.status.success(), "chat: {}", String::from_utf8_lossy(&chatted.stderr));
    let transcript = String::from_utf8_lossy(&chatted.stdout);
    assert!(!transcript.contains("hello dave"), "already read with listen, not shown again: {transcript}");
    assert!(transcript.contains("(sent to 1 devices)"), "{transcript}");
    let out = ran(tool("alice", "alice", &["listen", &room, "--seconds", "20", "--expect", "1"]));
    assert_eq!(out.status.code(), Some(0), "listen: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"text\":\"typed in chat\""));

    // The owner kicks Dave's occupant; he stays a member.
    let mut listening = common::spawn(tool("dave", "dave", &["listen", &room, "--seconds", "20"]));
    let mut last = String::new();
    let mut kicked = false;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(300));
        let out = ran(tool("alice", "alice", &["kick", &room, "dave"]));
        if out.status.success() {
            kicked = true;
            break;
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
    }
    assert!(kicked, "kick never succeeded: {last}");
    let _ = listening.kill();
    let heard = common::wait_within(listening, TOOL_SECONDS, "listen").unwrap();
    assert!(
        String::from_utf8_lossy(&heard.stdout).contains("\"reason\":\"kicked\""),
        "{}",
        String::from_utf8_lossy(&heard.stdout)
    );

    let out = ran(tool("alice", "wrong", &["join", &room]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("authentication"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut c = tool("alice", "alice", &["join", &room]);
    c.args(["--server", &format!("127.0.0.1:{closed}")]);
    let out = ran(c);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot connect"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

mod common;

/// A raw connection for a foreign client: IQs by id, everything else kept in order.
struct Raw {
    conn: std::sync::Arc<dyn omemo_muc::driver::Transport>,
    rx: UnboundedReceiver<minidom::Element>,
    backlog: std::collections::VecDeque<minidom::Element>,
    next: u32,
}

impl Raw {
    async fn send(&self, text: &str) {
        let e: minidom::Element = text.parse().unwrap_or_else(|e| panic!("{e}: {text}"));
        self.conn.send(e).await.unwrap();
    }

    async fn iq(&mut self, body: &str, to: &str, kind: &str) -> minidom::Element {
        let e = self.answer(body, to, kind).await;
        assert_ne!(e.attr("type"), Some("error"), "{}", String::from(&e));
        e
    }

    /// The answer to an IQ, whatever its type.
    async fn answer(&mut self, body: &str, to: &str, kind: &str) -> minidom::Element {
        self.next += 1;
        let id = format!("raw{}", self.next);
        self.send(&format!("<iq xmlns='jabber:client' type='{kind}' id='{id}' to='{to}'>{body}</iq>")).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let e = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("no answer to {id} within 10 s"))
                .unwrap();
            if e.name() == "iq" && e.attr("id") == Some(id.as_str()) {
                return e;
            }
            self.backlog.push_back(e);
        }
    }

    async fn next_where(&mut self, what: &str, pick: impl Fn(&minidom::Element) -> bool) -> minidom::Element {
        if let Some(i) = self.backlog.iter().position(&pick) {
            return self.backlog.remove(i).unwrap();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let e = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("{what}: nothing within 20 s"))
                .unwrap();
            if pick(&e) {
                return e;
            }
        }
    }
}

fn first_child_text(e: &minidom::Element, name: &str) -> String {
    fn find<'a>(e: &'a minidom::Element, name: &str) -> Option<&'a minidom::Element> {
        if e.name() == name {
            return Some(e);
        }
        e.children().find_map(|c| find(c, name))
    }
    String::from(find(e, name).unwrap_or_else(|| panic!("no <{name}> in {}", String::from(e))))
}

/// python-omemo (the oracle) as a member of a room on Prosody: its keys published through the server,
/// our encrypted invitation read by it, our group message decrypted by it, its group message decrypted
/// by us. The oracle does the cryptography and the OMEMO XML; this test only carries its stanzas.
// The guard only makes the other server tests wait on their own threads (each has its own runtime).
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oracle_in_a_room_on_prosody() {
    let _one = one_at_a_time();
    bounded("the_oracle_in_a_room_on_prosody", oracle_in_a_room()).await;
}

async fn oracle_in_a_room() {
    let p = Prosody::start("oracle");
    let s = common::Scratch::new("oracle-prosody");
    let dave = common::Oracle::with_ns(&s, "dave@localhost", "dave", "twomemo");
    let dave_id = dave.device_id();
    let pep = s.pep().join("dave@localhost/twomemo");
    let list = std::fs::read_to_string(pep.join("devicelist.xml")).unwrap();
    let bundle = std::fs::read_to_string(pep.join(format!("bundle-{dave_id}.xml"))).unwrap();

    // Dave's client: a raw connection that publishes what the oracle wrote into its PEP directory.
    let conn = connect("dave@localhost", "dave", &p.server(), Security::PlainLoopbackOnly, Duration::from_secs(15))
        .await
        .unwrap();
    let mut raw = Raw { conn: conn.transport, rx: conn.incoming, backlog: Default::default(), next: 0 };
    raw.send("<presence xmlns='jabber:client'/>").await;
    let options = |max: &str| {
        format!(
            "<publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
             <field var='pubsub#access_model'><value>open</value></field><field var='pubsub#max_items'><value>{max}</value></field></x></publish-options>"
        )
    };
    let publish = |node: &str, item: &str, payload: &str, max: &str| {
        format!(
            "<pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='{node}'><item id='{item}'>{}</item></publish>{}</pubsub>",
            payload.trim(),
            options(max)
        )
    };
    raw.iq(&publish("urn:xmpp:omemo:2:bundles", &dave_id.to_string(), &bundle, "max"), "dave@localhost", "set").await;
    raw.iq(&publish("urn:xmpp:omemo:2:devices", "current", &list, "1"), "dave@localhost", "set").await;

    // Alice (ours) makes a private group with Dave; the invitation goes to the oracle's device.
    let dir = p.dir.join("stores");
    std::fs::create_dir_all(&dir).unwrap();
    let (alice, mut alice_rx) = client(&p, "alice", &dir.join("alice.db"), NamespaceSet::BOTH).await;
    let created = alice.create_group(&["dave@localhost".into()], "alice", None).await.unwrap();
    let room = created.group.room.clone();
    assert_eq!(created.invited[0].1.as_ref().ok(), Some(&1), "{:?}", created.invited);

    // Alice's keys, as the server serves them, into the oracle's PEP directory.
    let answer = raw
        .iq(
            "<pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='urn:xmpp:omemo:2:devices'/></pubsub>",
            "alice@localhost",
            "get",
        )
        .await;
    let alice_pep = s.pep().join("alice@localhost/twomemo");
    std::fs::create_dir_all(&alice_pep).unwrap();
    std::fs::write(alice_pep.join("devicelist.xml"), first_child_text(&answer, "devices")).unwrap();
    let alice_id = alice.with_store(|st| st.account().unwrap().unwrap().device_id).await.unwrap();
    let answer = raw
        .iq(
            &format!("<pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='urn:xmpp:omemo:2:bundles'><item id='{alice_id}'/></items></pubsub>"),
            "alice@localhost",
            "get",
        )
        .await;
    std::fs::write(alice_pep.join(format!("bundle-{alice_id}.xml")), first_child_text(&answer, "bundle")).unwrap();

    let invitation = raw
        .next_where("the invitation", |e| e.name() == "message" && e.children().any(|c| c.name() == "encrypted"))
        .await;
    let read = dave.decrypt(&String::from(&invitation), "alice@localhost").unwrap();
    use base64::Engine as _;
    let envelope = base64::engine::general_purpose::STANDARD.decode(read["plaintext_b64"].as_str().unwrap()).unwrap();
    let envelope = String::from_utf8(envelope).unwrap();
    assert!(envelope.contains("jabber:x:conference") && envelope.contains(&room), "{envelope}");
    assert_eq!(read["kex"], true);
    assert_eq!(read["sce"]["from"], "alice@localhost");
    // python-omemo answers the key exchange at once (session completion): carried to Alice.
    for auto in read["auto_sent"].as_array().unwrap() {
        raw.send(auto["stanza"].as_str().unwrap()).await;
    }

    // Dave joins; Alice writes; the oracle decrypts what the room delivered.
    raw.send(&format!(
        "<presence xmlns='jabber:client' to='{room}/dave'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
    ))
    .await;
    raw.next_where("dave's self-presence", |e| {
        e.name() == "presence" && e.attr("type").is_none() && String::from(e).contains("code='110'")
            || String::from(e).contains("code=\"110\"")
    })
    .await;
    alice.send_confirmed(&room, "hello python", Duration::from_secs(20)).await.unwrap();
    let live = raw
        .next_where("alice's message", |e| {
            e.attr("type") == Some("groupchat") && e.children().any(|c| c.name() == "encrypted")
        })
        .await;
    let read = dave.decrypt(&String::from(&live), "alice@localhost").unwrap();
    assert_eq!(read["plaintext"], "hello python");
    assert_eq!(read["sce"]["to"], room.as_str());

    // The oracle writes to the room; Alice decrypts it, attributed to Dave.
    let stanza = dave.encrypt_with(&["alice@localhost"], "hello from python", &["--room", &room, "--sce-to", &room]);
    let stanza = stanza.trim().lines().next().unwrap().to_owned();
    let stanza = if stanza.contains("<message xmlns=") {
        stanza
    } else {
        stanza.replacen("<message ", "<message xmlns='jabber:client' ", 1)
    };
    raw.send(&stanza).await;
    let (from, text, source, ns) = next(&mut alice_rx, "alice reads the oracle", message).await;
    assert_eq!(
        (from.as_str(), text.as_str(), source, ns),
        ("dave@localhost", "hello from python", Source::Live, Namespace::Twomemo)
    );
}
