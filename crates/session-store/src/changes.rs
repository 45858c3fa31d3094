//! A change set: everything one operation wants persisted, applied by a store in one transaction.

use crate::{
    account::{Account, PreKeyRecord, SignedPreKeyRecord},
    keys::{DeviceId, PublicKey},
    ledger::LedgerEntry,
    namespace::Namespace,
    ratchet::{SendStep, SessionRecord},
    trust::TrustLevel,
};

/// Where a session lives: namespace, bare JID, device id. One key for 1:1 and group chats.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionAddress {
    /// The OMEMO namespace of the session.
    pub namespace: Namespace,
    /// The peer's bare JID, shared: a group send keeps each address in its change set and in its
    /// coverage report, and a copy is a reference count, not a new string.
    pub jid: Jid,
    /// The peer's device id.
    pub device: DeviceId,
}

impl SessionAddress {
    /// Builds an address.
    pub fn new(namespace: Namespace, jid: impl Into<Jid>, device: DeviceId) -> Self {
        Self { namespace, jid: jid.into(), device }
    }
}

/// A bare JID shared by reference count: copying it (as a group send does for every recipient device,
/// into its change set and its coverage report) allocates nothing. Reads as a `str`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Jid(std::sync::Arc<str>);

impl Jid {
    /// The JID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Jid {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Jid {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Jid {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Jid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::fmt::Display for Jid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Jid {
    fn from(s: &str) -> Self {
        Self(s.into())
    }
}

impl From<&String> for Jid {
    fn from(s: &String) -> Self {
        Self(s.as_str().into())
    }
}

impl From<String> for Jid {
    fn from(s: String) -> Self {
        Self(s.into())
    }
}

impl From<Jid> for String {
    fn from(j: Jid) -> Self {
        j.0.as_ref().to_owned()
    }
}

impl PartialEq<str> for Jid {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for Jid {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<String> for Jid {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<Jid> for str {
    fn eq(&self, other: &Jid) -> bool {
        *self == *other.0
    }
}

impl PartialEq<Jid> for &str {
    fn eq(&self, other: &Jid) -> bool {
        **self == *other.0
    }
}

impl PartialEq<Jid> for String {
    fn eq(&self, other: &Jid) -> bool {
        **self == *other.0
    }
}

/// Everything an operation changes. Stores apply it all or nothing.
#[derive(Debug, Default, Clone)]
pub struct Changes {
    /// Our account (new counters).
    pub account: Option<Account>,
    /// New or replaced signed pre-keys.
    pub signed_pre_keys: Vec<SignedPreKeyRecord>,
    /// Signed pre-keys to delete.
    pub removed_signed_pre_keys: Vec<u32>,
    /// New pre-keys.
    pub pre_keys: Vec<PreKeyRecord>,
    /// Pre-keys to delete (consumed by a key exchange that decrypted).
    pub removed_pre_keys: Vec<u32>,
    /// Pre-keys consumed during catch-up: hidden from the bundle, deleted when catch-up ends.
    pub hidden_pre_keys: Vec<u32>,
    /// New or advanced session records.
    pub sessions: Vec<(SessionAddress, SessionRecord)>,
    /// Sending chains advanced by a send (a delta instead of the whole record; applied after
    /// `sessions`).
    pub session_steps: Vec<(SessionAddress, SendStep)>,
    /// Identity keys seen per device (replacing an earlier one).
    pub identities: Vec<(String, DeviceId, PublicKey)>,
    /// Trust decisions.
    pub trust: Vec<(String, PublicKey, TrustLevel)>,
    /// Device lists: the active devices of (namespace, JID); devices not listed become inactive.
    pub device_lists: Vec<(Namespace, String, Vec<DeviceId>)>,
    /// Messages we sent.
    pub ledger: Vec<LedgerEntry>,
    /// Stanza-ids processed: (room, stanza-id).
    pub seen: Vec<(String, String)>,
    /// Invitation tokens used: (nonce, expiry); kept until they expire.
    pub spent_tokens: Vec<(Vec<u8>, u64)>,
    /// Forget spent tokens that expired before this time.
    pub purge_tokens_before: Option<u64>,
    /// Replies owed (read during a catch-up): send them when it ends.
    pub replies_due: Vec<SessionAddress>,
    /// Replies sent: no longer owed.
    pub replies_done: Vec<SessionAddress>,
}

impl Changes {
    /// Does this change nothing?
    pub fn is_empty(&self) -> bool {
        let Self {
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
        } = self;
        account.is_none()
            && signed_pre_keys.is_empty()
            && removed_signed_pre_keys.is_empty()
            && pre_keys.is_empty()
            && removed_pre_keys.is_empty()
            && hidden_pre_keys.is_empty()
            && sessions.is_empty()
            && session_steps.is_empty()
            && identities.is_empty()
            && trust.is_empty()
            && device_lists.is_empty()
            && ledger.is_empty()
            && seen.is_empty()
            && spent_tokens.is_empty()
            && purge_tokens_before.is_none()
            && replies_due.is_empty()
            && replies_done.is_empty()
    }

    /// Appends `other`; where both touch the same item, `other` wins (it is applied later).
    pub fn merge(&mut self, other: Changes) {
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
        } = other;
        if account.is_some() {
            self.account = account;
        }
        self.signed_pre_keys.extend(signed_pre_keys);
        self.removed_signed_pre_keys.extend(removed_signed_pre_keys);
        self.pre_keys.extend(pre_keys);
        self.removed_pre_keys.extend(removed_pre_keys);
        self.hidden_pre_keys.extend(hidden_pre_keys);
        for (addr, rec) in sessions {
            // A whole record replaces what this set held for the device, deltas included.
            self.sessions.retain(|(a, _)| *a != addr);
            self.session_steps.retain(|(a, _)| *a != addr);
            self.sessions.push((addr, rec));
        }
        self.session_steps.extend(session_steps);
        self.identities.extend(identities);
        self.trust.extend(trust);
        self.device_lists.extend(device_lists);
        self.ledger.extend(ledger);
        self.seen.extend(seen);
        self.spent_tokens.extend(spent_tokens);
        self.purge_tokens_before = self.purge_tokens_before.max(purge_tokens_before);
        self.replies_due.extend(replies_due);
        self.replies_done.extend(replies_done);
    }

    /// The record this change set holds for `addr`, if any (so that later steps of one operation see
    /// the earlier ones before anything is persisted).
    pub fn session(&self, addr: &SessionAddress) -> Option<&SessionRecord> {
        self.sessions.iter().rev().find(|(a, _)| a == addr).map(|(_, r)| r)
    }

    /// The record of `addr` as it will be once this set is applied: `stored` (the store's record,
    /// read only when this set holds no whole record) with this set's deltas on top.
    pub fn session_now(
        &self,
        addr: &SessionAddress,
        stored: impl FnOnce() -> Result<Option<SessionRecord>, crate::StoreError>,
    ) -> Result<Option<SessionRecord>, crate::StoreError> {
        let mut record = match self.session(addr) {
            Some(r) => Some(r.clone()),
            None => stored()?,
        };
        if let Some(r) = record.as_mut() {
            for (_, step) in self.session_steps.iter().filter(|(a, _)| a == addr) {
                r.apply_step(step)?;
            }
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A `Jid` compares, hashes, orders and prints as its text; a copy shares the text.
    #[test]
    fn jid_reads_as_its_text() {
        let jid = Jid::from("alice@example.org");
        let copy = jid.clone();
        assert!(std::ptr::eq(jid.as_str(), copy.as_str()), "a copy shares the text");
        assert_eq!(jid, "alice@example.org");
        assert_eq!(jid, String::from("alice@example.org"));
        assert_eq!("alice@example.org", jid);
        assert_ne!(jid, "bob@example.org");
        assert_eq!(format!("{jid} {jid:?}"), "alice@example.org \"alice@example.org\"");
        assert_eq!(String::from(jid.clone()), "alice@example.org");
        let (a, b) = (Jid::from("a@x"), Jid::from(String::from("b@x")));
        assert!(a < b);
        // Found by its text in a map keyed by `Jid` (Borrow<str>: the same hash as the text's).
        let map: std::collections::HashMap<Jid, u32> = [(jid, 7)].into_iter().collect();
        assert_eq!(map.get("alice@example.org"), Some(&7));
        let bob = String::from("bob@example.org");
        let addr = SessionAddress::new(Namespace::Twomemo, &bob, 3);
        assert_eq!(addr.jid, bob);
        assert_eq!(format!("{addr:?}"), "SessionAddress { namespace: Twomemo, jid: \"bob@example.org\", device: 3 }");
    }
}
