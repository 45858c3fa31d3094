//! What the driver needs from an XMPP connection: send a stanza, and an ordered stream of the stanzas
//! that arrive. IQ results arrive on the same stream, in order with everything else: the driver matches
//! them to their requests itself ([`crate::driver::OmemoMuc::iq`]), so that an archive query's results
//! are all processed before its final answer is acted on.

use std::{future::Future, pin::Pin, sync::Arc};

use minidom::Element;
use tokio::sync::mpsc;

/// A boxed future, so that transports can be used as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A connection failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The connection is closed.
    #[error("the connection is closed")]
    Closed,
    /// The server or the transport refused (bad credentials, unreachable, refused address ...).
    #[error("refused: {0}")]
    Refused(String),
    /// Writing failed.
    #[error("i/o: {0}")]
    Io(String),
}

/// An XMPP client connection.
pub trait Transport: Send + Sync + std::fmt::Debug + 'static {
    /// Our full JID, as the server bound it.
    fn jid(&self) -> &str;
    /// Sends one stanza (the server stamps `from`).
    fn send(&self, stanza: Element) -> BoxFuture<'_, Result<(), TransportError>>;
    /// Closes the connection (the server sees us leave every room).
    fn close(&self) -> BoxFuture<'_, ()>;
    /// Why the connection ended by itself, once it has (the server closed the stream, a write that
    /// never completed ...); `None` while it runs, after [`Transport::close`], or if the transport cannot
    /// tell.
    fn end_reason(&self) -> Option<String> {
        None
    }
}

/// A connected transport and the stream of what arrives on it (it ends when the connection does).
#[derive(Debug)]
pub struct Connection {
    /// The sending side.
    pub transport: Arc<dyn Transport>,
    /// Every stanza that arrives, in order.
    pub incoming: mpsc::UnboundedReceiver<Element>,
}
