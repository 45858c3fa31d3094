//! # omemo-muc
//!
//! End-to-end encrypted XMPP group chats: OMEMO (XEP-0384) inside multi-user chat rooms (XEP-0045).
//! This facade re-exports the engine's crates and holds what ties them to the outside: the offline PEP
//! directory used by the command-line tool and the interop tests, and the tool's commands.
#![forbid(unsafe_code)]

pub use fan_out_encryptor;
pub use participant_resolver;
pub use session_store;

pub mod benchmark;
pub mod cli;
pub mod demo;
pub mod driver;
pub mod fuzzing;
pub mod inspect;
pub mod local;
#[cfg(feature = "xmpp")]
pub mod online;
pub mod pep_dir;
pub mod world;
#[cfg(feature = "xmpp")]
pub mod xmpp;
