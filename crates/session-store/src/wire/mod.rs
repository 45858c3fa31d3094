//! Wire formats of ratchet messages and key exchanges.

pub mod v0_3;
pub mod v2;
