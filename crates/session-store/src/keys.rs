//! Curve25519 key pairs, their OMEMO 0.3 encoding, identity keys and fingerprints.

use std::fmt;

use curve25519_dalek::{EdwardsPoint, MontgomeryPoint};
use rand_core::CryptoRngCore;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::KeyError;

/// The type byte libsignal puts in front of every Curve25519 public key (`DJB_TYPE`).
pub const DJB_TYPE: u8 = 0x05;

/// A device id: 1..=2^31-1 (XEP-0384).
pub type DeviceId = u32;

/// The largest valid device id.
pub const MAX_DEVICE_ID: DeviceId = 0x7FFF_FFFF;

/// Is `id` a valid OMEMO device id?
pub fn valid_device_id(id: DeviceId) -> bool {
    (1..=MAX_DEVICE_ID).contains(&id)
}

/// A random device id in 1..=2^31-1.
pub fn random_device_id(rng: &mut impl CryptoRngCore) -> DeviceId {
    loop {
        let id = rng.next_u32() & MAX_DEVICE_ID;
        if id != 0 {
            return id;
        }
    }
}

/// A Curve25519 public key (the 32-byte Montgomery u-coordinate).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// From the raw 32 bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The OMEMO 0.3 / libsignal encoding: `0x05` ‖ 32 bytes.
    pub fn serialize(&self) -> [u8; 33] {
        let mut out = [0u8; 33];
        out[0] = DJB_TYPE;
        out[1..].copy_from_slice(&self.0);
        out
    }

    /// Parses the OMEMO 0.3 encoding (`0x05` ‖ 32 bytes).
    pub fn deserialize(bytes: &[u8]) -> Result<Self, KeyError> {
        match bytes {
            [DJB_TYPE, rest @ ..] if rest.len() == 32 => {
                let mut k = [0u8; 32];
                k.copy_from_slice(rest);
                Ok(Self(k))
            }
            [DJB_TYPE, ..] => Err(KeyError::BadLength { expected: 33, got: bytes.len() }),
            [t, ..] if bytes.len() == 33 => Err(KeyError::BadKeyType(*t)),
            _ => Err(KeyError::BadLength { expected: 33, got: bytes.len() }),
        }
    }

    /// Parses 32 raw bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, KeyError> {
        let k: [u8; 32] = bytes.try_into().map_err(|_| KeyError::BadLength { expected: 32, got: bytes.len() })?;
        Ok(Self(k))
    }

    /// Fingerprint as python-omemo and Conversations show it: the hex of the Curve25519 key in 8 groups
    /// of 8 digits.
    pub fn fingerprint(&self) -> String {
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        hex.as_bytes().chunks(8).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join(" ")
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Public keys are not secret, but they are user data: show a short prefix only.
        write!(f, "PublicKey({:02x}{:02x}{:02x}{:02x}…)", self.0[0], self.0[1], self.0[2], self.0[3])
    }
}

/// The Curve25519 form of an Ed25519 public key (OMEMO 2 publishes identity keys as Ed25519). Refuses
/// encodings that are no point, and small-order points.
pub fn ed25519_to_curve25519(ed: &[u8; 32]) -> Result<PublicKey, KeyError> {
    Ok(PublicKey(ed25519_point(ed)?.to_montgomery().to_bytes()))
}

/// The point of an Ed25519 public key; refused when it is not a point or has small order.
pub(crate) fn ed25519_point(ed: &[u8; 32]) -> Result<EdwardsPoint, KeyError> {
    let point = curve25519_dalek::edwards::CompressedEdwardsY(*ed).decompress().ok_or(KeyError::NotAPoint)?;
    if point.is_small_order() {
        return Err(KeyError::LowOrderPoint);
    }
    Ok(point)
}

/// A clamped Curve25519 private scalar.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PrivateKey(Box<[u8; 32]>);

impl PrivateKey {
    /// Clamps and wraps 32 secret bytes.
    pub fn from_bytes(mut bytes: [u8; 32]) -> Self {
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        let key = Self(Box::new(bytes));
        bytes.zeroize();
        key
    }

    /// A fresh random private key.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        Self::from_bytes(bytes)
    }

    /// The secret bytes (for persistence and XEdDSA).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.public_point().to_montgomery().to_bytes())
    }

    /// The public key as an Edwards point (either sign), before its conversion to a u-coordinate: see
    /// [`to_montgomery_batch`].
    pub(crate) fn public_point(&self) -> EdwardsPoint {
        EdwardsPoint::mul_base_clamped(*self.0)
    }

    /// X25519 with `their` key. A result of all zeros means `their` is a low-order point: refused.
    ///
    /// Computed on the Edwards curve, where curve25519-dalek uses its vector backend (about twice as fast
    /// here as its Montgomery ladder), with the same result as RFC 7748 X25519: a clamped scalar is
    /// `k = 8·k'`, so `k·P = k'·(8·P)`, and `8·P` lies in the prime-order subgroup where arithmetic modulo
    /// the group order is exact; `P` and `−P` share the u-coordinate. Constant time in the secret.
    /// u-coordinates that are not on the curve (twist points, which no honest peer sends) are refused
    /// rather than multiplied on the twist.
    pub fn agree(&self, their: &PublicKey) -> Result<SharedSecret, KeyError> {
        self.agree_prepared(&their.prepare()?)
    }

    /// [`PrivateKey::agree`] with a key made ready once for several agreements.
    pub(crate) fn agree_prepared(&self, their: &PreparedKey) -> Result<SharedSecret, KeyError> {
        let mut point = self.agree_point(their);
        let shared = SharedSecret::of_u(point.to_montgomery());
        point.zeroize();
        shared
    }

    /// The agreement as an Edwards point, before its conversion to the shared secret (the
    /// u-coordinate): several of them convert with one inversion ([`to_montgomery_batch`]). Secret.
    pub(crate) fn agree_point(&self, their: &PreparedKey) -> EdwardsPoint {
        let mut k = *self.0;
        // k >> 3: the clamped scalar divided by the cofactor (it is a multiple of 8).
        let mut k_div_8 = [0u8; 32];
        for i in 0..32 {
            k_div_8[i] = (k[i] >> 3) | k.get(i + 1).map_or(0, |next| next << 5);
        }
        let mut scalar = curve25519_dalek::Scalar::from_bytes_mod_order(k_div_8);
        k.zeroize();
        k_div_8.zeroize();
        let point = their.0 * scalar;
        scalar.zeroize();
        point
    }
}

/// The u-coordinates of several Edwards points with one field inversion for all (each on its own
/// takes one: about as long as a fifth of an agreement). Wiped when dropped: the points may be
/// agreements.
pub(crate) fn to_montgomery_batch(points: &[EdwardsPoint]) -> Zeroizing<Vec<MontgomeryPoint>> {
    Zeroizing::new(EdwardsPoint::to_montgomery_batch(points))
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

/// A peer's public key ready for X25519 agreements on the Edwards curve ([`PrivateKey::agree`]): its
/// point (either sign: `P` and `−P` share the u-coordinate) times the cofactor. Converting the
/// u-coordinate takes an inversion and a square root; a key used in several agreements (the signed
/// pre-key in X3DH) is converted once.
pub(crate) struct PreparedKey(EdwardsPoint);

impl PublicKey {
    /// The key made ready for agreements; u-coordinates that are not on the curve are refused.
    pub(crate) fn prepare(&self) -> Result<PreparedKey, KeyError> {
        let point = MontgomeryPoint(self.0).to_edwards(0).ok_or(KeyError::NotAPoint)?;
        Ok(PreparedKey::of_point(point))
    }
}

impl PreparedKey {
    /// From a point whose u-coordinate is the key (either sign).
    pub(crate) fn of_point(point: EdwardsPoint) -> Self {
        PreparedKey(point.mul_by_cofactor())
    }
}

/// The output of one X25519 agreement.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SharedSecret(Box<[u8; 32]>);

impl SharedSecret {
    /// The shared secret of an agreement's u-coordinate; all zeros means the peer's key was a
    /// low-order point: refused.
    pub(crate) fn of_u(mut u: MontgomeryPoint) -> Result<Self, KeyError> {
        let shared = Self(Box::new(u.to_bytes()));
        u.zeroize();
        if *shared.0 == [0u8; 32] {
            return Err(KeyError::LowOrderPoint);
        }
        Ok(shared)
    }

    /// The 32 secret bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedSecret(<redacted>)")
    }
}

/// A Curve25519 key pair.
#[derive(Clone)]
pub struct KeyPair {
    /// The public half.
    pub public: PublicKey,
    /// The private half.
    pub private: PrivateKey,
}

impl KeyPair {
    /// A fresh random key pair.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self::from_private(PrivateKey::generate(rng))
    }

    /// The key pair of a private key.
    pub fn from_private(private: PrivateKey) -> Self {
        Self { public: private.public_key(), private }
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { public, private: _ } = self;
        f.debug_struct("KeyPair").field("public", public).finish_non_exhaustive()
    }
}

/// Compares two byte strings in constant time (for MACs and keys).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use rand_chacha::rand_core::SeedableRng;

    use super::*;

    #[test]
    fn encoding_round_trip_and_errors() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let kp = KeyPair::generate(&mut rng);
        let enc = kp.public.serialize();
        assert_eq!(enc[0], 5);
        assert_eq!(PublicKey::deserialize(&enc).ok(), Some(kp.public));
        assert!(matches!(PublicKey::deserialize(&enc[..32]), Err(KeyError::BadLength { .. })));
        let mut bad = enc;
        bad[0] = 6;
        assert!(matches!(PublicKey::deserialize(&bad), Err(KeyError::BadKeyType(6))));
        assert!(PublicKey::deserialize(&[]).is_err());
    }

    #[test]
    fn agreement_is_symmetric_and_refuses_low_order() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
        let a = KeyPair::generate(&mut rng);
        let b = KeyPair::generate(&mut rng);
        let ab = a.private.agree(&b.public).map(|s| *s.as_bytes()).ok();
        let ba = b.private.agree(&a.public).map(|s| *s.as_bytes()).ok();
        assert!(ab.is_some());
        assert_eq!(ab, ba);
        assert!(matches!(a.private.agree(&PublicKey::from_bytes([0; 32])), Err(KeyError::LowOrderPoint)));
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(matches!(a.private.agree(&PublicKey::from_bytes(one)), Err(KeyError::LowOrderPoint)));
    }

    /// RFC 7748 X25519 on curve25519-dalek's Montgomery ladder: the reference the Edwards route is checked
    /// against.
    fn ladder(private: &PrivateKey, their: &PublicKey) -> [u8; 32] {
        MontgomeryPoint(*their.as_bytes()).mul_clamped(*private.as_bytes()).to_bytes()
    }

    /// The Edwards route gives exactly what the Montgomery ladder gives (RFC 7748 X25519), and so do
    /// the public keys and the batched conversions.
    #[test]
    fn agreement_equals_rfc7748_x25519() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(9);
        for _ in 0..500 {
            let a = KeyPair::generate(&mut rng);
            let b = KeyPair::generate(&mut rng);
            let ours = a.private.agree(&b.public).map(|s| *s.as_bytes()).unwrap_or_default();
            assert_eq!(ours, ladder(&a.private, &b.public));
            let base = MontgomeryPoint::mul_base_clamped(*a.private.as_bytes()).to_bytes();
            assert_eq!(a.public.as_bytes(), &base);
            let prepared = b.public.prepare().unwrap();
            let points = [a.private.agree_point(&prepared), a.private.public_point(), b.private.public_point()];
            let batch: Vec<[u8; 32]> = to_montgomery_batch(&points).iter().map(|u| u.to_bytes()).collect();
            assert_eq!(batch, [ours, *a.public.as_bytes(), *b.public.as_bytes()]);
        }
        // RFC 7748 §5.2 test vector 1 (scalar clamped the same way).
        let scalar = hex_bytes("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4");
        let u = hex_bytes("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c");
        let out = PrivateKey::from_bytes(scalar).agree(&PublicKey::from_bytes(u)).map(|s| *s.as_bytes());
        assert_eq!(out.ok(), Some(hex_bytes("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552")));
        // A point with a torsion component: the cofactor clearing makes it agree with the ladder too.
        let torsion = curve25519_dalek::constants::EIGHT_TORSION[1];
        for _ in 0..50 {
            let a = KeyPair::generate(&mut rng);
            let b = KeyPair::generate(&mut rng);
            let p = MontgomeryPoint(*b.public.as_bytes()).to_edwards(0).unwrap() + torsion;
            let mixed = PublicKey::from_bytes(p.to_montgomery().to_bytes());
            let reference = ladder(&a.private, &mixed);
            assert_eq!(a.private.agree(&mixed).map(|s| *s.as_bytes()).ok(), Some(reference));
        }
        // Every low-order point is refused.
        for t in curve25519_dalek::constants::EIGHT_TORSION {
            let a = KeyPair::generate(&mut rng);
            let low = PublicKey::from_bytes(t.to_montgomery().to_bytes());
            assert!(a.private.agree(&low).is_err());
        }
    }

    fn hex_bytes(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap_or(0);
        }
        out
    }

    #[test]
    fn debug_shows_no_secret() {
        let kp = KeyPair::from_private(PrivateKey::from_bytes([0x42; 32]));
        let s = format!("{kp:?} {:?}", kp.private);
        assert!(!s.contains("42, 42") && !s.contains("4242"), "{s}");
        assert!(s.contains("redacted") || !s.contains("private"));
    }

    #[test]
    fn device_ids() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        for _ in 0..100 {
            assert!(valid_device_id(random_device_id(&mut rng)));
        }
        assert!(!valid_device_id(0));
        assert!(!valid_device_id(1 << 31));
    }
}
