//! The check on a fleet host (quota counted within the host's lease, rate limit shared by 3 hosts) against
//! the same check on a standalone store, and a bare SHA-256 of the key, measured in the same run. The path
//! users take: a key with a quota and a rate limit, the clock advancing 1 ms per check.
//! Run: cargo bench --bench fleet

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use sha2::{Digest, Sha256};

use ms_auth::period::Period;
use ms_auth::{KeySpec, Store};

const NOW: i64 = 1_800_000_000_000;
const SPEC: &str = r#"{"quota": {"limit": 1000000000000, "period": "daily"},
    "rate_limit": {"limit": 1000000, "window_ms": 1000, "burst": 1000000}, "expires_at_ms": null}"#;

fn store(dir: &std::path::Path, fleet: bool) -> (Store, String) {
    let store = Store::open(dir.join("keys.db")).unwrap();
    let key = store.create_key(&KeySpec::from_json(SPEC).unwrap(), NOW).unwrap().key;
    if fleet {
        store.fleet_join("bench", "host0").unwrap();
        store.fleet_set_rate_sharers(3).unwrap();
        let digest = ms_auth::key::digest(key.as_bytes());
        let start = Period::Daily.bounds(NOW).0;
        store.fleet_set_lease(&digest, start, 1 << 38, false, false).unwrap();
    }
    (store, key)
}

fn bench(c: &mut Criterion) {
    let (standalone_dir, fleet_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (standalone, key) = store(standalone_dir.path(), false);
    let (fleet, fleet_key) = store(fleet_dir.path(), true);
    let mut group = c.benchmark_group("fleet");
    group.bench_function("sha256 of the key (baseline)", |b| b.iter(|| Sha256::digest(black_box(key.as_bytes()))));
    let mut t = 0;
    group.bench_function("standalone, quota + rate limit", |b| {
        b.iter(|| {
            t += 1;
            standalone.check(Some(black_box(key.as_bytes())), NOW + t % 3_600_000).unwrap()
        })
    });
    let mut t = 0;
    group.bench_function("fleet host, quota within a lease + shared rate limit", |b| {
        b.iter(|| {
            t += 1;
            fleet.check(Some(black_box(fleet_key.as_bytes())), NOW + t % 3_600_000).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
