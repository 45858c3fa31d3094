//! The Double Ratchet: one session state and the record that keeps a few of them per device.

pub mod keys;
mod state;

#[cfg(test)]
pub(crate) use state::{open_0_3, open_v2, seal_0_3, seal_v2};
pub(crate) use state::{Incoming, PendingKeyExchange, ReceiverChain, SessionState};
pub use state::{
    LocalIdentity, SendState, SendStep, SessionRecord, HEARTBEAT_AFTER, MAX_ARCHIVED_STATES, MAX_MESSAGE_GAP,
    MAX_SKIPPED_KEYS, STALE_AFTER,
};
