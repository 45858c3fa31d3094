//! The async driver: [`OmemoMuc`] owns a store and runs the engine's sans-IO crates over a
//! [`Transport`] on tokio.
//!
//! Two tasks run per connection. The router reads the incoming stream in order: IQ answers go to the
//! request waiting for them, everything else (and a copy of what a room sends during a group creation)
//! to the processor, which handles stanzas one at a time: room presences into the room model, group
//! messages decrypted (live, or from the archive in catch-up mode), PEP notifications into the device
//! lists, invitations read. The processor may await IQs of its own (a device list it must check), since
//! the router keeps routing meanwhile. Store work (decrypting, the fan-out, every commit) runs on the
//! blocking pool, never on the async threads; the fan-out itself is spread over all cores by rayon.

pub mod transport;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use fan_out_encryptor::{
    decrypt::{decrypt_stanza, Context as DecryptContext},
    encrypt::empty_messages,
    group::{
        encrypt_group_message, plan_group_message, receive_group_message, Cause, GroupCoverage, GroupOptions, Inbound,
    },
    invite::{encrypt_invitation, invitation_needs_bundles, receive_invitation},
    xml::{pep, v0_3, v2},
    NamespaceChoice,
};
use minidom::Element;
use participant_resolver::{
    invitation::{DirectInvitation, Invitation},
    private_group::{CreateError, CreateGroup, CreatedGroup, Step},
    xml::{bare, escape, muc_user, parse_text, NS_DISCO_INFO, NS_MAM, NS_MUC, NS_MUC_ADMIN, NS_PING},
    Affiliation, Policy, Room, RoomEvent,
};
use rand_chacha::{rand_core::SeedableRng, ChaCha20Rng};
use rand_core::{OsRng, RngCore};
use session_store::{
    account, session::PreKeyMode, Account, Changes, DeviceId, Namespace, NamespaceSet, PreKeyBundle, SessionAddress,
    Store, StoreError, TrustLevel,
};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinSet,
};

pub use transport::{Connection, Transport, TransportError};

const NS_PUBSUB_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const NS_PUBSUB_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
const NS_PUBSUB_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
const NS_RSM: &str = "http://jabber.org/protocol/rsm";
/// Archive pages read per catch-up, at most (of up to 100 messages each).
pub const MAX_ARCHIVE_PAGES: usize = 1000;

/// Settings of a driver.
#[derive(Debug, Clone)]
pub struct Config {
    /// The namespaces a new device speaks (an existing device keeps its own).
    pub namespaces: NamespaceSet,
    /// The MUC service new private groups are created on.
    pub muc_service: String,
    /// How long an IQ may take.
    pub iq_timeout: Duration,
    /// How long a join may take.
    pub join_timeout: Duration,
    /// Group sends: missing-device policy, stanza budget, namespaces.
    pub group: GroupOptions,
    /// The first back-off after a bundle fetch failed; it doubles per failure, up to an hour.
    pub bundle_backoff: Duration,
}

impl Config {
    /// Defaults for an account whose MUC service is `muc_service`.
    pub fn new(muc_service: &str) -> Self {
        Config {
            namespaces: NamespaceSet::BOTH,
            muc_service: muc_service.to_owned(),
            iq_timeout: Duration::from_secs(15),
            join_timeout: Duration::from_secs(15),
            group: GroupOptions::default(),
            bundle_backoff: Duration::from_secs(30),
        }
    }
}

/// Where a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Live from the room.
    Live,
    /// From the room's archive.
    Archive,
}

impl Source {
    /// `live` or `mam`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Live => "live",
            Source::Archive => "mam",
        }
    }
}

/// A decrypted group message.
#[derive(Debug, Clone)]
pub struct GroupMessage {
    /// The room.
    pub room: String,
    /// The sender's real bare JID.
    pub from_jid: String,
    /// The sender's nick, if known.
    pub nick: Option<String>,
    /// The sender's device id.
    pub device: DeviceId,
    /// The namespace it was encrypted in.
    pub namespace: Namespace,
    /// The sender's trust.
    pub trust: TrustLevel,
    /// The text (empty for an empty OMEMO message).
    pub text: String,
    /// Live or from the archive.
    pub source: Source,
    /// The room's stanza-id.
    pub stanza_id: Option<String>,
}

/// What the driver reports.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A group message decrypted.
    Message(GroupMessage),
    /// Our own message came back from the room.
    Reflection {
        /// The room.
        room: String,
        /// Its id (origin-id).
        id: String,
        /// The room's stanza-id.
        stanza_id: Option<String>,
        /// Live or from the archive.
        source: Source,
    },
    /// A group message that cannot be decrypted, and why.
    Undecryptable {
        /// The room.
        room: String,
        /// The sender, if identified.
        from_jid: Option<String>,
        /// The sender's nick, if any.
        nick: Option<String>,
        /// Why.
        cause: Cause,
        /// Live or from the archive.
        source: Source,
    },
    /// A device's identity key changed (the new key starts with the default trust).
    IdentityChanged {
        /// The member.
        jid: String,
        /// The device.
        device: DeviceId,
    },
    /// Something about a room changed (an affiliation, its configuration, or we are out).
    Room {
        /// The room.
        room: String,
        /// What.
        change: RoomChange,
    },
    /// An invitation arrived.
    Invitation {
        /// Who sent the stanza (full JID).
        from: String,
        /// The invitation, with its attribution and the room's safety facts as far as known.
        invitation: Invitation,
    },
    /// A member's device list changed.
    DeviceList {
        /// The member.
        jid: String,
        /// The namespace.
        namespace: Namespace,
        /// The devices.
        devices: Vec<DeviceId>,
    },
    /// Something failed in the background (the stanza is dropped, the state unchanged).
    Error {
        /// What was being done.
        context: String,
        /// What went wrong.
        detail: String,
    },
    /// The connection ended (an [`Event::Error`] with context `connection` just before says why, where
    /// the transport can tell).
    Disconnected,
}

/// A room change, as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RoomChange {
    /// A member's affiliation changed.
    Affiliation {
        /// The member.
        jid: String,
        /// The new affiliation.
        affiliation: Affiliation,
    },
    /// The room's configuration changed (encryption is checked against it again at the next send).
    Configuration,
    /// We are no longer in the room.
    Left(&'static str),
}

/// A driver operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// The connection failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// An answer did not come in time.
    #[error("no answer in time: {0}")]
    Timeout(String),
    /// The server answered with an error.
    #[error("{request}: the server answered {condition}")]
    Refused {
        /// What was asked.
        request: String,
        /// The error condition.
        condition: String,
    },
    /// The room refused our join.
    #[error("the room refused the join: {0}")]
    JoinRefused(String),
    /// We are not in that room.
    #[error("not in room {0}")]
    NotInRoom(String),
    /// The group send failed as a whole.
    #[error(transparent)]
    Group(#[from] fan_out_encryptor::group::GroupError),
    /// The private-group creation failed.
    #[error(transparent)]
    Create(#[from] CreateError),
    /// The store failed.
    #[error("store: {0}")]
    Store(String),
    /// A stanza could not be built or read.
    #[error("xml: {0}")]
    Xml(String),
    /// The driver stopped.
    #[error("the driver stopped")]
    Stopped,
    /// An IQ with this caller-chosen id is already waiting for its answer (two answers could not be told
    /// apart).
    #[error("an IQ with id {0} is already waiting for its answer")]
    IdInUse(String),
    /// No device of the invitee could get the invitation (nothing was sent).
    #[error("no device of {invitee} can get the invitation: {why}")]
    Unreachable {
        /// The invitee's bare JID.
        invitee: String,
        /// Each device left out and why, or why the invitee as a whole was.
        why: String,
    },
}

impl From<StoreError> for DriverError {
    fn from(e: StoreError) -> Self {
        DriverError::Store(e.to_string())
    }
}
impl From<session_store::SessionError> for DriverError {
    fn from(e: session_store::SessionError) -> Self {
        DriverError::Store(e.to_string())
    }
}
impl From<fan_out_encryptor::XmlError> for DriverError {
    fn from(e: fan_out_encryptor::XmlError) -> Self {
        DriverError::Xml(e.to_string())
    }
}
impl From<fan_out_encryptor::EncryptError> for DriverError {
    fn from(e: fan_out_encryptor::EncryptError) -> Self {
        DriverError::Group(fan_out_encryptor::group::GroupError::Encrypt(e))
    }
}

/// A message we sent.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Its id (= origin-id).
    pub id: String,
    /// Who got a key, who did not, and why.
    pub coverage: GroupCoverage,
    /// The room's stanza-id of the reflection, when waited for.
    pub stanza_id: Option<String>,
}

/// What publishing our keys did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published {
    /// Our device id.
    pub device_id: DeviceId,
    /// Our id was taken by another device of the account: we moved from this one.
    pub moved_from: Option<DeviceId>,
    /// Nodes that had to be configured before the publish went through.
    pub configured_nodes: Vec<String>,
    /// Publishes retried after a transient error.
    pub retries: u32,
}

/// A private group we created.
#[derive(Debug, Clone)]
pub struct CreatedRoom {
    /// What the creation did and checked.
    pub group: CreatedGroup,
    /// Per invitee: the devices the encrypted invitation reached, or why it was not sent.
    pub invited: Vec<(String, Result<usize, String>)>,
}

struct RoomState {
    room: Room,
    catching_up: bool,
}

struct State<S> {
    store: S,
    rooms: BTreeMap<String, RoomState>,
    rng: ChaCha20Rng,
    /// Device id → owners, from the stored device lists of the rooms' members (rebuilt when stale).
    owners: Option<BTreeMap<DeviceId, Vec<String>>>,
    /// Bare JIDs with a presence subscription (contacts), for invitation attribution.
    contacts: BTreeSet<String>,
}

enum Work {
    Stanza(Element),
    Marker(oneshot::Sender<()>),
    /// Says when the processor got here, then holds it until released.
    Hold(oneshot::Sender<()>, oneshot::Receiver<()>),
    /// The connection ended: stop.
    Stop,
}

/// Someone waiting for a fetch already under way.
type FetchWaiter = oneshot::Sender<Result<Element, String>>;

/// An entry a caller put in a map of waiters (an IQ waiting for its answer, a fetch others wait for):
/// removed when the claim is dropped unless [`Claim::take`]n first, so that a caller whose future is
/// dropped mid-way leaves nothing behind. Only the caller's own entry is removed: an IQ's entry is taken
/// by the router when the answer comes, and another caller may put a new one under the same id before
/// this claim is dropped.
struct Claim<'a, V: Owned> {
    map: &'a Mutex<HashMap<String, V>>,
    key: &'a str,
    token: u64,
    taken: bool,
}

/// An entry of a map of waiters, and whose it is.
trait Owned {
    /// Was this entry put there under `token`?
    fn owned_by(&self, token: u64) -> bool;
}

/// Only the fetching caller removes a fetch's entry (others add their waiters to it): always its own.
impl Owned for Vec<FetchWaiter> {
    fn owned_by(&self, _token: u64) -> bool {
        true
    }
}

/// An IQ waiting for its answer.
struct PendingIq {
    /// The claim's token.
    token: u64,
    answer: oneshot::Sender<Element>,
}

impl Owned for PendingIq {
    fn owned_by(&self, token: u64) -> bool {
        self.token == token
    }
}

impl<'a, V: Owned> Claim<'a, V> {
    fn new(map: &'a Mutex<HashMap<String, V>>, key: &'a str, token: u64) -> Self {
        Self { map, key, token, taken: false }
    }

    /// The entry, removed (if it is still this claim's).
    fn take(mut self) -> Option<V> {
        self.taken = true;
        self.remove()
    }

    fn remove(&self) -> Option<V> {
        let mut map = lock(self.map);
        match map.get(self.key) {
            Some(entry) if entry.owned_by(self.token) => map.remove(self.key),
            _ => None,
        }
    }
}

impl<V: Owned> Drop for Claim<'_, V> {
    fn drop(&mut self) {
        if !self.taken {
            self.remove();
        }
    }
}

struct Inner<S> {
    transport: Arc<dyn Transport>,
    jid: String,
    config: Config,
    state: Arc<Mutex<State<S>>>,
    pending: Mutex<HashMap<String, PendingIq>>,
    taps: Mutex<HashMap<String, mpsc::UnboundedSender<Element>>>,
    joins: Mutex<HashMap<String, oneshot::Sender<Result<(), String>>>>,
    reflections: Mutex<HashMap<String, oneshot::Sender<Option<String>>>>,
    inflight: Mutex<HashMap<String, Vec<FetchWaiter>>>,
    backoff: Mutex<HashMap<SessionAddress, (u32, Instant)>>,
    subscribed: Mutex<BTreeSet<String>>,
    events: mpsc::UnboundedSender<Event>,
    work: mpsc::UnboundedSender<Work>,
    next_id: AtomicU64,
    id_prefix: String,
}

/// The engine on a connection. Cheap to clone; all clones drive the same connection and store.
pub struct OmemoMuc<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for OmemoMuc<S> {
    fn clone(&self) -> Self {
        OmemoMuc { inner: self.inner.clone() }
    }
}

impl<S> std::fmt::Debug for OmemoMuc<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OmemoMuc").field("jid", &self.inner.transport.jid()).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The error condition of an error stanza (`precondition-not-met` wins over its general condition).
pub fn error_condition(stanza: &Element) -> Option<String> {
    if stanza.attr("type") != Some("error") {
        return None;
    }
    let err = stanza.children().find(|c| c.name() == "error");
    let specific = err.and_then(|e| e.children().find(|c| c.ns() == NS_PUBSUB_ERRORS)).map(|c| c.name().to_owned());
    let general = err.and_then(|e| e.children().find(|c| c.ns() == NS_STANZAS)).map(|c| c.name().to_owned());
    Some(specific.or(general).unwrap_or_else(|| "undefined-condition".to_owned()))
}

fn element(text: &str) -> Result<Element, DriverError> {
    parse_text(text).map_err(DriverError::Xml)
}

impl<S: Store + Send + 'static> OmemoMuc<S> {
    /// Starts the driver on a connection: the device is created in `store` if it has none, our device
    /// lists and bundles are published (both namespaces the device speaks), and the returned receiver
    /// reports [`Event`]s. Must be called within a tokio runtime.
    pub async fn start(
        connection: Connection,
        store: S,
        config: Config,
    ) -> Result<(Self, mpsc::UnboundedReceiver<Event>, Published), DriverError> {
        let Connection { transport, incoming } = connection;
        let jid = bare(transport.jid());
        let mut seed = [0u8; 32];
        OsRng.fill_bytes(&mut seed);
        let state = State {
            store,
            rooms: BTreeMap::new(),
            rng: ChaCha20Rng::from_seed(seed),
            owners: None,
            contacts: BTreeSet::new(),
        };
        let (events, events_rx) = mpsc::unbounded_channel();
        let (work, work_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            transport,
            jid,
            config,
            state: Arc::new(Mutex::new(state)),
            pending: Mutex::new(HashMap::new()),
            taps: Mutex::new(HashMap::new()),
            joins: Mutex::new(HashMap::new()),
            reflections: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            backoff: Mutex::new(HashMap::new()),
            subscribed: Mutex::new(BTreeSet::new()),
            events,
            work,
            next_id: AtomicU64::new(0),
            id_prefix: format!("{:08x}", OsRng.next_u32()),
        });
        let me = OmemoMuc { inner };
        tokio::spawn(me.clone().route(incoming));
        tokio::spawn(me.clone().process(work_rx));
        // Initial presence: servers deliver messages to the bare JID (invitations, session completions)
        // only to resources that sent one.
        me.send_stanza(element("<presence xmlns='jabber:client'/>")?).await?;
        let published = me.publish().await?;
        Ok((me, events_rx, published))
    }

    /// Our bare JID.
    pub fn jid(&self) -> &str {
        &self.inner.jid
    }

    /// Runs `f` on the store (on the blocking pool).
    pub async fn with_store<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut S) -> R + Send + 'static,
    ) -> Result<R, DriverError> {
        self.blocking(move |st| f(&mut st.store)).await
    }

    /// Marks bare JIDs as contacts (presence subscription): their plaintext invitations are attributed.
    pub async fn set_contacts(&self, jids: &[String]) -> Result<(), DriverError> {
        let jids: Vec<String> = jids.iter().map(|j| bare(j)).collect();
        self.blocking(move |st| st.contacts.extend(jids)).await
    }

    async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut State<S>) -> R + Send + 'static,
    ) -> Result<R, DriverError> {
        let state = self.inner.state.clone();
        tokio::task::spawn_blocking(move || f(&mut lock(&state))).await.map_err(|_| DriverError::Stopped)
    }

    fn emit(&self, e: Event) {
        let _ = self.inner.events.send(e);
    }

    fn new_id(&self, what: &str) -> String {
        format!("{what}-{}-{}", self.inner.id_prefix, self.inner.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Sends a stanza as it is.
    pub async fn send_stanza(&self, stanza: Element) -> Result<(), DriverError> {
        Ok(self.inner.transport.send(stanza).await?)
    }

    /// Sends an IQ and awaits its answer (result or error), within the configured time.
    pub async fn iq(&self, mut iq: Element) -> Result<Element, DriverError> {
        let id = match iq.attr("id") {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => {
                let id = self.new_id("iq");
                crate::local::hub::set_attr(&mut iq, "id", &id);
                id
            }
        };
        let (answer, rx) = oneshot::channel();
        let token = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut pending = lock(&self.inner.pending);
            if pending.contains_key(&id) {
                return Err(DriverError::IdInUse(id));
            }
            pending.insert(id.clone(), PendingIq { token, answer });
        }
        // (The router removes the entry when the answer comes; the claim removes it otherwise: a send
        // that failed, a timeout, or a caller that gave up.)
        let _waiting = Claim::new(&self.inner.pending, &id, token);
        self.inner.transport.send(iq).await?;
        match tokio::time::timeout(self.inner.config.iq_timeout, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(DriverError::Stopped),
            Err(_) => Err(DriverError::Timeout(format!("iq {id}"))),
        }
    }

    /// [`Self::iq`], with an error answer as [`DriverError::Refused`].
    async fn iq_ok(&self, what: &str, iq: Element) -> Result<Element, DriverError> {
        let answer = self.iq(iq).await?;
        match error_condition(&answer) {
            Some(condition) => Err(DriverError::Refused { request: what.to_owned(), condition }),
            None => Ok(answer),
        }
    }

    /// One fetch per key at a time: concurrent callers share the answer. A caller that gives up (its
    /// future dropped) while it fetches for the others leaves nothing behind: the key is free again,
    /// and the callers that waited for it fetch themselves.
    async fn fetch_shared(&self, key: String, iq: Element) -> Result<Element, String> {
        // Bounded: each round, either this caller fetches, or another caller gave up its fetch.
        for _ in 0..4 {
            let joined = {
                let mut inflight = lock(&self.inner.inflight);
                match inflight.get_mut(&key) {
                    Some(waiters) => {
                        let (tx, rx) = oneshot::channel();
                        waiters.push(tx);
                        Some(rx)
                    }
                    None => {
                        inflight.insert(key.clone(), Vec::new());
                        None
                    }
                }
            };
            match joined {
                Some(rx) => match rx.await {
                    Ok(answer) => return answer,
                    // The caller that fetched gave up: try again.
                    Err(_) => continue,
                },
                None => {
                    let fetching = Claim::new(&self.inner.inflight, &key, 0);
                    let result = self.iq(iq).await.map_err(|e| e.to_string());
                    for w in fetching.take().unwrap_or_default() {
                        let _ = w.send(result.clone());
                    }
                    return result;
                }
            }
        }
        Err("the fetch was given up by its callers".into())
    }

    // ---- routing and processing ----

    async fn route(self, mut incoming: mpsc::UnboundedReceiver<Element>) {
        while let Some(stanza) = incoming.recv().await {
            if stanza.name() == "iq" && matches!(stanza.attr("type"), Some("result" | "error")) {
                let waiter = stanza.attr("id").and_then(|id| lock(&self.inner.pending).remove(id));
                if let Some(w) = waiter {
                    let _ = w.answer.send(stanza);
                    continue;
                }
            }
            let from_room = stanza.attr("from").map(bare).unwrap_or_default();
            if let Some(tap) = lock(&self.inner.taps).get(&from_room) {
                let _ = tap.send(stanza.clone());
            }
            if self.inner.work.send(Work::Stanza(stanza)).is_err() {
                break;
            }
        }
        if let Some(why) = self.inner.transport.end_reason() {
            self.emit(Event::Error { context: "connection".into(), detail: why });
        }
        self.emit(Event::Disconnected);
        let _ = self.inner.work.send(Work::Stop);
    }

    async fn process(self, mut work: mpsc::UnboundedReceiver<Work>) {
        while let Some(w) = work.recv().await {
            match w {
                Work::Marker(done) => {
                    let _ = done.send(());
                }
                Work::Hold(reached, release) => {
                    let _ = reached.send(());
                    let _ = release.await;
                }
                Work::Stop => break,
                Work::Stanza(stanza) => {
                    if let Err(e) = self.handle(stanza).await {
                        self.emit(Event::Error { context: "incoming stanza".into(), detail: e.to_string() });
                    }
                }
            }
        }
    }

    /// Waits until everything that arrived before now has been processed.
    async fn settle(&self) -> Result<(), DriverError> {
        let (tx, rx) = oneshot::channel();
        self.inner.work.send(Work::Marker(tx)).map_err(|_| DriverError::Stopped)?;
        rx.await.map_err(|_| DriverError::Stopped)
    }

    async fn handle(&self, stanza: Element) -> Result<(), DriverError> {
        let from = stanza.attr("from").unwrap_or_default().to_owned();
        let from_bare = bare(&from);
        let in_room = { lock(&self.inner.state).rooms.contains_key(&from_bare) };
        match stanza.name() {
            "presence" if in_room => self.room_presence(&from_bare, stanza).await,
            "message" => {
                if let Some(event) = stanza.get_child("event", NS_PUBSUB_EVENT) {
                    return self.device_list_notification(&from_bare, event.clone()).await;
                }
                if in_room {
                    if stanza.attr("type") == Some("error") {
                        let detail = error_condition(&stanza).unwrap_or_default();
                        self.emit(Event::Error { context: format!("message to {from_bare}"), detail });
                        return Ok(());
                    }
                    let has_payload = stanza
                        .children()
                        .any(|c| c.name() == "body" || c.name() == "encrypted" || c.is("result", NS_MAM));
                    if !has_payload {
                        let events = {
                            let mut st = lock(&self.inner.state);
                            st.owners = None;
                            match st.rooms.get_mut(&from_bare) {
                                Some(r) => r.room.handle_message(&stanza).unwrap_or_default(),
                                None => Vec::new(),
                            }
                        };
                        return self.room_events(&from_bare, events).await;
                    }
                    return self.group_message(&from_bare, stanza, true).await;
                }
                self.direct_message(&from, stanza).await
            }
            "iq" if matches!(stanza.attr("type"), Some("get" | "set")) => {
                self.send_stanza(iq_answer(&stanza, self.inner.config.namespaces)?).await
            }
            _ => Ok(()),
        }
    }

    async fn room_presence(&self, room: &str, stanza: Element) -> Result<(), DriverError> {
        let (codes, _) = muc_user(&stanza).unwrap_or_default();
        let events = {
            let mut st = lock(&self.inner.state);
            st.owners = None;
            match st.rooms.get_mut(room) {
                Some(r) => r.room.handle_presence(&stanza).map_err(|e| DriverError::Xml(e.to_string()))?,
                None => return Ok(()),
            }
        };
        let outcome = if stanza.attr("type") == Some("error") {
            Some(Err(error_condition(&stanza).unwrap_or_default()))
        } else if codes.contains(&110) && stanza.attr("type").is_none() {
            Some(Ok(()))
        } else {
            None
        };
        if let Some(outcome) = outcome {
            if let Some(w) = lock(&self.inner.joins).remove(room) {
                let _ = w.send(outcome);
            }
        }
        self.room_events(room, events).await
    }

    async fn room_events(&self, room: &str, events: Vec<RoomEvent>) -> Result<(), DriverError> {
        for e in events {
            match e {
                RoomEvent::Request(req) => {
                    // The room asks to read something again: answered in the background.
                    let me = self.clone();
                    let room = room.to_owned();
                    tokio::spawn(async move {
                        if let Ok(answer) = me.iq(req.stanza).await {
                            let mut st = lock(&me.inner.state);
                            if let Some(r) = st.rooms.get_mut(&room) {
                                let _ = r.room.handle_iq(&answer);
                            }
                        }
                    });
                }
                RoomEvent::AffiliationChanged { jid, affiliation } => {
                    if affiliation.is_member() && jid != self.inner.jid {
                        let me = self.clone();
                        let j = jid.clone();
                        tokio::spawn(async move {
                            let _ = me.refresh_device_lists(&[j]).await;
                        });
                    }
                    self.emit(Event::Room {
                        room: room.to_owned(),
                        change: RoomChange::Affiliation { jid, affiliation },
                    });
                }
                RoomEvent::ConfigurationChanged => {
                    self.emit(Event::Room { room: room.to_owned(), change: RoomChange::Configuration })
                }
                RoomEvent::SelfLeft(why) => {
                    self.emit(Event::Room { room: room.to_owned(), change: RoomChange::Left(why) })
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn device_list_notification(&self, from: &str, event: Element) -> Result<(), DriverError> {
        let mut changes = Changes::default();
        for ns in [Namespace::Oldmemo, Namespace::Twomemo] {
            if let Ok(devices) = pep::read_device_list(ns, &event) {
                self.emit(Event::DeviceList { jid: from.to_owned(), namespace: ns, devices: devices.clone() });
                changes.device_lists.push((ns, from.to_owned(), devices));
            }
        }
        if changes.device_lists.is_empty() {
            return Ok(());
        }
        self.blocking(move |st| {
            st.owners = None;
            st.store.apply(&changes)
        })
        .await??;
        Ok(())
    }

    async fn group_message(&self, room: &str, stanza: Element, may_retry: bool) -> Result<(), DriverError> {
        let archived = stanza.children().any(|c| c.is("result", NS_MAM));
        let source = if archived { Source::Archive } else { Source::Live };
        let room_name = room.to_owned();
        let copy = stanza.clone();
        let outcome = self
            .blocking(move |st| -> Result<_, StoreError> {
                let State { store, rooms, rng, owners, .. } = st;
                let Some(rs) = rooms.get(&room_name) else { return Ok(None) };
                let mode = if archived && rs.catching_up { PreKeyMode::CatchUp } else { PreKeyMode::Live };
                if owners.is_none() {
                    *owners = Some(device_owner_map(store, &rs.room)?);
                }
                let map = owners.clone().unwrap_or_default();
                let lookup = move |id: u32| map.get(&id).cloned().unwrap_or_default();
                let (inbound, changes) = receive_group_message(store, &rs.room, &copy, &lookup, mode, rng)?;
                store.apply(&changes)?;
                let nick = copy.attr("from").and_then(participant_resolver::xml::resource).map(str::to_owned);
                Ok(Some((inbound, mode, nick)))
            })
            .await??;
        let Some((inbound, mode, nick)) = outcome else { return Ok(()) };
        match inbound {
            Inbound::Decrypted { message, attribution } => {
                let text =
                    message.plaintext.as_ref().map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default();
                if message.identity.changed_from.is_some() {
                    self.emit(Event::IdentityChanged {
                        jid: message.sender_jid.clone(),
                        device: message.sender_device,
                    });
                }
                let addr = SessionAddress::new(message.namespace, &message.sender_jid, message.sender_device);
                if message.reply_due && mode == PreKeyMode::Live {
                    self.send_empty(vec![addr]).await?;
                }
                if message.consumed_pre_key.is_some() && mode == PreKeyMode::Live {
                    self.publish_bundles().await?;
                }
                if message.plaintext.is_some() {
                    self.emit(Event::Message(GroupMessage {
                        room: room.to_owned(),
                        from_jid: message.sender_jid.clone(),
                        nick: attribution.nick.clone().or(nick),
                        device: message.sender_device,
                        namespace: message.namespace,
                        trust: message.identity.trust,
                        text,
                        source,
                        stanza_id: attribution.ids.stanza_id.clone(),
                    }));
                }
            }
            Inbound::OwnReflection { entry, stanza_id } => {
                let waiter = lock(&self.inner.reflections).remove(&entry.origin_id);
                if let Some(w) = waiter {
                    let _ = w.send(stanza_id.clone());
                }
                self.emit(Event::Reflection { room: room.to_owned(), id: entry.origin_id, stanza_id, source });
            }
            Inbound::Undecryptable { cause: Cause::UnknownDevice(device), sender: Some(sender) } if may_retry => {
                // Our copy of the sender's device list may be old: read it again, then try once more.
                let _ = device;
                self.refresh_device_lists(&[sender]).await?;
                return Box::pin(self.group_message(room, stanza, false)).await;
            }
            Inbound::Undecryptable { cause, sender } => {
                self.emit(Event::Undecryptable { room: room.to_owned(), from_jid: sender, nick, cause, source })
            }
            _ => {}
        }
        Ok(())
    }

    async fn direct_message(&self, from: &str, stanza: Element) -> Result<(), DriverError> {
        let encrypted = stanza.children().any(|c| c.is("encrypted", v2::NS) || c.is("encrypted", v0_3::NS));
        let has_invite = stanza.children().any(|c| c.name() == "x");
        if !encrypted && !has_invite {
            return Ok(());
        }
        let sender = bare(from);
        let copy = stanza.clone();
        let (found, reply) = self
            .blocking(move |st| -> Result<_, DriverError> {
                let State { store, rng, contacts, .. } = st;
                // Decrypted once to learn whether the sender's device is owed an answer (a key exchange
                // that started a session); nothing is committed by this step.
                let mut reply = None;
                let mut plain_changes = None;
                if encrypted {
                    let jid = store.account()?.map(|a| a.jid).unwrap_or_default();
                    let ctx =
                        DecryptContext { sender: &sender, expected_to: &jid, group: false, pre_keys: PreKeyMode::Live };
                    if let Ok((d, changes)) = decrypt_stanza(store, &copy, &ctx, rng) {
                        if d.reply_due {
                            reply = Some(SessionAddress::new(d.namespace, &d.sender_jid, d.sender_device));
                        }
                        plain_changes = Some(changes);
                    }
                }
                let subscribed = |j: &str| contacts.contains(j);
                match receive_invitation(store, &copy, &subscribed, rng) {
                    Ok(Some((inv, changes))) => {
                        store.apply(&changes)?;
                        Ok((Some(inv), reply))
                    }
                    // An encrypted 1:1 message that is no invitation (a session completion or a
                    // heartbeat): its decryption keeps the session in step.
                    Ok(None) => {
                        if let Some(changes) = plain_changes {
                            store.apply(&changes)?;
                        }
                        Ok((None, reply))
                    }
                    Err(e) => Err(DriverError::Xml(e.to_string())),
                }
            })
            .await??;
        if let Some(addr) = reply {
            self.send_empty(vec![addr]).await?;
        }
        if let Some(invitation) = found {
            self.emit(Event::Invitation { from: from.to_owned(), invitation });
        }
        Ok(())
    }

    // ---- PEP ----

    /// Reads the device lists of `jids` (both namespaces) into the store; a node nobody published is an
    /// empty list. Lists that could not be read keep what the store had.
    pub async fn refresh_device_lists(&self, jids: &[String]) -> Result<(), DriverError> {
        self.refresh_device_lists_reporting(jids).await.map(|_| ())
    }

    /// [`OmemoMuc::refresh_device_lists`], returning the fetches that failed (what was asked, and why):
    /// those lists stay as they were.
    async fn refresh_device_lists_reporting(&self, jids: &[String]) -> Result<Vec<String>, DriverError> {
        let mut tasks = JoinSet::new();
        for jid in jids {
            for ns in [Namespace::Oldmemo, Namespace::Twomemo] {
                let me = self.clone();
                let jid = jid.clone();
                tasks.spawn(async move {
                    let iq = pep::fetch_device_list(ns, &jid, &me.new_id("devices"))?;
                    let answer = me.fetch_shared(format!("list {} {jid}", ns.short_name()), iq).await;
                    Ok::<_, DriverError>((ns, jid, answer))
                });
            }
        }
        let mut changes = Changes::default();
        let mut failed = Vec::new();
        while let Some(done) = tasks.join_next().await {
            let (ns, jid, answer) = match done.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string())) {
                Ok(fetched) => fetched,
                Err(e) => {
                    failed.push(format!("a device list fetch: {e}"));
                    continue;
                }
            };
            let devices = answer.and_then(|a| match error_condition(&a) {
                Some(c) if c == "item-not-found" => Ok(Vec::new()),
                Some(c) => Err(format!("the server answered {c}")),
                None => pep::read_device_list(ns, &a).map_err(|e| e.to_string()),
            });
            match devices {
                Ok(devices) => changes.device_lists.push((ns, jid, devices)),
                Err(e) => failed.push(format!("{} device list of {jid}: {e}", ns.short_name())),
            }
        }
        self.blocking(move |st| {
            st.owners = None;
            st.store.apply(&changes)
        })
        .await??;
        self.subscribe(jids).await;
        Ok(failed)
    }

    /// Subscribes to the device-list nodes of members who are not contacts (once per JID), so that
    /// changes arrive as notifications.
    async fn subscribe(&self, jids: &[String]) {
        let new: Vec<String> = {
            let mut done = lock(&self.inner.subscribed);
            jids.iter().filter(|j| **j != self.inner.jid && done.insert((*j).clone())).cloned().collect()
        };
        let own = self.inner.transport.jid().to_owned();
        let mut tasks = JoinSet::new();
        for jid in new {
            for ns in [Namespace::Oldmemo, Namespace::Twomemo] {
                let me = self.clone();
                let text = format!(
                    "<iq xmlns='jabber:client' type='set' to='{}'><pubsub xmlns='http://jabber.org/protocol/pubsub'><subscribe node='{}' jid='{}'/></pubsub></iq>",
                    escape(&jid),
                    escape(&pep::device_list_node(ns)),
                    escape(&own)
                );
                tasks.spawn(async move {
                    if let Ok(iq) = element(&text) {
                        let _ = me.iq(iq).await;
                    }
                });
            }
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Fetches bundles concurrently. A device whose bundle failed recently is not asked again until its
    /// back-off has passed (it is reported as having no bundle).
    async fn fetch_bundles(&self, addrs: Vec<SessionAddress>) -> Vec<(SessionAddress, Result<PreKeyBundle, String>)> {
        let mut out = Vec::new();
        let mut tasks = JoinSet::new();
        let now = Instant::now();
        for addr in addrs {
            let waiting = lock(&self.inner.backoff).get(&addr).filter(|(_, until)| *until > now).map(|(n, _)| *n);
            if let Some(n) = waiting {
                out.push((addr, Err(format!("backing off after {n} failed fetches"))));
                continue;
            }
            let me = self.clone();
            tasks.spawn(async move {
                let result = async {
                    let iq = pep::fetch_bundle(addr.namespace, &addr.jid, addr.device, &me.new_id("bundle"))
                        .map_err(|e| e.to_string())?;
                    let key = format!("bundle {} {} {}", addr.namespace.short_name(), addr.jid, addr.device);
                    let answer = me.fetch_shared(key, iq).await?;
                    if let Some(c) = error_condition(&answer) {
                        return Err(c);
                    }
                    pep::read_bundle(addr.namespace, addr.device, &answer).map_err(|e| e.to_string())
                }
                .await;
                (addr, result)
            });
        }
        while let Some(done) = tasks.join_next().await {
            let Ok((addr, result)) = done else { continue };
            let mut backoff = lock(&self.inner.backoff);
            match &result {
                Ok(_) => {
                    backoff.remove(&addr);
                }
                Err(_) => {
                    let n = backoff.get(&addr).map(|(n, _)| n + 1).unwrap_or(1);
                    let delay = self.inner.config.bundle_backoff.saturating_mul(1 << (n - 1).min(16));
                    backoff.insert(addr.clone(), (n, Instant::now() + delay.min(Duration::from_secs(3600))));
                }
            }
            out.push((addr, result));
        }
        out
    }

    /// Publishes with publish-options, working around what servers do differently: a node configured
    /// otherwise (`precondition-not-met`: configure it, publish again), a server that refuses
    /// `pubsub#max_items` as a publish-option (`resource-constraint`, ejabberd: publish without it, then
    /// configure the node), a first publish lost to concurrent node creation (`item-not-found`: retry).
    async fn publish_item(&self, iq: Element, report: &mut Published) -> Result<(), DriverError> {
        let node = iq
            .children()
            .flat_map(|p| p.children())
            .find(|c| c.name() == "publish")
            .and_then(|p| p.attr("node"))
            .unwrap_or_default()
            .to_owned();
        let max_items = iq
            .children()
            .flat_map(|p| p.children())
            .filter(|c| c.name() == "publish-options")
            .flat_map(|o| o.children().flat_map(|x| x.children()))
            .find(|f| f.attr("var") == Some("pubsub#max_items"))
            .map(|f| f.children().map(|v| v.text()).collect::<String>())
            .unwrap_or_else(|| "1".into());
        let mut current = iq;
        let mut configure_after = false;
        for attempt in 0..4u32 {
            crate::local::hub::set_attr(&mut current, "id", &self.new_id("publish"));
            let answer = self.iq(current.clone()).await?;
            match error_condition(&answer).as_deref() {
                None => {
                    if configure_after {
                        self.configure_node(&node, &max_items).await?;
                        report.configured_nodes.push(node.clone());
                    }
                    return Ok(());
                }
                Some("precondition-not-met") => {
                    self.configure_node(&node, &max_items).await?;
                    report.configured_nodes.push(node.clone());
                }
                Some("resource-constraint") | Some("not-acceptable") | Some("bad-request") if !configure_after => {
                    strip_publish_option(&mut current, "pubsub#max_items");
                    configure_after = true;
                }
                Some("item-not-found") | Some("internal-server-error") | Some("conflict") => {
                    report.retries += 1;
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt + 1))).await;
                }
                Some(other) => {
                    return Err(DriverError::Refused { request: format!("publish to {node}"), condition: other.into() })
                }
            }
            report.retries += u32::from(attempt > 0);
        }
        Err(DriverError::Refused {
            request: format!("publish to {node}"),
            condition: "gave up after 4 attempts".into(),
        })
    }

    async fn configure_node(&self, node: &str, max_items: &str) -> Result<(), DriverError> {
        let iq = element(&format!(
            "<iq xmlns='jabber:client' type='set' to='{jid}'><pubsub xmlns='{NS_PUBSUB_OWNER}'><configure node='{node}'>\
             <x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#node_config</value></field>\
             <field var='pubsub#access_model'><value>open</value></field><field var='pubsub#persist_items'><value>true</value></field>\
             <field var='pubsub#max_items'><value>{max}</value></field></x></configure></pubsub></iq>",
            jid = escape(&self.inner.jid),
            node = escape(node),
            max = escape(max_items),
        ))?;
        self.iq_ok(&format!("configure {node}"), iq).await.map(|_| ())
    }

    /// Publishes our device (merged into our device lists) and bundles, in every namespace the device
    /// speaks; creates the device first if the store has none. Checks that no other device of the
    /// account took our id first.
    pub async fn publish(&self) -> Result<Published, DriverError> {
        let jid = self.inner.jid.clone();
        let namespaces = self.inner.config.namespaces;
        let account = self
            .blocking(move |st| -> Result<Account, DriverError> {
                if st.store.account()?.is_none() {
                    let changes = Account::create(&jid, namespaces, &[], now_secs(), &mut st.rng);
                    st.store.apply(&changes)?;
                }
                st.store.account()?.ok_or(DriverError::Store("no account after creating it".into()))
            })
            .await??;
        let mut report = Published { device_id: account.device_id, ..Published::default() };
        // Our own lists as published, and the identity key each listed device's bundle carries.
        let mut lists = BTreeMap::new();
        let mut published = Vec::new();
        for ns in account.namespaces.iter() {
            let answer = self.iq(pep::fetch_device_list(ns, &self.inner.jid, &self.new_id("own"))?).await?;
            let list = match error_condition(&answer) {
                None => pep::read_device_list(ns, &answer).unwrap_or_default(),
                Some(_) => Vec::new(),
            };
            if list.contains(&account.device_id) {
                let b = self.fetch_bundles(vec![SessionAddress::new(ns, &self.inner.jid, account.device_id)]).await;
                published
                    .push((account.device_id, b.into_iter().next().and_then(|(_, b)| b.ok()).map(|b| b.identity_key)));
            }
            published.extend(list.iter().filter(|d| **d != account.device_id).map(|d| (*d, None)));
            lists.insert(ns, list);
        }
        let moved = self
            .blocking(move |st| -> Result<Option<DeviceId>, DriverError> {
                let before = st.store.account()?.map(|a| a.device_id);
                if let Some(ch) = account::resolve_device_id_collision(&st.store, &published, &mut st.rng)? {
                    st.store.apply(&ch)?;
                    return Ok(before);
                }
                Ok(None)
            })
            .await??;
        report.moved_from = moved;
        let acc = self.publish_bundles_with(&mut report).await?;
        report.device_id = acc.device_id;
        for ns in acc.namespaces.iter() {
            let mut list = lists.remove(&ns).unwrap_or_default();
            if !list.contains(&acc.device_id) {
                list.push(acc.device_id);
                let iq = pep::publish_device_list(ns, &self.inner.jid, &list, &self.new_id("list"))?;
                self.publish_item(iq, &mut report).await?;
            }
            let store_list = list.clone();
            let own = self.inner.jid.clone();
            self.blocking(move |st| {
                st.store.apply(&Changes { device_lists: vec![(ns, own, store_list)], ..Changes::default() })
            })
            .await??;
        }
        Ok(report)
    }

    async fn publish_bundles(&self) -> Result<(), DriverError> {
        let mut report = Published::default();
        self.publish_bundles_with(&mut report).await.map(|_| ())
    }

    /// Tops up pre-keys, rotates the signed pre-key when due, and publishes our bundles.
    async fn publish_bundles_with(&self, report: &mut Published) -> Result<Account, DriverError> {
        let (acc, bundles) = self
            .blocking(|st| -> Result<_, DriverError> {
                let maint = account::maintain_keys(&st.store, now_secs(), &mut st.rng)?;
                if !maint.is_empty() {
                    st.store.apply(&maint)?;
                }
                let acc = st.store.account()?.ok_or(DriverError::Store("no account".into()))?;
                let mut bundles = Vec::new();
                for ns in acc.namespaces.iter() {
                    bundles.push((ns, account::own_bundle_for(&st.store, ns)?));
                }
                Ok((acc, bundles))
            })
            .await??;
        for (ns, bundle) in bundles {
            let iq = pep::publish_bundle(ns, &self.inner.jid, acc.device_id, &bundle, &self.new_id("bundle"))?;
            self.publish_item(iq, report).await?;
        }
        Ok(acc)
    }

    // ---- rooms ----

    /// Joins `room` as `nick`: waits for the room's answer, reads its member lists and configuration,
    /// fetches the members' device lists, then catches up from the room's archive (in catch-up mode,
    /// with completion replies sent once it ends). Returns how many archived messages were processed.
    pub async fn join(&self, room: &str, nick: &str) -> Result<usize, DriverError> {
        let room = bare(room);
        let presence = element(&format!(
            "<presence xmlns='jabber:client' to='{}/{}'><x xmlns='{NS_MUC}'><history maxstanzas='0'/></x></presence>",
            escape(&room),
            escape(nick)
        ))?;
        self.track_room(&room).await?;
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.joins).insert(room.clone(), tx);
        self.send_stanza(presence).await?;
        let answer = tokio::time::timeout(self.inner.config.join_timeout, rx).await;
        let refused = match answer {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(condition))) => Some(DriverError::JoinRefused(condition)),
            Ok(Err(_)) => Some(DriverError::Stopped),
            Err(_) => Some(DriverError::Timeout(format!("join {room}"))),
        };
        if let Some(e) = refused {
            lock(&self.inner.joins).remove(&room);
            lock(&self.inner.state).rooms.remove(&room);
            return Err(e);
        }
        self.read_room(&room).await?;
        self.catch_up(&room).await
    }

    async fn track_room(&self, room: &str) -> Result<(), DriverError> {
        let own = self.inner.jid.clone();
        let room = room.to_owned();
        self.blocking(move |st| {
            st.rooms
                .entry(room.clone())
                .or_insert_with(|| RoomState { room: Room::new(&room, &own, Policy::default()), catching_up: false });
        })
        .await
    }

    /// Reads the room's affiliation lists and disco#info, then the members' device lists.
    async fn read_room(&self, room: &str) -> Result<(), DriverError> {
        let requests = {
            let mut st = lock(&self.inner.state);
            st.rooms.get_mut(room).map(|r| r.room.join_requests()).ok_or(DriverError::NotInRoom(room.into()))?
        };
        let mut tasks = JoinSet::new();
        for req in requests {
            let me = self.clone();
            tasks.spawn(async move { me.iq(req.stanza).await });
        }
        let mut answers = Vec::new();
        while let Some(done) = tasks.join_next().await {
            if let Ok(Ok(a)) = done {
                answers.push(a);
            }
        }
        let members: Vec<String> = {
            let mut st = lock(&self.inner.state);
            st.owners = None;
            let r = st.rooms.get_mut(room).ok_or(DriverError::NotInRoom(room.into()))?;
            for a in &answers {
                let _ = r.room.handle_iq(a);
            }
            r.room.affiliations().iter().filter(|(_, f)| f.affiliation.is_member()).map(|(j, _)| j.clone()).collect()
        };
        let mut all = members;
        all.push(self.inner.jid.clone());
        self.refresh_device_lists(&all).await
    }

    /// Reads the room's whole archive in catch-up mode, then ends catch-up: the completion replies
    /// owed go out, the pre-keys kept for the archive are deleted and our bundle republished.
    pub async fn catch_up(&self, room: &str) -> Result<usize, DriverError> {
        {
            let mut st = lock(&self.inner.state);
            st.rooms.get_mut(room).ok_or(DriverError::NotInRoom(room.into()))?.catching_up = true;
        }
        let mut after: Option<String> = None;
        let mut count = 0;
        let result = async {
            for _ in 0..MAX_ARCHIVE_PAGES {
                let qid = self.new_id("mam");
                let after_xml =
                    after.as_ref().map(|a| format!("<after>{}</after>", escape(a))).unwrap_or_default();
                let iq = element(&format!(
                    "<iq xmlns='jabber:client' type='set' to='{}'><query xmlns='{NS_MAM}' queryid='{qid}'><set xmlns='{NS_RSM}'><max>100</max>{after_xml}</set></query></iq>",
                    escape(room)
                ))?;
                let answer = self.iq_ok(&format!("archive of {room}"), iq).await?;
                let fin = answer.get_child("fin", NS_MAM).ok_or(DriverError::Xml("MAM answer without <fin>".into()))?;
                let set = fin.get_child("set", NS_RSM);
                let last = set.and_then(|s| s.get_child("last", NS_RSM)).map(|l| l.text());
                let first = set.and_then(|s| s.get_child("first", NS_RSM)).map(|l| l.text());
                count += usize::from(first.is_some());
                if fin.attr("complete") == Some("true") || last.is_none() || last == after {
                    break;
                }
                after = last;
            }
            // Every result of the queries arrived before their answers: process them all first.
            self.settle().await
        }
        .await;
        {
            let mut st = lock(&self.inner.state);
            if let Some(r) = st.rooms.get_mut(room) {
                r.catching_up = false;
            }
        }
        result?;
        self.end_catch_up().await?;
        Ok(count)
    }

    async fn end_catch_up(&self) -> Result<(), DriverError> {
        let stanzas = self
            .blocking(|st| -> Result<Vec<Element>, DriverError> {
                if st.rooms.values().any(|r| r.catching_up) {
                    return Ok(Vec::new());
                }
                let due = st.store.replies_due()?;
                let (stanzas, mut changes) = empty_messages(&st.store, &due, &mut st.rng)?;
                changes.merge(session_store::session::end_catch_up(&st.store)?);
                st.store.apply(&changes)?;
                Ok(stanzas)
            })
            .await??;
        for s in stanzas {
            self.send_stanza(s).await?;
        }
        self.publish_bundles().await
    }

    async fn send_empty(&self, devices: Vec<SessionAddress>) -> Result<(), DriverError> {
        let stanzas = self
            .blocking(move |st| -> Result<Vec<Element>, DriverError> {
                let (stanzas, changes) = empty_messages(&st.store, &devices, &mut st.rng)?;
                st.store.apply(&changes)?;
                Ok(stanzas)
            })
            .await??;
        for s in stanzas {
            self.send_stanza(s).await?;
        }
        Ok(())
    }

    /// The room's safety facts from its disco#info: (members-only, non-anonymous). A room that does
    /// not answer (it does not exist, or hides itself from non-members) is an error.
    pub async fn room_safety(&self, room: &str) -> Result<(bool, bool), DriverError> {
        let iq = element(&format!(
            "<iq xmlns='jabber:client' type='get' to='{}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
            escape(&bare(room))
        ))?;
        let answer = self.iq_ok(&format!("disco#info of {room}"), iq).await?;
        Ok(participant_resolver::private_group::room_safety(&answer))
    }

    /// Leaves `room`.
    pub async fn leave(&self, room: &str) -> Result<(), DriverError> {
        let room = bare(room);
        let nick = {
            let mut st = lock(&self.inner.state);
            let r = st.rooms.remove(&room).ok_or(DriverError::NotInRoom(room.clone()))?;
            r.room.own_nick().map(str::to_owned).unwrap_or_default()
        };
        let p = element(&format!(
            "<presence xmlns='jabber:client' type='unavailable' to='{}/{}'/>",
            escape(&room),
            escape(&nick)
        ))?;
        self.send_stanza(p).await
    }

    /// The room model as we know it (a copy).
    pub fn room(&self, room: &str) -> Option<Room> {
        lock(&self.inner.state).rooms.get(&bare(room)).map(|r| r.room.clone())
    }

    /// Encrypts `text` for every member device of `room` and sends it: device lists we lack are fetched
    /// first, then the bundles of devices without a session (one concurrent batch); the key wrapping runs
    /// on the blocking pool, and the change set is committed before the stanza goes out.
    pub async fn send(&self, room: &str, text: &str) -> Result<Sent, DriverError> {
        self.send_with(room, text, self.inner.config.group).await
    }

    /// [`Self::send`] with other options than the configured ones.
    pub async fn send_with(&self, room: &str, text: &str, opts: GroupOptions) -> Result<Sent, DriverError> {
        let room = bare(room);
        let r = room.clone();
        let plan = self.blocking(move |st| -> Result<_, DriverError> {
            let rs = st.rooms.get(&r).ok_or(DriverError::NotInRoom(r.clone()))?;
            Ok(plan_group_message(&st.store, &rs.room, opts.choice)?)
        });
        let mut plan = plan.await??;
        if !plan.need_device_lists.is_empty() {
            self.refresh_device_lists(&plan.need_device_lists).await?;
            let r = room.clone();
            plan = self
                .blocking(move |st| -> Result<_, DriverError> {
                    let rs = st.rooms.get(&r).ok_or(DriverError::NotInRoom(r.clone()))?;
                    Ok(plan_group_message(&st.store, &rs.room, opts.choice)?)
                })
                .await??;
        }
        let bundles = self.fetch_bundles(plan.need_bundles).await;
        let text = text.to_owned();
        let r = room.clone();
        let (stanza, id, coverage) = self
            .blocking(move |st| -> Result<_, DriverError> {
                let State { store, rooms, rng, .. } = st;
                let rs = rooms.get(&r).ok_or(DriverError::NotInRoom(r.clone()))?;
                let msg = encrypt_group_message(store, &rs.room, &text, &bundles, &opts, now_secs(), rng)?;
                let id = msg.id.clone();
                let (stanza, coverage) = msg.commit(store)?;
                Ok((stanza.to_element()?, id, coverage))
            })
            .await??;
        self.send_stanza(stanza).await?;
        Ok(Sent { id, coverage, stanza_id: None })
    }

    /// [`Self::send`], then waits (up to `wait`) for the room to reflect the message.
    pub async fn send_confirmed(&self, room: &str, text: &str, wait: Duration) -> Result<Sent, DriverError> {
        self.send_confirmed_with(room, text, self.inner.config.group, wait).await
    }

    /// [`Self::send_confirmed`] with other options than the configured ones.
    pub async fn send_confirmed_with(
        &self,
        room: &str,
        text: &str,
        opts: GroupOptions,
        wait: Duration,
    ) -> Result<Sent, DriverError> {
        // Stanzas are processed in order, and the reflection can only arrive after the send: holding
        // the processor at a marker until the waiter exists means it cannot be missed.
        let (hold_tx, hold_rx) = oneshot::channel::<()>();
        let (held_tx, held_rx) = oneshot::channel::<()>();
        self.inner.work.send(Work::Hold(held_tx, hold_rx)).map_err(|_| DriverError::Stopped)?;
        let _ = held_rx.await;
        let result = self.send_with(room, text, opts).await;
        let mut sent = match result {
            Ok(s) => s,
            Err(e) => {
                let _ = hold_tx.send(());
                return Err(e);
            }
        };
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.reflections).insert(sent.id.clone(), tx);
        let _ = hold_tx.send(());
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(sid)) => {
                sent.stanza_id = sid;
                Ok(sent)
            }
            _ => {
                lock(&self.inner.reflections).remove(&sent.id);
                Err(DriverError::Timeout(format!("reflection of {}", sent.id)))
            }
        }
    }

    /// Bans `jid` from `room` (affiliation `outcast`); we must be its owner or an admin.
    pub async fn ban(&self, room: &str, jid: &str) -> Result<(), DriverError> {
        self.admin(room, &format!("<item affiliation='outcast' jid='{}'/>", escape(&bare(jid)))).await
    }

    /// Grants `jids` membership of `room`: one request per JID (Prosody 0.12 applies only the first
    /// item of a batch and still answers `result`), up to 32 at a time.
    pub async fn grant_membership(&self, room: &str, jids: &[String]) -> Result<(), DriverError> {
        for chunk in jids.chunks(32) {
            let mut tasks = JoinSet::new();
            for j in chunk {
                let me = self.clone();
                let room = room.to_owned();
                let item = format!("<item affiliation='member' jid='{}'/>", escape(&bare(j)));
                tasks.spawn(async move { me.admin(&room, &item).await });
            }
            while let Some(done) = tasks.join_next().await {
                done.map_err(|_| DriverError::Stopped)??;
            }
        }
        Ok(())
    }

    /// Kicks the occupant `nick` out of `room` (role `none`).
    pub async fn kick(&self, room: &str, nick: &str) -> Result<(), DriverError> {
        self.admin(room, &format!("<item role='none' nick='{}'/>", escape(nick))).await
    }

    async fn admin(&self, room: &str, item: &str) -> Result<(), DriverError> {
        let iq = element(&format!(
            "<iq xmlns='jabber:client' type='set' to='{}'><query xmlns='{NS_MUC_ADMIN}'>{item}</query></iq>",
            escape(&bare(room))
        ))?;
        self.iq_ok(&format!("admin {room}"), iq).await.map(|_| ())
    }

    /// Turns a 1:1 chat into a private group: a new room (random name, configured members-only,
    /// non-anonymous, archived; checked), `invitees` granted membership one by one and verified, then an
    /// OMEMO-encrypted invitation to each invitee's devices.
    pub async fn create_group(
        &self,
        invitees: &[String],
        nick: &str,
        name: Option<&str>,
    ) -> Result<CreatedRoom, DriverError> {
        let mut random = [0u8; 16];
        OsRng.fill_bytes(&mut random);
        let mut create = CreateGroup::new(&self.inner.config.muc_service, random, nick, invitees, name);
        let room = create.room().to_owned();
        self.track_room(&room).await?;
        let (tap_tx, mut tap) = mpsc::unbounded_channel();
        lock(&self.inner.taps).insert(room.clone(), tap_tx);
        let outcome = async {
            for s in create.start()? {
                self.send_stanza(s).await?;
            }
            let deadline = Instant::now() + self.inner.config.join_timeout + self.inner.config.iq_timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let stanza = match tokio::time::timeout(left, tap.recv()).await {
                    Ok(Some(s)) => s,
                    Ok(None) => return Err(DriverError::Stopped),
                    Err(_) => return Err(DriverError::Timeout(format!("creating {room} ({})", create.state()))),
                };
                match create.handle(&stanza)? {
                    Step::Send(out) => {
                        for s in out {
                            self.send_stanza(s).await?;
                        }
                    }
                    Step::Wait => {}
                    Step::Done(created) => return Ok(created),
                }
            }
        }
        .await;
        lock(&self.inner.taps).remove(&room);
        let group = match outcome {
            Ok(g) => g,
            Err(e) => {
                lock(&self.inner.state).rooms.remove(&room);
                return Err(e);
            }
        };
        self.settle().await?;
        {
            let mut st = lock(&self.inner.state);
            if let Some(r) = st.rooms.get_mut(&room) {
                r.room.set_member_since(now_secs().saturating_sub(1));
            }
        }
        self.read_room(&room).await?;
        let mut invited = Vec::new();
        for invitee in &group.members {
            let result = self.invite(&room, invitee).await.map_err(|e| e.to_string());
            invited.push((invitee.clone(), result));
        }
        Ok(CreatedRoom { group, invited })
    }

    /// Sends `invitee` an OMEMO-encrypted direct invitation to `room` (our other devices get a copy);
    /// returns how many of the invitee's devices got it. An invitee without a usable device is an error:
    /// nothing is sent in plaintext.
    pub async fn invite(&self, room: &str, invitee: &str) -> Result<usize, DriverError> {
        let invitee = bare(invitee);
        let failed_fetches = self.refresh_device_lists_reporting(std::slice::from_ref(&invitee)).await?;
        let i = invitee.clone();
        let need = self.blocking(move |st| invitation_needs_bundles(&st.store, &i, NamespaceChoice::Auto)).await??;
        let bundles = self.fetch_bundles(need).await;
        let invitation =
            DirectInvitation { room: bare(room), reason: None, password: None, continues: true, thread: None };
        let unreachable = |mut why: Vec<String>| {
            why.extend(failed_fetches.iter().cloned());
            if why.is_empty() {
                why.push("no OMEMO device published or known".into());
            }
            DriverError::Unreachable { invitee: invitee.clone(), why: why.join("; ") }
        };
        let to = invitee.clone();
        let (stanza, n) = self
            .blocking(move |st| {
                let State { store, rng, .. } = st;
                let invitee = to;
                match encrypt_invitation(store, &invitee, &invitation, &bundles, NamespaceChoice::Auto, rng) {
                    Err(fan_out_encryptor::EncryptError::NoDevices) => Ok(Err(Vec::new())),
                    Err(e) => Err(DriverError::from(e)),
                    Ok(enc) => {
                        let c = &enc.message.coverage;
                        let n = c.keyed.iter().filter(|(a, _)| a.jid == invitee).count();
                        if n > 0 {
                            store.apply(&enc.message.changes)?;
                            return Ok(Ok((enc.stanza, n)));
                        }
                        let mut why: Vec<String> = c
                            .skipped
                            .iter()
                            .filter(|(a, _)| a.jid == invitee)
                            .map(|(a, skip)| format!("device {} ({}): {skip:?}", a.device, a.namespace.short_name()))
                            .collect();
                        if c.jids_without_devices.contains(&invitee) {
                            why.push("no device list".into());
                        }
                        Ok(Err(why))
                    }
                }
            })
            .await??
            .map_err(unreachable)?;
        self.send_stanza(stanza).await?;
        Ok(n)
    }

    /// Closes the connection.
    pub async fn close(&self) {
        self.inner.transport.close().await;
    }
}

/// The answer to a request someone sent us (RFC 6120 8.2.3: every get and set gets one): a ping is
/// answered, a disco#info query gets our features, anything else `service-unavailable`.
fn iq_answer(request: &Element, namespaces: NamespaceSet) -> Result<Element, DriverError> {
    let head = |kind: &str| {
        format!(
            "<iq xmlns='jabber:client' type='{kind}' to='{}' id='{}'>",
            escape(request.attr("from").unwrap_or_default()),
            escape(request.attr("id").unwrap_or_default())
        )
    };
    let query = request.children().next();
    let text = match query {
        Some(q) if q.is("ping", NS_PING) && request.attr("type") == Some("get") => {
            format!("{}</iq>", head("result"))
        }
        Some(q) if q.is("query", NS_DISCO_INFO) && request.attr("type") == Some("get") && q.attr("node").is_none() => {
            let mut features: Vec<String> =
                [NS_DISCO_INFO, NS_PING, "jabber:x:conference", NS_MUC].iter().map(|f| (*f).to_owned()).collect();
            for ns in [Namespace::Oldmemo, Namespace::Twomemo] {
                if namespaces.contains(ns) {
                    features.push(format!("{}+notify", pep::device_list_node(ns)));
                }
            }
            let features: String = features.iter().map(|f| format!("<feature var='{}'/>", escape(f))).collect();
            format!(
                "{}<query xmlns='{NS_DISCO_INFO}'><identity category='client' type='pc' name='omemo-muc'/>{features}</query></iq>",
                head("result")
            )
        }
        _ => format!("{}<error type='cancel'><service-unavailable xmlns='{NS_STANZAS}'/></error></iq>", head("error")),
    };
    element(&text)
}

/// Device id → the bare JIDs whose stored device lists hold it, over the room's members and occupants.
fn device_owner_map(store: &impl Store, room: &Room) -> Result<BTreeMap<DeviceId, Vec<String>>, StoreError> {
    let mut jids: BTreeSet<String> = room.affiliations().keys().cloned().collect();
    jids.extend(room.occupants().filter_map(|o| o.real_jid.clone()));
    jids.insert(room.own_jid().to_owned());
    let mut map: BTreeMap<DeviceId, Vec<String>> = BTreeMap::new();
    for jid in jids {
        for ns in [Namespace::Oldmemo, Namespace::Twomemo] {
            for d in store.device_list(ns, &jid)?.unwrap_or_default() {
                let owners = map.entry(d).or_default();
                if !owners.contains(&jid) {
                    owners.push(jid.clone());
                }
            }
        }
    }
    Ok(map)
}

/// Removes one field from an IQ's publish-options form.
fn strip_publish_option(iq: &mut Element, var: &str) {
    let Some(pubsub) = iq.children_mut().next() else { return };
    let Some(opts) = pubsub.children_mut().find(|c| c.name() == "publish-options") else { return };
    let Some(x) = opts.children_mut().next() else { return };
    let keep: Vec<Element> = x.children().filter(|f| f.attr("var") != Some(var)).cloned().collect();
    let mut fresh = Element::builder(x.name(), x.ns()).build();
    crate::local::hub::set_attr(&mut fresh, "type", x.attr("type").unwrap_or("submit"));
    for f in keep {
        fresh.append_child(f);
    }
    *x = fresh;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A claim removes its own entry, never one that another caller put under the same id after the
    /// router took the claim's entry (the answer came) and before the claim was dropped.
    #[test]
    fn a_claim_removes_only_its_own_entry() {
        let map: Mutex<HashMap<String, PendingIq>> = Mutex::new(HashMap::new());
        let (answer, _first_rx) = oneshot::channel();
        lock(&map).insert("x".into(), PendingIq { token: 1, answer });
        let first = Claim::new(&map, "x", 1);
        assert!(lock(&map).remove("x").is_some(), "the router takes the answered entry");
        let (answer, _second_rx) = oneshot::channel();
        lock(&map).insert("x".into(), PendingIq { token: 2, answer });
        let second = Claim::new(&map, "x", 2);
        drop(first);
        assert!(lock(&map).get("x").is_some_and(|e| e.token == 2), "the second caller's entry stays");
        drop(second);
        assert!(lock(&map).is_empty(), "and goes with its own claim");
        // A fetch's entry is its caller's alone.
        let fetches: Mutex<HashMap<String, Vec<FetchWaiter>>> = Mutex::new(HashMap::new());
        lock(&fetches).insert("k".into(), Vec::new());
        let fetching = Claim::new(&fetches, "k", 0);
        assert!(fetching.take().is_some());
        assert!(lock(&fetches).is_empty());
    }
}
