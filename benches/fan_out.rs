//! Fan-out: one group message to N member devices, through the whole send path (recipients from the
//! room model, device lists, trust, the payload once, the per-device wrap in parallel, the stanza, and
//! the commit of every advanced session and the ledger entry in one transaction). Steady state
//! (sessions established and confirmed) and cold start (every session built from its bundle).

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use omemo_muc::benchmark::{prepare, send_once};
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

        let mut mem = MemoryStore::default();
        let room = prepare(&mut mem, n, true, &mut rng).unwrap();
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

        let path = std::env::temp_dir().join(format!("omemo-fanout-bench-{}-{n}.sqlite3", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut sql = SqliteStore::open(&path).unwrap();
        let room = prepare(&mut sql, n, true, &mut rng).unwrap();
        g.bench_function(BenchmarkId::new("sqlite", n), |b| b.iter(|| send_once(&mut sql, &room, &mut rng).unwrap()));
        drop(sql);
        let _ = std::fs::remove_file(&path);

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
