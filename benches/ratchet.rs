//! Ratchet benchmarks, for OMEMO 0.3 and OMEMO 2 side by side: encrypting one key on an established
//! session (the per-device cost of a group message), decrypting one, and building a session from a
//! bundle (X3DH with signature check).

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use rand_chacha::{rand_core::SeedableRng, ChaCha20Rng};
use session_store::{
    account, session, Account, AccountStore, Changes, MemoryStore, Namespace, NamespaceSet, SessionAddress,
    SessionStore, Store,
};

struct Pair {
    a: MemoryStore,
    b: MemoryStore,
    a_acc: Account,
    b_acc: Account,
    to_b: SessionAddress,
    to_a: SessionAddress,
    rng: ChaCha20Rng,
    /// A's record right after B's answer, before A sent again: its next message starts a new chain.
    a_waiting: session_store::SessionRecord,
}

#[allow(clippy::unwrap_used)]
fn pair(ns: Namespace) -> Pair {
    let mut rng = ChaCha20Rng::seed_from_u64(42);
    let mut a = MemoryStore::default();
    a.apply(&Account::create("alice@example.org", NamespaceSet::BOTH, &[], 0, &mut rng)).unwrap();
    let mut b = MemoryStore::default();
    b.apply(&Account::create("bob@example.org", NamespaceSet::BOTH, &[], 0, &mut rng)).unwrap();
    let (a_acc, b_acc) = (a.account().unwrap().unwrap(), b.account().unwrap().unwrap());
    let to_b = SessionAddress::new(ns, "bob@example.org", b_acc.device_id);
    let to_a = SessionAddress::new(ns, "alice@example.org", a_acc.device_id);
    let mut ch = Changes::default();
    session::initiate(&a, &a_acc, &to_b, &account::own_bundle_for(&b, ns).unwrap(), &mut ch, &mut rng).unwrap();
    let k = session::encrypt(&a, &a_acc, &to_b, &[0; 32], &mut ch).unwrap();
    a.apply(&ch).unwrap();
    let (_, ch) = session::decrypt(&b, &b_acc, &to_a, &k.data, &mut rng).unwrap();
    b.apply(&ch).unwrap();
    // B answers so that A's session is confirmed (no more key exchanges).
    let mut ch = Changes::default();
    let k = session::encrypt(&b, &b_acc, &to_a, &[0; 32], &mut ch).unwrap();
    b.apply(&ch).unwrap();
    let (_, ch) = session::decrypt(&a, &a_acc, &to_b, &k.data, &mut rng).unwrap();
    a.apply(&ch).unwrap();
    // B's answer brought a new ratchet key: A's record keeps the sending half of that DH step for A's
    // next message. The pair starts as an established session in both directions: A does that step now.
    let a_waiting = a.session(&to_b).unwrap().unwrap();
    let mut done = a_waiting.clone();
    done.complete_ratchet().unwrap();
    a.apply(&Changes { sessions: vec![(to_b.clone(), done)], ..Changes::default() }).unwrap();
    Pair { a, b, a_acc, b_acc, to_b, to_a, rng, a_waiting }
}

#[allow(clippy::unwrap_used)]
fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("ratchet");
    for ns in [Namespace::Oldmemo, Namespace::Twomemo] {
        let name = ns.short_name();
        let mut p = pair(ns);
        // The per-device secret: 32 bytes in 0.3, 48 in OMEMO 2.
        let key_material = vec![7u8; if ns == Namespace::Oldmemo { 32 } else { 48 }];

        // The per-device step of a group message: one ratchet encryption on a record in hand.
        let mut record = p.a.session(&p.to_b).unwrap().unwrap();
        let our = p.a_acc.local_identity();
        g.bench_function(BenchmarkId::new("encrypt_key/record", name), |bch| {
            bch.iter(|| record.encrypt(&our, &key_material).unwrap())
        });

        // The same through the store API: load + decode the record, trust check, encrypt, record in Changes.
        g.bench_function(BenchmarkId::new("encrypt_key/store", name), |bch| {
            bch.iter(|| {
                let mut ch = Changes::default();
                session::encrypt(&p.a, &p.a_acc, &p.to_b, &key_material, &mut ch).unwrap()
            })
        });

        // A's first message after B's answer: what it costs A to send it (the sending half of the DH
        // ratchet step, done on the first send after a new ratchet key of the peer) ...
        g.bench_function(BenchmarkId::new("encrypt_key/first_after_answer", name), |bch| {
            bch.iter_batched(
                || p.a_waiting.clone(),
                |mut r| r.encrypt(&our, &key_material).unwrap(),
                BatchSize::SmallInput,
            )
        });

        // ... and what it costs B to decrypt it (not committed, so every iteration gets the message B
        // expects next): A's chain is new to B, so this includes the receiving half of a DH ratchet step.
        g.bench_function(BenchmarkId::new("decrypt_key/new_chain", name), |bch| {
            bch.iter_batched(
                || p.a_waiting.clone().encrypt(&our, &key_material).unwrap().0,
                |data| session::decrypt(&p.b, &p.b_acc, &p.to_a, &data, &mut ChaCha20Rng::seed_from_u64(1)).unwrap(),
                BatchSize::SmallInput,
            )
        });

        // Decrypting a message on a chain B already has (not committed, so every iteration decrypts the
        // same position): no DH. (A's new chain reaches B first, committed on both sides.)
        let mut ch = Changes::default();
        let first = session::encrypt(&p.a, &p.a_acc, &p.to_b, &key_material, &mut ch).unwrap().data;
        p.a.apply(&ch).unwrap();
        let (_, ch) = session::decrypt(&p.b, &p.b_acc, &p.to_a, &first, &mut p.rng).unwrap();
        p.b.apply(&ch).unwrap();
        let on_chain = {
            let mut ch = Changes::default();
            session::encrypt(&p.a, &p.a_acc, &p.to_b, &key_material, &mut ch).unwrap().data
        };
        g.bench_function(BenchmarkId::new("decrypt_key/same_chain", name), |bch| {
            bch.iter(|| {
                session::decrypt(&p.b, &p.b_acc, &p.to_a, &on_chain, &mut ChaCha20Rng::seed_from_u64(1)).unwrap()
            })
        });

        // Building a session from a bundle: signature check, four agreements, first ratchet step.
        let bundle = account::own_bundle_for(&p.b, ns).unwrap();
        let fresh = MemoryStore::default();
        g.bench_function(BenchmarkId::new("session_from_bundle", name), |bch| {
            bch.iter(|| {
                let mut ch = Changes::default();
                session::initiate(&fresh, &p.a_acc, &p.to_b, &bundle, &mut ch, &mut p.rng).unwrap()
            })
        });
    }
    g.finish();
}

/// The primitives the figures above are made of.
#[allow(clippy::unwrap_used)]
fn primitives(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let a = session_store::KeyPair::generate(&mut rng);
    let b = session_store::KeyPair::generate(&mut rng);
    let mut g = c.benchmark_group("primitives");
    g.bench_function("x25519_agree", |bch| bch.iter(|| a.private.agree(&b.public).unwrap()));
    g.bench_function("x25519_keygen", |bch| bch.iter(|| session_store::KeyPair::generate(&mut rng)));
    g.bench_function("hmac_sha256_32B", |bch| {
        bch.iter(|| session_store::primitives::hmac_sha256(&[1; 32], &[&[2; 32]]))
    });
    g.finish();
}

criterion_group!(ratchet, benches, primitives);
criterion_main!(ratchet);
