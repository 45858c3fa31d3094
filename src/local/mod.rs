//! An in-process XMPP server: [`hub::Hub`] behind a lock, with connections that implement the
//! driver's [`Transport`]. For tests, examples and the demo: every stanza crosses it as XML elements, as
//! it would cross a real server, but nothing leaves the process.

pub mod hub;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
};

use minidom::Element;
use tokio::sync::mpsc;

pub use hub::Hub;

use crate::driver::transport::{BoxFuture, Connection, Transport, TransportError};

#[derive(Debug)]
struct Shared {
    hub: Hub,
    inboxes: BTreeMap<String, mpsc::UnboundedSender<Element>>,
    /// IQs to these bare JIDs wait (in order) until released: a slow peer, for tests.
    held: BTreeMap<String, Vec<(String, Element)>>,
}

impl Shared {
    fn dispatch(&mut self, out: Vec<(String, Element)>) {
        for (to, stanza) in out {
            if let Some(inbox) = self.inboxes.get(&to) {
                // A closed inbox is a connection on its way out: what it misses is gone, as on a network.
                let _ = inbox.send(stanza);
            }
        }
    }
}

/// The server; cheap to clone (all clones are the same server).
#[derive(Debug, Clone)]
pub struct LocalServer {
    shared: Arc<Mutex<Shared>>,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panic while holding the lock leaves the hub as it was between two stanzas: keep serving.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

impl LocalServer {
    /// A server whose MUC service is `muc_service`.
    pub fn new(muc_service: &str) -> Self {
        LocalServer {
            shared: Arc::new(Mutex::new(Shared {
                hub: Hub::new(muc_service),
                inboxes: BTreeMap::new(),
                held: BTreeMap::new(),
            })),
        }
    }

    /// Connects `full_jid` (`user@domain/resource`); a resource already connected is replaced.
    pub fn connect(&self, full_jid: &str) -> Result<Connection, TransportError> {
        if !full_jid.contains('@') || !full_jid.contains('/') {
            return Err(TransportError::Refused(format!("{full_jid:?} is not a full JID")));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let mut s = lock(&self.shared);
        s.inboxes.insert(full_jid.to_owned(), tx);
        let out = s.hub.connect(full_jid);
        s.dispatch(out);
        drop(s);
        let transport = LocalTransport { jid: full_jid.to_owned(), shared: self.shared.clone() };
        Ok(Connection { transport: Arc::new(transport), incoming: rx })
    }

    /// IQs to `bare_jid` wait until [`Self::release`] (a slow peer).
    pub fn hold(&self, bare_jid: &str) {
        lock(&self.shared).held.entry(bare_jid.to_owned()).or_default();
    }

    /// Handles the IQs held for `bare_jid`, in order, and stops holding; returns how many there were.
    pub fn release(&self, bare_jid: &str) -> usize {
        let mut s = lock(&self.shared);
        let waiting = s.held.remove(bare_jid).unwrap_or_default();
        let n = waiting.len();
        for (from, stanza) in waiting {
            let out = s.hub.handle(&from, stanza);
            s.dispatch(out);
        }
        n
    }

    /// Runs `f` on the server's state (for tests and the demo: settings, statistics, the clock).
    pub fn with_hub<R>(&self, f: impl FnOnce(&mut Hub) -> R) -> R {
        f(&mut lock(&self.shared).hub)
    }
}

/// One connected resource.
#[derive(Debug)]
struct LocalTransport {
    jid: String,
    shared: Arc<Mutex<Shared>>,
}

impl Transport for LocalTransport {
    fn jid(&self) -> &str {
        &self.jid
    }

    fn send(&self, stanza: Element) -> BoxFuture<'_, Result<(), TransportError>> {
        let result = {
            let mut s = lock(&self.shared);
            if s.inboxes.contains_key(&self.jid) {
                let target = stanza.attr("to").map(participant_resolver::xml::bare).unwrap_or_default();
                if stanza.name() == "iq" {
                    if let Some(queue) = s.held.get_mut(&target) {
                        queue.push((self.jid.clone(), stanza));
                        return Box::pin(async { Ok(()) });
                    }
                }
                let out = s.hub.handle(&self.jid, stanza);
                s.dispatch(out);
                Ok(())
            } else {
                Err(TransportError::Closed)
            }
        };
        Box::pin(async move { result })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        let mut s = lock(&self.shared);
        if s.inboxes.remove(&self.jid).is_some() {
            let out = s.hub.disconnect(&self.jid);
            s.dispatch(out);
        }
        Box::pin(async {})
    }
}

impl Drop for LocalTransport {
    fn drop(&mut self) {
        let mut s = lock(&self.shared);
        if s.inboxes.remove(&self.jid).is_some() {
            let out = s.hub.disconnect(&self.jid);
            s.dispatch(out);
        }
    }
}
