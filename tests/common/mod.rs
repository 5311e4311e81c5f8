#![allow(dead_code)]

pub mod fleet;

use ms_auth::{KeySpec, Status, Store};

/// 2027-01-15T10:00:00Z: a fixed instant so every test is exact.
pub const NOW: i64 = 1_800_000_000_000;

pub fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("keys.db")).unwrap();
    (dir, store)
}

pub fn spec(json: &str) -> KeySpec {
    KeySpec::from_json(json).unwrap()
}

pub fn status(store: &Store, key: &str, now: i64) -> Status {
    store.check(Some(key.as_bytes()), now).unwrap().decision.status
}
