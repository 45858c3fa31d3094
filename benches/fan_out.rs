//! Fan-out: one group message to N member devices in steady state (sessions established and confirmed),
//! through the whole send path: recipients from the room model, device lists, trust, the payload once,
//! the per-device wrap in parallel, the stanza, and the commit of every advanced session and the ledger
//! entry in one transaction.

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use fan_out_encryptor::group::{encrypt_group_message, GroupOptions};
use minidom::Element;
use participant_resolver::{Policy, Room};
use rand_chacha::{rand_core::SeedableRng, ChaCha20Rng};
use session_store::{
    account, session, Account, AccountStore, Changes, MemoryStore, Namespace, NamespaceSet, SessionAddress,
    SqliteStore, Store,
};

const ROOM: &str = "big@muc.example.org";

#[allow(clippy::unwrap_used)]
fn room(members: &[String]) -> Room {
    let mut room = Room::new(ROOM, "sender@example.org", Policy::default());
    let own: Element = format!("<presence xmlns='jabber:client' from='{ROOM}/me'><x xmlns='http://jabber.org/protocol/muc#user'><status code='110'/><item jid='sender@example.org/r' affiliation='owner' role='moderator'/></x></presence>").parse().unwrap();
    room.apply_captured(&own).unwrap();
    let disco: Element = format!("<iq xmlns='jabber:client' type='result' from='{ROOM}' id='d'><query xmlns='http://jabber.org/protocol/disco#info'><feature var='muc_nonanonymous'/><feature var='muc_membersonly'/></query></iq>").parse().unwrap();
    room.apply_captured(&disco).unwrap();
    let items: String = members.iter().map(|j| format!("<item jid='{j}' affiliation='member'/>")).collect();
    let list: Element = format!("<iq xmlns='jabber:client' type='result' from='{ROOM}' id='l'><query xmlns='http://jabber.org/protocol/muc#admin'>{items}</query></iq>").parse().unwrap();
    room.apply_captured(&list).unwrap();
    room
}

/// A sender store with confirmed OMEMO 2 sessions to `n` member devices (one device per member).
#[allow(clippy::unwrap_used)]
fn setup<S: Store>(sender: &mut S, n: usize, rng: &mut ChaCha20Rng) -> Vec<String> {
    sender.apply(&Account::create("sender@example.org", NamespaceSet::TWOMEMO, &[], 0, rng)).unwrap();
    let me = sender.account().unwrap().unwrap();
    let mut members = Vec::with_capacity(n);
    let mut changes = Changes::default();
    for i in 0..n {
        let jid = format!("member{i}@example.org");
        let mut peer = MemoryStore::default();
        peer.apply(&Account::create(&jid, NamespaceSet::TWOMEMO, &[], 0, rng)).unwrap();
        let them = peer.account().unwrap().unwrap();
        let to = SessionAddress::new(Namespace::Twomemo, jid.clone(), them.device_id);
        let from = SessionAddress::new(Namespace::Twomemo, "sender@example.org", me.device_id);
        let bundle = account::own_bundle_for(&peer, Namespace::Twomemo).unwrap();
        let mut ch = Changes::default();
        session::initiate(sender, &me, &to, &bundle, &mut ch, rng).unwrap();
        let k = session::encrypt(sender, &me, &to, &[0; 48], &mut ch).unwrap();
        sender.apply(&ch).unwrap();
        // The member reads it and answers: the sender's session is confirmed, no more key exchanges.
        let (_, pch) = session::decrypt(&peer, &them, &from, &k.data, rng).unwrap();
        peer.apply(&pch).unwrap();
        let mut pch = Changes::default();
        let reply = session::encrypt(&peer, &them, &from, &[0; 48], &mut pch).unwrap();
        let (_, sch) = session::decrypt(sender, &me, &to, &reply.data, rng).unwrap();
        sender.apply(&sch).unwrap();
        changes.device_lists.push((Namespace::Twomemo, jid.clone(), vec![them.device_id]));
        members.push(jid);
    }
    sender.apply(&changes).unwrap();
    members
}

#[allow(clippy::unwrap_used)]
fn fan_out(c: &mut Criterion) {
    let mut g = c.benchmark_group("fan_out");
    g.sample_size(10);
    let opts = GroupOptions::default();
    for n in [1usize, 10, 100, 1000] {
        g.throughput(Throughput::Elements(n as u64));
        let mut rng = ChaCha20Rng::seed_from_u64(n as u64);

        let mut mem = MemoryStore::default();
        let members = setup(&mut mem, n, &mut rng);
        let r = room(&members);
        g.bench_function(BenchmarkId::new("memory", n), |b| {
            b.iter_batched(
                || mem.clone(),
                |mut store| {
                    let msg = encrypt_group_message(&store, &r, "hello", &[], &opts, 1, &mut rng).unwrap();
                    let out = msg.commit(&mut store).unwrap();
                    (store, out) // dropped outside the measurement
                },
                BatchSize::LargeInput,
            )
        });

        let dir = std::env::temp_dir().join(format!("omemo-fanout-bench-{}-{n}.sqlite3", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let mut sql = SqliteStore::open(&dir).unwrap();
        let members = setup(&mut sql, n, &mut rng);
        let r = room(&members);
        g.bench_function(BenchmarkId::new("sqlite", n), |b| {
            b.iter(|| {
                let msg = encrypt_group_message(&sql, &r, "hello", &[], &opts, 1, &mut rng).unwrap();
                msg.commit(&mut sql).unwrap()
            })
        });
        drop(sql);
        let _ = std::fs::remove_file(&dir);
    }
    g.finish();
}

criterion_group!(benches, fan_out);
criterion_main!(benches);
