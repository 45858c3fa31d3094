//! A [`Transport`] over a real XMPP connection (tokio-xmpp): STARTTLS, or plain TCP where allowed.
//!
//! One task owns the tokio-xmpp client: it writes what the driver sends and forwards every stanza that
//! arrives, in order. The connection is not re-established by itself: when it ends, the incoming stream
//! ends and the driver reports [`crate::driver::Event::Disconnected`], after an error event that says
//! why. tokio-xmpp reconnects on its own after a break; a stream resumed by stream management
//! (XEP-0198) goes on, but a new stream ends the connection (the server has forgotten our room
//! presences, and answers to requests in flight are lost), and so does a stanza that is not written
//! within the connection's timeout (tokio-xmpp would hold it until the server is back, for ever).

use std::{
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use futures_util::StreamExt;
use minidom::Element;
use sasl::common::Credentials;
use tokio::sync::{mpsc, oneshot};
use tokio_xmpp::{
    connect::{DnsConfig, ServerConnector, StartTlsServerConnector, TcpServerConnector},
    jid::Jid,
    parsers::stream_features::StreamFeatures,
    xmlstream::{Timeouts, XmppStream},
    Client, Event as XmppEvent, Stanza,
};

use crate::driver::transport::{BoxFuture, Connection, Transport, TransportError};

/// How to secure the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// STARTTLS, with the system's certificate roots.
    StartTls,
    /// Plain TCP, refused unless the server address is a loopback address.
    PlainLoopbackOnly,
    /// Plain TCP anywhere (`--insecure-plain`).
    PlainAnywhere,
}

enum Command {
    Send(Element, oneshot::Sender<Result<(), TransportError>>),
    Close(oneshot::Sender<()>),
}

#[derive(Debug)]
struct XmppTransport {
    jid: String,
    commands: mpsc::UnboundedSender<Command>,
    /// Why the connection ended by itself (set by the connection's task before `incoming` ends).
    end_reason: Arc<Mutex<Option<String>>>,
}

impl Transport for XmppTransport {
    fn jid(&self) -> &str {
        &self.jid
    }

    fn send(&self, stanza: Element) -> BoxFuture<'_, Result<(), TransportError>> {
        let (tx, rx) = oneshot::channel();
        let queued = self.commands.send(Command::Send(stanza, tx));
        Box::pin(async move {
            queued.map_err(|_| TransportError::Closed)?;
            rx.await.map_err(|_| TransportError::Closed)?
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        let (tx, rx) = oneshot::channel();
        let queued = self.commands.send(Command::Close(tx)).is_ok();
        Box::pin(async move {
            if queued {
                let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
            }
        })
    }

    fn end_reason(&self) -> Option<String> {
        self.end_reason.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Splits `host:port` (a bare host gets 5222).
fn host_port(server: &str) -> Result<(String, u16), TransportError> {
    let bad = || TransportError::Refused(format!("server address {server:?}: expected HOST:PORT"));
    match server.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => {
            Ok((h.trim_start_matches('[').trim_end_matches(']').to_owned(), p.parse().map_err(|_| bad())?))
        }
        Some(_) => Err(bad()),
        None if !server.is_empty() => Ok((server.to_owned(), 5222)),
        None => Err(bad()),
    }
}

/// Is `host` a loopback address (or `localhost`)?
pub fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Connects and authenticates once (then closes): wrong credentials and connection failures become
/// errors here, where tokio-xmpp's client would retry without end.
async fn check_login<C: ServerConnector>(
    connector: C,
    jid: &Jid,
    password: &str,
    server: &str,
    timeout: Duration,
) -> Result<(), TransportError> {
    let username = jid
        .node()
        .map(|n| n.as_str().to_owned())
        .ok_or_else(|| TransportError::Refused(format!("{jid} has no local part")))?;
    let attempt = async {
        let (pending, binding) = connector
            .connect(jid, "jabber:client", Timeouts::default())
            .await
            .map_err(|e| TransportError::Refused(format!("cannot connect to {server}: {e}")))?;
        let (features, stream): (StreamFeatures, XmppStream<C::Stream>) = pending
            .recv_features()
            .await
            .map_err(|e| TransportError::Refused(format!("cannot connect to {server}: {e}")))?;
        let creds =
            Credentials::default().with_username(username).with_password(password).with_channel_binding(binding);
        match tokio_xmpp::client_login(stream, features.sasl_mechanisms, creds).await {
            Ok(_) => Ok(()),
            Err(tokio_xmpp::Error::Auth(e)) => Err(TransportError::Refused(format!("authentication failed: {e}"))),
            Err(e) => Err(TransportError::Refused(format!("cannot log in at {server}: {e}"))),
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| TransportError::Refused(format!("no answer from {server} within {} s", timeout.as_secs())))?
}

/// Connects and logs in as `jid` (a bare JID gets a random resource from the server) at `server`
/// (`HOST:PORT`), waiting at most `timeout` for the session. Wrong credentials, an unreachable server
/// and a refused plain connection are distinct errors. `timeout` also bounds the writing of each stanza
/// afterwards: one not written in time ends the connection.
pub async fn connect(
    jid: &str,
    password: &str,
    server: &str,
    security: Security,
    timeout: Duration,
) -> Result<Connection, TransportError> {
    let (host, port) = host_port(server)?;
    let jid: Jid = jid.parse().map_err(|e| TransportError::Refused(format!("JID {jid:?}: {e}")))?;
    // tokio-xmpp retries a failed login for ever, silently: one login of our own first tells a wrong
    // password and an unreachable server apart, with a clear error.
    let mut client = match security {
        Security::StartTls => {
            let connector = StartTlsServerConnector(DnsConfig::no_srv(&host, port));
            check_login(connector, &jid, password, server, timeout).await?;
            Client::new_starttls(jid, password, DnsConfig::no_srv(&host, port), Timeouts::default())
        }
        Security::PlainLoopbackOnly if !is_loopback(&host) => {
            return Err(TransportError::Refused(format!(
                "plain TCP to {host} is not a loopback address: use STARTTLS, or --insecure-plain"
            )))
        }
        Security::PlainLoopbackOnly | Security::PlainAnywhere => {
            let addr = if host == "localhost" { format!("127.0.0.1:{port}") } else { format!("{host}:{port}") };
            check_login(TcpServerConnector(DnsConfig::addr(&addr)), &jid, password, server, timeout).await?;
            Client::new_plaintext(jid, password, DnsConfig::addr(&addr), Timeouts::default())
        }
    };
    let bound = tokio::time::timeout(timeout, async {
        loop {
            match client.next().await {
                Some(XmppEvent::Online { bound_jid, .. }) => return Ok(bound_jid.to_string()),
                Some(XmppEvent::Disconnected(tokio_xmpp::Error::Auth(e))) => {
                    return Err(TransportError::Refused(format!("authentication failed: {e}")))
                }
                Some(XmppEvent::Disconnected(e)) => {
                    return Err(TransportError::Refused(format!("cannot connect to {server}: {e}")))
                }
                Some(XmppEvent::Stanza(_)) => {}
                None => return Err(TransportError::Closed),
            }
        }
    })
    .await
    .map_err(|_| TransportError::Refused(format!("no session with {server} within {} s", timeout.as_secs())))?;
    let bound = match bound {
        Ok(b) => b,
        Err(e) => {
            let _ = tokio::time::timeout(Duration::from_secs(2), client.send_end()).await;
            return Err(e);
        }
    };
    let (commands, mut command_rx) = mpsc::unbounded_channel();
    let (incoming_tx, incoming) = mpsc::unbounded_channel();
    let ended = Arc::new(Mutex::new(None));
    let end_reason = ended.clone();
    tokio::spawn(async move {
        // `Some(why)` when the connection ends by itself; `None` when we closed it (and whom to tell).
        let (why, closed) = loop {
            tokio::select! {
                cmd = command_rx.recv() => match cmd {
                    Some(Command::Send(element, done)) => {
                        let stanza = match xso::transform::<Stanza, Element>(&element) {
                            Ok(stanza) => stanza,
                            Err(e) => {
                                let _ = done.send(Err(TransportError::Io(format!("not a stanza: {e}"))));
                                continue;
                            }
                        };
                        // tokio-xmpp holds a stanza while its stream reconnects, for as long as that takes;
                        // a stanza not written in time ends the connection instead of waiting for ever.
                        let why = match tokio::time::timeout(timeout, client.send_stanza(stanza)).await {
                            Ok(Ok(_)) => {
                                let _ = done.send(Ok(()));
                                continue;
                            }
                            Ok(Err(e)) => format!("writing a stanza failed: {e}"),
                            Err(_) => format!("a stanza was not written within {} s: the stream is down", timeout.as_secs()),
                        };
                        let _ = done.send(Err(TransportError::Io(why.clone())));
                        break (Some(why), None);
                    }
                    Some(Command::Close(done)) => break (None, Some(done)),
                    None => break (None, None),
                },
                event = client.next() => match event {
                    Some(XmppEvent::Stanza(stanza)) => {
                        if let Ok(element) = xso::transform::<Element, _>(&stanza) {
                            if incoming_tx.send(element).is_err() {
                                break (None, None);
                            }
                        }
                    }
                    // Stream management resumed the stream after a break: nothing was lost.
                    Some(XmppEvent::Online { resumed: true, .. }) => {}
                    // tokio-xmpp reconnected on its own, on a new stream: the server has forgotten our
                    // presence in every room, and answers to what we asked before are lost.
                    Some(XmppEvent::Online { resumed: false, .. }) => {
                        let why = "the stream was restarted, not resumed: room presences and requests in flight are lost";
                        break (Some(why.into()), None);
                    }
                    Some(XmppEvent::Disconnected(e)) => break (Some(format!("disconnected: {e}")), None),
                    None => break (Some("the stream ended".into()), None),
                },
            }
        };
        // Said before `incoming` ends, so that the driver can report it.
        if let Some(why) = why {
            *ended.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
        }
        let _ = tokio::time::timeout(Duration::from_secs(3), client.send_end()).await;
        if let Some(done) = closed {
            let _ = done.send(());
        }
    });
    Ok(Connection { transport: Arc::new(XmppTransport { jid: bound, commands, end_reason }), incoming })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(host_port("127.0.0.1:5222").unwrap(), ("127.0.0.1".to_owned(), 5222));
        assert_eq!(host_port("[::1]:5223").unwrap(), ("::1".to_owned(), 5223));
        assert_eq!(host_port("example.org").unwrap(), ("example.org".to_owned(), 5222));
        assert!(host_port(":5222").is_err());
        assert!(host_port("h:x").is_err());
        assert!(is_loopback("127.0.0.1") && is_loopback("::1") && is_loopback("localhost"));
        assert!(!is_loopback("192.168.1.2") && !is_loopback("example.org"));
    }

    #[tokio::test]
    async fn plain_tcp_only_to_loopback() {
        let e = connect("a@example.org", "pw", "example.org:5222", Security::PlainLoopbackOnly, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not a loopback address"), "{e}");
    }

    #[tokio::test]
    async fn unreachable_server_is_a_clear_error() {
        // A port nothing listens on (bound, then released).
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let e = connect(
            "a@localhost",
            "pw",
            &format!("127.0.0.1:{port}"),
            Security::PlainLoopbackOnly,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("cannot connect") || e.to_string().contains("no session"), "{e}");
    }
}
