//! Clocks that disagree: checks stamped on either side of a quota period's boundary, by threads and
//! processes whose clocks are milliseconds apart or by a clock stepped back over midnight or a month's
//! end. The promise: a key's counter never moves back to an older period, so each period admits at most
//! the quota (a check stamped before the period its counter is already in counts in that newer period),
//! the rate limiter never moves backwards, and a day's decisions are never erased by a late one.
//!
//! Each child process is this test binary run again with MS_AUTH_CLOCK_CHILD set (see `child`).

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use common::*;
use ms_auth::{Status, Store};
use proptest::prelude::*;

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32, ms: i64) -> i64 {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap().timestamp_millis() + ms
}

/// Midnight of 2027-01-01: a new day, month and year at once.
fn new_year() -> i64 {
    at(2027, 1, 1, 0, 0, 0, 0)
}

fn store_with(dir: &Path, spec_json: &str) -> (Store, String, String) {
    let store = Store::open(dir.join("keys.db")).unwrap();
    // Created well before every instant the tests use, and (unless the test says) never expiring.
    let mut json: serde_json::Value = serde_json::from_str(spec_json).unwrap();
    json.as_object_mut().unwrap().entry("expires_at_ms").or_insert(serde_json::Value::Null);
    let created = store.create_key(&spec(&json.to_string()), at(2026, 1, 1, 0, 0, 0, 0)).unwrap();
    (store, created.key, created.record.id)
}

/// Admitted checks per charged quota period (the period's end, as `quota_reset_ms` reports it); panics
/// if a check is charged in a period that ended before its own stamp.
#[derive(Default)]
struct Tally(BTreeMap<i64, i64>);

impl Tally {
    fn check(&mut self, store: &Store, key: &str, stamp: i64) -> Status {
        let d = store.check(Some(key.as_bytes()), stamp).unwrap().decision;
        assert!(
            d.quota_reset_ms > stamp,
            "a check stamped {stamp} was charged in a period ending {}",
            d.quota_reset_ms
        );
        if d.status == Status::Ok {
            *self.0.entry(d.quota_reset_ms).or_default() += 1;
        }
        d.status
    }

    fn assert_at_most(&self, quota: i64) {
        for (end, n) in &self.0 {
            assert!(*n <= quota, "{n} admitted in the period ending {end}, quota {quota}: {:?}", self.0);
        }
    }
}

#[test]
fn checks_alternating_on_either_side_of_midnight_admit_each_days_quota_once() {
    let dir = tempfile::tempdir().unwrap();
    let (store, key, id) = store_with(dir.path(), r#"{"quota": {"limit": 3, "period": "daily"}, "rate_limit": null}"#);
    let mut tally = Tally::default();
    for i in 0..40 {
        let stamp = if i % 2 == 0 { new_year() - 1 } else { new_year() + 1 };
        tally.check(&store, &key, stamp);
    }
    tally.assert_at_most(3);
    let admitted: i64 = tally.0.values().sum();
    assert_eq!(admitted, 4, "one in the old day, then the new day's three: {:?}", tally.0);
    // The day reports agree with what was charged: a late check counts in the day it was charged in.
    store.flush().unwrap();
    let days = store.usage(&id, new_year() - 86_400_000, new_year() + 1).unwrap().days;
    let admitted_by_day: Vec<i64> = days.iter().map(|d| d.admitted).collect();
    assert_eq!(admitted_by_day, [1, 3], "{days:?}");
}

#[test]
fn a_clock_stepped_back_over_midnight_does_not_reset_the_new_days_count() {
    let dir = tempfile::tempdir().unwrap();
    let (store, key, _) = store_with(dir.path(), r#"{"quota": {"limit": 3, "period": "daily"}, "rate_limit": null}"#);
    let mut tally = Tally::default();
    // 23:59:59.000 → 00:00:01.000 in 100 ms steps, then NTP steps the clock back 2 s, twice over.
    for _ in 0..3 {
        for step in 0..20 {
            tally.check(&store, &key, new_year() - 1000 + step * 100);
        }
    }
    tally.assert_at_most(3);
    assert_eq!(tally.0.get(&(new_year() + 86_400_000)), Some(&3), "{:?}", tally.0);
}

#[test]
fn month_ends_and_leap_days_hold_the_monthly_quota_under_alternating_clocks() {
    for boundary in [
        at(2027, 1, 1, 0, 0, 0, 0),  // Dec 31 → Jan 1
        at(2027, 3, 1, 0, 0, 0, 0),  // Feb 28 → Mar 1
        at(2028, 2, 29, 0, 0, 0, 0), // Feb 28 → Feb 29 (a day, not a month)
        at(2028, 3, 1, 0, 0, 0, 0),  // Feb 29 → Mar 1
    ] {
        for period in ["daily", "monthly"] {
            let dir = tempfile::tempdir().unwrap();
            let (store, key, _) = store_with(
                dir.path(),
                &format!(r#"{{"quota": {{"limit": 5, "period": "{period}"}}, "rate_limit": null}}"#),
            );
            let mut tally = Tally::default();
            for i in 0..60 {
                let stamp = if i % 3 == 0 { boundary + 2 } else { boundary - 1 - i };
                tally.check(&store, &key, stamp);
            }
            tally.assert_at_most(5);
        }
    }
}

#[test]
fn threads_with_clocks_milliseconds_apart_admit_at_most_the_quota_per_day() {
    let dir = tempfile::tempdir().unwrap();
    let (store, key, _) = store_with(dir.path(), r#"{"quota": {"limit": 20, "period": "daily"}, "rate_limit": null}"#);
    let store = Arc::new(store);
    let threads: Vec<_> = (0..4i64)
        .map(|t| {
            let (store, key) = (store.clone(), key.clone());
            std::thread::spawn(move || {
                let mut tally = Tally::default();
                // Each thread's clock is 4 ms from the next; all sweep 50 ms either side of midnight.
                for i in 0..2000i64 {
                    tally.check(&store, &key, new_year() - 50 + (i / 20) + (t - 2) * 4);
                }
                tally.0
            })
        })
        .collect();
    let mut all = Tally::default();
    for t in threads {
        for (end, n) in t.join().unwrap() {
            *all.0.entry(end).or_default() += n;
        }
    }
    all.assert_at_most(20);
}

/// Runs a child's role when MS_AUTH_CLOCK_CHILD is set; as an ordinary test it does nothing.
#[test]
fn child() {
    let Ok(offset) = std::env::var("MS_AUTH_CLOCK_CHILD") else { return };
    let offset: i64 = offset.parse().unwrap();
    let store = Store::open(std::env::var("MS_AUTH_CLOCK_DB").unwrap()).unwrap();
    let key = std::env::var("MS_AUTH_CLOCK_KEY").unwrap();
    let mut tally = Tally::default();
    for i in 0..4000i64 {
        tally.check(&store, &key, new_year() - 100 + i / 20 + offset);
    }
    let mut out = std::io::stdout().lock();
    for (end, n) in tally.0 {
        writeln!(out, "\n={end} {n}").unwrap();
    }
    out.flush().unwrap();
}

#[test]
fn processes_with_clocks_milliseconds_apart_admit_at_most_the_quota_per_day() {
    let dir = tempfile::tempdir().unwrap();
    let (store, key, _) = store_with(dir.path(), r#"{"quota": {"limit": 20, "period": "daily"}, "rate_limit": null}"#);
    store.close().unwrap();
    let children: Vec<_> = (0..4i64)
        .map(|p| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "child", "--nocapture", "--test-threads", "1"])
                .env("MS_AUTH_CLOCK_CHILD", ((p - 2) * 4).to_string())
                .env("MS_AUTH_CLOCK_DB", dir.path().join("keys.db"))
                .env("MS_AUTH_CLOCK_KEY", &key)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut all = Tally::default();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "child failed");
        for line in String::from_utf8(out.stdout).unwrap().lines().filter_map(|l| l.strip_prefix('=')) {
            let (end, n) = line.split_once(' ').unwrap();
            *all.0.entry(end.parse().unwrap()).or_default() += n.parse::<i64>().unwrap();
        }
    }
    all.assert_at_most(20);
    assert_eq!(all.0.values().sum::<i64>(), 40, "both days' quotas are used: nothing falsely refused {:?}", all.0);
}

#[test]
fn a_clock_set_a_year_ahead_and_corrected_does_not_hold_the_key_to_that_year() {
    let dir = tempfile::tempdir().unwrap();
    let (store, key, _) = store_with(dir.path(), r#"{"quota": {"limit": 3, "period": "daily"}, "rate_limit": null}"#);
    let t = new_year() + 3_600_000;
    assert_eq!(status(&store, &key, t), Status::Ok);
    for _ in 0..3 {
        assert_eq!(status(&store, &key, t + 365 * 86_400_000), Status::Ok);
    }
    // The clock is corrected: the key counts in today again, not in next year's day.
    assert_eq!(status(&store, &key, t + 1), Status::Ok);
    // Within the tolerance (a day), a counter ahead still holds: 23 h behind the counter's day is refused.
    let tomorrow = new_year() + 86_400_000;
    for _ in 0..3 {
        assert_eq!(status(&store, &key, tomorrow), Status::Ok);
    }
    assert_eq!(status(&store, &key, tomorrow - 23 * 3_600_000), Status::ApiKeyQuotaExceeded);
}

#[test]
fn a_late_check_never_moves_the_rate_limiter_back() {
    let dir = tempfile::tempdir().unwrap();
    let (store, key, _) = store_with(dir.path(), r#"{"rate_limit": {"limit": 1, "window_ms": 1000, "burst": 1}}"#);
    let t = new_year();
    assert_eq!(status(&store, &key, t), Status::Ok);
    for late in [t - 1, t - 500, t - 5000, t - 86_400_000] {
        assert_eq!(status(&store, &key, late), Status::RateLimitExceeded, "stamped {}", late - t);
    }
    assert_eq!(status(&store, &key, t + 999), Status::RateLimitExceeded, "the late checks did not refill it");
    assert_eq!(status(&store, &key, t + 1000), Status::Ok);
    // One check from a clock a year ahead, then the clock is corrected: not refused for a year.
    assert_eq!(status(&store, &key, t + 365 * 86_400_000), Status::Ok);
    assert_eq!(status(&store, &key, t + 2000), Status::Ok);
    assert_eq!(status(&store, &key, t + 2001), Status::RateLimitExceeded);
}

/// The documented rule for expiry and scheduled revocation: they are decided at the instant the caller
/// stamps the request, like every check; a request stamped before the expiry is admitted even when it
/// arrives after one stamped at or past it.
#[test]
fn expiry_is_decided_at_the_requests_own_stamp() {
    let dir = tempfile::tempdir().unwrap();
    let t = new_year();
    let (store, key, _) = store_with(dir.path(), &format!(r#"{{"expires_at_ms": {t}}}"#));
    assert_eq!(status(&store, &key, t), Status::ApiKeyExpired);
    assert_eq!(status(&store, &key, t - 5), Status::Ok);
    assert_eq!(status(&store, &key, t + 5), Status::ApiKeyExpired);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any interleaving of stamps within three seconds of a boundary, from two threads: each period
    /// admits at most the quota, and no check is charged in a period older than its own.
    #[test]
    fn any_interleaving_near_a_boundary_admits_at_most_the_quota_per_period(
        offsets in proptest::collection::vec((-3000i64..3000, 0usize..2), 1..120),
        monthly in any::<bool>(),
        limit in 1i64..6,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let period = if monthly { "monthly" } else { "daily" };
        let (store, key, _) =
            store_with(dir.path(), &format!(r#"{{"quota": {{"limit": {limit}, "period": "{period}"}}, "rate_limit": null}}"#));
        let store = Arc::new(store);
        let halves: Vec<Vec<i64>> = (0..2)
            .map(|t| offsets.iter().filter(|(_, who)| *who == t).map(|(o, _)| new_year() + o).collect())
            .collect();
        let threads: Vec<_> = halves
            .into_iter()
            .map(|stamps| {
                let (store, key) = (store.clone(), key.clone());
                std::thread::spawn(move || {
                    let mut tally = Tally::default();
                    for stamp in stamps {
                        tally.check(&store, &key, stamp);
                    }
                    tally.0
                })
            })
            .collect();
        let mut all = Tally::default();
        for t in threads {
            for (end, n) in t.join().unwrap() {
                *all.0.entry(end).or_default() += n;
            }
        }
        all.assert_at_most(limit);
    }
}

// Review of the fix (hostile): other writers of a counter's state, and other counters that a late stamp
// could move back.

/// The database keeps a usage row's period with `MAX`, so once a clock a year ahead was flushed, the
/// corrected clock's counts in today never reach it: a counters file rebuilt from the database (another
/// boot, a damaged or deleted file) starts today's count from zero, and today admits its quota again.
#[test]
fn a_clock_set_a_year_ahead_does_not_wedge_the_databases_count() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    let (store, key, _) = store_with(dir.path(), r#"{"quota": {"limit": 3, "period": "daily"}, "rate_limit": null}"#);
    store.close().unwrap();
    // Strict: every admitted check is written at once, with its own stamp (no flush by this machine's clock).
    let strict = ms_auth::StoreOptions { durability: ms_auth::store::Durability::Strict, ..Default::default() };
    let store = Store::open_with(&db, strict).unwrap();
    let t = new_year() + 3_600_000;
    let mut tally = Tally::default();
    // One check from a clock a year ahead; then the corrected clock spends today's quota.
    tally.check(&store, &key, t + 365 * 86_400_000);
    for _ in 0..5 {
        tally.check(&store, &key, t);
    }
    store.close().unwrap();
    // The counters file is rebuilt from the database (as after a reboot).
    std::fs::remove_file(ms_auth::counters::path_for(&db)).unwrap();
    let store = Store::open(&db).unwrap();
    for _ in 0..5 {
        tally.check(&store, &key, t + 1);
    }
    tally.assert_at_most(3);
}

/// A rotated key and its successor share one counter; each may be given its own quota afterwards. A
/// daily and a monthly quota in one cell: each check finds the other's period, counts from 0 and moves
/// the counter between the day and the month (back to the month's start, older than the day's).
#[test]
fn keys_sharing_a_counter_with_different_quota_periods_do_not_reset_it() {
    let dir = tempfile::tempdir().unwrap();
    let (store, old, id) = store_with(dir.path(), r#"{"quota": {"limit": 3, "period": "daily"}, "rate_limit": null}"#);
    let t = at(2027, 1, 15, 10, 0, 0, 0);
    let new = store.rotate_key(&id, 86_400_000, t).unwrap();
    let patch = ms_auth::KeyPatch::from_json(r#"{"quota": {"limit": 3, "period": "monthly"}}"#).unwrap();
    // A cell holds one period's count: the change is refused while both keys are in force, naming why.
    for key_id in [&new.record.id, &id] {
        let refused = store.update_key(key_id, &patch).unwrap_err();
        assert!(refused.message.contains("shares its quota counter"), "{}", refused.message);
    }
    let same_period = ms_auth::KeyPatch::from_json(r#"{"quota": {"limit": 5, "period": "daily"}}"#).unwrap();
    store.update_key(&new.record.id, &same_period).unwrap();
    let (mut with_3, mut with_5) = (Tally::default(), Tally::default());
    for i in 0..20 {
        with_3.check(&store, &old, t + 2 * i);
        with_5.check(&store, &new.key, t + 2 * i + 1);
    }
    with_3.assert_at_most(3);
    with_5.assert_at_most(5);
    let both: i64 = with_3.0.values().chain(with_5.0.values()).sum();
    assert_eq!(both, 5, "one count for both keys, within the larger quota");
    // Once the old key is out of force, the successor may count monthly.
    store.revoke_key(&id, t + 100, None).unwrap();
    store.update_key(&new.record.id, &patch).unwrap();
}

/// The abuse policy's window counter is one (window, count) word like the quota's: a refusal stamped in
/// the previous window (a clock a few ms behind) starts that window over and wipes the newer window's
/// count, so refusals alternating across a window boundary never revoke the key.
#[test]
fn a_late_refusal_does_not_wipe_the_abuse_windows_count() {
    let dir = tempfile::tempdir().unwrap();
    let (store, key, id) = store_with(dir.path(), r#"{"rate_limit": {"limit": 1, "window_ms": 3600000}}"#);
    let policy = ms_auth::store::PolicySpec::from_json(r#"{"abuse": {"limit": 3, "window_ms": 60000}}"#).unwrap();
    store.set_policies(&policy, new_year() - 120_000).unwrap();
    assert_eq!(status(&store, &key, new_year() - 60_000), Status::Ok);
    // 1 ms either side of a window's start, alternating: four refusals, all counted in the newer window.
    for i in 0..2 {
        assert_eq!(status(&store, &key, new_year() + i), Status::RateLimitExceeded);
        assert_eq!(status(&store, &key, new_year() - 1), Status::RateLimitExceeded);
    }
    store.flush().unwrap();
    assert!(store.get_key(&id).unwrap().revoked_at_ms.is_some(), "4 refusals in one window, limit 3");
}

/// The same shared counter, the successor's quota removed: each of its checks wrote the count back to 0,
/// and the predecessor (still in its grace) was never refused.
#[test]
fn a_key_without_a_quota_sharing_a_counter_does_not_zero_its_count() {
    let dir = tempfile::tempdir().unwrap();
    let (store, old, id) = store_with(dir.path(), r#"{"quota": {"limit": 3, "period": "daily"}, "rate_limit": null}"#);
    let t = at(2027, 1, 15, 10, 0, 0, 0);
    let new = store.rotate_key(&id, 86_400_000, t).unwrap();
    store.update_key(&new.record.id, &ms_auth::KeyPatch::from_json(r#"{"quota": null}"#).unwrap()).unwrap();
    let mut daily = Tally::default();
    for i in 0..20 {
        daily.check(&store, &old, t + 2 * i);
        assert_eq!(status(&store, &new.key, t + 2 * i + 1), Status::Ok);
    }
    daily.assert_at_most(3);
}
