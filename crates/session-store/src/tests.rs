//! Conformance tests run against every store, and session scenarios.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rand_chacha::{rand_core::SeedableRng, ChaCha20Rng};

use crate::{namespace::NamespaceSet, *};

/// Two devices in stores made by `$make`.
pub(crate) struct Pair<S: Store> {
    pub a: S,
    pub b: S,
    pub rng: ChaCha20Rng,
    pub ns: Namespace,
}

impl<S: Store> Pair<S> {
    pub fn new(make: impl FnMut() -> S, seed: u64) -> Self {
        Self::new_ns(make, seed, Namespace::Oldmemo)
    }
    pub fn new_ns(mut make: impl FnMut() -> S, seed: u64, ns: Namespace) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut a = make();
        a.apply(&Account::create("alice@example.org", NamespaceSet::BOTH, &[], 1000, &mut rng)).unwrap();
        let mut b = make();
        b.apply(&Account::create("bob@example.org", NamespaceSet::BOTH, &[], 1000, &mut rng)).unwrap();
        Self { a, b, rng, ns }
    }
    fn acc(s: &S) -> Account {
        s.account().unwrap().unwrap()
    }
    pub fn addr_in(s: &S, ns: Namespace) -> SessionAddress {
        let acc = Self::acc(s);
        SessionAddress::new(ns, acc.jid, acc.device_id)
    }
    /// A starts a session with B from B's bundle.
    pub fn start(&mut self) {
        let to_b = Self::addr_in(&self.b, self.ns);
        let bundle = account::own_bundle_for(&self.b, self.ns).unwrap();
        let mut ch = Changes::default();
        session::initiate(&self.a, &Self::acc(&self.a), &to_b, &bundle, &mut ch, &mut self.rng).unwrap();
        self.a.apply(&ch).unwrap();
    }
    pub fn enc(from: &mut S, to: &S, ns: Namespace, pt: &[u8]) -> session::EncryptedKey {
        let mut ch = Changes::default();
        let k = session::encrypt(from, &Self::acc(from), &Self::addr_in(to, ns), pt, &mut ch).unwrap();
        from.apply(&ch).unwrap();
        k
    }
    pub fn dec(
        to: &mut S,
        from: &S,
        ns: Namespace,
        data: &[u8],
        rng: &mut ChaCha20Rng,
    ) -> Result<session::DecryptedKey, SessionError> {
        let (out, ch) = session::decrypt(to, &Self::acc(to), &Self::addr_in(from, ns), data, rng)?;
        to.apply(&ch).unwrap();
        Ok(out)
    }
    pub fn a_to_b(&mut self, pt: &[u8]) -> session::EncryptedKey {
        Self::enc(&mut self.a, &self.b, self.ns, pt)
    }
    pub fn b_to_a(&mut self, pt: &[u8]) -> session::EncryptedKey {
        Self::enc(&mut self.b, &self.a, self.ns, pt)
    }
    pub fn b_reads(&mut self, data: &[u8]) -> Result<session::DecryptedKey, SessionError> {
        Self::dec(&mut self.b, &self.a, self.ns, data, &mut self.rng)
    }
    pub fn a_reads(&mut self, data: &[u8]) -> Result<session::DecryptedKey, SessionError> {
        Self::dec(&mut self.a, &self.b, self.ns, data, &mut self.rng)
    }
    /// B reads A's "hello" and answers; A reads the answer (after [`Pair::start`]: the session is then
    /// confirmed on both sides).
    pub fn exchange(&mut self) {
        let k = self.a_to_b(b"hello");
        self.b_reads(&k.data).unwrap();
        let k = self.b_to_a(b"answer");
        self.a_reads(&k.data).unwrap();
    }
}

/// What a group send reads of each device's session ([`SessionStore::send_states`], and the reader
/// of stored bytes) equals what the whole record gives.
fn send_states_agree<S: Store>(s: &S, addrs: &[SessionAddress]) {
    let whole = s.sessions(addrs).unwrap();
    let light = s.send_states(addrs).unwrap();
    assert_eq!(whole.len(), light.len());
    for (w, l) in whole.iter().zip(&light) {
        match (w.as_ref().and_then(SessionRecord::send_state), l) {
            (Some(a), Some(b)) => assert!(a.same_as(b), "{a:?} / {b:?}"),
            (None, None) => {}
            (a, b) => panic!("whole record: {a:?}, send state: {b:?}"),
        }
        if let Some(w) = w {
            let bytes = w.to_bytes();
            let read = SendState::from_record_bytes(&bytes, None).unwrap().unwrap();
            assert!(read.same_as(&w.send_state().unwrap()));
            // A cut inside the current state is an error; a cut after it (archived states lost) still
            // reads the same current state; nothing at all is no session.
            for cut in 0..bytes.len() {
                match SendState::from_record_bytes(&bytes[..cut], None) {
                    Ok(Some(cut_read)) => assert!(cut_read.same_as(&read), "cut at {cut}"),
                    Ok(None) => assert_eq!(cut, 0),
                    Err(_) => {}
                }
            }
        }
    }
}

macro_rules! store_conformance_tests {
    ($ty:ty, $make:expr) => {
        use super::*;

        fn pair(seed: u64) -> Pair<$ty> {
            Pair::new($make, seed)
        }

        /// One pair per namespace: the session scenarios run in both.
        fn pairs(seed: u64) -> [Pair<$ty>; 2] {
            [Pair::new_ns($make, seed, Namespace::Oldmemo), Pair::new_ns($make, seed, Namespace::Twomemo)]
        }

        #[test]
        fn account_and_bundle() {
            let p = pair(1);
            let acc = p.a.account().unwrap().unwrap();
            assert!(keys::valid_device_id(acc.device_id));
            let bundle = account::own_bundle_for(&p.a, p.ns).unwrap();
            assert_eq!(bundle.pre_keys.len(), 100);
            assert_eq!(bundle.pre_keys.iter().map(|k| k.0).collect::<Vec<_>>(), (1..=100).collect::<Vec<_>>());
            bundle.verify_0_3().unwrap();
            assert_eq!(bundle.identity_key, acc.identity.public);
            assert_eq!(acc.next_pre_key_id, 101);
        }

        #[test]
        fn conversation_with_ratchet_turns_and_pre_key_life_cycle() {
            for mut p in pairs(2) {
                p.start();
                let first = p.a_to_b(b"m0");
                assert!(first.kex);
                let second = p.a_to_b(b"m1");
                assert!(second.kex, "key exchange repeated until the peer answers");
                let out = p.b_reads(&first.data).unwrap();
                assert!(out.kex);
                let used = out.consumed_pre_key.unwrap();
                assert!(p.b.hidden_pre_keys().unwrap().contains(&used), "consumed pre-key hidden");
                assert!(!p.b.pre_keys().unwrap().iter().any(|k| k.id == used), "and no longer offered");
                assert_eq!(p.b.pre_keys().unwrap().len(), 100, "refilled");
                assert!(p.b.pre_key(101).unwrap().is_some(), "replacement has a fresh id");
                assert_eq!(&p.b_reads(&second.data).unwrap().plaintext[..], b"m1");
                // Conversation, both ways, with turns and runs.
                for round in 0..12u8 {
                    let k = p.b_to_a(&[round]);
                    assert!(!k.kex);
                    assert_eq!(&p.a_reads(&k.data).unwrap().plaintext[..], &[round]);
                    for j in 0..(round % 3) {
                        let k = p.a_to_b(&[round, j]);
                        assert!(!k.kex, "no key exchange after the answer");
                        assert_eq!(&p.b_reads(&k.data).unwrap().plaintext[..], &[round, j]);
                    }
                }
            }
        }

        #[test]
        fn out_of_order_replay_and_tamper() {
            for mut p in pairs(3) {
                p.start();
                let msgs: Vec<_> = (0..6u8).map(|i| p.a_to_b(&[i; 32])).collect();
                for i in [2usize, 0, 5, 1, 4, 3] {
                    assert_eq!(&p.b_reads(&msgs[i].data).unwrap().plaintext[..], &[i as u8; 32]);
                }
                for m in &msgs {
                    assert!(matches!(p.b_reads(&m.data), Err(SessionError::Duplicate { .. })));
                }
                let k = p.b_to_a(b"x");
                let mut bad = k.data.clone();
                let n = bad.len();
                bad[n - 12] ^= 1;
                let before = p.a.session(&Pair::<_>::addr_in(&p.b, p.ns)).unwrap().unwrap().to_bytes();
                assert!(matches!(p.a_reads(&bad), Err(SessionError::BadMac)));
                let after = p.a.session(&Pair::<_>::addr_in(&p.b, p.ns)).unwrap().unwrap().to_bytes();
                assert_eq!(before, after, "a refused message leaves the session as it was");
                assert_eq!(&p.a_reads(&k.data).unwrap().plaintext[..], b"x");
                // Old chain messages after a turn: A sends on a new chain, the late one of the old still decrypts.
                let late = p.b_to_a(b"late");
                let k2 = p.a_to_b(b"new chain");
                p.b_reads(&k2.data).unwrap();
                let k3 = p.b_to_a(b"after");
                p.a_reads(&k3.data).unwrap();
                assert_eq!(&p.a_reads(&late.data).unwrap().plaintext[..], b"late");
            }
        }

        #[test]
        fn gap_bound() {
            for mut p in pairs(4) {
                p.start();
                let first = p.a_to_b(b"0");
                p.b_reads(&first.data).unwrap();
                for _ in 0..MAX_GAP_TEST {
                    p.a_to_b(b"lost");
                }
                let far = p.a_to_b(b"far");
                assert!(matches!(p.b_reads(&far.data), Err(SessionError::TooFarAhead { .. })));
            }
        }

        #[test]
        fn identity_change_is_reported_and_distrust_refuses() {
            for mut p in pairs(5) {
                p.start();
                let k = p.a_to_b(b"hi");
                let out = p.b_reads(&k.data).unwrap();
                assert_eq!(out.identity.trust, TrustLevel::Blind);
                assert_eq!(out.identity.changed_from, None);
                let alice_addr = Pair::<_>::addr_in(&p.a, p.ns);
                let old_key = out.identity.key;
                // Alice's device gets a new identity (reinstalled with the same device id).
                let mut fresh = Account::create("alice@example.org", NamespaceSet::BOTH, &[], 2000, &mut p.rng);
                let acc = fresh.account.as_mut().unwrap();
                acc.device_id = alice_addr.device;
                let mut a2 = $make();
                a2.apply(&fresh).unwrap();
                let to_b = Pair::<_>::addr_in(&p.b, p.ns);
                let mut ch = Changes::default();
                session::initiate(
                    &a2,
                    &a2.account().unwrap().unwrap(),
                    &to_b,
                    &account::own_bundle_for(&p.b, p.ns).unwrap(),
                    &mut ch,
                    &mut p.rng,
                )
                .unwrap();
                a2.apply(&ch).unwrap();
                let k2 = Pair::enc(&mut a2, &p.b, p.ns, b"new me");
                let out2 = Pair::dec(&mut p.b, &a2, p.ns, &k2.data, &mut p.rng).unwrap();
                assert_eq!(out2.identity.changed_from, Some(old_key));
                assert_ne!(out2.identity.key, old_key);
                // Distrusting the new key refuses its messages and changes nothing.
                let mut ch = Changes::default();
                ch.trust.push((alice_addr.jid.to_string(), out2.identity.key, TrustLevel::Distrusted));
                p.b.apply(&ch).unwrap();
                let k3 = Pair::enc(&mut a2, &p.b, p.ns, b"again");
                assert!(matches!(
                    Pair::dec(&mut p.b, &a2, p.ns, &k3.data, &mut p.rng),
                    Err(SessionError::Distrusted { .. })
                ));
                // And we refuse to encrypt to it.
                let mut ch = Changes::default();
                assert!(matches!(
                    session::encrypt(&p.b, &p.b.account().unwrap().unwrap(), &alice_addr, b"x", &mut ch),
                    Err(SessionError::Untrusted { .. })
                ));
            }
        }

        #[test]
        fn blind_trust_before_verification() {
            let mut p = pair(6);
            p.start();
            let k = p.a_to_b(b"hi");
            let out = p.b_reads(&k.data).unwrap();
            let mut ch = Changes::default();
            ch.trust.push(("alice@example.org".into(), out.identity.key, TrustLevel::Verified));
            p.b.apply(&ch).unwrap();
            // A new key of a JID with a verified key is not blindly trusted.
            let mut ch = Changes::default();
            let other = KeyPair::generate(&mut p.rng).public;
            let info = session::check_identity(&p.b, &mut ch, "alice@example.org", 77, &other).unwrap();
            assert_eq!(info.trust, TrustLevel::Undecided);
        }

        #[test]
        fn simultaneous_initiation_loses_nothing() {
            for mut p in pairs(7) {
                // Both start at once.
                p.start();
                let to_a = Pair::<_>::addr_in(&p.a, p.ns);
                let bundle = account::own_bundle_for(&p.a, p.ns).unwrap();
                let mut ch = Changes::default();
                session::initiate(&p.b, &p.b.account().unwrap().unwrap(), &to_a, &bundle, &mut ch, &mut p.rng).unwrap();
                p.b.apply(&ch).unwrap();
                let from_a = p.a_to_b(b"a1");
                let from_b = p.b_to_a(b"b1");
                assert!(from_a.kex && from_b.kex);
                assert_eq!(&p.b_reads(&from_a.data).unwrap().plaintext[..], b"a1");
                assert_eq!(&p.a_reads(&from_b.data).unwrap().plaintext[..], b"b1");
                // Each side now encrypts on the session it received; the other side finds it among its states.
                for i in 0..4u8 {
                    let k = p.a_to_b(&[i]);
                    assert_eq!(&p.b_reads(&k.data).unwrap().plaintext[..], &[i]);
                    let k = p.b_to_a(&[i]);
                    assert_eq!(&p.a_reads(&k.data).unwrap().plaintext[..], &[i]);
                }
                // Records with archived states: what a send reads is still the current state.
                let to_b = Pair::<_>::addr_in(&p.b, p.ns);
                send_states_agree(&p.a, &[to_b.clone(), to_a.clone()]);
                send_states_agree(&p.b, &[to_a, to_b]);
            }
        }

        #[test]
        fn unknown_pre_key_and_no_session() {
            let mut p = pair(8);
            p.start();
            let k = p.a_to_b(b"x");
            p.b_reads(&k.data).unwrap();
            // A second, fresh initiator picking the same (now consumed) pre-key is refused precisely.
            let mut q = pair(8);
            q.start();
            let k2 = q.a_to_b(b"y");
            let r = q.b_reads(&k2.data);
            assert!(r.is_ok());
            let pk = r.unwrap().consumed_pre_key.unwrap();
            assert!(matches!(q.b_reads(&k2.data), Err(SessionError::Duplicate { .. })));
            assert_eq!(q.b.hidden_pre_keys().unwrap(), vec![pk]);
            // A plain message without any session.
            let mut r = pair(9);
            r.start();
            let first = r.a_to_b(b"1");
            r.b_reads(&first.data).unwrap();
            let plain = r.b_to_a(b"2");
            let mut s = pair(10);
            assert!(matches!(s.a_reads(&plain.data), Err(SessionError::NoSession)));
        }

        #[test]
        fn record_size_and_round_trip() {
            for mut p in pairs(11) {
                p.start();
                for i in 0..3u8 {
                    let k = p.a_to_b(&[i]);
                    p.b_reads(&k.data).unwrap();
                    let k = p.b_to_a(&[i]);
                    p.a_reads(&k.data).unwrap();
                }
                // (B's last answer brought a new ratchet key: A's record also holds the private key of
                // its next sending ratchet, 34 bytes, until A sends.)
                let rec = p.a.session(&Pair::<_>::addr_in(&p.b, p.ns)).unwrap().unwrap();
                assert!(rec.ratchet_due());
                let bytes = rec.to_bytes();
                assert!(bytes.len() <= 440, "record is {} bytes", bytes.len());
                assert_eq!(SessionRecord::from_bytes(&bytes).unwrap().to_bytes(), bytes);
                for cut in 0..bytes.len() {
                    let _ = SessionRecord::from_bytes(&bytes[..cut]);
                }
                assert!(SessionRecord::from_bytes(&[0xFF; 40]).is_err());
            }
        }

        /// Two senders used the same pre-key while we were offline: in catch-up both key exchanges
        /// decrypt; ending catch-up deletes the hidden pre-key, and a third key exchange with it fails.
        #[test]
        fn catch_up_keeps_used_pre_keys_until_it_ends() {
            for ns in [Namespace::Oldmemo, Namespace::Twomemo] {
                let mut rng = ChaCha20Rng::seed_from_u64(15);
                let mut bob = $make();
                bob.apply(&Account::create("bob@example.org", NamespaceSet::BOTH, &[], 0, &mut rng)).unwrap();
                let b_acc = bob.account().unwrap().unwrap();
                let mut bundle = account::own_bundle_for(&bob, ns).unwrap();
                bundle.pre_keys.truncate(1);
                let shared = bundle.pre_keys[0].0;
                let to_bob = SessionAddress::new(ns, "bob@example.org", b_acc.device_id);
                let mut kexes = Vec::new();
                for who in ["alice@example.org", "carol@example.org", "dave@example.org"] {
                    let mut s = $make();
                    s.apply(&Account::create(who, NamespaceSet::BOTH, &[], 0, &mut rng)).unwrap();
                    let acc = s.account().unwrap().unwrap();
                    let mut ch = Changes::default();
                    session::initiate(&s, &acc, &to_bob, &bundle, &mut ch, &mut rng).unwrap();
                    let k = session::encrypt(&s, &acc, &to_bob, b"hi", &mut ch).unwrap();
                    kexes.push((SessionAddress::new(ns, who, acc.device_id), k.data));
                }
                // Catch-up: the first two decrypt, the pre-key is hidden, not deleted.
                for (from, data) in &kexes[..2] {
                    let (out, ch) =
                        session::decrypt_with(&bob, &b_acc, from, data, session::PreKeyMode::CatchUp, &mut rng).unwrap();
                    assert_eq!(out.consumed_pre_key, Some(shared));
                    bob.apply(&ch).unwrap();
                }
                assert!(bob.pre_key(shared).unwrap().is_some());
                assert_eq!(bob.hidden_pre_keys().unwrap(), vec![shared]);
                assert!(!account::own_bundle(&bob).unwrap().pre_keys.iter().any(|(id, _)| *id == shared), "hidden keys are not published");
                assert_eq!(bob.pre_keys().unwrap().len(), 100, "one replacement keeps the bundle full");
                // Catch-up ends: the pre-key is gone, and a later (live) key exchange with it fails precisely.
                let ch = session::end_catch_up(&bob).unwrap();
                bob.apply(&ch).unwrap();
                assert!(bob.pre_key(shared).unwrap().is_none() && bob.hidden_pre_keys().unwrap().is_empty());
                let (from, data) = &kexes[2];
                assert!(matches!(session::decrypt(&bob, &b_acc, from, data, &mut rng), Err(SessionError::UnknownPreKey(id)) if id == shared));
            }
        }

        /// Live, two members that fetched the same bundle may pick the same pre-key: both key exchanges
        /// decrypt; the consumed pre-keys stay hidden, at most LIVE_PRE_KEY_GRACE of them, oldest deleted
        /// first.
        #[test]
        fn live_pre_key_grace_is_bounded() {
            let ns = Namespace::Twomemo;
            let mut rng = ChaCha20Rng::seed_from_u64(16);
            let mut bob = $make();
            bob.apply(&Account::create("bob@example.org", NamespaceSet::BOTH, &[], 0, &mut rng)).unwrap();
            let b_acc = bob.account().unwrap().unwrap();
            let to_bob = SessionAddress::new(ns, "bob@example.org", b_acc.device_id);
            let full = account::own_bundle_for(&bob, ns).unwrap();
            let first_id = full.pre_keys[0].0;
            let kex_with = |i: usize, pre_key: usize, rng: &mut ChaCha20Rng| {
                let mut bundle = full.clone();
                bundle.pre_keys = vec![full.pre_keys[pre_key].clone()];
                let who = format!("m{i}@example.org");
                let mut s = $make();
                s.apply(&Account::create(&who, NamespaceSet::BOTH, &[], 0, rng)).unwrap();
                let acc = s.account().unwrap().unwrap();
                let mut ch = Changes::default();
                session::initiate(&s, &acc, &to_bob, &bundle, &mut ch, rng).unwrap();
                let k = session::encrypt(&s, &acc, &to_bob, b"hi", &mut ch).unwrap();
                (SessionAddress::new(ns, &who, acc.device_id), k.data)
            };
            for i in 0..2 {
                let (from, data) = kex_with(i, 0, &mut rng);
                let (out, ch) = session::decrypt(&bob, &b_acc, &from, &data, &mut rng).unwrap();
                assert_eq!(out.consumed_pre_key, Some(first_id));
                bob.apply(&ch).unwrap();
            }
            assert_eq!(bob.hidden_pre_keys().unwrap(), vec![first_id]);
            for i in 1..=session::LIVE_PRE_KEY_GRACE {
                let (from, data) = kex_with(10 + i, i, &mut rng);
                let (_, ch) = session::decrypt(&bob, &b_acc, &from, &data, &mut rng).unwrap();
                bob.apply(&ch).unwrap();
            }
            let hidden = bob.hidden_pre_keys().unwrap();
            assert_eq!(hidden.len(), session::LIVE_PRE_KEY_GRACE);
            assert!(!hidden.contains(&first_id) && bob.pre_key(first_id).unwrap().is_none(), "the oldest went first");
            assert_eq!(bob.pre_keys().unwrap().len(), 100, "replacements keep the bundle full");
            let (from, data) = kex_with(99, 0, &mut rng);
            assert!(matches!(session::decrypt(&bob, &b_acc, &from, &data, &mut rng), Err(SessionError::UnknownPreKey(id)) if id == first_id));
        }

        #[test]
        fn reply_due_heartbeat_and_staleness() {
            for mut p in pairs(14) {
                p.start();
                let first = p.a_to_b(b"0");
                let out = p.b_reads(&first.data).unwrap();
                assert!(out.reply_due, "a key exchange that built a session asks for a completion reply");
                // 52 more messages without an answer: the 53rd received asks for a heartbeat.
                for i in 1..ratchet::HEARTBEAT_AFTER {
                    let k = p.a_to_b(&[i as u8]);
                    let out = p.b_reads(&k.data).unwrap();
                    assert_eq!(out.reply_due, i + 1 >= ratchet::HEARTBEAT_AFTER, "message {i}");
                }
                let b_addr = Pair::<_>::addr_in(&p.b, p.ns);
                let a_addr = Pair::<_>::addr_in(&p.a, p.ns);
                assert!(p.b.session(&a_addr).unwrap().unwrap().heartbeat_due());
                let hb = p.b_to_a(b"");
                assert!(!p.b.session(&a_addr).unwrap().unwrap().heartbeat_due(), "answering resets it");
                p.a_reads(&hb.data).unwrap();
                // A sends STALE_AFTER messages without any answer: B's device is stale for A.
                for _ in 0..ratchet::STALE_AFTER {
                    assert!(!p.a.session(&b_addr).unwrap().unwrap().is_stale());
                    p.a_to_b(b"unanswered");
                }
                assert!(p.a.session(&b_addr).unwrap().unwrap().is_stale());
                // When B speaks, A resumes.
                let k = p.b_to_a(b"back");
                p.a_reads(&k.data).unwrap();
                assert!(!p.a.session(&b_addr).unwrap().unwrap().is_stale());
            }
        }

        #[test]
        fn ledger_and_seen_stanzas() {
            let mut p = pair(13);
            let entry = LedgerEntry {
                room: "room@muc.example.org".into(),
                origin_id: "o1".into(),
                message_id: "m1".into(),
                plaintext_hash: LedgerEntry::hash(b"hello"),
                plaintext: Some(b"hello".to_vec()),
                sent_at: 1234,
            };
            let mut ch = Changes::default();
            ch.ledger.push(entry.clone());
            ch.seen.push(("room@muc.example.org".into(), "s1".into()));
            p.a.apply(&ch).unwrap();
            assert_eq!(p.a.ledger_by_origin_id("room@muc.example.org", "o1").unwrap(), Some(entry.clone()));
            assert_eq!(p.a.ledger_by_message_id("room@muc.example.org", "m1").unwrap(), Some(entry.clone()));
            assert_eq!(p.a.ledger_by_origin_id("other@muc.example.org", "o1").unwrap(), None);
            assert!(p.a.seen("room@muc.example.org", "s1").unwrap());
            assert!(!p.a.seen("room@muc.example.org", "s2").unwrap());
            // Applying the same seen id twice is harmless.
            p.a.apply(&ch).unwrap();
            let mut without = entry.clone();
            without.origin_id = "o2".into();
            without.plaintext = None;
            p.a.apply(&Changes { ledger: vec![without.clone()], ..Changes::default() }).unwrap();
            assert_eq!(p.a.ledger_by_origin_id("room@muc.example.org", "o2").unwrap(), Some(without));
            // Spent invitation tokens: kept until they expire, then purged.
            p.a.apply(&Changes { spent_tokens: vec![(vec![1; 16], 100), (vec![2; 16], 200)], ..Changes::default() })
                .unwrap();
            assert!(p.a.token_spent(&[1; 16]).unwrap() && p.a.token_spent(&[2; 16]).unwrap());
            assert!(!p.a.token_spent(&[3; 16]).unwrap());
            p.a.apply(&Changes { purge_tokens_before: Some(150), ..Changes::default() }).unwrap();
            assert!(!p.a.token_spent(&[1; 16]).unwrap() && p.a.token_spent(&[2; 16]).unwrap());
        }

        #[test]
        fn delta_commits_and_batch_reads() {
            for mut p in pairs(31) {
                p.start();
                // A pending key exchange, and skipped keys on the other side.
                send_states_agree(&p.a, &[Pair::<$ty>::addr_in(&p.b, p.ns)]);
                let lost = p.a_to_b(b"lost");
                p.exchange();
                let to_b = Pair::<$ty>::addr_in(&p.b, p.ns);
                let to_a = Pair::<$ty>::addr_in(&p.a, p.ns);
                assert!(format!("{:?}", p.b.session(&to_a).unwrap().unwrap()).contains("skipped_keys: 1"));
                send_states_agree(&p.b, std::slice::from_ref(&to_a));
                drop(lost);
                let our = p.a.account().unwrap().unwrap().local_identity();
                // B's answer brought a new ratchet key: A's sending half of that step waits until A
                // sends. Its sending chain is spent meanwhile: no send state can encrypt, no step applies.
                let mut rec = p.a.session(&to_b).unwrap().unwrap();
                assert!(rec.ratchet_due());
                let waiting = p.a.send_states(std::slice::from_ref(&to_b)).unwrap().remove(0).unwrap();
                assert!(waiting.ratchet_due());
                assert!(waiting.clone().encrypt(&our, &[0; 32]).is_err());
                let spent = rec.send_step().unwrap();
                assert!(matches!(rec.clone().apply_step(&spent), Err(StoreError::Corrupt(_))));
                // A group send does the step on the whole record and writes it whole.
                rec.complete_ratchet().unwrap();
                assert!(!rec.ratchet_due());
                p.a.apply(&Changes { sessions: vec![(to_b.clone(), rec.clone())], ..Changes::default() }).unwrap();
                send_states_agree(&p.a, std::slice::from_ref(&to_b));
                // A group send: the record advanced on a copy, only its sending chain stored.
                let mut sent = Vec::new();
                for i in 0..3u8 {
                    let (data, kex) = rec.encrypt(&our, &[i; 32]).unwrap();
                    assert!(!kex);
                    sent.push(data);
                    let step = rec.send_step().unwrap();
                    p.a.apply(&Changes { session_steps: vec![(to_b.clone(), step)], ..Changes::default() }).unwrap();
                    assert_eq!(p.a.session(&to_b).unwrap().unwrap().to_bytes(), rec.to_bytes(), "read = advanced");
                    send_states_agree(&p.a, std::slice::from_ref(&to_b));
                }
                // The send state encrypts exactly as the record does.
                let mut state = p.a.send_states(std::slice::from_ref(&to_b)).unwrap().remove(0).unwrap();
                let mut copy = rec.clone();
                assert_eq!(state.encrypt(&our, &[9; 32]).unwrap(), copy.encrypt(&our, &[9; 32]).unwrap());
                assert!(state.same_as(&copy.send_state().unwrap()));
                // The next message continues the stored chain (a whole-record write clears the delta).
                sent.push(p.a_to_b(&[3; 32]).data);
                for (i, data) in sent.iter().enumerate() {
                    assert_eq!(&p.b_reads(data).unwrap().plaintext[..], &[i as u8; 32]);
                }
                assert_eq!(p.a.session(&to_b).unwrap().unwrap().sent_on_chain(), rec.sent_on_chain().map(|n| n + 1));
                // A delta of another chain is an inconsistency, reported, never applied silently.
                let foreign = p.b.session(&to_a).unwrap().unwrap().send_step().unwrap();
                p.a.apply(&Changes { session_steps: vec![(to_b.clone(), foreign)], ..Changes::default() }).unwrap();
                assert!(matches!(p.a.session(&to_b), Err(StoreError::Corrupt(_))));
                assert!(matches!(p.a.send_states(std::slice::from_ref(&to_b)), Err(StoreError::Corrupt(_))));
                let mut good = p.b.session(&to_a).unwrap().unwrap();
                good.complete_ratchet().unwrap();
                p.a.apply(&Changes { sessions: vec![(to_b.clone(), good.clone())], ..Changes::default() }).unwrap();
                assert_eq!(p.a.session(&to_b).unwrap().unwrap().to_bytes(), good.to_bytes(), "whole write wins");
                // A delta for a device without a stored session is not kept.
                let ghost = SessionAddress::new(p.ns, "ghost@example.org", 7);
                let step = good.send_step().unwrap();
                p.a.apply(&Changes { session_steps: vec![(ghost.clone(), step)], ..Changes::default() }).unwrap();
                assert!(p.a.session(&ghost).unwrap().is_none());
                // ... nor read, in a batch read either (keys before, between and after the stored ones) ...
                let last = SessionAddress::new(p.ns, "zz-ghost@example.org", 1);
                let orphans = vec![(ghost.clone(), rec.send_step().unwrap()), (last.clone(), rec.send_step().unwrap())];
                p.a.apply(&Changes { session_steps: orphans, ..Changes::default() }).unwrap();
                let many: Vec<SessionAddress> = (0..40).map(|i| if i % 2 == 0 { ghost.clone() } else { last.clone() }).collect();
                assert!(p.a.sessions(&many).unwrap().iter().all(Option::is_none));
                assert!(p.a.send_states(&many).unwrap().iter().all(Option::is_none));
                // ... and a record written there later is read as written.
                p.a.apply(&Changes { sessions: vec![(ghost.clone(), good.clone())], ..Changes::default() }).unwrap();
                assert_eq!(p.a.session(&ghost).unwrap().unwrap().to_bytes(), good.to_bytes());
                let both = (0..40).map(|i| if i % 2 == 0 { ghost.clone() } else { to_b.clone() }).collect::<Vec<_>>();
                assert!(p.a.sessions(&both).unwrap().iter().all(|r| r.as_ref().map(SessionRecord::to_bytes) == Some(good.to_bytes())));
                // Several orphan steps in a row just before a session whose own step must be found.
                let mut ahead = good.clone();
                ahead.encrypt(&our, &[7; 32]).unwrap();
                let mut steps: Vec<(SessionAddress, _)> = ["a1@example.org", "a2@example.org", "a3@example.org"]
                    .iter()
                    .map(|j| (SessionAddress::new(p.ns, *j, 1), rec.send_step().unwrap()))
                    .collect();
                steps.push((to_b.clone(), ahead.send_step().unwrap()));
                p.a.apply(&Changes { session_steps: steps, ..Changes::default() }).unwrap();
                assert_eq!(p.a.session(&to_b).unwrap().unwrap().to_bytes(), ahead.to_bytes());
                assert!(p.a.sessions(&both).unwrap().iter().step_by(2).all(|r| r.as_ref().map(SessionRecord::to_bytes) == Some(good.to_bytes())));
                assert!(p.a.sessions(&both).unwrap().iter().skip(1).step_by(2).all(|r| r.as_ref().map(SessionRecord::to_bytes) == Some(ahead.to_bytes())));
                send_states_agree(&p.a, &both);
                // Batch reads agree with single reads, below and above the size where a store may scan.
                for n in [5usize, 70] {
                    let addrs: Vec<SessionAddress> = (0..n)
                        .map(|i| if i % 3 == 0 { to_b.clone() } else { SessionAddress::new(p.ns, "x@example.org", i as u32) })
                        .collect();
                    let one: Vec<_> = addrs.iter().map(|a| p.a.session(a).unwrap().map(|r| r.to_bytes())).collect();
                    let batch: Vec<_> = p.a.sessions(&addrs).unwrap().into_iter().map(|r| r.map(|r| r.to_bytes())).collect();
                    assert_eq!(one, batch);
                    send_states_agree(&p.a, &addrs);
                    let jids: Vec<String> = (0..n).map(|i| format!("m{}@example.org", i % 5)).collect();
                    let mut ch = Changes::default();
                    ch.device_lists.push((p.ns, "m1@example.org".into(), vec![5, 3]));
                    ch.device_lists.push((p.ns, "m2@example.org".into(), vec![]));
                    ch.trust.push(("m3@example.org".into(), good.remote_identity().unwrap(), TrustLevel::Verified));
                    p.a.apply(&ch).unwrap();
                    let one: Vec<_> = jids.iter().map(|j| p.a.device_list(p.ns, j).unwrap()).collect();
                    let asked: Vec<&str> = jids.iter().map(String::as_str).collect();
                    assert_eq!(one, p.a.device_lists(p.ns, &asked).unwrap().to_vecs());
                    assert_eq!(one[1], Some(vec![3, 5]));
                    let keys: Vec<(&str, PublicKey)> =
                        jids.iter().map(|j| (j.as_str(), good.remote_identity().unwrap())).collect();
                    let one: Vec<_> = keys.iter().map(|(j, k)| p.a.trust(j, k).unwrap()).collect();
                    assert_eq!(one, p.a.trusts(&keys).unwrap());
                    assert_eq!(one[3], Some(TrustLevel::Verified));
                }
            }
        }

        /// The batch identity reads answer as the single ones, above and below the point where a store
        /// switches to scanning, with repeats and unknown devices; the batch identity check decides as
        /// the single one does for each device (new key, same key, changed key, distrusted, a JID with a
        /// verified key).
        #[test]
        fn batch_identity_checks_match_single_ones() {
            let mut p = pair(13);
            let key = |i: u8| PublicKey::from_bytes([i; 32]);
            let jid = |i: usize| format!("m{}@example.org", i % 45);
            let mut ch = Changes::default();
            for i in 0..45usize {
                if i % 3 != 0 {
                    ch.identities.push((jid(i), i as u32, key(i as u8)));
                }
            }
            ch.trust.push((jid(4), key(4), TrustLevel::Distrusted));
            ch.trust.push((jid(2), key(99), TrustLevel::Verified));
            ch.trust.push((jid(8), key(8), TrustLevel::Verified));
            p.a.apply(&ch).unwrap();
            for n in [5usize, 60] {
                let devices: Vec<(String, u32, PublicKey)> = (0..n)
                    .map(|i| (jid(i), (i % 45) as u32, if i % 5 == 0 { key(200) } else { key((i % 45) as u8) }))
                    .collect();
                let asked: Vec<(&str, u32)> = devices.iter().map(|(j, d, _)| (j.as_str(), *d)).collect();
                let single: Vec<_> = asked.iter().map(|(j, d)| p.a.identity(j, *d).unwrap()).collect();
                assert_eq!(p.a.identities(&asked).unwrap(), single);
                let jids: Vec<&str> = asked.iter().map(|(j, _)| *j).collect();
                let single: Vec<bool> = jids
                    .iter()
                    .map(|j| p.a.trust_of(j).unwrap().iter().any(|(_, t)| *t == TrustLevel::Verified))
                    .collect();
                assert_eq!(p.a.any_verified(&jids).unwrap(), single);
                assert!(single.iter().any(|v| *v) && single.iter().any(|v| !*v));
                let checks: Vec<(&str, u32, &PublicKey)> = devices.iter().map(|(j, d, k)| (j.as_str(), *d, k)).collect();
                let batch = session::check_identities(&p.a, &checks).unwrap();
                for ((j, d, k), (info, changes)) in checks.iter().zip(batch) {
                    let mut alone = Changes::default();
                    let expected = session::check_identity(&p.a, &mut alone, j, *d, k).unwrap();
                    assert_eq!(info, expected, "{j} {d}");
                    assert_eq!(changes.identities, alone.identities, "{j} {d}");
                    assert_eq!(changes.trust, alone.trust, "{j} {d}");
                }
            }
        }

        #[test]
        fn changes_are_all_or_nothing_and_device_lists() {
            let mut p = pair(12);
            let mut ch = Changes::default();
            ch.device_lists.push((Namespace::Oldmemo, "carol@example.org".into(), vec![1, 2, 3]));
            p.a.apply(&ch).unwrap();
            assert_eq!(p.a.device_list(Namespace::Oldmemo, "carol@example.org").unwrap(), Some(vec![1, 2, 3]));
            let mut ch = Changes::default();
            ch.device_lists.push((Namespace::Oldmemo, "carol@example.org".into(), vec![2, 4]));
            p.a.apply(&ch).unwrap();
            assert_eq!(p.a.device_list(Namespace::Oldmemo, "carol@example.org").unwrap(), Some(vec![2, 4]));
            assert_eq!(p.a.device_list(Namespace::Twomemo, "carol@example.org").unwrap(), None);
            let maint = account::maintain_keys(&p.a, 1000 + 60, &mut p.rng).unwrap();
            assert!(maint.is_empty(), "nothing due");
            let maint = account::maintain_keys(&p.a, 1000 + account::SIGNED_PRE_KEY_ROTATION_SECS, &mut p.rng).unwrap();
            assert_eq!(maint.signed_pre_keys.len(), 1);
            p.a.apply(&maint).unwrap();
            assert_eq!(p.a.signed_pre_keys().unwrap().len(), 2);
            assert_eq!(account::own_bundle(&p.a).unwrap().signed_pre_key_id, 2);
        }
    };
}

const MAX_GAP_TEST: u32 = ratchet::MAX_MESSAGE_GAP + 1;

mod memory_store {
    store_conformance_tests!(MemoryStore, MemoryStore::default);
}

mod sqlite_store {
    store_conformance_tests!(SqliteStore<rusqlite::Connection>, || SqliteStore::new(
        rusqlite::Connection::open_in_memory().unwrap()
    )
    .unwrap());

    /// The SQLite store answers a room's device lists from its cache with its own copy of each JID
    /// (the same text on every send), and a list written since is answered new.
    #[test]
    fn device_lists_hand_out_the_kept_jids() {
        let mut s = SqliteStore::new(rusqlite::Connection::open_in_memory().unwrap()).unwrap();
        let jids = ["a@example.org", "b@example.org", "c@example.org"];
        let mut ch = Changes::default();
        for (i, j) in jids.iter().take(2).enumerate() {
            ch.device_lists.push((Namespace::Twomemo, (*j).into(), vec![i as u32 + 1]));
        }
        s.apply(&ch).unwrap();
        let text = |l: &crate::DeviceLists, i: usize| l.jid(i).map(|j| j.as_str().as_ptr());
        let first = s.device_lists(Namespace::Twomemo, &jids).unwrap();
        assert_eq!(first.to_vecs(), vec![Some(vec![1]), Some(vec![2]), None]);
        // Every JID asked is kept, also one without a list (so the next send finds all of them).
        let again = s.device_lists(Namespace::Twomemo, &jids).unwrap();
        assert_eq!(again, first);
        for (i, jid) in jids.iter().enumerate() {
            assert_eq!(again.jid(i).map(|j| j.as_str()), Some(*jid));
            assert!(text(&again, i).is_some() && text(&again, i) == text(&first, i), "JID {i} shared");
        }
        // A list written since is read again; the other JIDs keep their copies.
        let mut ch = Changes::default();
        ch.device_lists.push((Namespace::Twomemo, "c@example.org".into(), vec![5, 6]));
        s.apply(&ch).unwrap();
        let after = s.device_lists(Namespace::Twomemo, &jids).unwrap();
        assert_eq!(after.to_vecs(), vec![Some(vec![1]), Some(vec![2]), Some(vec![5, 6])]);
        assert_eq!(after.jid(2).map(|j| j.as_str()), Some("c@example.org"));
        // The other namespace has its own lists.
        let old = s.device_lists(Namespace::Oldmemo, &jids[..1]).unwrap();
        assert_eq!(old.to_vecs(), vec![None]);
    }

    #[test]
    fn apply_is_one_transaction() {
        let mut p = pair(20);
        p.start();
        let k = p.a_to_b(b"x");
        let addr = Pair::<_>::addr_in(&p.a, p.ns);
        // Make the session insert fail after the pre-key deletion: nothing at all may change.
        let (_, mut ch) = session::decrypt(&p.b, &p.b.account().unwrap().unwrap(), &addr, &k.data, &mut p.rng).unwrap();
        let removed = ch.hidden_pre_keys[0];
        ch.signed_pre_keys.push(p.b.signed_pre_keys().unwrap()[0].clone());
        ch.signed_pre_keys[0].created_at = u64::MAX; // does not fit SQLite's INTEGER
        assert!(p.b.apply(&ch).is_err());
        assert!(p.b.pre_key(removed).unwrap().is_some() && p.b.hidden_pre_keys().unwrap().is_empty());
        assert!(p.b.session(&addr).unwrap().is_none());
    }

    #[test]
    fn schema_version_and_reopen() {
        let dir = std::env::temp_dir().join(format!("omemo-store-test-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        {
            let mut s = SqliteStore::open(&dir).unwrap();
            s.apply(&Account::create("a@b", NamespaceSet::BOTH, &[], 0, &mut ChaCha20Rng::seed_from_u64(1))).unwrap();
            assert_eq!(s.schema_version().unwrap(), 8);
        }
        let s = SqliteStore::open(&dir).unwrap();
        assert_eq!(s.account().unwrap().unwrap().jid, "a@b");
        let conn = s.into_inner();
        conn.execute("UPDATE omemo_schema SET version = 99", []).unwrap();
        assert!(matches!(SqliteStore::new(conn), Err(StoreError::SchemaTooNew { found: 99, .. })));
        let _ = std::fs::remove_file(&dir);
    }

    /// What the store keeps between group sends (send states, device lists, trust) follows its own
    /// change sets and what another connection commits to the same file.
    #[test]
    fn kept_reads_follow_every_write() {
        let dir = std::env::temp_dir().join(format!("omemo-send-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut n = 0;
        let mut p = Pair::new_ns(
            || {
                n += 1;
                let path = dir.join(format!("{n}.sqlite3"));
                let _ = std::fs::remove_file(&path);
                SqliteStore::open(path).unwrap()
            },
            41,
            Namespace::Twomemo,
        );
        p.start();
        p.exchange();
        let to_b = Pair::<SqliteStore<rusqlite::Connection>>::addr_in(&p.b, p.ns);
        let ghost = SessionAddress::new(p.ns, "ghost@example.org", 9);
        let asked = [to_b.clone(), ghost.clone()];
        let before = p.a.send_states(&asked).unwrap();
        assert!(before[1].is_none());
        let our = p.a.account().unwrap().unwrap().local_identity();
        // Our own group sends: steps, read back as the whole record gives them.
        for i in 0..3u8 {
            let mut rec = p.a.session(&to_b).unwrap().unwrap();
            // (The first send finishes the DH ratchet step B's answer started, on the whole record.)
            if rec.ratchet_due() {
                rec.complete_ratchet().unwrap();
                p.a.apply(&Changes { sessions: vec![(to_b.clone(), rec.clone())], ..Changes::default() }).unwrap();
                send_states_agree(&p.a, &asked);
            }
            rec.encrypt(&our, &[i; 32]).unwrap();
            p.a.apply(&Changes { session_steps: vec![(to_b.clone(), rec.send_step().unwrap())], ..Changes::default() })
                .unwrap();
            send_states_agree(&p.a, &asked);
        }
        // Another connection to the same file sends a 1:1 message (a whole record) and creates a session
        // for a device that had none.
        let mut other = SqliteStore::open(p.a.path().unwrap()).unwrap();
        let acc = other.account().unwrap().unwrap();
        let mut ch = Changes::default();
        session::encrypt(&other, &acc, &to_b, b"from elsewhere", &mut ch).unwrap();
        let good = other.session(&to_b).unwrap().unwrap();
        ch.sessions.push((ghost.clone(), good));
        other.apply(&ch).unwrap();
        let after = p.a.send_states(&asked).unwrap();
        assert!(after.iter().all(Option::is_some));
        assert!(!after[0].as_ref().unwrap().same_as(before[0].as_ref().unwrap()));
        send_states_agree(&p.a, &asked);
        // Our own whole-record write (a 1:1 message) too.
        p.a_to_b(b"one more");
        send_states_agree(&p.a, &asked);
        // Device lists and trust, kept the same way: written here, written by the other connection.
        let jids = ["m1@example.org", "m2@example.org", "m3@example.org"];
        let key = p.a.session(&to_b).unwrap().unwrap().remote_identity().unwrap();
        let keys: Vec<(&str, PublicKey)> = jids.iter().map(|j| (*j, key)).collect();
        let agree = |s: &SqliteStore<rusqlite::Connection>| {
            let one: Vec<_> = jids.iter().map(|j| s.device_list(p.ns, j).unwrap()).collect();
            assert_eq!(one, s.device_lists(p.ns, &jids).unwrap().to_vecs());
            let one: Vec<_> = keys.iter().map(|(j, k)| s.trust(j, k).unwrap()).collect();
            assert_eq!(one, s.trusts(&keys).unwrap());
            one
        };
        assert_eq!(agree(&p.a), vec![None; 3]);
        let mut ch = Changes::default();
        ch.device_lists.push((p.ns, jids[0].into(), vec![5, 3]));
        ch.trust.push((jids[1].into(), key, TrustLevel::Verified));
        p.a.apply(&ch).unwrap();
        assert_eq!(agree(&p.a)[1], Some(TrustLevel::Verified));
        assert_eq!(p.a.device_lists(p.ns, &jids).unwrap().get(0), Some(&[3, 5][..]));
        let mut ch = Changes::default();
        ch.device_lists.push((p.ns, jids[0].into(), vec![4]));
        ch.device_lists.push((p.ns, jids[2].into(), vec![8]));
        ch.trust.push((jids[1].into(), key, TrustLevel::Distrusted));
        ch.trust.push((jids[2].into(), key, TrustLevel::Verified));
        other.apply(&ch).unwrap();
        assert_eq!(agree(&p.a), vec![None, Some(TrustLevel::Distrusted), Some(TrustLevel::Verified)]);
        assert_eq!(p.a.device_lists(p.ns, &jids).unwrap().to_vecs(), vec![Some(vec![4]), None, Some(vec![8])]);
        // The account, kept the same way: written here, written by the other connection.
        let mut acc = p.a.account().unwrap().unwrap();
        acc.next_pre_key_id += 10;
        p.a.apply(&Changes { account: Some(acc.clone()), ..Changes::default() }).unwrap();
        assert_eq!(p.a.account().unwrap().unwrap().next_pre_key_id, acc.next_pre_key_id);
        acc.next_pre_key_id += 10;
        other.apply(&Changes { account: Some(acc.clone()), ..Changes::default() }).unwrap();
        let kept = p.a.account().unwrap().unwrap();
        assert_eq!((kept.next_pre_key_id, kept.local_identity()), (acc.next_pre_key_id, our));
        drop((p, other));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Several connections opening the same new file at once: each migration runs once.
    #[test]
    fn concurrent_first_open_migrates_once() {
        let path = std::env::temp_dir().join(format!("omemo-store-race-{}.sqlite3", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || SqliteStore::open(&path).map(|s| s.schema_version()))
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap().unwrap().unwrap(), 8);
        }
        let _ = std::fs::remove_file(&path);
    }

    /// A session of A with B after an exchange, and after A sent one message on it.
    struct OneSent {
        p: Pair<SqliteStore<rusqlite::Connection>>,
        to_b: SessionAddress,
        our: LocalIdentity,
        /// The record with its sending chain ready (a waiting DH ratchet step done), before the send.
        before: SessionRecord,
        /// The same record after the send.
        after: SessionRecord,
    }

    fn one_sent(seed: u64) -> OneSent {
        let mut p = pair(seed);
        p.start();
        p.exchange();
        let to_b = Pair::<SqliteStore<rusqlite::Connection>>::addr_in(&p.b, p.ns);
        let our = p.a.account().unwrap().unwrap().local_identity();
        let mut before = p.a.session(&to_b).unwrap().unwrap();
        if before.ratchet_due() {
            before.complete_ratchet().unwrap();
        }
        let mut after = before.clone();
        after.encrypt(&our, &[1; 32]).unwrap();
        OneSent { p, to_b, our, before, after }
    }

    /// The first stored form of `rec`'s step (version 1: the whole sending ratchet key where version 2
    /// keeps its first 8 bytes), built from the record as the store of schema 7 wrote it.
    fn step_v1(rec: &SessionRecord) -> Vec<u8> {
        let v2 = rec.send_step().unwrap().to_bytes();
        let ratchet = rec.current.as_ref().unwrap().sender_ratchet.public;
        assert_eq!((v2.len(), v2[0], &v2[1..9]), (49, 2, &ratchet.as_bytes()[..8]));
        let v1 = [&[1u8][..], ratchet.as_bytes(), &v2[9..]].concat();
        assert_eq!(v1.len(), 73);
        v1
    }

    /// Both stored forms of a step read to the same step; a wrong version, length or ratchet key is
    /// refused as corrupt.
    #[test]
    fn send_step_stored_forms() {
        let OneSent { before, after: rec, .. } = one_sent(43);
        let step = rec.send_step().unwrap();
        let (v1, v2) = (step_v1(&rec), step.to_bytes());
        assert_eq!(v2.len(), SendStep::ENCODED_LEN);
        for form in [&v1, &v2] {
            assert!(SendStep::from_bytes(form).unwrap() == step);
            let mut applied = before.clone();
            applied.apply_step(&SendStep::from_bytes(form).unwrap()).unwrap();
            assert_eq!(applied.to_bytes(), rec.to_bytes());
        }
        let corrupt = |b: &[u8]| matches!(SendStep::from_bytes(b), Err(StoreError::Corrupt(_)));
        for (mut form, version) in [(v1.clone(), 1u8), (v2.clone(), 2)] {
            assert!(corrupt(&form[..form.len() - 1]));
            assert!(corrupt(&[&form[..], &[0]].concat()));
            form[0] = 3 - version;
            assert!(corrupt(&form), "version {version} read as the other");
        }
        assert!(corrupt(&[]));
        // A step whose tag differs from the record's ratchet key belongs to another chain.
        let mut other = v2.clone();
        other[3] ^= 1;
        let mut applied = before.clone();
        assert!(matches!(applied.apply_step(&SendStep::from_bytes(&other).unwrap()), Err(StoreError::Corrupt(_))));
    }

    /// A schema-7 database (steps keyed by address) migrates to schema 8 (steps keyed by session id):
    /// every session keeps its record and its step, a step without a session is dropped, and steps are
    /// written and read by id afterwards.
    #[test]
    fn schema_7_steps_migrate_to_session_ids() {
        let OneSent { p, to_b, our, before: stored, after: mut rec } = one_sent(42);
        // Schema 7 wrote the first form of a step (the whole ratchet key).
        let step = step_v1(&rec);
        let other = SessionAddress::new(p.ns, "other@example.org", 3);
        let ghost = SessionAddress::new(p.ns, "ghost@example.org", 9);

        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE omemo_schema (version INTEGER NOT NULL)").unwrap();
        for sql in &crate::sqlite::MIGRATIONS[..7] {
            conn.execute_batch(sql).unwrap();
        }
        conn.execute("INSERT INTO omemo_schema (version) VALUES (7)", []).unwrap();
        let ns = p.ns.code();
        for addr in [&to_b, &other] {
            conn.execute(
                "INSERT INTO omemo_session (namespace, jid, device_id, record) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![ns, addr.jid.as_str(), addr.device, stored.to_bytes()],
            )
            .unwrap();
        }
        for addr in [&to_b, &ghost] {
            conn.execute(
                "INSERT INTO omemo_session_step (namespace, jid, device_id, step) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![ns, addr.jid.as_str(), addr.device, step],
            )
            .unwrap();
        }

        let mut s = SqliteStore::new(conn).unwrap();
        assert_eq!(s.schema_version().unwrap(), 8);
        assert_eq!(s.session(&to_b).unwrap().unwrap().to_bytes(), rec.to_bytes(), "record with its step");
        assert_eq!(s.session(&other).unwrap().unwrap().to_bytes(), stored.to_bytes(), "record without a step");
        assert!(s.session(&ghost).unwrap().is_none());
        let steps: i64 = s.c().query_row("SELECT count(*) FROM omemo_session_step", [], |r| r.get(0)).unwrap();
        assert_eq!(steps, 1, "the step without a session is gone");
        // Batch reads (a scan) agree; the next step is written by id and read back.
        let many: Vec<SessionAddress> = (0..40).map(|i| [&to_b, &other, &ghost][i % 3].clone()).collect();
        send_states_agree(&s, &many);
        rec.encrypt(&our, &[2; 32]).unwrap();
        s.apply(&Changes { session_steps: vec![(to_b.clone(), rec.send_step().unwrap())], ..Changes::default() })
            .unwrap();
        assert_eq!(s.session(&to_b).unwrap().unwrap().to_bytes(), rec.to_bytes());
        send_states_agree(&s, &many);
        // A record written again keeps its id and loses its step.
        let ids = |s: &SqliteStore<rusqlite::Connection>| -> Vec<i64> {
            let mut stmt = s.c().prepare("SELECT id FROM omemo_session ORDER BY id").unwrap();
            stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
        };
        let before = ids(&s);
        s.apply(&Changes { sessions: vec![(to_b.clone(), stored.clone())], ..Changes::default() }).unwrap();
        assert_eq!(ids(&s), before);
        assert_eq!(s.session(&to_b).unwrap().unwrap().to_bytes(), stored.to_bytes());
        send_states_agree(&s, &many);
        // Two steps of one session in one change set, both by id (the session is kept: just read) and
        // by address (after a whole write drops it from what is kept): the later one wins either way.
        for by_id in [true, false] {
            let mut ahead = stored.clone();
            ahead.encrypt(&our, &[3; 32]).unwrap();
            let first = ahead.send_step().unwrap();
            ahead.encrypt(&our, &[4; 32]).unwrap();
            let second = ahead.send_step().unwrap();
            s.apply(&Changes { sessions: vec![(to_b.clone(), stored.clone())], ..Changes::default() }).unwrap();
            if by_id {
                send_states_agree(&s, &many);
            }
            let steps = vec![(other.clone(), rec.send_step().unwrap()), (to_b.clone(), first), (to_b.clone(), second)];
            s.apply(&Changes { session_steps: steps, ..Changes::default() }).unwrap();
            assert_eq!(s.session(&to_b).unwrap().unwrap().to_bytes(), ahead.to_bytes(), "by id: {by_id}");
            send_states_agree(&s, &many);
        }
    }

    /// A database written by schema version 1 (the first release) opens, migrates and keeps its data.
    #[test]
    fn schema_1_database_still_loads() {
        let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/v1-conversation/bob.sqlite3");
        let path = std::env::temp_dir().join(format!("omemo-store-v1-{}.sqlite3", std::process::id()));
        std::fs::copy(fixture, &path).unwrap();
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), 8);
        let acc = s.account().unwrap().unwrap();
        assert_eq!(acc.jid, "bob@example.org");
        assert_eq!(acc.namespaces, NamespaceSet::OLDMEMO, "schema-1 devices spoke OMEMO 0.3 only");
        assert_eq!(s.pre_keys().unwrap().len(), 100);
        let peers = s.session_devices(Namespace::Oldmemo, "alice@example.org").unwrap();
        assert_eq!(peers.len(), 1);
        let rec = s.session(&SessionAddress::new(Namespace::Oldmemo, "alice@example.org", peers[0])).unwrap().unwrap();
        assert!(rec.has_current());
        drop(s);
        for end in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{end}", path.display()));
        }
    }
}

/// `Debug` of every type that holds secrets shows no key bytes (neither as a byte list nor as hex).
#[test]
fn debug_output_has_no_secret_bytes() {
    let mut p = Pair::new(MemoryStore::default, 30);
    p.start();
    let k = p.a_to_b(b"x");
    let out = p.b_reads(&k.data).unwrap();
    let acc = p.a.account().unwrap().unwrap();
    let spk = p.a.signed_pre_keys().unwrap().remove(0);
    let pk = p.a.pre_keys().unwrap().remove(0);
    let rec = p.a.session(&Pair::<MemoryStore>::addr_in(&p.b, p.ns)).unwrap().unwrap();
    let secrets: Vec<[u8; 32]> =
        vec![*acc.identity.private.as_bytes(), *spk.key_pair.private.as_bytes(), *pk.key_pair.private.as_bytes()];
    let debug = format!("{acc:?} {spk:?} {pk:?} {rec:?} {out:?} {:?} {:?}", p.a, acc.identity);
    for s in &secrets {
        let hex: String = s.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!debug.contains(&hex[..16]), "hex of a secret in {debug}");
        let list = format!("{:?}", &s[..4]);
        assert!(!debug.contains(&list[1..list.len() - 1]), "bytes of a secret in {debug}");
    }
    assert!(!debug.contains(&format!("{:?}", &out.plaintext[..])));
}

/// `DeviceLists` keeps "no list seen" apart from an empty list, and answers by position.
#[test]
fn device_lists_by_position() {
    let mut l = crate::DeviceLists::with_capacity(3);
    assert!(l.is_empty());
    l.push(Some(&[7, 9]));
    l.push(None);
    l.push(Some(&[]));
    l.push(Some(&[4]));
    assert_eq!(l.len(), 4);
    assert_eq!(l.get(0), Some(&[7, 9][..]));
    assert_eq!(l.get(1), None);
    assert_eq!(l.get(2), Some(&[][..]));
    assert_eq!(l.get(3), Some(&[4][..]));
    assert_eq!(l.get(4), None);
    assert_eq!(l.to_vecs(), vec![Some(vec![7, 9]), None, Some(vec![]), Some(vec![4])]);
}

/// A JID handed out with its list is kept by position; two answers with the same lists are equal
/// whether or not they carry the store's JIDs.
#[test]
fn device_lists_carry_shared_jids() {
    let carol = crate::Jid::from("carol@example.org");
    let mut shared = crate::DeviceLists::with_capacity(2);
    shared.push_shared(&carol, Some(&[3]));
    shared.push(None);
    assert!(std::ptr::eq(shared.jid(0).unwrap().as_str(), carol.as_str()), "the store's copy, not a new one");
    assert_eq!(shared.jid(1), None);
    assert_eq!(shared.jid(2), None);
    let mut plain = crate::DeviceLists::default();
    plain.push(Some(&[3]));
    plain.push(None);
    assert_eq!(shared, plain);
    plain.push(None);
    assert_ne!(shared, plain);
    let mut other = crate::DeviceLists::default();
    other.push_shared(&carol, Some(&[4]));
    other.push(None);
    assert_ne!(shared, other);
}
