//! Invitation tokens, in the spirit of XEP-0379 (pre-authenticated roster subscription) and MIX
//! invitations: for inviting people whose JID is not known in advance (a link on a web page) and for
//! services that validate joins.
//!
//! A room owner (or the service) issues a token with a secret key: HMAC-SHA-256 over the room, the
//! inviter, the invitee (if the token is bound to one), the expiry and a 128-bit nonce. The token is
//! URL-safe base64 and travels in an `xmpp:ROOM?join;preauth=TOKEN` URI. Checking is constant-time and
//! gives each failure its own reason; single use is the store's part (the spent nonce is kept until the
//! token expires), see `fan_out_encryptor::invite::redeem_token`.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

const VERSION: u8 = 1;
const DOMAIN: &[u8] = b"omemo-muc invitation token v1";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The secret key tokens are issued and checked with.
pub struct TokenKey(Zeroizing<[u8; 32]>);

impl TokenKey {
    /// From 32 secret bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a token at all (bad base64, wrong length, truncated).
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// A token version we do not know.
    #[error("unknown token version {0}")]
    UnknownVersion(u8),
    /// The MAC does not match: forged, altered, for another room, or issued with another key.
    #[error("token not valid for this room")]
    BadMac,
    /// Past its expiry.
    #[error("token expired at {expired_at}")]
    Expired {
        /// When it expired (seconds since the epoch).
        expired_at: u64,
    },
    /// Bound to another invitee.
    #[error("token issued for {bound_to}, not for {joining}")]
    WrongInvitee {
        /// The invitee it names.
        bound_to: String,
        /// Who tried to use it.
        joining: String,
    },
    /// Used already.
    #[error("token used already")]
    Spent,
    /// The URI is not an `xmpp:ROOM?join;preauth=TOKEN` URI.
    #[error("not a join URI with a token: {0}")]
    NotAJoinUri(&'static str),
}

/// A checked token: what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    /// The nonce: the token's identity for single use.
    pub nonce: [u8; 16],
    /// Who issued it.
    pub inviter: String,
    /// The invitee it is bound to, if any.
    pub invitee: Option<String>,
    /// Expiry, seconds since the epoch.
    pub expires_at: u64,
}

fn mac(
    key: &TokenKey,
    room: &str,
    inviter: &str,
    invitee: Option<&str>,
    expires_at: u64,
    nonce: &[u8; 16],
) -> [u8; 32] {
    // A key shorter than SHA-256's 64-byte block is zero-padded to it (RFC 2104): the same HMAC.
    let mut block = Zeroizing::new([0u8; 64]);
    block[..32].copy_from_slice(&key.0[..]);
    let mut m = <Hmac<Sha256> as hmac::digest::KeyInit>::new(&(*block).into());
    m.update(DOMAIN);
    for part in [room.as_bytes(), inviter.as_bytes(), invitee.unwrap_or("").as_bytes()] {
        m.update(&(part.len() as u32).to_be_bytes());
        m.update(part);
    }
    m.update(&[u8::from(invitee.is_some())]);
    m.update(&expires_at.to_be_bytes());
    m.update(nonce);
    m.finalize().into_bytes().into()
}

/// Issues a token for `room` by `inviter`, bound to `invitee` if given, valid until `expires_at`;
/// `nonce` must be random (128 bits).
pub fn issue(
    key: &TokenKey,
    room: &str,
    inviter: &str,
    invitee: Option<&str>,
    expires_at: u64,
    nonce: [u8; 16],
) -> String {
    let inviter = &inviter[..inviter.len().min(255)];
    let invitee = invitee.map(|i| &i[..i.len().min(255)]);
    let mut out = vec![VERSION];
    out.extend_from_slice(&expires_at.to_be_bytes());
    out.extend_from_slice(&nonce);
    out.push(inviter.len() as u8);
    out.extend_from_slice(inviter.as_bytes());
    match invitee {
        Some(i) => {
            out.push(i.len() as u8);
            out.extend_from_slice(i.as_bytes());
        }
        None => out.push(0),
    }
    out.extend_from_slice(&mac(key, room, inviter, invitee, expires_at, &nonce));
    B64.encode(out)
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], TokenError> {
    if b.len() < n {
        return Err(TokenError::Malformed("truncated"));
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

fn text(bytes: &[u8]) -> Result<String, TokenError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| TokenError::Malformed("not UTF-8"))
}

/// Checks a token for `room`, presented by `joining` (a bare JID) at time `now`: MAC (constant time),
/// then expiry, then binding. Single use is checked by the caller against its store.
pub fn check(key: &TokenKey, room: &str, token: &str, joining: &str, now: u64) -> Result<TokenClaims, TokenError> {
    if token.len() > 1024 {
        return Err(TokenError::Malformed("too long"));
    }
    let raw = B64.decode(token.trim()).map_err(|_| TokenError::Malformed("not URL-safe base64"))?;
    let mut b = raw.as_slice();
    let version = take(&mut b, 1)?[0];
    if version != VERSION {
        return Err(TokenError::UnknownVersion(version));
    }
    let mut expiry = [0u8; 8];
    expiry.copy_from_slice(take(&mut b, 8)?);
    let expires_at = u64::from_be_bytes(expiry);
    let mut nonce = [0u8; 16];
    nonce.copy_from_slice(take(&mut b, 16)?);
    let n = usize::from(take(&mut b, 1)?[0]);
    let inviter = text(take(&mut b, n)?)?;
    let n = usize::from(take(&mut b, 1)?[0]);
    let invitee = if n == 0 { None } else { Some(text(take(&mut b, n)?)?) };
    let tag = take(&mut b, 32)?;
    if !b.is_empty() {
        return Err(TokenError::Malformed("trailing bytes"));
    }
    let expected = mac(key, room, &inviter, invitee.as_deref(), expires_at, &nonce);
    if !bool::from(expected.ct_eq(tag)) {
        return Err(TokenError::BadMac);
    }
    if now >= expires_at {
        return Err(TokenError::Expired { expired_at: expires_at });
    }
    if let Some(bound) = &invitee {
        if crate::xml::bare(joining) != *bound {
            return Err(TokenError::WrongInvitee { bound_to: bound.clone(), joining: joining.to_owned() });
        }
    }
    Ok(TokenClaims { nonce, inviter, invitee, expires_at })
}

/// The join URI for a token: `xmpp:ROOM?join;preauth=TOKEN`.
pub fn join_uri(room: &str, token: &str) -> String {
    format!("xmpp:{room}?join;preauth={token}")
}

/// Reads a join URI: the room and the token.
pub fn parse_join_uri(uri: &str) -> Result<(String, String), TokenError> {
    let rest = uri.strip_prefix("xmpp:").ok_or(TokenError::NotAJoinUri("no xmpp: scheme"))?;
    let (room, query) = rest.split_once('?').ok_or(TokenError::NotAJoinUri("no query"))?;
    let mut parts = query.split(';');
    if parts.next() != Some("join") {
        return Err(TokenError::NotAJoinUri("not a join action"));
    }
    let token = parts.find_map(|p| p.strip_prefix("preauth=")).ok_or(TokenError::NotAJoinUri("no preauth token"))?;
    if room.is_empty() || !room.contains('@') {
        return Err(TokenError::NotAJoinUri("no room JID"));
    }
    Ok((room.to_owned(), token.to_owned()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const ROOM: &str = "x7k2@conference.example.org";

    #[test]
    fn issue_check_and_every_refusal() {
        let key = TokenKey::new([7; 32]);
        let open = issue(&key, ROOM, "alice@example.org", None, 1000, [1; 16]);
        assert!(open.len() >= 22 && open.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        let claims = check(&key, ROOM, &open, "anyone@example.org/res", 999).unwrap();
        assert_eq!((claims.inviter.as_str(), claims.invitee, claims.nonce), ("alice@example.org", None, [1; 16]));
        assert_eq!(check(&key, ROOM, &open, "x@y", 1000), Err(TokenError::Expired { expired_at: 1000 }));
        assert_eq!(check(&key, "other@conference.example.org", &open, "x@y", 1), Err(TokenError::BadMac));
        assert_eq!(check(&TokenKey::new([8; 32]), ROOM, &open, "x@y", 1), Err(TokenError::BadMac));
        let bound = issue(&key, ROOM, "alice@example.org", Some("bob@example.org"), 1000, [2; 16]);
        assert!(check(&key, ROOM, &bound, "bob@example.org/phone", 5).is_ok());
        assert!(matches!(check(&key, ROOM, &bound, "eve@example.org", 5), Err(TokenError::WrongInvitee { .. })));
        // Every single-bit change of the token is refused.
        let raw = B64.decode(&bound).unwrap();
        for i in 0..raw.len() {
            let mut t = raw.clone();
            t[i] ^= 1;
            assert!(check(&key, ROOM, &B64.encode(&t), "bob@example.org", 5).is_err(), "byte {i}");
        }
        assert_eq!(check(&key, ROOM, &bound[..20], "b@c", 5), Err(TokenError::Malformed("truncated")));
        assert_eq!(check(&key, ROOM, "***", "b@c", 5), Err(TokenError::Malformed("not URL-safe base64")));
        let mut v2 = raw.clone();
        v2[0] = 2;
        assert_eq!(check(&key, ROOM, &B64.encode(&v2), "b@c", 5), Err(TokenError::UnknownVersion(2)));
        let uri = join_uri(ROOM, &bound);
        assert_eq!(parse_join_uri(&uri).unwrap(), (ROOM.to_owned(), bound));
        assert!(parse_join_uri("xmpp:room@x?message;body=hi").is_err());
        assert_eq!(format!("{key:?}"), "TokenKey(<redacted>)");
    }
}
