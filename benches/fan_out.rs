//! Fan-out: one group message to N member devices, through the whole send path (recipients from the
//! room model, device lists, trust, the payload once, the per-device wrap in parallel, the stanza, and
//! the commit of every advanced session and the ledger entry in one transaction). Steady state
//! (sessions established and confirmed) and cold start (every session built from its bundle).

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use std::time::Duration;

use omemo_muc::benchmark::{prepare, send_once, MAX_STEADY_RUNS};
use rand_chacha::{rand_core::SeedableRng, ChaCha20Rng};
use session_store::{MemoryStore, SqliteStore};

#[allow(clippy::unwrap_used)]
fn fan_out(c: &mut Criterion) {
    let mut g = c.benchmark_group("fan_out");
    g.sample_size(10);
    // `cargo bench` passes --bench; a smoke run (`cargo test --benches`, debug build) takes small rooms.
    let full = std::env::args().any(|a| a == "--bench");
    let sizes: &[usize] = if full { &[1, 10, 100, 1000, 3000, 10_000] } else { &[1, 10] };
    for &n in sizes {
        g.throughput(Throughput::Elements(n as u64));
        let mut rng = ChaCha20Rng::seed_from_u64(n as u64);

        // Steady state: the first message after the members' answers does the sending half of every DH
        // ratchet step (whole records); it is sent before measuring, as `omemo-muc bench fanout` does.
        let mut mem = MemoryStore::default();
        let room = prepare(&mut mem, n, true, &mut rng).unwrap();
        send_once(&mut mem, &room, &mut rng).unwrap();
        g.bench_function(BenchmarkId::new("memory", n), |b| {
            b.iter_batched(
                || mem.clone(),
                |mut store| {
                    send_once(&mut store, &room, &mut rng).unwrap();
                    store // dropped outside the measurement
                },
                BatchSize::LargeInput,
            )
        });

        // SQLite: messages on one store, its read cache warm. The members never answer, and after
        // `STALE_AFTER` unanswered messages their devices count as stale: every `MAX_STEADY_RUNS` messages
        // the store starts again from a copy of the prepared file (outside the measured time).
        let dir = std::env::temp_dir().join(format!("omemo-fanout-bench-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let base = dir.join("base.sqlite3");
        let room = prepare(&mut SqliteStore::open(&base).unwrap(), n, true, &mut rng).unwrap();
        let fresh = |rng: &mut ChaCha20Rng| {
            let copy = dir.join("run.sqlite3");
            for end in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(dir.join(format!("run.sqlite3{end}")));
            }
            std::fs::copy(&base, &copy).unwrap();
            let mut store = SqliteStore::open(&copy).unwrap();
            send_once(&mut store, &room, rng).unwrap();
            store
        };
        let mut sql = fresh(&mut rng);
        let mut sent = 0;
        g.bench_function(BenchmarkId::new("sqlite", n), |b| {
            b.iter_custom(|iters| {
                let mut took = Duration::ZERO;
                for _ in 0..iters {
                    if sent == MAX_STEADY_RUNS {
                        drop(std::mem::replace(&mut sql, fresh(&mut rng)));
                        sent = 0;
                    }
                    took += send_once(&mut sql, &room, &mut rng).unwrap();
                    sent += 1;
                }
                took
            })
        });
        drop(sql);
        let _ = std::fs::remove_dir_all(&dir);

        // Cold start: no sessions, every one built from its bundle (in memory).
        let mut cold = MemoryStore::default();
        let room = prepare(&mut cold, n, false, &mut rng).unwrap();
        g.bench_function(BenchmarkId::new("memory-cold", n), |b| {
            b.iter_batched(
                || cold.clone(),
                |mut store| {
                    send_once(&mut store, &room, &mut rng).unwrap();
                    store
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, fan_out);
criterion_main!(benches);
