//! Group messages: encrypt once for every member device of a room, and recognise what comes back.
//!
//! ```text
//! send:    plan_group_message(room)            -> recipients (participant-resolver), devices, ONE batch of bundles to fetch
//!          encrypt_group_message(room, bundles) -> sessions from bundles (bad bundle: that device excluded)
//!                                                  payload once per namespace; key wrapped per device, in parallel,
//!                                                  on owned copies of the records
//!                                                  Changes = advanced sessions + consumed pre-keys + ledger entry
//!          GroupMessage::commit(store)          -> ONE transaction, then the stanza may go out
//! receive: receive_group_message(room, stanza)  -> Decrypted | OwnReflection | Duplicate | Undecryptable { cause }
//! ```

use minidom::Element;
use participant_resolver::{Exclusion, RecipientJids, Recipients, ResolveError, Room};
use rand_core::CryptoRngCore;
use rayon::prelude::*;
use session_store::{
    session, Changes, FastMap, FastSet, LedgerEntry, Namespace, PreKeyBundle, SendState, SessionAddress, SessionError,
    SessionRecord, Store, StoreError, TrustLevel,
};
use zeroize::Zeroizing;

use crate::{
    encrypt::{recipient_devices, NamespaceChoice},
    error::EncryptError,
    payload,
    xml::{sce, stanza, stanza::StanzaText},
};

/// Prosody's default stanza size limit: a bigger stanza would be dropped by the server.
pub const DEFAULT_MAX_STANZA_BYTES: usize = 256 * 1024;

/// What to do when a member has no device that can get a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissingDevicePolicy {
    /// Refuse to send and name the members (what users of private groups expect).
    #[default]
    Block,
    /// Send to everyone else and report the members left out.
    BestEffort,
}

/// Options of a group send.
#[derive(Debug, Clone, Copy)]
pub struct GroupOptions {
    /// Members without a usable device.
    pub missing: MissingDevicePolicy,
    /// The stanza-size budget.
    pub max_stanza_bytes: usize,
    /// Which namespaces to use.
    pub choice: NamespaceChoice,
    /// Keep the plaintext in the ledger (for clients without a history of their own).
    pub keep_plaintext: bool,
}

impl Default for GroupOptions {
    fn default() -> Self {
        Self {
            missing: MissingDevicePolicy::Block,
            max_stanza_bytes: DEFAULT_MAX_STANZA_BYTES,
            choice: NamespaceChoice::Auto,
            keep_plaintext: false,
        }
    }
}

/// Why a member or a device got no key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Left {
    /// The room excluded the member (outcast, no longer a member, no real JID ...).
    Room(Exclusion),
    /// We hold no device list of the member.
    NoDeviceList,
    /// The device's bundle could not be fetched.
    NoBundle(String),
    /// The device's bundle is invalid (bad signature, bad key, no pre-keys).
    BundleInvalid(String),
    /// The device's identity key is distrusted.
    Distrusted,
    /// The device's identity key awaits a trust decision.
    Undecided,
    /// The device did not answer our last [`session_store::ratchet::STALE_AFTER`] messages: left out
    /// until it speaks again.
    Stale,
    /// The session refused to encrypt.
    SessionFailed(String),
}

/// Who got a key and who did not, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupCoverage {
    /// Devices that got a key (and whether it carried a key exchange).
    pub keyed: Vec<(SessionAddress, bool)>,
    /// Members left out entirely (bare JID or `room/nick`), with the reason.
    pub members_left_out: Vec<(String, Left)>,
    /// Devices left out, with the reason.
    pub devices_left_out: Vec<(SessionAddress, Left)>,
}

/// The first step of a send: who, and what to fetch first.
#[derive(Debug, Clone)]
pub struct GroupPlan {
    /// The room's answer.
    pub recipients: Recipients,
    /// Every device to encrypt to (with its namespace).
    pub devices: Vec<SessionAddress>,
    /// Devices without a session: fetch their bundles, in one batch.
    pub need_bundles: Vec<SessionAddress>,
    /// Members whose device lists we have never seen: fetch them first.
    pub need_device_lists: Vec<String>,
}

/// A group send failed as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// The room may not carry OMEMO messages now.
    #[error("room not usable for OMEMO: {0}")]
    Room(#[from] ResolveError),
    /// Some members have no device that can get a key, and the policy is `Block`.
    #[error("{} member(s) have no usable device: {}", .0.len(), .0.join(", "))]
    MembersWithoutDevices(Vec<String>),
    /// The stanza would exceed the size budget.
    #[error("the stanza would be {bytes} bytes with {keys} keys; the limit is {limit}")]
    TooLarge {
        /// Its size.
        bytes: usize,
        /// How many keys it carries.
        keys: usize,
        /// The budget.
        limit: usize,
    },
    /// No device at all.
    #[error(transparent)]
    Encrypt(#[from] EncryptError),
}

impl From<StoreError> for GroupError {
    fn from(e: StoreError) -> Self {
        Self::Encrypt(EncryptError::Store(e))
    }
}

/// A group message ready to go out once its changes are committed.
#[derive(Debug)]
pub struct GroupMessage {
    /// The `<message type='groupchat'>` stanza, as text.
    pub stanza: StanzaText,
    /// Its id (= origin-id).
    pub id: String,
    /// Advanced sessions, new sessions, consumed pre-keys, the ledger entry.
    pub changes: Changes,
    /// The coverage report.
    pub coverage: GroupCoverage,
}

impl GroupMessage {
    /// Commits the change set in one transaction; only then is the stanza handed out.
    pub fn commit(self, store: &mut impl Store) -> Result<(StanzaText, GroupCoverage), StoreError> {
        store.apply(&self.changes)?;
        Ok((self.stanza, self.coverage))
    }
}

/// The per-device step for a run of devices (one piece of the parallel work): their `<key>` elements one
/// after the other in `text` (one buffer, not one string per device), and per device where its element
/// lies in `text` (and whether it is a key exchange) and the session's advanced sending chain, or why not.
#[derive(Default)]
struct Wrapped {
    text: String,
    devices: Vec<Result<WrappedKey, SessionError>>,
}

/// One device's wrapped key: where its `<key>` lies, whether it is a key exchange, the advanced chain.
type WrappedKey = (std::ops::Range<usize>, bool, session_store::SendStep);

/// Runs `parallel` (work for the rayon pool) on a scoped helper thread while `here` runs on this thread,
/// which alone reads the store (a store need not be shared between threads). Called from a thread of
/// the pool, the two run one after the other: waiting there for the helper could hold the only worker
/// its work needs.
fn beside<A: Send, B>(parallel: impl FnOnce() -> A + Send, here: impl FnOnce() -> B) -> (Result<A, SessionError>, B) {
    if rayon::current_thread_index().is_some() {
        return (Ok(parallel()), here());
    }
    std::thread::scope(|scope| {
        let helper = scope.spawn(parallel);
        let here = here();
        // A panic in the parallel work (none is expected) is reported, not carried into the caller.
        (helper.join().map_err(|_| SessionError::Internal("the parallel part of a group send panicked")), here)
    })
}

/// The generator of one device's session (or of the batch check): stream `n` of ChaCha20 with `seed`.
fn stream_of(seed: &[u8; 32], n: u64) -> rand_chacha::ChaCha20Rng {
    let mut rng = <rand_chacha::ChaCha20Rng as rand_chacha::rand_core::SeedableRng>::from_seed(*seed);
    rng.set_stream(n);
    rng
}

/// Step 1: the recipients, their devices, and what to fetch before encrypting.
pub fn plan_group_message(store: &impl Store, room: &Room, choice: NamespaceChoice) -> Result<GroupPlan, GroupError> {
    let (LoadedPlan { recipients, devices, need_bundles, need_device_lists }, _) = load_plan(store, room, choice)?;
    Ok(GroupPlan { recipients: recipients.into(), devices, need_bundles, need_device_lists })
}

/// A [`GroupPlan`] with the recipients' JIDs borrowed from the room.
struct LoadedPlan<'r> {
    recipients: RecipientJids<'r>,
    devices: Vec<SessionAddress>,
    need_bundles: Vec<SessionAddress>,
    need_device_lists: Vec<String>,
}

/// The plan and what sending needs of each device's session (read once per send).
fn load_plan<'r>(
    store: &impl Store,
    room: &'r Room,
    choice: NamespaceChoice,
) -> Result<(LoadedPlan<'r>, Vec<Option<SendState>>), GroupError> {
    let recipients = room.recipient_jids()?;
    let (devices, need_device_lists) = recipient_devices(store, &recipients.included, choice)?;
    let mut need_bundles = Vec::new();
    let states = store.send_states(&devices)?;
    for (addr, state) in devices.iter().zip(states.iter()) {
        if state.is_none() {
            need_bundles.push(addr.clone());
        }
    }
    Ok((LoadedPlan { recipients, devices, need_bundles, need_device_lists }, states))
}

/// Step 2: encrypts `body` for the room. `bundles` answers the plan's `need_bundles` (a device missing
/// from it, or answered with an error, is left out with that reason). The result must be committed with
/// [`GroupMessage::commit`] before the stanza is sent.
pub fn encrypt_group_message(
    store: &impl Store,
    room: &Room,
    body: &str,
    bundles: &[(SessionAddress, Result<PreKeyBundle, String>)],
    opts: &GroupOptions,
    now: u64,
    rng: &mut impl CryptoRngCore,
) -> Result<GroupMessage, GroupError> {
    let account = store.account()?.ok_or(EncryptError::NoAccount)?;
    let (LoadedPlan { recipients, devices, need_bundles, need_device_lists }, loaded) =
        load_plan(store, room, opts.choice)?;
    let mut coverage = GroupCoverage::default();
    for (who, why) in &recipients.excluded {
        coverage.members_left_out.push((who.clone(), Left::Room(why.clone())));
    }
    for jid in need_device_lists {
        coverage.members_left_out.push((jid, Left::NoDeviceList));
    }

    // Sessions from the bundles, all into one change set. The crypto (the signatures checked in batches,
    // one multi-scalar multiplication per core, then X3DH on every core) runs while this thread reads what
    // the store knows: the identities in the bundles (three batch reads), and the stored records of these
    // devices and of those whose DH ratchet step waits. A device whose identity turns out distrusted had its
    // session built for nothing: it is dropped.
    let mut changes = Changes::default();
    // Looked up per device: a map, not a scan (thousands of bundles on a cold start).
    let answers: FastMap<&SessionAddress, &Result<PreKeyBundle, String>> =
        bundles.iter().map(|(a, b)| (a, b)).collect();
    let mut fetched: Vec<(&SessionAddress, &PreKeyBundle)> = Vec::new();
    for addr in &need_bundles {
        match answers.get(addr).copied() {
            None => coverage.devices_left_out.push((addr.clone(), Left::NoBundle("not fetched".into()))),
            Some(Err(e)) => coverage.devices_left_out.push((addr.clone(), Left::NoBundle(e.clone()))),
            Some(Ok(bundle)) => fetched.push((addr, bundle)),
        }
    }
    // Every device draws from its own ChaCha20 stream of one fresh seed.
    let mut seed = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(&mut seed[..]);
    let build_all = {
        let (fetched, account, seed) = (&fetched, &account, &seed);
        move || -> Vec<Result<SessionRecord, SessionError>> {
            let asked: Vec<(&PreKeyBundle, Namespace)> = fetched.iter().map(|(a, b)| (*b, a.namespace)).collect();
            let checked = session_store::check_bundles(&asked, &mut stream_of(seed, u64::MAX));
            checked
                .into_par_iter()
                .enumerate()
                .map(|(i, checked)| {
                    let mut rng = stream_of(seed, i as u64);
                    checked.and_then(|c| session::initiate_record_checked(account, &c, &mut rng))
                })
                .collect()
        }
    };
    let due: Vec<SessionAddress> = devices
        .iter()
        .zip(&loaded)
        .filter(|(_, s)| s.as_ref().is_some_and(SendState::ratchet_due))
        .map(|(a, _)| a.clone())
        .collect();
    let read_store = || -> Result<_, GroupError> {
        let asked: Vec<(&str, session_store::DeviceId, &session_store::PublicKey)> =
            fetched.iter().map(|(a, b)| (a.jid.as_str(), a.device, &b.identity_key)).collect();
        let identities = match session::check_identities(store, &asked) {
            Ok(i) => i,
            Err(SessionError::Store(e)) => return Err(e.into()),
            Err(e) => return Err(EncryptError::Session(e).into()),
        };
        let wanted: Vec<SessionAddress> =
            fetched.iter().map(|(a, _)| SessionAddress::clone(a)).chain(due.iter().cloned()).collect();
        Ok((identities, store.sessions(&wanted)?))
    };
    // (Most sends have no bundle to build from: no helper thread then.)
    let (built, read) = match fetched.is_empty() {
        true => (Ok(Vec::new()), read_store()),
        false => beside(build_all, read_store),
    };
    let (identities, mut records) = read?;
    let built = built.map_err(EncryptError::Session)?;
    let due_records = records.split_off(fetched.len());
    for ((((addr, _), (identity, scratch)), built), stored) in
        fetched.into_iter().zip(identities).zip(built).zip(records)
    {
        if identity.trust == TrustLevel::Distrusted {
            coverage.devices_left_out.push((addr.clone(), Left::Distrusted));
            continue;
        }
        match built {
            Ok(fresh) => {
                // The identity seen in the bundle is kept only with the session it built.
                changes.merge(scratch);
                let mut record = stored.unwrap_or_default();
                record.absorb(fresh);
                changes.sessions.push((addr.clone(), record));
            }
            Err(e) => coverage.devices_left_out.push((addr.clone(), Left::BundleInvalid(e.to_string()))),
        }
    }

    // The waiting ratchet steps, done in parallel; the records are written whole with this send.
    let stepped: Vec<(SessionAddress, Result<SessionRecord, SessionError>)> = due
        .into_par_iter()
        .zip(due_records)
        .map(|(addr, record)| {
            let stepped = record.ok_or(SessionError::NoSession).and_then(|mut r| r.complete_ratchet().map(|()| r));
            (addr, stepped)
        })
        .collect();
    for (addr, stepped) in stepped {
        match stepped {
            Ok(record) => changes.sessions.push((addr, record)),
            Err(e) => coverage.devices_left_out.push((addr, Left::SessionFailed(e.to_string()))),
        }
    }

    // The records to wrap for, trust checked; read serially (a store need not be shared between threads).
    let left_out: FastSet<SessionAddress> = coverage.devices_left_out.iter().map(|(a, _)| a.clone()).collect();
    // Per device to wrap for: its address, what sending needs of its session (a few hundred bytes: kept
    // in place, not moved again), and the index in `changes.sessions` of a session built in this send.
    let mut addrs: Vec<SessionAddress> = Vec::with_capacity(devices.len());
    let mut states: Vec<SendState> = Vec::with_capacity(devices.len());
    let mut built_at: Vec<Option<usize>> = Vec::with_capacity(devices.len());
    let built_now: FastMap<&SessionAddress, usize> =
        changes.sessions.iter().enumerate().map(|(i, (a, _))| (a, i)).collect();
    for (addr, state) in devices.into_iter().zip(loaded) {
        let (state, fresh) = match state {
            Some(s) if !s.ratchet_due() => (Some(s), None),
            // No stored session, or one whose ratchet step waited: left out above (no bundle, a bad one,
            // a failed step), or in the change set (built from its bundle, or its step done).
            _ if left_out.contains(&addr) => continue,
            _ => {
                let at = built_now.get(&addr).copied();
                (at.and_then(|i| changes.sessions.get(i)).and_then(|(_, r)| r.send_state()), at)
            }
        };
        let Some(state) = state else {
            coverage.devices_left_out.push((addr, Left::NoBundle("no session".into())));
            continue;
        };
        if state.is_stale() {
            coverage.devices_left_out.push((addr, Left::Stale));
            continue;
        }
        addrs.push(addr);
        states.push(state);
        built_at.push(fresh);
    }
    // The payload, once per namespace among the devices to wrap for (the stanza leaves out a namespace
    // that trust leaves without devices).
    let uses = |ns| addrs.iter().any(|a| a.namespace == ns);
    let old = uses(Namespace::Oldmemo).then(|| payload::encrypt(body.as_bytes(), rng));
    let new = uses(Namespace::Twomemo).then(|| {
        let content = vec![Element::builder("body", "jabber:client").append(body).build()];
        let env: Element = sce::build(content, &account.jid, Some(room.jid()), None, rng).into();
        payload::encrypt_v2(String::from(&env).as_bytes(), rng)
    });

    // The per-device step runs on every core while this thread checks trust (the store is read from
    // this thread only): on owned copies of what sending needs of each session, the wrapped key as its
    // `<key>` element and the advanced sending chain (a delta of the stored record). A device that
    // trust then leaves out was wrapped for nothing: its key and its step are dropped.
    let identities: Vec<session_store::PublicKey> = states.iter().map(SendState::remote_identity).collect();
    let our = account.local_identity();
    let wrap_all = {
        let (addrs, old, new, our) = (&addrs, &old, &new, &our);
        move || -> Vec<Wrapped> {
            states
                .into_par_iter()
                .zip(addrs.par_iter())
                // Per piece of the work: one buffer for a key's data, and one `Wrapped`. (Collected in the
                // order of the devices.)
                .fold(
                    || (Vec::new(), Wrapped::default()),
                    |(mut data, mut out), (mut state, addr)| {
                        let secret: &[u8] = match addr.namespace {
                            Namespace::Oldmemo => old.as_ref().map(|p| &p.key_material[..]).unwrap_or_default(),
                            _ => new.as_ref().map(|p| &p.key_material[..]).unwrap_or_default(),
                        };
                        data.clear();
                        let one = state.encrypt_into(our, secret, &mut data).map(|kex| {
                            let start = out.text.len();
                            match addr.namespace {
                                Namespace::Oldmemo => {
                                    crate::xml::v0_3::write_key(&mut out.text, addr.device, kex, &data)
                                }
                                _ => crate::xml::v2::write_key(&mut out.text, addr.device, kex.then_some(true), &data),
                            }
                            (start..out.text.len(), kex, state.step())
                        });
                        out.devices.push(one);
                        (data, out)
                    },
                )
                .map(|(_, out)| out)
                .collect()
        }
    };
    let read_trust = || {
        let keys: Vec<(&str, session_store::PublicKey)> =
            addrs.iter().zip(&identities).map(|(a, k)| (a.jid.as_str(), *k)).collect();
        store.trusts(&keys)
    };
    let (wrapped, stored_trust) = beside(wrap_all, read_trust);
    let wrapped = wrapped.map_err(EncryptError::Session)?;
    let stored_trust = stored_trust?;
    // Per device, in order: its `<key>` as (piece, place in the piece's text), or why not.
    let mut texts: Vec<String> = Vec::with_capacity(wrapped.len());
    let mut outs = Vec::with_capacity(addrs.len());
    for (piece, Wrapped { text, devices }) in wrapped.into_iter().enumerate() {
        texts.push(text);
        outs.extend(devices.into_iter().map(|d| d.map(|(at, kex, step)| ((piece, at), kex, step))));
    }

    // Trust: what the change set decides (the last word per key wins), else the store's. A trusted
    // device's key goes into the stanza and its step into the change set: a session built in this send
    // is stored whole, with its step applied; a stored one as the step.
    let trust_now: FastMap<(&str, [u8; 32]), TrustLevel> =
        changes.trust.iter().map(|(j, k, t)| ((j.as_str(), *k.as_bytes()), *t)).collect();
    // Where the `<key>` texts lie, in the order of `coverage.keyed`.
    let mut keys: Vec<(usize, std::ops::Range<usize>)> = Vec::with_capacity(addrs.len());
    for (((addr, out), fresh), (stored, identity)) in
        addrs.into_iter().zip(outs).zip(built_at).zip(stored_trust.into_iter().zip(identities))
    {
        // (Most sends decide no trust: no lookup per device then.)
        let decided = match trust_now.is_empty() {
            true => None,
            false => trust_now.get(&(addr.jid.as_str(), *identity.as_bytes())).copied(),
        };
        match decided.or(stored).unwrap_or(TrustLevel::Undecided) {
            TrustLevel::Distrusted => coverage.devices_left_out.push((addr, Left::Distrusted)),
            t if !t.may_encrypt() => coverage.devices_left_out.push((addr, Left::Undecided)),
            _ => match out {
                Ok((key, kex, step)) => {
                    match fresh.map(|i| changes.sessions.get_mut(i).map(|(_, r)| r.apply_step(&step))) {
                        None => changes.session_steps.push((addr.clone(), step)),
                        Some(Some(applied)) => applied?,
                        Some(None) => {
                            let lost = SessionError::Internal("session built in this send is not in the change set");
                            return Err(EncryptError::Session(lost).into());
                        }
                    }
                    keys.push(key);
                    coverage.keyed.push((addr, kex));
                }
                Err(e) => coverage.devices_left_out.push((addr, Left::SessionFailed(e.to_string()))),
            },
        }
    }

    // Members with no device that got a key (a set: members times devices would be quadratic).
    let reached: FastSet<&str> = coverage.keyed.iter().map(|(a, _)| a.jid.as_str()).collect();
    let mut unreachable: Vec<String> = recipients
        .included
        .iter()
        .filter(|j| **j != account.jid && !reached.contains(*j))
        .map(|j| (*j).to_owned())
        .collect();
    unreachable.sort();
    if !unreachable.is_empty() && opts.missing == MissingDevicePolicy::Block {
        return Err(GroupError::MembersWithoutDevices(unreachable));
    }
    for jid in unreachable {
        if !coverage.members_left_out.iter().any(|(w, _)| *w == jid) {
            coverage.members_left_out.push((jid, Left::NoDeviceList));
        }
    }
    if coverage.keyed.is_empty() {
        return Err(EncryptError::NoDevices.into());
    }

    let id = stanza::new_message_id(rng);
    let key_text = |(piece, at): &(usize, std::ops::Range<usize>)| -> &str {
        texts.get(*piece).and_then(|t| t.get(at.clone())).unwrap_or_default()
    };
    let grouped = crate::encrypt::GroupKeys::new(
        coverage.keyed.iter().map(|(a, _)| a).zip(keys.iter().map(key_text)),
        old.as_ref().map(|p| (p.iv, &p.ciphertext[..])),
        new.as_ref().map(|p| &p.ciphertext[..]),
    );
    let headers = stanza::MessageHeaders {
        to: Some(room.jid().to_owned()),
        groupchat: true,
        id: id.clone(),
        eme_namespace: grouped.eme(),
        fallback_body: true,
    };
    // Written as text, in one buffer: its size is exact, and it is what goes on the wire.
    let stanza = stanza::write_message(&headers, grouped.len_hint(), |out| grouped.write(account.device_id, out));
    drop(grouped);
    drop(texts);
    if stanza.len() > opts.max_stanza_bytes {
        let keys = coverage.keyed.len();
        return Err(GroupError::TooLarge { bytes: stanza.len(), keys, limit: opts.max_stanza_bytes });
    }
    changes.ledger.push(LedgerEntry {
        room: room.jid().to_owned(),
        origin_id: id.clone(),
        message_id: id.clone(),
        plaintext_hash: LedgerEntry::hash(body.as_bytes()),
        plaintext: opts.keep_plaintext.then(|| body.as_bytes().to_vec()),
        sent_at: now,
    });
    Ok(GroupMessage { stanza, id, changes, coverage })
}

/// Why a group message could not be decrypted. It is an outcome, not an error: the message stays in
/// the history with its cause.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cause {
    /// The message carries no key for this device (the sender did not know this device yet, or left it
    /// out).
    NotForThisDevice,
    /// The message carries no key for this device and was sent before this device joined the room.
    SentBeforeWeJoined,
    /// Nobody could be identified as the sender.
    UnknownSender,
    /// The sender's identity key is distrusted.
    UntrustedSender,
    /// A key exchange from a device its sender did not publish (forged, or our copy of the device list
    /// is out of date: fetch it and process the message again).
    UnknownDevice(u32),
    /// Our session with the sender's device is broken or missing.
    BrokenSession(String),
    /// The stanza or its OMEMO element is malformed, or its SCE affixes do not match.
    Malformed(String),
    /// A message from our own occupant (or device) that the ledger does not know.
    UnknownReflection,
}

/// What a received group message turned out to be.
#[derive(Debug)]
#[non_exhaustive]
pub enum Inbound {
    /// Decrypted, with the sender as attributed.
    Decrypted {
        /// The decrypted message.
        message: Box<crate::Decrypted>,
        /// How the sender was identified.
        attribution: participant_resolver::Attribution,
    },
    /// Our own message, reflected by the room (live or from its archive).
    OwnReflection {
        /// What we sent.
        entry: LedgerEntry,
        /// The room's stanza-id, if any.
        stanza_id: Option<String>,
    },
    /// Already processed (same stanza-id).
    Duplicate,
    /// Not decryptable, and why.
    Undecryptable {
        /// The cause.
        cause: Cause,
        /// The sender, if identified.
        sender: Option<String>,
    },
    /// Not an OMEMO message (plaintext, subject, status): nothing to decrypt.
    NotEncrypted,
}

/// Processes a groupchat message of `room` (live, or a MAM result wrapping one). `device_owners` gives
/// the bare JIDs whose device lists hold a device id (for attribution by device); `pre_keys` is
/// [`session::PreKeyMode::CatchUp`] while reading the archive after being offline. On success apply the
/// change set (advanced session, stanza-id seen) before showing anything.
pub fn receive_group_message(
    store: &impl Store,
    room: &Room,
    stanza: &Element,
    device_owners: &dyn Fn(u32) -> Vec<String>,
    pre_keys: session::PreKeyMode,
    rng: &mut impl CryptoRngCore,
) -> Result<(Inbound, Changes), StoreError> {
    let ids = room.message_ids(stanza);
    let mut changes = Changes::default();
    if let Some(sid) = &ids.stanza_id {
        if store.seen(room.jid(), sid)? {
            return Ok((Inbound::Duplicate, changes));
        }
        changes.seen.push((room.jid().to_owned(), sid.clone()));
    }
    let attribution = match room.attribute(stanza, device_owners) {
        Ok(a) => a,
        Err(e) => {
            return Ok((Inbound::Undecryptable { cause: Cause::Malformed(e.to_string()), sender: None }, changes))
        }
    };
    let inner = stanza
        .get_child("result", "urn:xmpp:mam:2")
        .and_then(|r| r.get_child("forwarded", "urn:xmpp:forward:0"))
        .and_then(|f| f.get_child("message", "jabber:client"))
        .unwrap_or(stanza);
    let account = store.account()?;
    let own_jid = account.as_ref().map(|a| a.jid.as_str()).unwrap_or_default();
    // Our own message coming back: from our nick (live), or attributed to us with our device id.
    let from_own_nick =
        !attribution.from_archive && attribution.nick.is_some() && attribution.nick.as_deref() == room.own_nick();
    let from_own_device = attribution.real_jid.as_deref() == Some(own_jid)
        && account.as_ref().is_some_and(|a| attribution.sender_device == Some(a.device_id));
    if from_own_nick || from_own_device {
        let by_origin = match &ids.origin_id {
            Some(o) => store.ledger_by_origin_id(room.jid(), o)?,
            None => None,
        };
        let entry = match by_origin {
            Some(e) => Some(e),
            None => match &ids.id {
                Some(i) => store.ledger_by_message_id(room.jid(), i)?,
                None => None,
            },
        };
        return Ok(match entry {
            Some(entry) => (Inbound::OwnReflection { entry, stanza_id: ids.stanza_id }, changes),
            None if from_own_device || attribution.sender_device.is_some() && from_own_nick => {
                (Inbound::Undecryptable { cause: Cause::UnknownReflection, sender: Some(own_jid.to_owned()) }, changes)
            }
            None => (Inbound::NotEncrypted, changes),
        });
    }
    if attribution.sender_device.is_none() {
        return Ok((Inbound::NotEncrypted, changes));
    }
    let Some(sender) = attribution.real_jid.clone() else {
        return Ok((Inbound::Undecryptable { cause: Cause::UnknownSender, sender: None }, changes));
    };
    let ctx = crate::Context { sender: &sender, expected_to: room.jid(), group: true, pre_keys };
    match crate::decrypt_stanza(store, inner, &ctx, rng) {
        Ok((message, more)) => {
            changes.merge(more);
            Ok((Inbound::Decrypted { message: Box::new(message), attribution }, changes))
        }
        Err(e) => {
            use crate::DecryptError as D;
            let cause = match e {
                D::Store(e) => return Err(e),
                D::Session(SessionError::Store(e)) => return Err(e),
                // The same message seen live and again from the archive (no stanza-id inside MAM results).
                D::Session(SessionError::Duplicate { .. }) => return Ok((Inbound::Duplicate, changes)),
                D::NotForThisDevice(_) => match (room.message_time(stanza), room.member_since()) {
                    (Some(sent), Some(since)) if sent < since => Cause::SentBeforeWeJoined,
                    _ => Cause::NotForThisDevice,
                },
                D::Session(SessionError::Distrusted { .. }) => Cause::UntrustedSender,
                D::Session(SessionError::UnknownDevice { device, .. }) => Cause::UnknownDevice(device),
                D::Session(
                    e @ (SessionError::NoSession
                    | SessionError::BadMac
                    | SessionError::UnknownPreKey(_)
                    | SessionError::UnknownSignedPreKey(_)),
                ) => Cause::BrokenSession(e.to_string()),
                other => Cause::Malformed(other.to_string()),
            };
            Ok((Inbound::Undecryptable { cause, sender: Some(sender) }, changes))
        }
    }
}
