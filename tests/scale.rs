//! A million keys: the counters file is built once, every later open is fast, every key is found, and a
//! process holds no per-key copy. Takes about a minute, so it is ignored by default; run it with
//!     cargo test --release --test scale -- --ignored --nocapture
//! (the figures for check time with 1,000 vs 1,000,000 keys come from `cargo bench --bench multiprocess`).

#[path = "../benches/common/mod.rs"]
mod bench_common;

use std::time::Instant;

use bench_common::{fixture, fixture_key, NOW};
use ms_auth::{Status, Store};

fn rss_anon_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("RssAnon")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
#[ignore]
fn one_million_keys() {
    const KEYS: usize = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let db = fixture(dir.path(), KEYS);

    let started = Instant::now();
    Store::open(&db).unwrap().close().unwrap();
    println!("first open, building the counters file: {:.2?}", started.elapsed());

    let before = rss_anon_kib();
    let started = Instant::now();
    let store = Store::open(&db).unwrap();
    let open = started.elapsed();
    println!("open: {open:.2?}");
    assert!(open.as_secs_f64() <= 2.0, "open took {open:?}");

    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..200_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let key = fixture_key((x % KEYS as u64) as usize);
        assert_eq!(store.check(Some(key.as_bytes()), NOW).unwrap().decision.status, Status::Ok, "{key}");
    }
    assert_eq!(store.check(Some(fixture_key(KEYS).as_bytes()), NOW).unwrap().decision.status, Status::ApiKeyInvalid);
    let private_mib = rss_anon_kib().saturating_sub(before) / 1024;
    println!("private memory for the open store after 200,000 checks: {private_mib} MiB");
    assert!(private_mib <= 64, "{private_mib} MiB of private memory");

    // An admin change at this size is still applied in place, on the next check.
    let created = store.create_key(&ms_auth::KeySpec::from_json("{}").unwrap(), NOW).unwrap();
    assert_eq!(store.check(Some(created.key.as_bytes()), NOW).unwrap().decision.status, Status::Ok);
    store.revoke_key(&created.record.id, NOW, None).unwrap();
    assert_eq!(store.check(Some(created.key.as_bytes()), NOW).unwrap().decision.status, Status::ApiKeyRevoked);
}
