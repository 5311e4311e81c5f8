//! Check latency on one thread, quoted against a bare SHA-256 of the same key measured in the same run.
//! Run: cargo bench --bench check

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use sha2::{Digest, Sha256};

use ms_auth::{KeySpec, Store};

const NOW: i64 = 1_800_000_000_000;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("bench.db")).unwrap();
    for _ in 0..1000 {
        store
            .create_key(&KeySpec::from_json(r#"{"rate_limit": null}"#).unwrap(), NOW)
            .unwrap();
    }
    let hot = store
        .create_key(
            &KeySpec::from_json(r#"{"rate_limit": null, "expires_at_ms": null}"#).unwrap(),
            NOW,
        )
        .unwrap()
        .key;
    let unknown_generated = ms_auth::key::generate(ms_auth::key::Env::Live).unwrap();
    let unknown_other = "x".repeat(40);

    let mut group = c.benchmark_group("check");
    group.bench_function("sha256 of the key (baseline)", |b| {
        b.iter(|| Sha256::digest(black_box(hot.as_bytes())))
    });
    group.bench_function("hot valid key", |b| {
        b.iter(|| store.check(Some(black_box(hot.as_bytes())), NOW).unwrap())
    });
    group.bench_function("unknown key, generated shape", |b| {
        b.iter(|| {
            store
                .check(Some(black_box(unknown_generated.as_bytes())), NOW)
                .unwrap()
        })
    });
    group.bench_function("unknown key, other shape", |b| {
        b.iter(|| {
            store
                .check(Some(black_box(unknown_other.as_bytes())), NOW)
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
