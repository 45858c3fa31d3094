//! Invitations over OMEMO, and redeeming invitation tokens (issue: turning a 1:1 chat into a private
//! group).
//!
//! A direct invitation (XEP-0249) to a private group goes OMEMO-encrypted to the invitee's devices: the
//! stanza then carries only the encrypted elements (and the usual fallback body); the OMEMO 2 SCE
//! content, or the OMEMO 0.3 body, is the `<x xmlns='jabber:x:conference'/>` element. A plaintext
//! invitation is built only on the caller's explicit choice, for an invitee without OMEMO devices.

use minidom::Element;
use participant_resolver::{
    invitation::{read_invitation, DirectInvitation, Invitation, InvitationContext, NS_CONFERENCE},
    token::{self, TokenClaims, TokenError, TokenKey},
    xml::escape,
};
use rand_core::CryptoRngCore;
use session_store::{session, Changes, PreKeyBundle, SessionAddress, Store, StoreError};

use crate::{
    decrypt::{decrypt_stanza, Context},
    encrypt::{encrypt_message, missing_sessions, EncryptedMessage, NamespaceChoice, Outgoing},
    error::{DecryptError, EncryptError, XmlError},
    xml::{
        parse_element,
        stanza::{self, MessageHeaders},
        v0_3, v2,
    },
};

/// An encrypted invitation, ready once its changes are committed.
#[derive(Debug)]
pub struct EncryptedInvitation {
    /// The `<message>` stanza.
    pub stanza: Element,
    /// The encrypted message (its coverage says which devices got it).
    pub message: EncryptedMessage,
    /// Devices whose bundles could not make a session, and why.
    pub failed: Vec<(SessionAddress, String)>,
}

/// The devices of `invitee` (and our own other devices) that need a bundle before
/// [`encrypt_invitation`]; their device lists must be in the store.
pub fn invitation_needs_bundles(
    store: &impl Store,
    invitee: &str,
    choice: NamespaceChoice,
) -> Result<Vec<SessionAddress>, EncryptError> {
    missing_sessions(store, &[invitee.to_owned()], choice)
}

/// Encrypts a direct invitation for `invitee`'s devices. `bundles` answers
/// [`invitation_needs_bundles`]; a bad bundle leaves its device out. Commit `message.changes` before
/// sending `stanza`.
pub fn encrypt_invitation(
    store: &impl Store,
    invitee: &str,
    invitation: &DirectInvitation,
    bundles: &[(SessionAddress, Result<PreKeyBundle, String>)],
    choice: NamespaceChoice,
    rng: &mut impl CryptoRngCore,
) -> Result<EncryptedInvitation, EncryptError> {
    let account = store.account()?.ok_or(EncryptError::NoAccount)?;
    let mut changes = Changes::default();
    let mut failed = Vec::new();
    for (addr, bundle) in bundles {
        match bundle {
            Ok(b) => {
                if let Err(e) = session::initiate(store, &account, addr, b, &mut changes, rng) {
                    if let session_store::SessionError::Store(e) = e {
                        return Err(e.into());
                    }
                    failed.push((addr.clone(), e.to_string()));
                }
            }
            Err(e) => failed.push((addr.clone(), e.clone())),
        }
    }
    let x = invitation.to_element();
    let body = String::from(&x);
    let content = [x];
    let out = Outgoing { body: Some(&body), sce_to: Some(invitee), sce_time: None, sce_content: Some(&content) };
    let message = encrypt_message(store, &[invitee.to_owned()], &out, choice, changes, rng)?;
    let headers = MessageHeaders {
        to: Some(invitee.to_owned()),
        groupchat: false,
        id: stanza::new_message_id(rng),
        eme_namespace: message.eme_namespace(),
        fallback_body: true,
    };
    let stanza = stanza::build_message(&headers, message.elements());
    Ok(EncryptedInvitation { stanza, message, failed })
}

/// Why a plaintext invitation was not built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlaintextInvitationError {
    /// The invitee has OMEMO devices: invite them encrypted.
    #[error("{0} has OMEMO devices; send the invitation encrypted")]
    InviteeHasDevices(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stanza could not be built.
    #[error(transparent)]
    Xml(#[from] XmlError),
}

/// A plaintext direct invitation: only for an invitee without OMEMO devices (as far as the store
/// knows their device lists), and only when the caller explicitly asks for it.
pub fn plaintext_invitation(
    store: &impl Store,
    invitee: &str,
    invitation: &DirectInvitation,
    id: &str,
) -> Result<Element, PlaintextInvitationError> {
    for ns in [session_store::Namespace::Oldmemo, session_store::Namespace::Twomemo] {
        if store.device_list(ns, invitee)?.is_some_and(|l| !l.is_empty()) {
            return Err(PlaintextInvitationError::InviteeHasDevices(invitee.to_owned()));
        }
    }
    let (to, id) = (escape(invitee), escape(id));
    let mut m = parse_element(&format!("<message xmlns='jabber:client' to='{to}' id='{id}'/>"))?;
    m.append_child(invitation.to_element());
    Ok(m)
}

/// Reads a received invitation: a mediated one from a room, a plaintext direct one, or an
/// OMEMO-encrypted direct one (decrypted here, attributed to its sender when the device is trusted).
/// `subscribed` says whether a bare JID is a contact with a presence subscription. Returns the
/// invitation (if the message is one) and the changes to commit (the advanced session).
pub fn receive_invitation(
    store: &impl Store,
    message: &Element,
    subscribed: &dyn Fn(&str) -> bool,
    rng: &mut impl CryptoRngCore,
) -> Result<Option<(Invitation, Changes)>, DecryptError> {
    let encrypted = message.children().any(|c| c.is("encrypted", v2::NS) || c.is("encrypted", v0_3::NS));
    if !encrypted {
        let ctx = InvitationContext { subscribed, encrypted_from_trusted: false, encrypted: false };
        return Ok(read_invitation(message, None, &ctx).map(|i| (i, Changes::default())));
    }
    let account = store.account()?.ok_or(DecryptError::Session(session_store::SessionError::NoAccount))?;
    let sender = stanza::bare(message.attr("from").unwrap_or_default()).to_owned();
    let ctx = Context { sender: &sender, expected_to: &account.jid, group: false, pre_keys: session::PreKeyMode::Live };
    let (decrypted, changes) = decrypt_stanza(store, message, &ctx, rng)?;
    let content = match &decrypted.envelope {
        Some(env) => env.content.payloads.iter().find(|e| e.is("x", NS_CONFERENCE)).cloned(),
        None => decrypted
            .plaintext
            .as_ref()
            .and_then(|p| std::str::from_utf8(p).ok())
            .and_then(|t| parse_element(t).ok())
            .filter(|e| e.is("x", NS_CONFERENCE)),
    };
    let Some(content) = content else { return Ok(None) };
    let trusted = decrypted.identity.trust.may_encrypt();
    let ctx = InvitationContext { subscribed, encrypted_from_trusted: trusted, encrypted: true };
    Ok(read_invitation(message, Some(&content), &ctx).map(|i| (i, changes)))
}

/// Why a token could not be redeemed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RedeemError {
    /// The token itself was refused.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Redeems an invitation token for `room` presented by `joining` at `now`: checked (constant time,
/// expiry, binding) and single use. Commit the returned changes (the token marked spent until it
/// expires; expired ones forgotten) before admitting the joiner.
pub fn redeem_token(
    store: &impl Store,
    key: &TokenKey,
    room: &str,
    token_text: &str,
    joining: &str,
    now: u64,
) -> Result<(TokenClaims, Changes), RedeemError> {
    let claims = token::check(key, room, token_text, joining, now)?;
    if store.token_spent(&claims.nonce)? {
        return Err(TokenError::Spent.into());
    }
    let changes = Changes {
        spent_tokens: vec![(claims.nonce.to_vec(), claims.expires_at)],
        purge_tokens_before: Some(now),
        ..Changes::default()
    };
    Ok((claims, changes))
}
