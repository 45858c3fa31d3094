//! The two OMEMO namespaces a device speaks.

/// An OMEMO protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Namespace {
    /// OMEMO 0.3, `eu.siacs.conversations.axolotl` (libsignal wire format).
    Oldmemo,
    /// OMEMO 2, `urn:xmpp:omemo:2`.
    Twomemo,
}

impl Namespace {
    /// The XML namespace.
    pub const fn xmlns(self) -> &'static str {
        match self {
            Self::Oldmemo => "eu.siacs.conversations.axolotl",
            Self::Twomemo => "urn:xmpp:omemo:2",
        }
    }

    /// The short name python-omemo and our CLI use.
    pub const fn short_name(self) -> &'static str {
        match self {
            Self::Oldmemo => "oldmemo",
            Self::Twomemo => "twomemo",
        }
    }

    /// Stable number used in stored records.
    pub const fn code(self) -> u8 {
        match self {
            Self::Oldmemo => 0,
            Self::Twomemo => 1,
        }
    }

    /// Inverse of [`Namespace::code`].
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::Oldmemo),
            1 => Some(Self::Twomemo),
            _ => None,
        }
    }

    /// Parses the XML namespace or the short name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "eu.siacs.conversations.axolotl" | "oldmemo" => Some(Self::Oldmemo),
            "urn:xmpp:omemo:2" | "twomemo" => Some(Self::Twomemo),
            _ => None,
        }
    }

    pub(crate) const fn x3dh_info(self) -> &'static [u8] {
        match self {
            Self::Oldmemo => b"WhisperText",
            Self::Twomemo => b"OMEMO X3DH",
        }
    }

    pub(crate) const fn root_info(self) -> &'static [u8] {
        match self {
            Self::Oldmemo => b"WhisperRatchet",
            Self::Twomemo => b"OMEMO Root Chain",
        }
    }

    pub(crate) const fn message_key_info(self) -> &'static [u8] {
        match self {
            Self::Oldmemo => b"WhisperMessageKeys",
            Self::Twomemo => b"OMEMO Message Key Material",
        }
    }
}
