//! Small synchronous store traits, one per concern, and the [`Store`] supertrait that applies change sets.

use crate::{
    account::{Account, PreKeyRecord, SignedPreKeyRecord},
    changes::{Changes, Jid, SessionAddress},
    error::StoreError,
    keys::{DeviceId, PublicKey},
    ledger::LedgerEntry,
    namespace::Namespace,
    ratchet::{SendState, SessionRecord},
    trust::TrustLevel,
};

/// Our own device.
pub trait AccountStore {
    /// Our account, once created.
    fn account(&self) -> Result<Option<Account>, StoreError>;
}

/// One-time pre-keys.
pub trait PreKeyStore {
    /// One pre-key.
    fn pre_key(&self, id: u32) -> Result<Option<PreKeyRecord>, StoreError>;
    /// Every pre-key we publish (not the hidden ones).
    fn pre_keys(&self) -> Result<Vec<PreKeyRecord>, StoreError>;
    /// Pre-keys consumed during catch-up: kept (a second key exchange may use them) but not published.
    fn hidden_pre_keys(&self) -> Result<Vec<u32>, StoreError>;
}

/// Signed pre-keys.
pub trait SignedPreKeyStore {
    /// One signed pre-key.
    fn signed_pre_key(&self, id: u32) -> Result<Option<SignedPreKeyRecord>, StoreError>;
    /// Every signed pre-key we hold (the current one and the previous one).
    fn signed_pre_keys(&self) -> Result<Vec<SignedPreKeyRecord>, StoreError>;
}

/// Double Ratchet sessions, keyed by (namespace, bare JID, device).
pub trait SessionStore {
    /// The record of one device.
    fn session(&self, addr: &SessionAddress) -> Result<Option<SessionRecord>, StoreError>;
    /// Devices of `jid` we hold a session with in `ns`.
    fn session_devices(&self, ns: Namespace, jid: &str) -> Result<Vec<DeviceId>, StoreError>;
    /// The records of many devices at once, in the order asked (a group send reads thousands: a store
    /// can do better than one query each).
    fn sessions(&self, addrs: &[SessionAddress]) -> Result<Vec<Option<SessionRecord>>, StoreError> {
        addrs.iter().map(|a| self.session(a)).collect()
    }
    /// What sending needs of each device's current session, in the order asked (`None`: no session).
    /// A group send reads nothing else; a store that keeps records encoded reads it with
    /// [`SendState::from_record_bytes`] instead of decoding whole records.
    fn send_states(&self, addrs: &[SessionAddress]) -> Result<Vec<Option<SendState>>, StoreError> {
        Ok(self.sessions(addrs)?.into_iter().map(|r| r.and_then(|r| r.send_state())).collect())
    }
}

/// Identity keys per device and trust per (JID, identity key).
pub trait IdentityStore {
    /// The identity key last seen for a device.
    fn identity(&self, jid: &str, device: DeviceId) -> Result<Option<PublicKey>, StoreError>;
    /// The trust decision for a key of a JID.
    fn trust(&self, jid: &str, key: &PublicKey) -> Result<Option<TrustLevel>, StoreError>;
    /// Every trust decision for a JID.
    fn trust_of(&self, jid: &str) -> Result<Vec<(PublicKey, TrustLevel)>, StoreError>;
    /// The trust decisions for many (JID, key) pairs at once, in the order asked.
    fn trusts(&self, keys: &[(&str, PublicKey)]) -> Result<Vec<Option<TrustLevel>>, StoreError> {
        keys.iter().map(|(j, k)| self.trust(j, k)).collect()
    }
    /// The identity keys last seen for many devices at once, in the order asked.
    fn identities(&self, devices: &[(&str, DeviceId)]) -> Result<Vec<Option<PublicKey>>, StoreError> {
        devices.iter().map(|(j, d)| self.identity(j, *d)).collect()
    }
    /// For many JIDs at once, in the order asked: was any key of the JID verified?
    fn any_verified(&self, jids: &[&str]) -> Result<Vec<bool>, StoreError> {
        jids.iter().map(|j| Ok(self.trust_of(j)?.iter().any(|(_, t)| *t == TrustLevel::Verified))).collect()
    }
}

/// Published device lists we have seen.
pub trait DeviceListStore {
    /// The active devices of `jid` in `ns` (`None` if we never saw its list).
    fn device_list(&self, ns: Namespace, jid: &str) -> Result<Option<Vec<DeviceId>>, StoreError>;
    /// The device lists of many JIDs at once, in the order asked.
    fn device_lists(&self, ns: Namespace, jids: &[&str]) -> Result<DeviceLists, StoreError> {
        let mut out = DeviceLists::with_capacity(jids.len());
        for j in jids {
            out.push(self.device_list(ns, j)?.as_deref());
        }
        Ok(out)
    }
}

/// Device lists of many JIDs, in one buffer (a room's thousands of lists are not thousands of
/// allocations): the answer of [`DeviceListStore::device_lists`]. A store that keeps its own shared
/// copy of a JID hands it out with the list ([`DeviceLists::jid`]): the addresses made from it then
/// share that copy (no allocation per member and send, and a lookup by such an address finds the
/// store's key by pointer before comparing text). Two answers are equal when their lists are.
#[derive(Debug, Clone, Default)]
pub struct DeviceLists {
    /// Every list's devices, one list after the other.
    devices: Vec<DeviceId>,
    /// Per JID asked: where its list lies in `devices` (`None`: no list seen).
    lists: Vec<Option<std::ops::Range<usize>>>,
    /// Per JID asked: the store's shared copy of it, if it handed one out.
    jids: Vec<Option<Jid>>,
}

impl PartialEq for DeviceLists {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && (0..self.len()).all(|i| self.get(i) == other.get(i))
    }
}

impl Eq for DeviceLists {}

impl DeviceLists {
    /// Room for `n` lists.
    pub fn with_capacity(n: usize) -> Self {
        Self { devices: Vec::with_capacity(n), lists: Vec::with_capacity(n), jids: Vec::with_capacity(n) }
    }

    /// Adds the next JID's list (`None`: no list seen).
    pub fn push(&mut self, list: Option<&[DeviceId]>) {
        self.push_list(None, list);
    }

    /// Adds the next JID's list with the store's shared copy of the JID (see [`DeviceLists::jid`]).
    pub fn push_shared(&mut self, jid: &Jid, list: Option<&[DeviceId]>) {
        self.push_list(Some(jid.clone()), list);
    }

    fn push_list(&mut self, jid: Option<Jid>, list: Option<&[DeviceId]>) {
        self.lists.push(list.map(|l| {
            let start = self.devices.len();
            self.devices.extend_from_slice(l);
            start..self.devices.len()
        }));
        self.jids.push(jid);
    }

    /// The store's shared copy of the `i`th JID asked, if the store handed one out.
    pub fn jid(&self, i: usize) -> Option<&Jid> {
        self.jids.get(i)?.as_ref()
    }

    /// The list of the `i`th JID asked (`None`: no list seen, or no `i`th JID).
    pub fn get(&self, i: usize) -> Option<&[DeviceId]> {
        self.lists.get(i)?.as_ref().and_then(|r| self.devices.get(r.clone()))
    }

    /// How many JIDs were asked.
    pub fn len(&self) -> usize {
        self.lists.len()
    }

    /// No JID was asked.
    pub fn is_empty(&self) -> bool {
        self.lists.is_empty()
    }

    /// Every list, in the order asked, as vectors.
    pub fn to_vecs(&self) -> Vec<Option<Vec<DeviceId>>> {
        (0..self.len()).map(|i| self.get(i).map(<[DeviceId]>::to_vec)).collect()
    }
}

/// What we sent, and which stanzas we processed.
pub trait LedgerStore {
    /// Our message in `room` with this origin-id.
    fn ledger_by_origin_id(&self, room: &str, origin_id: &str) -> Result<Option<LedgerEntry>, StoreError>;
    /// Our message in `room` with this stanza `id`.
    fn ledger_by_message_id(&self, room: &str, message_id: &str) -> Result<Option<LedgerEntry>, StoreError>;
    /// Did we process the stanza with this stanza-id in `room` already?
    fn seen(&self, room: &str, stanza_id: &str) -> Result<bool, StoreError>;
    /// Was the invitation token with this nonce used already?
    fn token_spent(&self, nonce: &[u8]) -> Result<bool, StoreError>;
    /// The devices owed a reply (key exchanges and heartbeats read during a catch-up).
    fn replies_due(&self) -> Result<Vec<SessionAddress>, StoreError>;
}

/// A complete store.
pub trait Store:
    AccountStore + PreKeyStore + SignedPreKeyStore + SessionStore + IdentityStore + DeviceListStore + LedgerStore
{
    /// Applies a change set atomically: all of it or none of it.
    fn apply(&mut self, changes: &Changes) -> Result<(), StoreError>;
}
