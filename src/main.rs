//! `omemo-muc`: the command-line tool.
//!
//! ```text
//! omemo-muc --store FILE --jid BAREJID <command> [options]
//!   init [--ns oldmemo|twomemo|both]
//!   publish --pep DIR
//!   encrypt --pep DIR --to JID[,JID...] [--room ROOMJID] [--id ID] [--ns auto|oldmemo|twomemo] [--plaintext TEXT]
//!   decrypt --pep DIR [--sender BAREJID]                                                  (stanza on stdin)
//!   fingerprint
//!   devices [--peer JID]
//!   trust --peer JID --device ID --level verified|distrusted|blind
//!
//! omemo-muc --store FILE --jid BAREJID --password PASS --server HOST:PORT [--insecure-plain] [--nick NICK]
//!           [--muc SERVICE] <online command>
//!   create-group --invite JID[,JID...]       prints the room JID
//!   accept-invite [--from JID] --seconds N  waits for an invitation, shows it on stderr, joins; prints the room
//!   join ROOM                               joins, reads the archive; prints its events (JSON lines)
//!   send ROOM TEXT                          joins if needed, sends, waits for the reflection; prints coverage
//!   listen ROOM --seconds N [--expect K]    JSON line per event; exit 0 after K messages from others, 3 on timeout
//!   chat ROOM                               interactive: history, then live; each line typed is sent
//!   ban ROOM JID | kick ROOM NICK
//!   (plain TCP only to loopback addresses unless --insecure-plain; STARTTLS otherwise)
//!
//! omemo-muc demo [--crowd N]
//!   the demo: an in-process server, a private group of five devices (both namespaces), a ban, a
//!   catch-up from the archive, and a room of N members (default 1000)
//!
//! omemo-muc bench fanout --devices N --store sqlite|memory [--cold] [--runs N] [--json]
//!   the whole send path (resolve, wrap, stanza, commit) to N devices: median time per message
//!
//! omemo-muc inspect-room --own-jid BAREJID --room ROOMJID [FILE] [--sender-of ID] [--allow-open-rooms]
//!   replays captured stanzas (FILE, else stdin) into the room model; prints eligibility, recipients,
//!   exclusions, occupants, and with --sender-of the attribution of that message
//! ```
//! Output is JSON (the stanza for `encrypt`). Errors print `{"error", "detail"}` and exit 1 (usage,
//! environment) or 2 (the operation was refused, e.g. a message that does not decrypt).
#![forbid(unsafe_code)]

use std::{collections::HashMap, io::Read, process::ExitCode};

use omemo_muc::{
    cli::{CliError, Context},
    fan_out_encryptor::NamespaceChoice,
    participant_resolver::Policy,
    pep_dir::PepDir,
    session_store::{NamespaceSet, TrustLevel},
};
use serde_json::json;

const USAGE: &str = "usage: omemo-muc --store FILE --jid BAREJID \
                     <init|publish|encrypt|decrypt|fingerprint|devices|trust> [options]\n       \
                     omemo-muc inspect-room --own-jid BAREJID --room ROOMJID [FILE] [--sender-of ID] [--allow-open-rooms]";

/// Options that take a value; everything else is the command.
const VALUED: &[&str] = &[
    "--store",
    "--jid",
    "--pep",
    "--to",
    "--room",
    "--id",
    "--plaintext",
    "--sender",
    "--peer",
    "--device",
    "--level",
    "--ns",
    "--own-jid",
    "--room-jid",
    "--sender-of",
    "--devices",
    "--runs",
    "--crowd",
    "--password",
    "--server",
    "--invite",
    "--from",
    "--seconds",
    "--expect",
    "--nick",
    "--muc",
];

/// Flags without a value.
const SWITCHES: &[&str] = &["--allow-open-rooms", "--cold", "--json", "--insecure-plain"];

/// Commands that go online (need --password and --server).
const ONLINE: &[&str] = &["create-group", "accept-invite", "join", "send", "listen", "chat", "ban", "kick"];

struct Args {
    command: String,
    opts: HashMap<String, Vec<String>>,
    switches: Vec<String>,
    positional: Vec<String>,
}

impl Args {
    fn parse(argv: Vec<String>) -> Result<Self, CliError> {
        let mut command = None;
        let mut opts: HashMap<String, Vec<String>> = HashMap::new();
        let mut switches = Vec::new();
        let mut positional = Vec::new();
        let mut it = argv.into_iter();
        while let Some(a) = it.next() {
            if a == "-h" || a == "--help" {
                return Err(CliError::usage(USAGE));
            }
            let (name, inline) = match a.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
                _ => (a.clone(), None),
            };
            if VALUED.contains(&name.as_str()) {
                let v = match inline {
                    Some(v) => v,
                    None => it.next().ok_or_else(|| CliError::usage(format!("{name} needs a value")))?,
                };
                opts.entry(name).or_default().push(v);
            } else if SWITCHES.contains(&name.as_str()) {
                switches.push(name);
            } else if name.starts_with('-') {
                return Err(CliError::usage(format!("unknown option {name}\n{USAGE}")));
            } else if command.is_none() {
                command = Some(a);
            } else {
                positional.push(a);
            }
        }
        Ok(Self { command: command.ok_or_else(|| CliError::usage(USAGE))?, opts, switches, positional })
    }

    fn one(&self, name: &str) -> Option<&str> {
        self.opts.get(name).and_then(|v| v.last()).map(String::as_str)
    }

    fn need(&self, name: &str) -> Result<&str, CliError> {
        self.one(name).ok_or_else(|| CliError::usage(format!("{} needs {name}", self.command)))
    }

    /// Comma-separated and repeatable.
    fn list(&self, name: &str) -> Vec<String> {
        self.opts
            .get(name)
            .into_iter()
            .flatten()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

fn stdin_text() -> Result<String, CliError> {
    let mut s = String::new();
    std::io::stdin()
        .take(16 * 1024 * 1024)
        .read_to_string(&mut s)
        .map_err(|e| CliError::usage(format!("reading stdin: {e}")))?;
    Ok(s)
}

fn inspect_room(args: &Args) -> Result<String, CliError> {
    // `--room` is also `encrypt`'s option; inspect-room takes the room's JID there too.
    let room =
        args.one("--room").or(args.one("--room-jid")).ok_or_else(|| CliError::usage("inspect-room needs --room"))?;
    let own = args.need("--own-jid")?;
    let text = match args.positional.as_slice() {
        [] => stdin_text()?,
        [file] => std::fs::read_to_string(file).map_err(|e| CliError::usage(format!("{file}: {e}")))?,
        _ => return Err(CliError::usage("inspect-room reads one file (or stdin)")),
    };
    let stanzas = omemo_muc::inspect::parse_stream(&text)?;
    let policy = Policy { allow_open_rooms: args.switches.iter().any(|s| s == "--allow-open-rooms") };
    Ok(omemo_muc::inspect::inspect(room, own, policy, &stanzas, args.one("--sender-of")).to_string())
}

fn bench(args: &Args) -> Result<String, CliError> {
    if args.positional.first().map(String::as_str) != Some("fanout") {
        return Err(CliError::usage(
            "usage: omemo-muc bench fanout --devices N --store sqlite|memory [--cold] [--runs N] [--json]",
        ));
    }
    let devices: usize = args
        .need("--devices")?
        .parse()
        .ok()
        .filter(|n| (1..=100_000).contains(n))
        .ok_or_else(|| CliError::usage("--devices must be a number from 1 to 100000"))?;
    let sqlite = match args.one("--store").unwrap_or("sqlite") {
        "sqlite" => true,
        "memory" => false,
        other => return Err(CliError::usage(format!("--store must be sqlite or memory, not {other:?}"))),
    };
    let has = |s: &str| args.switches.iter().any(|x| x == s);
    let runs = match args.one("--runs") {
        None => None,
        Some(r) => Some(
            r.parse::<usize>()
                .ok()
                .filter(|n| (1..=10_000).contains(n))
                .ok_or_else(|| CliError::usage("--runs must be a number from 1 to 10000"))?,
        ),
    };
    let f = omemo_muc::benchmark::measure(devices, sqlite, has("--cold"), runs, &mut rand_core::OsRng)
        .map_err(|e| CliError::usage(format!("benchmark failed: {e}")))?;
    Ok(if has("--json") {
        json!({"devices": f.devices, "store": f.store, "cold": f.cold, "median_ms": f.median_ms,
               "min_ms": f.min_ms, "mean_ms": f.mean_ms, "max_ms": f.max_ms,
               "per_device_us": f.per_device_us, "runs": f.runs,
               "peak_rss_mib": f.peak_rss_mib})
        .to_string()
    } else {
        format!(
            "{} devices, {} store, {}: median {:.2} ms per message ({:.2} µs per device, fastest {:.2} ms, mean \
             {:.2} ms, slowest {:.2} ms) over {} messages{}",
            f.devices,
            f.store,
            if f.cold { "cold start" } else { "steady state" },
            f.median_ms,
            f.per_device_us,
            f.min_ms,
            f.mean_ms,
            f.max_ms,
            f.runs,
            f.peak_rss_mib.map(|m| format!("; peak resident memory {m:.1} MiB")).unwrap_or_default()
        )
    })
}

fn demo(args: &Args) -> Result<String, CliError> {
    let crowd: usize = args
        .one("--crowd")
        .unwrap_or("1000")
        .parse()
        .ok()
        .filter(|n| *n <= 20_000)
        .ok_or_else(|| CliError::usage("--crowd must be a number from 0 to 20000"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::usage(format!("tokio runtime: {e}")))?;
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    runtime.block_on(omemo_muc::demo::run(&mut stdout, &mut stderr, crowd)).map_err(|e| CliError {
        kind: "demo",
        detail: e.to_string(),
        code: 1,
    })?;
    Ok(String::new())
}

#[cfg(feature = "xmpp")]
fn online(args: &Args) -> Result<i32, CliError> {
    let jid = args.need("--jid")?.to_owned();
    if jid.contains('/') || !jid.contains('@') {
        return Err(CliError::usage(format!("--jid must be a bare JID, got {jid:?}")));
    }
    let domain = jid.split_once('@').map(|(_, d)| d.to_owned()).unwrap_or_default();
    let number = |name: &str| -> Result<Option<u64>, CliError> {
        args.one(name)
            .map(|v| v.parse::<u64>().map_err(|_| CliError::usage(format!("{name} must be a number"))))
            .transpose()
    };
    let login = omemo_muc::online::Login {
        store: args.need("--store")?.to_owned(),
        nick: args.one("--nick").map(str::to_owned).unwrap_or_else(|| jid.split('@').next().unwrap_or("me").to_owned()),
        muc_service: args.one("--muc").map(str::to_owned).unwrap_or_else(|| format!("conference.{domain}")),
        jid,
        password: args.need("--password")?.to_owned(),
        server: args.need("--server")?.to_owned(),
        insecure_plain: args.switches.iter().any(|s| s == "--insecure-plain"),
    };
    let opts = omemo_muc::online::OnlineOptions {
        invite: args.list("--invite"),
        from: args.one("--from").map(str::to_owned),
        seconds: number("--seconds")?.map(|s| s.min(86_400)),
        expect: number("--expect")?.map(|k| k as usize),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::usage(format!("tokio runtime: {e}")))?;
    // Every command is bounded: the longest wait asked for, plus a minute for connecting and joining.
    let bound = std::time::Duration::from_secs(opts.seconds.unwrap_or(30) + 60);
    runtime.block_on(async {
        match tokio::time::timeout(bound, omemo_muc::online::run(&login, &args.command, &args.positional, &opts)).await
        {
            Ok(r) => r,
            Err(_) => {
                Err(CliError { kind: "timeout", detail: format!("gave up after {} s", bound.as_secs()), code: 3 })
            }
        }
    })
}

#[cfg(not(feature = "xmpp"))]
fn online(_: &Args) -> Result<i32, CliError> {
    Err(CliError::usage("this build has no XMPP transport (feature `xmpp`)"))
}

fn run(args: &Args) -> Result<String, CliError> {
    if args.command == "demo" {
        return demo(args);
    }
    if args.command == "inspect-room" {
        return inspect_room(args);
    }
    if args.command == "bench" {
        return bench(args);
    }
    if let Some(extra) = args.positional.first() {
        return Err(CliError::usage(format!("unexpected argument {extra:?}\n{USAGE}")));
    }
    let mut ctx = Context::open(args.need("--store")?, args.need("--jid")?)?;
    let pep = || args.need("--pep").map(PepDir::new);
    let out = match args.command.as_str() {
        "init" => {
            let ns = args.one("--ns").unwrap_or("both");
            ctx.init(NamespaceSet::parse(ns).ok_or_else(|| CliError::usage("--ns must be oldmemo, twomemo or both"))?)?
        }
        "fingerprint" => ctx.fingerprint()?,
        "publish" => ctx.publish(&pep()?)?,
        "encrypt" => {
            let to = args.list("--to");
            if to.is_empty() {
                return Err(CliError::usage("encrypt needs --to JID[,JID...]"));
            }
            let text = match args.one("--plaintext") {
                Some(t) => t.to_owned(),
                None => stdin_text()?,
            };
            let choice = NamespaceChoice::parse(args.one("--ns").unwrap_or("auto"))
                .ok_or_else(|| CliError::usage("--ns must be auto, oldmemo or twomemo"))?;
            let (stanza, _coverage) = ctx.encrypt(&pep()?, &to, args.one("--room"), args.one("--id"), &text, choice)?;
            return Ok(stanza);
        }
        "decrypt" => ctx.decrypt(&pep()?, &stdin_text()?, args.one("--sender"))?,
        "devices" => ctx.devices(args.one("--peer"))?,
        "trust" => {
            let device = args.need("--device")?.parse().map_err(|_| CliError::usage("--device must be a number"))?;
            let level = TrustLevel::parse(args.need("--level")?)
                .ok_or_else(|| CliError::usage("--level must be verified, distrusted or blind"))?;
            ctx.trust(args.need("--peer")?, device, level)?
        }
        other => return Err(CliError::usage(format!("unknown command {other:?}\n{USAGE}"))),
    };
    Ok(out.to_string())
}

fn main() -> ExitCode {
    let args = Args::parse(std::env::args().skip(1).collect());
    if let Ok(a) = &args {
        if ONLINE.contains(&a.command.as_str()) {
            return match online(a) {
                Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
                Err(e) => {
                    println!("{}", json!({"error": e.kind, "detail": e.detail}));
                    eprintln!("omemo-muc: {}: {}", e.kind, e.detail);
                    ExitCode::from(u8::try_from(e.code).unwrap_or(1))
                }
            };
        }
    }
    let result = args.and_then(|a| run(&a));
    match result {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let body = json!({"error": e.kind, "detail": e.detail});
            if e.code == 2 {
                println!("{body}");
            }
            eprintln!("omemo-muc: {}: {}", e.kind, e.detail);
            ExitCode::from(u8::try_from(e.code).unwrap_or(1))
        }
    }
}
