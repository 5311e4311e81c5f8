//! Regression tests for the defects found in review (issue 9), one or more per item, each named after
//! what went wrong. Children that may die of a signal are this test binary run again with
//! MS_AUTH_DEFECT_CHILD naming their role (see `child`).

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use ms_auth::counters::{self, KeyEntry, SharedCounters, Tally};
use ms_auth::policy::KeyPolicy;
use ms_auth::{KeyPatch, Status, Store, StoreOptions};

const HOUR: Duration = Duration::from_secs(3600);

fn no_flush() -> StoreOptions {
    StoreOptions { flush_interval: HOUR, ..StoreOptions::default() }
}

/// Runs this binary again as a child with `role`; its stdout and exit status.
fn run_child(role: &str, db: &Path, key: &str) -> (String, std::process::ExitStatus) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env("MS_AUTH_DEFECT_CHILD", role)
        .env("MS_AUTH_DEFECT_DB", db)
        .env("MS_AUTH_DEFECT_KEY", key)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // libtest may print "test child ... " on the same line before the child's own output.
    let lines: Vec<&str> = stdout.lines().filter_map(|l| l.split_once("RESULT ").map(|(_, r)| r)).collect();
    (lines.join("\n"), out.status)
}

#[test]
fn child() {
    let Ok(role) = std::env::var("MS_AUTH_DEFECT_CHILD") else { return };
    let db = std::env::var("MS_AUTH_DEFECT_DB").unwrap();
    let key = std::env::var("MS_AUTH_DEFECT_KEY").unwrap();
    match role.as_str() {
        // Checks, has the counters file truncated under it, checks again.
        "truncate" => {
            let store = Store::open(&db).unwrap();
            assert_eq!(status(&store, &key, NOW), Status::Ok);
            std::thread::sleep(Duration::from_millis(150)); // past this process's size check interval
            let file = std::fs::OpenOptions::new().write(true).open(counters::path_for(Path::new(&db))).unwrap();
            file.set_len(0).unwrap();
            let answers: Vec<String> = (0..3)
                .map(|_| match store.check(Some(key.as_bytes()), NOW) {
                    Ok(c) => format!("{:?}", c.decision.status),
                    Err(e) => format!("{:?}", e.status),
                })
                .collect();
            println!("RESULT {}", answers.join(" "));
        }
        // Creates a key with a file-size limit too small for the commit: the commit fails.
        "commit-fails" => {
            let store = Store::open(&db).unwrap();
            let wal = std::fs::metadata(format!("{db}-wal")).map(|m| m.len()).unwrap_or(0);
            unsafe {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let limit = libc::rlimit { rlim_cur: wal + 1, rlim_max: libc::RLIM_INFINITY };
                assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
            }
            match store.create_key(&spec("{}"), NOW) {
                Ok(created) => println!("RESULT created {}", created.key),
                Err(e) => println!("RESULT {:?}", e.status),
            }
            std::mem::forget(store); // no flush at exit: the limit is still in force
        }
        other => panic!("unknown role {other}"),
    }
}

// Item 1: rate limits the limiter cannot represent are refused, and stored ones are lowered on upgrade.

#[test]
fn a_rate_limit_that_would_never_limit_is_refused_at_creation() {
    let (_dir, store) = temp_store();
    let year: i64 = 366 * 86_400_000;
    let err = ms_auth::KeySpec::from_json(&format!(
        r#"{{"rate_limit": {{"limit": 1, "window_ms": {year}, "burst": 1000}}}}"#
    ))
    .unwrap_err();
    assert_eq!(err.status, Status::ErrInvalidArgument);
    assert!(err.message.contains("largest burst for this rate is 9"), "{}", err.message);
    let k = store
        .create_key(&spec(&format!(r#"{{"rate_limit": {{"limit": 1, "window_ms": {year}, "burst": 9}}}}"#)), NOW)
        .unwrap();
    let admitted = (0..3000).filter(|_| status(&store, &k.key, NOW) == Status::Ok).count();
    assert_eq!(admitted, 9, "exactly the burst at one instant");
}

#[test]
fn an_unrepresentable_rate_limit_stored_by_an_older_version_is_lowered_on_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.db");
    let id = {
        let store = Store::open(&path).unwrap();
        let k = store.create_key(&spec(r#"{"rate_limit": {"limit": 1, "window_ms": 86400000}}"#), NOW).unwrap();
        store.close().unwrap();
        k
    };
    // What version 1.0.0 accepted: 1 per day with a burst of 100,000 (it admitted 105,000 at once).
    let conn = rusqlite::Connection::open(&path).unwrap();
    // Back to the schema of 1.0.0 (version 3): what later migrations added goes.
    conn.execute_batch(
        "DROP TRIGGER fleet_key_insert; DROP TRIGGER fleet_key_update; DROP TRIGGER fleet_plan_insert;
         DROP TRIGGER fleet_plan_update; DROP TRIGGER fleet_policies_insert; DROP TRIGGER fleet_policies_update;
         DROP TABLE fleet_outbox; DROP TRIGGER fleet_audit_insert; DROP INDEX audit_origin;
         ALTER TABLE audit DROP COLUMN host; ALTER TABLE audit DROP COLUMN origin_seq; DROP TABLE fleet_usage;
         DROP VIEW fleet_usage_counted; DROP TABLE fleet_usage_by_name;
         DROP TABLE fleet_sent; DROP TABLE fleet_versions; DROP TABLE fleet_origins; DROP TABLE fleet_seen;
         UPDATE keys SET rate_burst = 100000; PRAGMA user_version = 3;",
    )
    .unwrap();
    drop(conn);
    std::fs::remove_file(counters::path_for(&path)).unwrap();
    let store = Store::open(&path).unwrap();
    let rate = store.get_key(&id.record.id).unwrap().rate_limit.unwrap();
    assert_eq!((rate.limit, rate.window_ms, rate.burst), (1, 86_400_000, 3653), "ten years' worth");
    let admitted = (0..5000).filter(|_| status(&store, &id.key, NOW) == Status::Ok).count();
    assert_eq!(admitted, 3653);
}

// Item 2: growth of the counters file carries every cell's whole state, rotated keys included.

#[test]
fn growth_keeps_a_rotated_keys_unsaved_usage_and_the_days_counts() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    let server = Store::open_with(&db, no_flush()).unwrap();
    let admin = Store::open_with(&db, no_flush()).unwrap();
    let a = admin.create_key(&spec(r#"{"quota": {"limit": 20, "period": "daily"}, "rate_limit": null}"#), NOW).unwrap();
    let plain = admin.create_key(&spec(r#"{"rate_limit": null}"#), NOW).unwrap();
    for _ in 0..10 {
        assert_eq!(status(&server, &a.key, NOW), Status::Ok);
        assert_eq!(status(&server, &plain.key, NOW), Status::Ok);
    }
    let b = admin.rotate_key(&a.record.id, 3_600_000, NOW).unwrap();
    for _ in 0..5 {
        assert_eq!(status(&server, &b.key, NOW), Status::Ok);
    }
    // Outgrow the file (room for 4096 keys) while those counts exist only in it.
    for _ in 0..4200 {
        admin.create_key(&spec(r#"{"rate_limit": null}"#), NOW).unwrap();
    }
    let admitted = (0..30).filter(|_| status(&server, &b.key, NOW) == Status::Ok).count();
    assert_eq!(admitted, 5, "quota 20, 15 used before the growth");
    let usage = admin.usage(&plain.record.id, NOW - 86_400_000, NOW).unwrap();
    assert_eq!(usage.days.iter().map(|d| d.admitted).sum::<i64>(), 10, "today's decisions survive the growth");
    let usage = admin.usage(&a.record.id, NOW - 86_400_000, NOW).unwrap();
    let day = usage.days.iter().find(|d| d.admitted > 0).unwrap();
    assert_eq!((day.admitted, day.rejected.api_key_quota_exceeded), (20, 25));
}

// Item 3: one database reached by two paths has one counters file.

#[test]
fn a_store_opened_through_a_symbolic_link_shares_one_quota() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("real")).unwrap();
    let real = dir.path().join("real/keys.db");
    let link = dir.path().join("keys.db");
    let a = Store::open(&real).unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let b = Store::open(&link).unwrap();
    let k = a.create_key(&spec(r#"{"quota": {"limit": 5, "period": "daily"}}"#), NOW).unwrap();
    let admitted = (0..10).filter(|i| status(if i % 2 == 0 { &a } else { &b }, &k.key, NOW) == Status::Ok).count();
    assert_eq!(admitted, 5);
    assert!(!dir.path().join("keys.db-counters").exists(), "no second counters file beside the link");
    assert_eq!(b.path(), std::fs::canonicalize(&real).unwrap());
}

#[test]
fn a_database_with_several_hard_links_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("keys.db");
    Store::open(&real).unwrap().close().unwrap();
    std::fs::hard_link(&real, dir.path().join("other.db")).unwrap();
    let err = Store::open(dir.path().join("other.db")).err().unwrap();
    assert_eq!(err.status, Status::ErrStore);
    assert!(err.message.contains("2 hard links"), "{}", err.message);
}

// Item 4: a change published by an admin that died before its commit never looks committed.

#[test]
fn an_uncommitted_revocation_left_by_a_dead_admin_is_undone_by_the_next_admin() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    let store = Store::open_with(&db, no_flush()).unwrap();
    let k = store.create_key(&spec("{}"), NOW).unwrap();
    assert_eq!(status(&store, &k.key, NOW), Status::Ok);
    let other = Store::open_with(&db, no_flush()).unwrap(); // another process, already running
                                                            // What a process killed inside ms_key_revoke's COMMIT leaves: the revoked record published and the
                                                            // file marked with the generation that version 1.0.0 would have committed next.
    let committed: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT value FROM meta WHERE name = 'generation'", [], |r| r.get(0))
        .unwrap();
    let file = SharedCounters::open_existing(&counters::path_for(&db)).unwrap().unwrap();
    let revoked = KeyEntry {
        row: 1,
        digest: ms_auth::key::digest(k.key.as_bytes()),
        id: k.record.id.clone(),
        plan: None,
        policy: KeyPolicy { revoked: true, revoke_at_ms: None, expires_at_ms: None, quota: None, rate: None },
        created_at_ms: NOW,
        tally: Tally::default(),
        shares_with: None,
    };
    file.upsert(&revoked).unwrap();
    file.set_generation(committed + 1);
    assert_eq!(status(&store, &k.key, NOW), Status::ApiKeyRevoked, "the dead admin's change is visible");
    // The other process's admin runs before any flush.
    other.create_key(&spec("{}"), NOW).unwrap();
    assert_eq!(status(&store, &k.key, NOW), Status::Ok, "the database says not revoked");
    assert_eq!(store.get_key(&k.record.id).unwrap().revoked_at_ms, None);
}

// Item 5 is a unit test in src/counters/carry.rs (a charge whose statistics were not yet bumped).

// Item 6 is `a_check_never_waits_for_the_write_lock_and_loses_no_count` in tests/store.rs.

// Items 7 and 8: a damaged or hostile counters file.

/// Overwrites everything after the header page with `byte`s (or random bytes when `None`) as a hostile
/// writer would (recomputing the content checksum, as anyone who can write the file can: accidental damage
/// is `tests/damaged_counters.rs`), and marks the file as behind the database, so the next open resyncs it.
fn damage_after_header(db: &Path, byte: Option<u8>) {
    let path = counters::path_for(db);
    let mut bytes = std::fs::read(&path).unwrap();
    match byte {
        Some(b) => bytes[4096..].fill(b),
        None => getrandom_fill(&mut bytes[4096..]),
    }
    counters::reseal_image(&mut bytes);
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all(&bytes).unwrap();
    drop(f);
    SharedCounters::open_existing(&path).unwrap().unwrap().set_generation(-7);
}

fn getrandom_fill(bytes: &mut [u8]) {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for b in bytes {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *b = state as u8;
    }
}

fn with_watchdog<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(f()).unwrap());
    rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("{what} did not return within 60 s"))
}

#[test]
fn a_counters_file_of_random_bytes_behind_the_database_is_rebuilt_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    let keys: Vec<String> = {
        let store = Store::open(&db).unwrap();
        (0..20).map(|_| store.create_key(&spec("{}"), NOW).unwrap().key).collect()
    };
    damage_after_header(&db, None);
    let store = with_watchdog("open", move || Store::open(&db)).unwrap();
    for k in &keys {
        assert_eq!(status(&store, k, NOW), Status::Ok, "every key of the database is decidable again");
    }
}

#[test]
fn an_index_with_no_empty_slot_does_not_hang_an_admin_call() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    let store = Store::open(&db).unwrap();
    let k = store.create_key(&spec("{}"), NOW).unwrap();
    drop(store);
    // Every index slot names a record past the end; the header still matches the database.
    let path = counters::path_for(&db);
    let file = SharedCounters::open_existing(&path).unwrap().unwrap();
    let generation = file.generation();
    drop(file);
    damage_after_header(&db, Some(0xEE));
    SharedCounters::open_existing(&path).unwrap().unwrap().set_generation(generation);
    let (db2, key) = (db.clone(), k.key.clone());
    let (created, old) = with_watchdog("create_key", move || {
        let store = Store::open(&db2).unwrap();
        let created = store.create_key(&spec("{}"), NOW).map(|c| c.key);
        let old = store.check(Some(key.as_bytes()), NOW).map(|c| c.decision.status);
        (created.map(|k| status(&store, &k, NOW)), old)
    });
    assert_eq!(created.unwrap(), Status::Ok);
    assert_eq!(old.unwrap(), Status::Ok, "the rebuilt file holds every key");
}

#[test]
fn a_record_with_an_impossible_plan_does_not_fail_every_open() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    let k = Store::open(&db).unwrap().create_key(&spec(r#"{"plan": "pro"}"#), NOW).unwrap();
    // Find the key's record (its id is in it) and give it a plan length of 200.
    let path = counters::path_for(&db);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.windows(k.record.id.len()).position(|w| w == k.record.id.as_bytes()).unwrap();
    bytes[at - 4 - 1] = 200; // plan_len sits just before the 4 padding bytes that precede the id
    counters::reseal_image(&mut bytes); // as a hostile writer can
    std::fs::write(&path, &bytes).unwrap();
    SharedCounters::open_existing(&path).unwrap().unwrap().set_generation(-7);
    for _ in 0..2 {
        let store = Store::open(&db).unwrap();
        assert_eq!(status(&store, &k.key, NOW), Status::Ok);
    }
}

// Item 9 (tombstones written without the write lock) is covered by this test of a failed commit: the
// key it added is refused and the file is consistent again.

#[test]
fn a_key_whose_commit_failed_is_refused_and_the_store_stays_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    let k = Store::open(&db).unwrap().create_key(&spec("{}"), NOW).unwrap();
    let (out, exit) = run_child("commit-fails", &db, &k.key);
    assert!(exit.success(), "{exit:?}");
    assert_eq!(out, "ErrStore", "the commit could not be written");
    let store = Store::open(&db).unwrap();
    assert_eq!(store.list_keys(&Default::default()).unwrap().len(), 1, "nothing half-committed");
    assert_eq!(status(&store, &k.key, NOW), Status::Ok);
    let integrity: String =
        rusqlite::Connection::open(&db).unwrap().query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(integrity, "ok");
    let again = store.create_key(&spec("{}"), NOW).unwrap();
    assert_eq!(status(&store, &again.key, NOW), Status::Ok);
}

// Item 10: a truncated counters file is noticed before it is touched.

#[test]
fn truncating_the_counters_file_does_not_kill_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    let k = Store::open(&db).unwrap().create_key(&spec("{}"), NOW).unwrap();
    let (out, exit) = run_child("truncate", &db, &k.key);
    assert!(exit.success(), "the child died: {exit:?}");
    assert_eq!(out, "Ok Ok Ok");
}

#[test]
fn a_symbolic_link_planted_as_the_counters_file_is_replaced_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    let k = Store::open(&db).unwrap().create_key(&spec("{}"), NOW).unwrap();
    let target = dir.path().join("elsewhere");
    std::fs::write(&target, b"precious").unwrap();
    let path = counters::path_for(&db);
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(&target, &path).unwrap();
    let store = Store::open(&db).unwrap();
    assert_eq!(status(&store, &k.key, NOW), Status::Ok);
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    assert!(!std::fs::symlink_metadata(&path).unwrap().file_type().is_symlink());
}

// Item 11: times beyond reason are refused, not admitted and not a panic.

#[test]
fn times_in_microseconds_or_far_beyond_are_invalid_arguments() {
    let (_dir, store) = temp_store();
    let k = store.create_key(&spec(r#"{"expires_at_ms": null}"#), NOW).unwrap();
    for now in [NOW * 1000, 1 << 62, i64::MAX, ms_auth::period::MAX_TIME_MS] {
        let err = store.check(Some(k.key.as_bytes()), now).unwrap_err();
        assert_eq!(err.status, Status::ErrInvalidArgument, "{now}: {}", err.message);
        assert!(err.message.contains("2200"), "{}", err.message);
    }
    assert_eq!(status(&store, &k.key, ms_auth::period::MAX_TIME_MS - 1), Status::Ok);
    assert_eq!(store.get_key(&k.record.id).unwrap().usage.total, 1, "refused times charged nothing");
    let patch = KeyPatch::from_json(&format!(r#"{{"expires_at_ms": {}}}"#, NOW * 1000)).unwrap_err();
    assert!(patch.message.contains("microseconds"));
}

// Item 14: another SQLite (or any other code) holding the database file open in this process.

#[test]
fn a_database_held_open_outside_ms_auth_in_this_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    Store::open(&db).unwrap().close().unwrap();
    let stranger = std::fs::File::open(&db).unwrap();
    let err = Store::open(&db).err().unwrap();
    assert_eq!(err.status, Status::ErrStore);
    assert!(err.message.contains("outside ms-auth"), "{}", err.message);
    drop(stranger);
    let first = Store::open(&db).unwrap();
    let second = Store::open(&db).unwrap(); // ms-auth's own descriptors are not a stranger's
    drop((first, second));
}
