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
    /// The peer's bare JID.
    pub jid: String,
    /// The peer's device id.
    pub device: DeviceId,
}

impl SessionAddress {
    /// Builds an address.
    pub fn new(namespace: Namespace, jid: impl Into<String>, device: DeviceId) -> Self {
        Self { namespace, jid: jid.into(), device }
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
