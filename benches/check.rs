//! One thread, one hot key: a check, quoted against a bare SHA-256 of the same key and against a
//! SQLite-transaction-per-check implementation of the same policy, all measured in the same run.
//! Run: cargo bench --bench check

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use sha2::{Digest, Sha256};

use common::{fixture, fixture_key, SqlitePerCheck, NOW};
use ms_auth::store::{Durability, StoreOptions};
use ms_auth::Store;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let db = fixture(dir.path(), 1000);
    let store = Store::open(&db).unwrap();
    let hot = fixture_key(0);
    let unknown_generated = ms_auth::key::generate(ms_auth::key::Env::Live).unwrap();
    let unknown_other = "x".repeat(40);
    let mut n = 0u64;

    let mut group = c.benchmark_group("check");
    group.bench_function("sha256 of the key (baseline)", |b| b.iter(|| Sha256::digest(black_box(hot.as_bytes()))));
    group.bench_function("hot valid key", |b| b.iter(|| store.check(Some(black_box(hot.as_bytes())), NOW).unwrap()));
    group.bench_function("unknown key, generated shape", |b| {
        b.iter(|| store.check(Some(black_box(unknown_generated.as_bytes())), NOW).unwrap())
    });
    group.bench_function("unknown key, other shapes", |b| {
        b.iter(|| {
            n += 1;
            let key = format!("{unknown_other}{n}");
            store.check(Some(black_box(key.as_bytes())), NOW).unwrap()
        })
    });
    group.bench_function("format of a varying key (subtract from the line above)", |b| {
        b.iter(|| {
            n += 1;
            black_box(format!("{unknown_other}{n}"))
        })
    });
    let strict =
        Store::open_with(&db, StoreOptions { durability: Durability::Strict, ..StoreOptions::default() }).unwrap();
    group.bench_function("hot valid key, strict durability", |b| {
        b.iter(|| strict.check(Some(black_box(hot.as_bytes())), NOW).unwrap())
    });
    let mut baseline = SqlitePerCheck::open(&db);
    group.bench_function("SQLite transaction per check (reference)", |b| {
        b.iter(|| baseline.check(black_box(hot.as_bytes()), NOW))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
