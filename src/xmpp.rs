//! A [`Transport`] over a real XMPP connection: STARTTLS, or plain TCP where allowed.
//!
//! tokio-xmpp connects, negotiates TLS and authenticates; the rest is ours: resource binding, then one
//! task that owns the XML stream, writes what the driver sends and forwards every element that
//! arrives, as it arrived and in order. No stanza is parsed into a typed form on the way (a typed
//! client drops a stanza it cannot parse without a word), and nothing is resent or resumed behind the
//! driver's back: when the connection ends, the incoming stream ends and the driver reports
//! [`crate::driver::Event::Disconnected`], after an error event that says why. A stanza that is not
//! written within the connection's timeout ends the connection too. When the server has been silent
//! for the read timeout, a ping asks it for a sign of life; with no answer, the connection ends.

use std::{
    borrow::Cow,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use minidom::Element;
use sasl::common::Credentials;
use tokio::sync::{mpsc, oneshot};
use tokio_xmpp::{
    connect::{AsyncReadAndWrite, DnsConfig, ServerConnector, StartTlsServerConnector, TcpServerConnector},
    jid::Jid,
    parsers::stream_features::StreamFeatures,
    xmlstream::{ReadError, StreamHeader, Timeouts, XmlStream, XmppStream},
};

use participant_resolver::xml::{escape, parse_text, NS_CLIENT, NS_PING};

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

/// When the connection asks the server for a sign of life (an XEP-0199 ping), and how long it waits for
/// one. The defaults are tokio-xmpp's: 300 s of silence, then 300 s for any answer; after that the
/// connection ends by itself with a reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Silence from the server after which a ping is sent.
    pub silence: Duration,
    /// How long after the ping anything must arrive.
    pub answer_within: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        let t = Timeouts::default();
        Self { silence: t.read_timeout, answer_within: t.response_timeout }
    }
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

/// An authenticated XML stream whose elements are read as they are.
type Stream = XmlStream<Box<dyn AsyncReadAndWrite + Send + 'static>, Element>;

const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
const NS_STREAMS: &str = "http://etherx.jabber.org/streams";
/// The conditions of a stream error.
const NS_STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
/// The id of our resource binding request.
const BIND_ID: &str = "omemo-muc-bind";
/// The ids of our pings after a silence start with this; their answers are ours, not the driver's.
const KEEPALIVE_ID: &str = "omemo-muc-keepalive-";

/// Connects, authenticates and binds a resource: our full JID and the stream.
async fn open<C: ServerConnector>(
    connector: C,
    jid: &Jid,
    password: &str,
    server: &str,
    keepalive: Keepalive,
) -> Result<(String, Stream), TransportError> {
    let cannot_connect =
        |e: &dyn std::fmt::Display| TransportError::Refused(format!("cannot connect to {server}: {e}"));
    let cannot_log_in = |e: &dyn std::fmt::Display| TransportError::Refused(format!("cannot log in at {server}: {e}"));
    let username = jid
        .node()
        .map(|n| n.as_str().to_owned())
        .ok_or_else(|| TransportError::Refused(format!("{jid} has no local part")))?;
    let timeouts = Timeouts { read_timeout: keepalive.silence, response_timeout: keepalive.answer_within };
    let (pending, binding) = connector.connect(jid, NS_CLIENT, timeouts).await.map_err(|e| cannot_connect(&e))?;
    let (features, stream): (StreamFeatures, XmppStream<C::Stream>) =
        pending.recv_features().await.map_err(|e| cannot_connect(&e))?;
    let creds = Credentials::default().with_username(username).with_password(password).with_channel_binding(binding);
    let authenticated = match tokio_xmpp::client_login(stream, features.sasl_mechanisms, creds).await {
        Ok(s) => s,
        Err(tokio_xmpp::Error::Auth(e)) => return Err(TransportError::Refused(format!("authentication failed: {e}"))),
        Err(e) => return Err(cannot_log_in(&e)),
    };
    let header = StreamHeader { to: Some(Cow::Borrowed(jid.domain().as_str())), from: None, id: None };
    let pending = authenticated.send_header(header).await.map_err(|e| cannot_log_in(&e))?;
    let (_, stream) = pending.recv_features::<Element>().await.map_err(|e| cannot_log_in(&e))?;
    let mut stream = stream.box_stream();

    let resource = jid.resource().map(|r| format!("<resource>{}</resource>", escape(r.as_str()))).unwrap_or_default();
    let request = parse_text(&format!(
        "<iq xmlns='{NS_CLIENT}' type='set' id='{BIND_ID}'><bind xmlns='{NS_BIND}'>{resource}</bind></iq>"
    ))
    .map_err(|e| cannot_log_in(&e))?;
    stream.send(&request).await.map_err(|e| cannot_log_in(&e))?;
    loop {
        match stream.next().await {
            Some(Ok(answer)) if answer.is("iq", NS_CLIENT) && answer.attr("id") == Some(BIND_ID) => {
                let bound = answer
                    .get_child("bind", NS_BIND)
                    .and_then(|b| b.get_child("jid", NS_BIND))
                    .map(|j| j.text())
                    .filter(|j| answer.attr("type") == Some("result") && !j.is_empty());
                return match bound {
                    Some(full) => Ok((full, stream)),
                    None => Err(cannot_log_in(&format!("resource binding refused: {}", String::from(&answer)))),
                };
            }
            // Nothing else is expected before the binding; nothing else is for us yet.
            Some(Ok(_)) | Some(Err(ReadError::SoftTimeout)) => {}
            Some(Err(e)) => return Err(cannot_log_in(&e)),
            None => return Err(cannot_log_in(&"the stream ended")),
        }
    }
}

/// Connects and logs in as `jid` (a bare JID gets a resource from the server) at `server` (`HOST:PORT`),
/// waiting at most `timeout` for the session. Wrong credentials, an unreachable server and a refused
/// plain connection are distinct errors. `timeout` also bounds the writing of each stanza afterwards:
/// one not written in time ends the connection.
pub async fn connect(
    jid: &str,
    password: &str,
    server: &str,
    security: Security,
    timeout: Duration,
) -> Result<Connection, TransportError> {
    connect_with(jid, password, server, security, timeout, Keepalive::default()).await
}

/// [`connect`] with the keepalive's timing given.
pub async fn connect_with(
    jid: &str,
    password: &str,
    server: &str,
    security: Security,
    timeout: Duration,
    keepalive: Keepalive,
) -> Result<Connection, TransportError> {
    let (host, port) = host_port(server)?;
    let jid: Jid = jid.parse().map_err(|e| TransportError::Refused(format!("JID {jid:?}: {e}")))?;
    let opening = async {
        match security {
            Security::StartTls => {
                open(StartTlsServerConnector(DnsConfig::no_srv(&host, port)), &jid, password, server, keepalive).await
            }
            Security::PlainLoopbackOnly if !is_loopback(&host) => Err(TransportError::Refused(format!(
                "plain TCP to {host} is not a loopback address: use STARTTLS, or --insecure-plain"
            ))),
            Security::PlainLoopbackOnly | Security::PlainAnywhere => {
                let addr = if host == "localhost" { format!("127.0.0.1:{port}") } else { format!("{host}:{port}") };
                open(TcpServerConnector(DnsConfig::addr(&addr)), &jid, password, server, keepalive).await
            }
        }
    };
    let (bound, stream) = tokio::time::timeout(timeout, opening)
        .await
        .map_err(|_| TransportError::Refused(format!("no session with {server} within {} s", timeout.as_secs())))??;
    let (commands, command_rx) = mpsc::unbounded_channel();
    let (incoming_tx, incoming) = mpsc::unbounded_channel();
    let end_reason = Arc::new(Mutex::new(None));
    let domain = jid.domain().as_str().to_owned();
    tokio::spawn(run(stream, command_rx, incoming_tx, end_reason.clone(), timeout, domain));
    Ok(Connection { transport: Arc::new(XmppTransport { jid: bound, commands, end_reason }), incoming })
}

/// The connection's task: writes what is sent, forwards what arrives, until either side ends it.
async fn run(
    mut stream: Stream,
    mut commands: mpsc::UnboundedReceiver<Command>,
    incoming: mpsc::UnboundedSender<Element>,
    end_reason: Arc<Mutex<Option<String>>>,
    timeout: Duration,
    domain: String,
) {
    let mut pings = 0u64;
    // `Some(why)` when the connection ends by itself; `None` when we closed it (and whom to tell).
    let (why, closed) = loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(Command::Send(element, done)) => match write(&mut stream, &element, timeout).await {
                    Ok(()) => {
                        let _ = done.send(Ok(()));
                    }
                    Err(why) => {
                        let _ = done.send(Err(TransportError::Io(why.clone())));
                        break (Some(why), None);
                    }
                },
                Some(Command::Close(done)) => break (None, Some(done)),
                None => break (None, None),
            },
            read = stream.next() => match read {
                Some(Ok(element)) => {
                    if element.is("error", NS_STREAMS) {
                        let condition = element
                            .children()
                            .find(|c| c.ns() == NS_STREAM_ERRORS)
                            .map_or_else(|| "an error".to_owned(), |c| c.name().to_owned());
                        break (Some(format!("the server ended the stream: {condition}")), None);
                    }
                    let keepalive = element.is("iq", NS_CLIENT)
                        && element.attr("id").is_some_and(|id| id.starts_with(KEEPALIVE_ID));
                    if !keepalive && incoming.send(element).is_err() {
                        break (None, None);
                    }
                }
                // The server has been silent for the read timeout: ask it for a sign of life (the stream
                // ends by itself if none comes within the response timeout).
                Some(Err(ReadError::SoftTimeout)) => {
                    pings += 1;
                    let ping = parse_text(&format!(
                        "<iq xmlns='{NS_CLIENT}' type='get' id='{KEEPALIVE_ID}{pings}' to='{}'><ping xmlns='{NS_PING}'/></iq>",
                        escape(&domain)
                    ));
                    let written = match ping {
                        Ok(ping) => write(&mut stream, &ping, timeout).await,
                        Err(e) => Err(format!("the keepalive ping: {e}")),
                    };
                    if let Err(why) = written {
                        break (Some(why), None);
                    }
                }
                Some(Err(ReadError::ParseError(e))) => break (Some(format!("unreadable XML from the server: {e}")), None),
                Some(Err(ReadError::HardError(e))) => break (Some(format!("the connection failed: {e}")), None),
                Some(Err(ReadError::StreamFooterReceived)) | None => {
                    break (Some("the server closed the stream".into()), None)
                }
            },
        }
    };
    // Said before `incoming` ends, so that the driver can report it.
    if let Some(why) = why {
        *end_reason.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
    }
    drop(incoming);
    let _ = tokio::time::timeout(Duration::from_secs(3), SinkExt::<&Element>::close(&mut stream)).await;
    if let Some(done) = closed {
        let _ = done.send(());
    }
}

/// Writes one element within `timeout`; the error says why the connection cannot go on.
async fn write(stream: &mut Stream, element: &Element, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, stream.send(element)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("writing a stanza failed: {e}")),
        Err(_) => Err(format!("a stanza was not written within {} s: the connection is stuck", timeout.as_secs())),
    }
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
