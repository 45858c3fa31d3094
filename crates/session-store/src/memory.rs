//! An in-memory store: for tests, benches and clients that persist elsewhere.

use std::collections::{BTreeMap, BTreeSet};

use zeroize::Zeroizing;

use crate::{
    account::{Account, PreKeyRecord, SignedPreKeyRecord},
    changes::{Changes, SessionAddress},
    error::StoreError,
    keys::{DeviceId, PublicKey},
    ledger::LedgerEntry,
    namespace::Namespace,
    ratchet::{SendState, SendStep, SessionRecord},
    traits::*,
    trust::TrustLevel,
};

/// Keeps everything in maps. Session records are kept encoded, exactly as [`crate::SqliteStore`] keeps
/// them, so both stores exercise the same persistence path.
#[derive(Default, Clone)]
pub struct MemoryStore {
    account: Option<Account>,
    signed_pre_keys: BTreeMap<u32, SignedPreKeyRecord>,
    pre_keys: BTreeMap<u32, PreKeyRecord>,
    hidden: BTreeSet<u32>,
    /// Encoded records, and the deltas on top of them (kept apart, as the SQLite store keeps them); both
    /// hold keys, wiped when dropped.
    sessions: BTreeMap<SessionAddress, Zeroizing<Vec<u8>>>,
    session_steps: BTreeMap<SessionAddress, Zeroizing<Vec<u8>>>,
    identities: BTreeMap<(String, DeviceId), PublicKey>,
    /// Per JID (looked up by `&str`, without an allocation: a group send asks thousands of times).
    trust: BTreeMap<String, BTreeMap<PublicKey, TrustLevel>>,
    /// Per JID, then namespace: device id → active.
    device_lists: BTreeMap<String, BTreeMap<Namespace, BTreeMap<DeviceId, bool>>>,
    ledger: BTreeMap<(String, String), LedgerEntry>,
    seen: BTreeSet<(String, String)>,
    spent_tokens: BTreeMap<Vec<u8>, u64>,
    replies_due: BTreeSet<SessionAddress>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("account", &self.account)
            .field("pre_keys", &self.pre_keys.len())
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl AccountStore for MemoryStore {
    fn account(&self) -> Result<Option<Account>, StoreError> {
        Ok(self.account.clone())
    }
}

impl PreKeyStore for MemoryStore {
    fn pre_key(&self, id: u32) -> Result<Option<PreKeyRecord>, StoreError> {
        Ok(self.pre_keys.get(&id).cloned())
    }
    fn pre_keys(&self) -> Result<Vec<PreKeyRecord>, StoreError> {
        Ok(self.pre_keys.values().filter(|p| !self.hidden.contains(&p.id)).cloned().collect())
    }
    fn hidden_pre_keys(&self) -> Result<Vec<u32>, StoreError> {
        Ok(self.hidden.iter().copied().collect())
    }
}

impl SignedPreKeyStore for MemoryStore {
    fn signed_pre_key(&self, id: u32) -> Result<Option<SignedPreKeyRecord>, StoreError> {
        Ok(self.signed_pre_keys.get(&id).cloned())
    }
    fn signed_pre_keys(&self) -> Result<Vec<SignedPreKeyRecord>, StoreError> {
        Ok(self.signed_pre_keys.values().cloned().collect())
    }
}

impl SessionStore for MemoryStore {
    fn session(&self, addr: &SessionAddress) -> Result<Option<SessionRecord>, StoreError> {
        let Some(bytes) = self.sessions.get(addr) else { return Ok(None) };
        let mut record = SessionRecord::from_bytes(bytes)?;
        if let Some(step) = self.session_steps.get(addr) {
            record.apply_step(&SendStep::from_bytes(step)?)?;
        }
        Ok(Some(record))
    }
    fn send_states(&self, addrs: &[SessionAddress]) -> Result<Vec<Option<SendState>>, StoreError> {
        use rayon::prelude::*;
        // Read in parallel (nothing here is shared mutably): a group send asks for thousands.
        addrs
            .par_iter()
            .with_min_len(64)
            .map(|a| match self.sessions.get(a) {
                Some(record) => SendState::from_record_bytes(record, self.session_steps.get(a).map(|s| &s[..])),
                None => Ok(None),
            })
            .collect()
    }
    fn session_devices(&self, ns: Namespace, jid: &str) -> Result<Vec<DeviceId>, StoreError> {
        Ok(self.sessions.keys().filter(|a| a.namespace == ns && a.jid == jid).map(|a| a.device).collect())
    }
}

impl IdentityStore for MemoryStore {
    fn identity(&self, jid: &str, device: DeviceId) -> Result<Option<PublicKey>, StoreError> {
        Ok(self.identities.get(&(jid.to_owned(), device)).copied())
    }
    fn trust(&self, jid: &str, key: &PublicKey) -> Result<Option<TrustLevel>, StoreError> {
        Ok(self.trust.get(jid).and_then(|of| of.get(key)).copied())
    }
    fn trust_of(&self, jid: &str) -> Result<Vec<(PublicKey, TrustLevel)>, StoreError> {
        Ok(self.trust.get(jid).map(|of| of.iter().map(|(k, t)| (*k, *t)).collect()).unwrap_or_default())
    }
}

impl DeviceListStore for MemoryStore {
    fn device_list(&self, ns: Namespace, jid: &str) -> Result<Option<Vec<DeviceId>>, StoreError> {
        Ok(self
            .device_lists
            .get(jid)
            .and_then(|of| of.get(&ns))
            .map(|m| m.iter().filter(|(_, active)| **active).map(|(d, _)| *d).collect()))
    }
}

impl LedgerStore for MemoryStore {
    fn ledger_by_origin_id(&self, room: &str, origin_id: &str) -> Result<Option<LedgerEntry>, StoreError> {
        Ok(self.ledger.get(&(room.to_owned(), origin_id.to_owned())).cloned())
    }
    fn ledger_by_message_id(&self, room: &str, message_id: &str) -> Result<Option<LedgerEntry>, StoreError> {
        Ok(self.ledger.values().find(|e| e.room == room && e.message_id == message_id).cloned())
    }
    fn seen(&self, room: &str, stanza_id: &str) -> Result<bool, StoreError> {
        Ok(self.seen.contains(&(room.to_owned(), stanza_id.to_owned())))
    }
    fn token_spent(&self, nonce: &[u8]) -> Result<bool, StoreError> {
        Ok(self.spent_tokens.contains_key(nonce))
    }
    fn replies_due(&self) -> Result<Vec<SessionAddress>, StoreError> {
        Ok(self.replies_due.iter().cloned().collect())
    }
}

impl Store for MemoryStore {
    fn apply(&mut self, changes: &Changes) -> Result<(), StoreError> {
        // Nothing below can fail, so the change set is applied whole.
        let Changes {
            account,
            signed_pre_keys,
            removed_signed_pre_keys,
            pre_keys,
            removed_pre_keys,
            hidden_pre_keys,
            sessions,
            session_steps,
            identities,
            trust,
            device_lists,
            ledger,
            seen,
            spent_tokens,
            purge_tokens_before,
            replies_due,
            replies_done,
        } = changes;
        if let Some(a) = account {
            self.account = Some(a.clone());
        }
        for s in signed_pre_keys {
            self.signed_pre_keys.insert(s.id, s.clone());
        }
        for id in removed_signed_pre_keys {
            self.signed_pre_keys.remove(id);
        }
        for p in pre_keys {
            self.pre_keys.insert(p.id, p.clone());
        }
        for id in removed_pre_keys {
            self.pre_keys.remove(id);
            self.hidden.remove(id);
        }
        for id in hidden_pre_keys {
            if self.pre_keys.contains_key(id) {
                self.hidden.insert(*id);
            }
        }
        for (addr, rec) in sessions {
            self.sessions.insert(addr.clone(), Zeroizing::new(rec.to_bytes()));
            self.session_steps.remove(addr);
        }
        for (addr, step) in session_steps {
            // A delta without its record would be lost on the next read: only the stored ones.
            if self.sessions.contains_key(addr) {
                match self.session_steps.get_mut(addr) {
                    // Overwritten in place: a group send replaces thousands of steps.
                    Some(stored) => step.write_to(stored),
                    None => {
                        self.session_steps.insert(addr.clone(), Zeroizing::new(step.to_bytes()));
                    }
                }
            }
        }
        for (jid, dev, key) in identities {
            self.identities.insert((jid.clone(), *dev), *key);
        }
        for (jid, key, level) in trust {
            self.trust.entry(jid.clone()).or_default().insert(*key, *level);
        }
        for (ns, jid, devices) in device_lists {
            let entry = self.device_lists.entry(jid.clone()).or_default().entry(*ns).or_default();
            for active in entry.values_mut() {
                *active = false;
            }
            for d in devices {
                entry.insert(*d, true);
            }
        }
        for e in ledger {
            self.ledger.insert((e.room.clone(), e.origin_id.clone()), e.clone());
        }
        for s in seen {
            self.seen.insert(s.clone());
        }
        for (nonce, expires_at) in spent_tokens {
            self.spent_tokens.insert(nonce.clone(), *expires_at);
        }
        if let Some(before) = purge_tokens_before {
            self.spent_tokens.retain(|_, exp| *exp >= *before);
        }
        for a in replies_done {
            self.replies_due.remove(a);
        }
        self.replies_due.extend(replies_due.iter().cloned());
        Ok(())
    }
}
