//! Ratchet benchmarks: encrypting one key on an established session (the per-device cost of a group
//! message), decrypting one, and building a session from a bundle (X3DH with signature check).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use rand_chacha::{rand_core::SeedableRng, ChaCha20Rng};
use session_store::{
    account, session, Account, AccountStore, Changes, MemoryStore, Namespace, SessionAddress, SessionStore, Store,
};

struct Pair {
    a: MemoryStore,
    b: MemoryStore,
    a_acc: Account,
    b_acc: Account,
    to_b: SessionAddress,
    to_a: SessionAddress,
    rng: ChaCha20Rng,
}

#[allow(clippy::unwrap_used)]
fn pair() -> Pair {
    let mut rng = ChaCha20Rng::seed_from_u64(42);
    let mut a = MemoryStore::default();
    a.apply(&Account::create("alice@example.org", &[], 0, &mut rng)).unwrap();
    let mut b = MemoryStore::default();
    b.apply(&Account::create("bob@example.org", &[], 0, &mut rng)).unwrap();
    let (a_acc, b_acc) = (a.account().unwrap().unwrap(), b.account().unwrap().unwrap());
    let to_b = SessionAddress::new(Namespace::Oldmemo, "bob@example.org", b_acc.device_id);
    let to_a = SessionAddress::new(Namespace::Oldmemo, "alice@example.org", a_acc.device_id);
    let mut ch = Changes::default();
    session::initiate(&a, &a_acc, &to_b, &account::own_bundle(&b).unwrap(), &mut ch, &mut rng).unwrap();
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
    Pair { a, b, a_acc, b_acc, to_b, to_a, rng }
}

#[allow(clippy::unwrap_used)]
fn benches(c: &mut Criterion) {
    let mut p = pair();
    let key_material = [7u8; 32];
    let mut g = c.benchmark_group("ratchet");

    // The per-device step of a group message: one ratchet encryption on a record in hand.
    let mut record = p.a.session(&p.to_b).unwrap().unwrap();
    let our = p.a_acc.identity.public;
    g.bench_function("encrypt_key/record", |bch| bch.iter(|| record.encrypt_0_3(&our, &key_material).unwrap()));

    // The same through the store API: load + decode the record, trust check, encrypt, record in Changes.
    g.bench_function("encrypt_key/store", |bch| {
        bch.iter(|| {
            let mut ch = Changes::default();
            session::encrypt(&p.a, &p.a_acc, &p.to_b, &key_material, &mut ch).unwrap()
        })
    });

    // Decrypting one message on an established chain (fresh message each time, state not committed).
    g.bench_function("decrypt_key/same_chain", |bch| {
        bch.iter_batched(
            || {
                // Not committed: every iteration gets the message B expects next.
                let mut ch = Changes::default();
                session::encrypt(&p.a, &p.a_acc, &p.to_b, &key_material, &mut ch).unwrap().data
            },
            |data| session::decrypt(&p.b, &p.b_acc, &p.to_a, &data, &mut ChaCha20Rng::seed_from_u64(1)).unwrap(),
            BatchSize::SmallInput,
        )
    });

    // Building a session from a bundle: signature check, four agreements, first ratchet step.
    let bundle = account::own_bundle(&p.b).unwrap();
    let fresh = MemoryStore::default();
    g.bench_function("session_from_bundle", |bch| {
        bch.iter(|| {
            let mut ch = Changes::default();
            session::initiate(&fresh, &p.a_acc, &p.to_b, &bundle, &mut ch, &mut p.rng).unwrap()
        })
    });
    g.finish();
}

criterion_group!(ratchet, benches);
criterion_main!(ratchet);
