//! Trust per (bare JID, identity key).

/// How far an identity key is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TrustLevel {
    /// Seen, but not trusted automatically (a new key of a contact who has a verified key).
    Undecided,
    /// Trusted without verification ("blind trust before verification").
    Blind,
    /// Verified by the user (fingerprint compared).
    Verified,
    /// Refused by the user: never encrypted to, its messages rejected.
    Distrusted,
}

impl TrustLevel {
    /// Do we encrypt to devices with this key?
    pub fn may_encrypt(self) -> bool {
        matches!(self, Self::Blind | Self::Verified)
    }

    /// Do we accept messages from devices with this key?
    pub fn may_decrypt(self) -> bool {
        !matches!(self, Self::Distrusted)
    }

    /// Stable code for storage.
    pub fn code(self) -> u8 {
        match self {
            Self::Undecided => 0,
            Self::Blind => 1,
            Self::Verified => 2,
            Self::Distrusted => 3,
        }
    }

    /// Inverse of [`TrustLevel::code`].
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::Undecided,
            1 => Self::Blind,
            2 => Self::Verified,
            3 => Self::Distrusted,
            _ => return None,
        })
    }

    /// Lower-case name (`undecided`, `blind`, `verified`, `distrusted`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Undecided => "undecided",
            Self::Blind => "blind",
            Self::Verified => "verified",
            Self::Distrusted => "distrusted",
        }
    }

    /// Parses [`TrustLevel::name`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "undecided" => Self::Undecided,
            "blind" => Self::Blind,
            "verified" | "trusted" => Self::Verified,
            "distrusted" => Self::Distrusted,
            _ => return None,
        })
    }

    /// Blind trust before verification: a new key is trusted blindly as long as the user has verified no
    /// key of that JID; once they have, new keys wait for a decision.
    pub fn default_for_new_key(jid_has_verified_key: bool) -> Self {
        if jid_has_verified_key {
            Self::Undecided
        } else {
            Self::Blind
        }
    }
}
