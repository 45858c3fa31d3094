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

/// The namespaces a device speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NamespaceSet(u8);

impl NamespaceSet {
    /// OMEMO 0.3 only.
    pub const OLDMEMO: Self = Self(1);
    /// OMEMO 2 only.
    pub const TWOMEMO: Self = Self(2);
    /// Both, one device id and one identity key.
    pub const BOTH: Self = Self(3);

    /// Does the set contain `ns`?
    pub fn contains(self, ns: Namespace) -> bool {
        self.0 & (1 << ns.code()) != 0
    }

    /// The namespaces in the set, OMEMO 2 first (the preferred one).
    pub fn iter(self) -> impl Iterator<Item = Namespace> {
        [Namespace::Twomemo, Namespace::Oldmemo].into_iter().filter(move |ns| self.contains(*ns))
    }

    /// Stable bits for storage.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// Inverse of [`NamespaceSet::bits`]; the empty set and unknown bits are refused.
    pub fn from_bits(bits: u8) -> Option<Self> {
        (bits != 0 && bits & !3 == 0).then_some(Self(bits))
    }

    /// Parses `oldmemo`, `twomemo` or `both`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "oldmemo" => Some(Self::OLDMEMO),
            "twomemo" => Some(Self::TWOMEMO),
            "both" => Some(Self::BOTH),
            _ => None,
        }
    }
}
