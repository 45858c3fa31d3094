//! The command-line tool's online commands: the driver over a real XMPP connection.
//!
//! Every command is bounded in time; events print as one JSON object per line.

use std::{
    io::{BufRead, Write},
    time::Duration,
};

use serde_json::{json, Value};
use session_store::{Namespace, SqliteStore, TrustLevel};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::{
    cli::CliError,
    driver::{Config, DriverError, Event, OmemoMuc, RoomChange, Sent},
    xmpp::{connect, Security},
};

type Db = SqliteStore<rusqlite::Connection>;

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct Login {
    /// The SQLite store file.
    pub store: String,
    /// Our bare JID.
    pub jid: String,
    /// The password.
    pub password: String,
    /// `HOST:PORT`.
    pub server: String,
    /// Plain TCP to a non-loopback address allowed.
    pub insecure_plain: bool,
    /// Our nick in rooms.
    pub nick: String,
    /// The MUC service for new groups.
    pub muc_service: String,
}

fn refused(kind: &'static str, e: impl ToString) -> CliError {
    CliError { kind, detail: e.to_string(), code: 2 }
}

impl From<DriverError> for CliError {
    fn from(e: DriverError) -> Self {
        let kind = match &e {
            DriverError::Transport(_) => "connection",
            DriverError::JoinRefused(_) => "join",
            DriverError::Timeout(_) => "timeout",
            _ => "refused",
        };
        refused(kind, e)
    }
}

fn ns_name(ns: Namespace) -> &'static str {
    match ns {
        Namespace::Oldmemo => "oldmemo",
        _ => "twomemo",
    }
}

fn trust_name(t: TrustLevel) -> &'static str {
    match t {
        TrustLevel::Verified => "verified",
        TrustLevel::Blind => "blind",
        TrustLevel::Undecided => "undecided",
        TrustLevel::Distrusted => "distrusted",
        _ => "unknown",
    }
}

/// One event as a JSON object (`None` for events the tool does not show).
pub fn event_json(e: &Event) -> Option<Value> {
    Some(match e {
        Event::Message(m) => json!({
            "type": "message", "room": m.room, "from_jid": m.from_jid, "nick": m.nick, "device": m.device,
            "namespace": ns_name(m.namespace), "trust": trust_name(m.trust), "text": m.text,
            "source": m.source.as_str(), "stanza_id": m.stanza_id,
        }),
        Event::Reflection { room, id, stanza_id, source } => json!({
            "type": "reflection", "room": room, "id": id, "stanza_id": stanza_id, "source": source.as_str(),
        }),
        Event::Undecryptable { room, from_jid, nick, cause, source } => json!({
            "type": "undecryptable", "room": room, "from_jid": from_jid, "nick": nick,
            "cause": format!("{cause:?}"), "source": source.as_str(),
        }),
        Event::IdentityChanged { jid, device } => json!({"type": "identity_changed", "jid": jid, "device": device}),
        Event::Room { room, change } => match change {
            RoomChange::Affiliation { jid, affiliation } => json!({
                "type": "affiliation", "room": room, "jid": jid, "affiliation": affiliation.as_str(),
            }),
            RoomChange::Configuration => json!({"type": "room_configuration", "room": room}),
            RoomChange::Left(why) => json!({"type": "left", "room": room, "reason": why}),
        },
        Event::Invitation { from, invitation } => json!({
            "type": "invitation", "from": from, "room": invitation.room,
            "invited_by": format!("{:?}", invitation.invited_by), "encrypted": invitation.encrypted,
        }),
        Event::Disconnected => json!({"type": "disconnected"}),
        Event::Error { context, detail } => json!({"type": "error", "context": context, "detail": detail}),
        _ => return None,
    })
}

/// The coverage report of a send, as JSON.
pub fn coverage_json(sent: &Sent) -> Value {
    let keyed: Vec<Value> = sent
        .coverage
        .keyed
        .iter()
        .map(|(a, kex)| json!({"jid": a.jid.as_str(), "device": a.device, "namespace": ns_name(a.namespace), "kex": kex}))
        .collect();
    let members: Vec<Value> =
        sent.coverage.members_left_out.iter().map(|(j, why)| json!({"jid": j, "reason": format!("{why:?}")})).collect();
    let devices: Vec<Value> = sent
        .coverage
        .devices_left_out
        .iter()
        .map(|(a, why)| json!({"jid": a.jid.as_str(), "device": a.device, "reason": format!("{why:?}")}))
        .collect();
    json!({"id": sent.id, "stanza_id": sent.stanza_id, "keyed": keyed, "members_left_out": members,
           "devices_left_out": devices})
}

async fn start(login: &Login) -> Result<(OmemoMuc<Db>, UnboundedReceiver<Event>), CliError> {
    let store = SqliteStore::open(&login.store).map_err(|e| CliError::usage(format!("store: {e}")))?;
    let security = if login.insecure_plain {
        Security::PlainAnywhere
    } else if crate::xmpp::is_loopback(login.server.rsplit_once(':').map(|(h, _)| h).unwrap_or(&login.server)) {
        Security::PlainLoopbackOnly
    } else {
        Security::StartTls
    };
    let conn = connect(&login.jid, &login.password, &login.server, security, Duration::from_secs(15))
        .await
        .map_err(|e| refused("connection", e))?;
    let mut config = Config::new(&login.muc_service);
    config.namespaces = session_store::NamespaceSet::BOTH;
    let (driver, events, _) = OmemoMuc::start(conn, store, config).await?;
    Ok((driver, events))
}

fn print(out: &mut impl Write, v: &Value) {
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// Runs an online command; returns the exit code.
pub async fn run(login: &Login, command: &str, args: &[String], opts: &OnlineOptions) -> Result<i32, CliError> {
    let (driver, mut events) = start(login).await?;
    let mut out = std::io::stdout();
    let code = match command {
        "create-group" => {
            if opts.invite.is_empty() {
                return Err(CliError::usage("create-group needs --invite JID[,JID...]"));
            }
            let created = driver.create_group(&opts.invite, &login.nick, None).await?;
            for (who, r) in &created.invited {
                if let Err(e) = r {
                    eprintln!("omemo-muc: invitation to {who} not sent: {e}");
                }
            }
            print(&mut out, &json!(created.group.room));
            0
        }
        "accept-invite" => {
            let wait = Duration::from_secs(opts.seconds.unwrap_or(30));
            let deadline = tokio::time::Instant::now() + wait;
            let invitation = loop {
                match tokio::time::timeout_at(deadline, events.recv()).await {
                    Ok(Some(Event::Invitation { from, invitation })) => {
                        let wanted = opts.from.as_deref().is_none_or(|f| participant_resolver::xml::bare(&from) == f);
                        if wanted {
                            break invitation;
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => return Err(refused("connection", "the connection ended")),
                    Err(_) => {
                        eprintln!("omemo-muc: no invitation within {} s", wait.as_secs());
                        driver.close().await;
                        return Ok(3);
                    }
                }
            };
            let (members_only, non_anonymous) = match (invitation.members_only, invitation.non_anonymous) {
                (Some(m), Some(n)) => (m, n),
                _ => driver.room_safety(&invitation.room).await?,
            };
            eprintln!(
                "invitation to {} from {:?}; encrypted: {}; members-only: {members_only}; non-anonymous: {non_anonymous}",
                invitation.room, invitation.invited_by, invitation.encrypted,
            );
            if !(members_only && non_anonymous) {
                // OMEMO in a room that is open or hides real JIDs would encrypt to people nobody chose.
                eprintln!("omemo-muc: not joining: the room is not members-only and non-anonymous");
                driver.close().await;
                return Ok(2);
            }
            driver.join(&invitation.room, &login.nick).await?;
            print(&mut out, &json!(invitation.room));
            0
        }
        "join" => {
            let room = one_arg(args, "join ROOM")?;
            driver.join(room, &login.nick).await?;
            while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(300), events.recv()).await {
                if let Some(v) = event_json(&e) {
                    print(&mut out, &v);
                }
            }
            0
        }
        "send" => {
            let [room, text] = args else { return Err(CliError::usage("send ROOM TEXT")) };
            driver.join(room, &login.nick).await?;
            let sent = driver.send_confirmed(room, text, Duration::from_secs(opts.seconds.unwrap_or(15))).await?;
            print(&mut out, &coverage_json(&sent));
            0
        }
        "listen" => {
            let room = one_arg(args, "listen ROOM --seconds N [--expect K]")?;
            let wait = Duration::from_secs(opts.seconds.unwrap_or(30));
            let deadline = tokio::time::Instant::now() + wait;
            driver.join(room, &login.nick).await?;
            let mut decrypted = 0usize;
            let mut code = 3;
            if opts.expect == Some(0) {
                code = 0;
            }
            while code != 0 {
                match tokio::time::timeout_at(deadline, events.recv()).await {
                    Ok(Some(e)) => {
                        if let Some(v) = event_json(&e) {
                            print(&mut out, &v);
                        }
                        if matches!(&e, Event::Message(m) if m.from_jid != login.jid) {
                            decrypted += 1;
                            if opts.expect.is_some_and(|k| decrypted >= k) {
                                code = 0;
                            }
                        }
                    }
                    Ok(None) => return Err(refused("connection", "the connection ended")),
                    Err(_) => break,
                }
            }
            if opts.expect.is_none() {
                code = 0;
            }
            code
        }
        "chat" => {
            let room = one_arg(args, "chat ROOM")?.to_owned();
            driver.join(&room, &login.nick).await?;
            chat(&driver, &room, events).await?;
            0
        }
        "ban" => {
            let [room, jid] = args else { return Err(CliError::usage("ban ROOM JID")) };
            // Servers take moderation from occupants: join first.
            driver.join(room, &login.nick).await?;
            driver.ban(room, jid).await?;
            0
        }
        "kick" => {
            let [room, nick] = args else { return Err(CliError::usage("kick ROOM NICK")) };
            driver.join(room, &login.nick).await?;
            driver.kick(room, nick).await?;
            0
        }
        other => return Err(CliError::usage(format!("unknown online command {other:?}"))),
    };
    driver.close().await;
    Ok(code)
}

fn one_arg<'a>(args: &'a [String], usage: &str) -> Result<&'a str, CliError> {
    match args {
        [a] => Ok(a),
        _ => Err(CliError::usage(usage)),
    }
}

/// Options of the online commands.
#[derive(Debug, Clone, Default)]
pub struct OnlineOptions {
    /// `--invite`.
    pub invite: Vec<String>,
    /// `--from`.
    pub from: Option<String>,
    /// `--seconds`.
    pub seconds: Option<u64>,
    /// `--expect`.
    pub expect: Option<usize>,
}

/// What the chat does with one event of the driver (`None`: the driver stopped): prints it to `out`,
/// and says whether the chat ends. `ended` keeps why the connection ended, for the error that ends the
/// chat when the driver reports the disconnection.
fn chat_event(e: Option<Event>, ended: &mut Option<String>, out: &mut impl Write) -> Option<Result<(), CliError>> {
    // (A line that cannot be written to the terminal is lost; the chat goes on.)
    match e {
        Some(Event::Message(m)) => {
            let mark = match m.trust {
                TrustLevel::Verified => "✓",
                TrustLevel::Blind => "·",
                _ => "!",
            };
            let from = m.nick.clone().unwrap_or(m.from_jid.clone());
            let when = if m.source == crate::driver::Source::Archive { " (history)" } else { "" };
            let _ = writeln!(out, "{mark} {from}{when}: {}", m.text);
        }
        Some(Event::Undecryptable { from_jid, cause, .. }) => {
            let _ = writeln!(out, "! {}: (cannot decrypt: {cause:?})", from_jid.unwrap_or_default());
        }
        Some(Event::Room { change: RoomChange::Left(why), .. }) => {
            let _ = writeln!(out, "-- you are out of the room: {why}");
            return Some(Ok(()));
        }
        Some(Event::Error { context, detail }) if context == "connection" => *ended = Some(detail),
        Some(Event::Error { context, detail }) => {
            let _ = writeln!(out, "-- {context}: {detail}");
        }
        Some(Event::Disconnected) | None => {
            let why = match ended.take() {
                Some(why) => format!("the connection ended: {why}"),
                None => "the connection ended".to_owned(),
            };
            return Some(Err(refused("connection", why)));
        }
        Some(_) => {}
    }
    None
}

/// Interactive line mode: the room's events print as they come (sender, trust, text); each line typed is
/// sent; `/quit` or the end of input leaves.
async fn chat(driver: &OmemoMuc<Db>, room: &str, mut events: UnboundedReceiver<Event>) -> Result<(), CliError> {
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut ended = None;
    loop {
        tokio::select! {
            e = events.recv() => {
                if let Some(done) = chat_event(e, &mut ended, &mut std::io::stdout().lock()) {
                    return done;
                }
            },
            line = lines.recv() => match line {
                Some(l) if l.trim() == "/quit" => return Ok(()),
                Some(l) if l.trim().is_empty() => {}
                Some(l) => match driver.send(room, &l).await {
                    Ok(sent) => println!("  (sent to {} devices)", sent.coverage.keyed.len()),
                    Err(e) => println!("  (not sent: {e})"),
                },
                None => return Ok(()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chat prints other errors as they come, and ends with the reason the connection ended.
    #[test]
    fn the_chat_ends_with_the_reason_the_connection_ended() {
        let mut ended = None;
        let mut out = Vec::new();
        let error = |context: &str, detail: &str| Some(Event::Error { context: context.into(), detail: detail.into() });
        assert!(chat_event(error("send", "not sent: x"), &mut ended, &mut out).is_none());
        assert!(chat_event(error("connection", "the server ended the stream: system-shutdown"), &mut ended, &mut out)
            .is_none());
        match chat_event(Some(Event::Disconnected), &mut ended, &mut out) {
            Some(Err(e)) => {
                assert_eq!(e.kind, "connection");
                assert_eq!(e.detail, "the connection ended: the server ended the stream: system-shutdown");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(String::from_utf8(out).ok().as_deref(), Some("-- send: not sent: x\n"));
        // Without a reason (the driver stopped), the chat still ends with an error.
        assert!(
            matches!(chat_event(None, &mut ended, &mut Vec::new()), Some(Err(e)) if e.detail == "the connection ended")
        );
    }
}
