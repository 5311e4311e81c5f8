//! The Rust API end to end on real files: every decision, admin calls, persistence, migrations, bad files.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use common::*;
use ms_auth::{KeyFilter, KeyPatch, Status, Store, StoreOptions};

#[test]
fn every_documented_answer() {
    let (_dir, store) = temp_store();
    let ok = store.create_key(&spec(r#"{"plan": "pro"}"#), NOW).unwrap();
    let expired = store.create_key(&spec(&format!(r#"{{"expires_at_ms": {NOW}}}"#)), NOW - 1000).unwrap();
    let revoked = store.create_key(&spec("{}"), NOW).unwrap();
    store.revoke_key(&revoked.record.id, NOW, None).unwrap();
    let quota = store.create_key(&spec(r#"{"quota": {"limit": 1, "period": "daily"}}"#), NOW).unwrap();
    let rate = store.create_key(&spec(r#"{"rate_limit": {"limit": 1, "window_ms": 1000}}"#), NOW).unwrap();

    assert_eq!(store.check(None, NOW).unwrap().decision.status, Status::ApiKeyMissing);
    assert_eq!(status(&store, " \t", NOW), Status::ApiKeyMissing);
    assert_eq!(status(&store, "ms_live_nosuchkey", NOW), Status::ApiKeyInvalid);
    assert_eq!(status(&store, &ok.key, NOW), Status::Ok);
    assert_eq!(status(&store, &format!("  {}\t", ok.key), NOW), Status::Ok, "HTTP whitespace is trimmed");
    assert_eq!(status(&store, &expired.key, NOW), Status::ApiKeyExpired);
    assert_eq!(status(&store, &expired.key, NOW - 1), Status::Ok);
    assert_eq!(status(&store, &revoked.key, NOW), Status::ApiKeyRevoked);
    assert_eq!(status(&store, &quota.key, NOW), Status::Ok);
    let refused = store.check(Some(quota.key.as_bytes()), NOW).unwrap();
    assert_eq!(refused.decision.status, Status::ApiKeyQuotaExceeded);
    assert!(refused.decision.retry_after_ms > 0);
    assert_eq!(status(&store, &rate.key, NOW), Status::Ok);
    let limited = store.check(Some(rate.key.as_bytes()), NOW + 250).unwrap();
    assert_eq!((limited.decision.status, limited.decision.retry_after_ms), (Status::RateLimitExceeded, 750));

    let checked = store.check(Some(ok.key.as_bytes()), NOW).unwrap();
    let key = checked.key.unwrap();
    assert_eq!((key.id(), key.plan()), (ok.record.id.as_str(), Some("pro")));
}

#[test]
fn defaults_follow_the_seed() {
    let (_dir, store) = temp_store();
    let created = store.create_key(&spec("{}"), NOW).unwrap();
    let r = &created.record;
    assert_eq!(r.expires_at_ms, Some(NOW + 365 * 86_400_000), "default lifetime: 365 days");
    let rate = r.rate_limit.as_ref().unwrap();
    assert_eq!((rate.limit, rate.window_ms, rate.burst), (60, 60_000, 60), "default rate: 60 per minute");
    assert!(r.quota.is_none());
    assert_eq!(r.env, "live");
    assert!(created.key.starts_with("ms_live_"));
    assert_eq!(r.prefix, created.key[..12]);

    let never = store.create_key(&spec(r#"{"env": "test", "expires_at_ms": null, "rate_limit": null}"#), NOW).unwrap();
    assert!(never.key.starts_with("ms_test_"));
    assert_eq!((never.record.expires_at_ms, never.record.rate_limit.is_none()), (None, true));
    for i in 0..200 {
        assert_eq!(status(&store, &never.key, NOW + i), Status::Ok, "no rate limit");
    }
}

#[test]
fn only_digests_are_stored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.db");
    let store = Store::open(&path).unwrap();
    let created = store.create_key(&spec(r#"{"key": "imported-secret-123"}"#), NOW).unwrap();
    let generated = store.create_key(&spec("{}"), NOW).unwrap();
    store.close().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let contains = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(!contains(&created.key) && !contains(&generated.key[12..]));
    assert_eq!(created.record.prefix, "import", "a third of a short key at most");
}

#[test]
fn imports_keep_their_shape_and_refuse_duplicates() {
    let (_dir, store) = temp_store();
    let seed_example = "ms_live_1a2b3c4d5e6f7g8h9i0j";
    let imported = store.create_key(&spec(&format!(r#"{{"key": "{seed_example}"}}"#)), NOW).unwrap();
    assert_eq!(imported.key, seed_example);
    assert_eq!(imported.record.env, "live");
    assert_eq!(status(&store, seed_example, NOW), Status::Ok);
    let again = store.create_key(&spec(&format!(r#"{{"key": "{seed_example}"}}"#)), NOW).unwrap_err();
    assert_eq!(again.status, Status::ErrInvalidArgument);
    assert!(again.message.contains("already"));
    let mismatch = store.create_key(&spec(r#"{"key": "ms_test_abcdefgh", "env": "live"}"#), NOW).unwrap_err();
    assert!(mismatch.message.contains("does not match"));
    let bad = store.create_key(&spec(r#"{"key": "has space inside"}"#), NOW).unwrap_err();
    assert_eq!(bad.status, Status::ErrInvalidArgument);
}

#[test]
fn admin_calls_get_list_update_revoke() {
    let (_dir, store) = temp_store();
    let a = store.create_key(&spec(r#"{"plan": "pro", "name": "a", "meta": {"team": "x"}}"#), NOW).unwrap();
    let b = store.create_key(&spec(r#"{"plan": "free", "env": "test"}"#), NOW).unwrap();
    assert_eq!(store.get_key(&a.record.id).unwrap(), a.record);
    let pro = store.list_keys(&KeyFilter { plan: Some("pro".into()), ..KeyFilter::default() }).unwrap();
    assert_eq!(pro.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), [a.record.id.as_str()]);
    assert_eq!(store.list_keys(&KeyFilter::default()).unwrap().len(), 2);
    let tests = store.list_keys(&KeyFilter { env: Some(ms_auth::key::Env::Test), ..KeyFilter::default() }).unwrap();
    assert_eq!(tests[0].id, b.record.id);

    let patch =
        KeyPatch::from_json(r#"{"plan": null, "quota": {"limit": 1, "period": "monthly"}, "expires_at_ms": null}"#)
            .unwrap();
    let updated = store.update_key(&a.record.id, &patch).unwrap();
    assert_eq!((updated.plan.as_deref(), updated.expires_at_ms), (None, None));
    assert_eq!(updated.meta["team"], "x", "fields not in the patch are kept");
    assert_eq!(status(&store, &a.key, NOW), Status::Ok);
    assert_eq!(status(&store, &a.key, NOW), Status::ApiKeyQuotaExceeded, "the new quota is in force at once");

    let revoked = store.revoke_key(&b.record.id, NOW, Some("leaked")).unwrap();
    assert_eq!((revoked.revoked_at_ms, revoked.revoked_reason.as_deref()), (Some(NOW), Some("leaked")));
    let again = store.revoke_key(&b.record.id, NOW + 5, None).unwrap();
    assert_eq!(again.revoked_at_ms, Some(NOW), "the first revocation stands");
    let unrevoke = store.update_key(&b.record.id, &KeyPatch::from_json(r#"{"name": "b"}"#).unwrap()).unwrap();
    assert_eq!(unrevoke.revoked_at_ms, Some(NOW), "an update cannot un-revoke");

    for missing in [store.get_key("key_nope").unwrap_err(), store.revoke_key("key_nope", NOW, None).unwrap_err()] {
        assert_eq!(missing.status, Status::ErrNotFound);
    }
}

#[test]
fn counts_survive_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.db");
    let store = Store::open(&path).unwrap();
    let k = store.create_key(&spec(r#"{"quota": {"limit": 5, "period": "daily"}}"#), NOW).unwrap();
    for _ in 0..3 {
        assert_eq!(status(&store, &k.key, NOW), Status::Ok);
    }
    store.close().unwrap();

    let store = Store::open(&path).unwrap();
    let r = store.get_key(&k.record.id).unwrap();
    assert_eq!((r.usage.used, r.usage.total, r.usage.last_used_at_ms), (3, 3, Some(NOW)));
    assert_eq!(status(&store, &k.key, NOW), Status::Ok);
    assert_eq!(status(&store, &k.key, NOW), Status::Ok);
    assert_eq!(status(&store, &k.key, NOW), Status::ApiKeyQuotaExceeded);
    drop(store); // dropping without close() must not lose counts either
    let store = Store::open(&path).unwrap();
    assert_eq!(store.get_key(&k.record.id).unwrap().usage.used, 5);
    assert_eq!(status(&store, &k.key, NOW + 86_400_000), Status::Ok, "a new UTC day");
}

#[test]
fn threads_sharing_a_handle_never_exceed_the_quota() {
    let (_dir, store) = temp_store();
    let store = Arc::new(store);
    let k =
        store.create_key(&spec(r#"{"quota": {"limit": 1000, "period": "daily"}, "rate_limit": null}"#), NOW).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            let key = k.key.clone();
            std::thread::spawn(move || (0..500).filter(|_| status(&store, &key, NOW) == Status::Ok).count())
        })
        .collect();
    let admitted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(admitted, 1000);
    assert_eq!(store.get_key(&k.record.id).unwrap().usage.total, 1000);
}

#[test]
fn quota_and_rate_are_charged_together_under_contention() {
    let (_dir, store) = temp_store();
    let store = Arc::new(store);
    // Bucket of 100, quota of 150: whatever the interleaving, exactly 100 pass at one instant and the
    // 50 quota left untouched by rate-limited requests remain for later.
    let k = store
        .create_key(
            &spec(r#"{"quota": {"limit": 150, "period": "daily"}, "rate_limit": {"limit": 100, "window_ms": 60000}}"#),
            NOW,
        )
        .unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (store, key) = (store.clone(), k.key.clone());
            std::thread::spawn(move || (0..100).filter(|_| status(&store, &key, NOW) == Status::Ok).count())
        })
        .collect();
    assert_eq!(threads.into_iter().map(|t| t.join().unwrap()).sum::<usize>(), 100);
    let later = store.check(Some(k.key.as_bytes()), NOW + 60_000).unwrap().decision;
    assert_eq!((later.status, later.quota_remaining), (Status::Ok, 49));
}

/// The counters file replaced by a larger one (growth: the new file mapped, the old one superseded) while
/// other threads check through a handle that must move to it; written for ThreadSanitizer
/// (`scripts/sanitize.sh tsan`), which sees only races that a test makes happen. Every check decides,
/// and every admission is counted.
#[test]
fn threads_keep_deciding_while_the_counters_file_grows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.db");
    let admin = Store::open(&path).unwrap();
    let server = Arc::new(Store::open(&path).unwrap());
    let k = admin
        .create_key(&spec(r#"{"quota": {"limit": 1000000000, "period": "daily"}, "rate_limit": null}"#), NOW)
        .unwrap();
    let counters = ms_auth::counters::path_for(&path);
    let len_before = std::fs::metadata(&counters).unwrap().len();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (server, key, stop) = (server.clone(), k.key.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut admitted = 0i64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    assert_eq!(status(&server, &key, NOW), Status::Ok);
                    admitted += 1;
                }
                admitted
            })
        })
        .collect();
    // The first file has room for 4096 keys: go past it.
    for _ in 0..4500 {
        admin.create_key(&spec(r#"{"rate_limit": null}"#), NOW).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let admitted: i64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(std::fs::metadata(&counters).unwrap().len() > len_before, "the file grew");
    assert_eq!(status(&server, &k.key, NOW), Status::Ok, "the server's handle moved to the grown file");
    server.flush().unwrap();
    assert_eq!(admin.get_key(&k.record.id).unwrap().usage.total, admitted + 1);
}

#[test]
fn a_change_made_through_another_handle_is_in_force_on_the_next_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.db");
    let server = Store::open(&path).unwrap();
    let admin = Store::open(&path).unwrap();
    let k = admin.create_key(&spec("{}"), NOW).unwrap();
    assert_eq!(status(&server, &k.key, NOW), Status::Ok, "a key created elsewhere works at once");
    admin.revoke_key(&k.record.id, NOW, None).unwrap();
    assert_eq!(status(&server, &k.key, NOW), Status::ApiKeyRevoked, "revocation on the very next request");
}

#[test]
fn times_in_seconds_are_refused() {
    let (_dir, store) = temp_store();
    let err = store.check(Some(b"whatever-key"), 1_700_000_000).unwrap_err();
    assert_eq!(err.status, Status::ErrInvalidArgument);
    assert!(err.message.contains("seconds"));
    assert!(store.create_key(&spec("{}"), 1_700_000_000).is_err());
}

#[test]
fn a_new_file_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.db");
    Store::open(&path).unwrap().close().unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
}

#[test]
fn unusable_files_are_store_errors_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let err = |path: &std::path::Path| Store::open(path).err().expect("must fail");

    let e = err(&dir.path().join("no/such/dir/keys.db"));
    assert_eq!(e.status, Status::ErrStore);
    assert!(e.message.contains("does not exist"), "{}", e.message);

    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0x42u8; 8192]).unwrap();
    let e = err(&garbage);
    assert_eq!(e.status, Status::ErrStore);
    assert!(e.message.contains("not a database"), "{}", e.message);
    assert_eq!(std::fs::read(&garbage).unwrap(), vec![0x42u8; 8192], "a foreign file is left untouched");

    let e = err(dir.path());
    assert!(e.message.contains("directory"), "{}", e.message);
}

#[test]
fn migrations_apply_once_and_newer_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.db");
    let store = Store::open(&path).unwrap();
    let k = store.create_key(&spec("{}"), NOW).unwrap();
    store.close().unwrap();
    // Migrating an up-to-date file again changes nothing.
    let store = Store::open(&path).unwrap();
    assert_eq!(store.get_key(&k.record.id).unwrap().id, k.record.id);
    store.close().unwrap();

    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version as usize, ms_auth::store::schema_version());
    conn.pragma_update(None, "user_version", version + 1).unwrap();
    drop(conn);
    let e = Store::open(&path).err().unwrap();
    assert_eq!(e.status, Status::ErrStore);
    assert!(e.message.contains("newer"), "{}", e.message);
}

#[test]
fn an_empty_file_is_initialised() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.db");
    std::fs::write(&path, b"").unwrap();
    let store = Store::open(&path).unwrap();
    assert!(store.list_keys(&KeyFilter::default()).unwrap().is_empty());
}

#[test]
fn flush_interval_bounds_what_a_crash_can_lose() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.db");
    let opts = StoreOptions { flush_interval: std::time::Duration::ZERO, ..StoreOptions::default() };
    let store = Store::open_with(&path, opts).unwrap();
    let k = store.create_key(&spec(r#"{"rate_limit": null}"#), NOW).unwrap();
    for _ in 0..3 {
        assert_eq!(status(&store, &k.key, NOW), Status::Ok);
    }
    // Another handle reads the file: with a zero interval, every check but the last is already written.
    let reader = Store::open(&path).unwrap();
    assert!(reader.get_key(&k.record.id).unwrap().usage.total >= 2);
    std::mem::forget(store); // as if the process died
}

/// Review (issue 9, item 6): the check that won the flush turn waited the busy timeout (5 s) for another
/// process's write lock and then answered `MS_ERR_STORE` for a valid key.
#[test]
fn a_check_never_waits_for_the_write_lock_and_loses_no_count() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.db");
    let opts = StoreOptions { flush_interval: std::time::Duration::ZERO, ..StoreOptions::default() };
    let store = Store::open_with(&path, opts).unwrap();
    let k = store.create_key(&spec(r#"{"quota": {"limit": 10, "period": "daily"}}"#), NOW).unwrap();
    assert_eq!(status(&store, &k.key, NOW), Status::Ok);

    // Another writer holds the write lock (a long admin batch, a backup, an import).
    let locker = rusqlite::Connection::open(&path).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    for _ in 0..2 {
        let started = std::time::Instant::now();
        let checked = store.check(Some(k.key.as_bytes()), NOW).unwrap();
        assert_eq!(checked.decision.status, Status::Ok, "decided from the shared file");
        assert!(started.elapsed() < std::time::Duration::from_millis(500), "waited {:?}", started.elapsed());
    }
    assert!(store.flush_failures() >= 1);
    let why = store.last_flush_error().unwrap();
    assert!(why.contains("cannot write usage counts") && why.contains("locked"), "{why}");
    locker.execute_batch("ROLLBACK").unwrap();
    drop(locker);
    let metrics = store.metrics_text(NOW).unwrap();
    assert!(metrics.lines().any(|l| l.starts_with("ms_auth_flush_failures_total ") && !l.ends_with(" 0")), "{metrics}");

    assert_eq!(status(&store, &k.key, NOW), Status::Ok, "the next turn writes what the busy ones could not");
    store.close().unwrap();
    let reopened = Store::open(&path).unwrap();
    assert_eq!(reopened.get_key(&k.record.id).unwrap().usage.used, 4, "no count was lost, none was added");
}

#[test]
fn processes_opening_a_new_store_at_the_same_instant_all_succeed() {
    // nginx starts its workers together: the first open of a store that does not exist yet races.
    for _ in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let children: Vec<_> = (0..8)
            .map(|_| {
                std::process::Command::new(env!("CARGO_BIN_EXE_ms-auth"))
                    .arg("--db")
                    .arg(&path)
                    .args(["plan", "put", "pro"])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut said_created = 0;
        for child in children {
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{stderr}");
            said_created += stderr.matches("created a new store").count();
        }
        assert_eq!(said_created, 1, "one of them made the store");
    }
}

/// Issue 22, item 3: a host's identity in its fleet is its own (random, kept across joins), the name a label.
#[test]
fn a_fleet_host_keeps_one_random_identity_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let a = Store::open(dir.path().join("a.db")).unwrap();
    let b = Store::open(dir.path().join("b.db")).unwrap();
    assert_eq!(a.fleet_host_id().unwrap(), None);
    a.fleet_join("prod", "web1").unwrap();
    b.fleet_join("prod", "web1").unwrap();
    let id = a.fleet_host_id().unwrap().expect("an id once joined");
    assert_eq!(id.len(), 32);
    assert_ne!(Some(id.clone()), b.fleet_host_id().unwrap(), "one name, two identities");
    a.fleet_join("prod", "web1-renamed").unwrap();
    assert_eq!(a.fleet_host_id().unwrap(), Some(id), "a rename keeps the identity");
}
