//! Key lifecycle and monitoring with an injected clock: rotation, plans, revocation by policy, the
//! audit log, daily usage across a UTC midnight, metrics, and migrating a version-1 file.

mod common;

use common::*;
use ms_auth::store::{AuditFilter, PlanSpec, PolicySpec};
use ms_auth::{KeyPatch, Status, Store, StoreOptions};

const DAY: i64 = 86_400_000;
const HOUR: i64 = 3_600_000;

/// A store that writes counts (and applies policies) on every check, at the check's own instant.
fn eager(dir: &tempfile::TempDir) -> Store {
    let opts = StoreOptions { flush_interval: std::time::Duration::ZERO, ..StoreOptions::default() };
    Store::open_with(dir.path().join("keys.db"), opts).unwrap()
}

fn plan(json: &str) -> PlanSpec {
    PlanSpec::from_json(json).unwrap()
}

#[test]
fn rotation_keeps_the_quota_and_ends_the_old_key_after_its_grace() {
    let dir = tempfile::tempdir().unwrap();
    let store = eager(&dir);
    let old = store
        .create_key(
            &spec(r#"{"plan": "pro", "meta": {"team": "billing"}, "quota": {"limit": 5, "period": "daily"}}"#),
            NOW,
        )
        .unwrap();
    for _ in 0..3 {
        assert_eq!(status(&store, &old.key, NOW), Status::Ok);
    }
    let new = store.rotate_key(&old.record.id, HOUR, NOW).unwrap();
    assert_ne!(new.key, old.key);
    assert_eq!((new.record.plan.as_deref(), new.record.meta["team"].as_str()), (Some("pro"), Some("billing")));
    assert_eq!(new.record.quota, old.record.quota);
    assert_eq!(new.record.rotated_from.as_deref(), Some(old.record.id.as_str()));
    assert_eq!(new.record.usage.used, 3, "the customer's quota is not reset by rotating");
    let old_now = store.get_key(&old.record.id).unwrap();
    assert_eq!((old_now.rotated_to.as_deref(), old_now.revoke_at_ms), (Some(new.record.id.as_str()), Some(NOW + HOUR)));

    // Both count against one quota during the grace.
    assert_eq!(store.check(Some(new.key.as_bytes()), NOW).unwrap().decision.quota_remaining, 1);
    assert_eq!(status(&store, &old.key, NOW + HOUR - 1), Status::Ok);
    assert_eq!(status(&store, &new.key, NOW + HOUR - 1), Status::ApiKeyQuotaExceeded);
    // The grace ends on the millisecond: revoked, reason "rotated", made lasting by the flush.
    assert_eq!(status(&store, &old.key, NOW + HOUR), Status::ApiKeyRevoked);
    let ended = store.get_key(&old.record.id).unwrap();
    assert_eq!((ended.revoked_at_ms, ended.revoked_reason.as_deref()), (Some(NOW + HOUR), Some("rotated")));
    assert_eq!(status(&store, &new.key, NOW + DAY), Status::Ok, "the new key lives on");

    let again = store.rotate_key(&old.record.id, HOUR, NOW).unwrap_err();
    assert_eq!(again.status, Status::ErrInvalidArgument);
    store.close().unwrap();

    // Still shared after the counters file is rebuilt from the database.
    std::fs::remove_file(ms_auth::counters::path_for(&dir.path().join("keys.db"))).unwrap();
    let store = Store::open(dir.path().join("keys.db")).unwrap();
    assert_eq!(store.get_key(&new.record.id).unwrap().usage.used, 1, "one admitted on the new day");
}

#[test]
fn a_key_on_a_plan_follows_it_and_a_plan_change_applies_on_the_next_check() {
    let dir = tempfile::tempdir().unwrap();
    let server = Store::open(dir.path().join("keys.db")).unwrap();
    let admin = Store::open(dir.path().join("keys.db")).unwrap();
    admin
        .put_plan(&plan(r#"{"name": "pro", "quota": {"limit": 2, "period": "daily"}, "lifetime_ms": 864000000}"#), NOW)
        .unwrap();
    let follower = admin.create_key(&spec(r#"{"plan": "pro"}"#), NOW).unwrap();
    let own = admin.create_key(&spec(r#"{"plan": "pro", "quota": {"limit": 1, "period": "daily"}}"#), NOW).unwrap();
    assert_eq!(follower.record.expires_at_ms, Some(NOW + 10 * DAY), "the plan's lifetime");
    assert_eq!(follower.record.follows_plan, ["quota", "rate_limit"]);
    assert_eq!(own.record.follows_plan, ["rate_limit"]);

    for _ in 0..2 {
        assert_eq!(status(&server, &follower.key, NOW), Status::Ok);
    }
    assert_eq!(status(&server, &follower.key, NOW), Status::ApiKeyQuotaExceeded);
    let written = admin.put_plan(&plan(r#"{"name": "pro", "quota": {"limit": 5, "period": "daily"}}"#), NOW).unwrap();
    assert_eq!(written.keys, 2);
    let d = server.check(Some(follower.key.as_bytes()), NOW).unwrap().decision;
    assert_eq!((d.status, d.quota_limit, d.quota_remaining), (Status::Ok, 5, 2), "in force on the next check");
    assert_eq!(server.check(Some(own.key.as_bytes()), NOW).unwrap().decision.quota_limit, 1, "an override stays");

    // A key can take its own limit, and go back to its plan's.
    let patch = |json: &str| KeyPatch::from_json(json).unwrap();
    let r = admin.update_key(&follower.record.id, &patch(r#"{"quota": {"limit": 100, "period": "monthly"}}"#)).unwrap();
    assert_eq!((r.quota.unwrap().limit, r.follows_plan), (100, vec!["rate_limit"]));
    let r = admin.update_key(&follower.record.id, &patch(r#"{"quota": "plan"}"#)).unwrap();
    assert_eq!((r.quota.unwrap().limit, r.follows_plan.len()), (5, 2));
    assert_eq!(admin.list_plans().unwrap()[0].quota.as_ref().map(|q| q.limit), Some(5));
}

#[test]
fn idle_keys_are_revoked_by_policy() {
    let dir = tempfile::tempdir().unwrap();
    let store = eager(&dir);
    let used = store.create_key(&spec(r#"{"expires_at_ms": null}"#), NOW).unwrap();
    let unused = store.create_key(&spec(r#"{"expires_at_ms": null}"#), NOW).unwrap();
    assert_eq!(status(&store, &used.key, NOW + DAY), Status::Ok);
    store.set_policies(&PolicySpec::from_json(r#"{"idle": {"days": 30}}"#).unwrap(), NOW).unwrap();

    assert_eq!(status(&store, &unused.key, NOW + 30 * DAY - 1), Status::Ok, "29.99 days without use");
    assert_eq!(status(&store, &used.key, NOW + 31 * DAY + 5), Status::ApiKeyRevoked, "30 days after its last use");
    let r = store.get_key(&used.record.id).unwrap();
    assert_eq!((r.revoked_reason.as_deref(), r.revoked_at_ms), (Some("idle"), Some(NOW + 31 * DAY)));

    store.set_policies(&PolicySpec::from_json(r#"{"idle": null}"#).unwrap(), NOW).unwrap();
    assert_eq!(store.policies().unwrap().idle, None);
    assert_eq!(status(&store, &unused.key, NOW + 400 * DAY), Status::Ok, "no idle policy, no idle revocation");
}

#[test]
fn abusive_keys_are_revoked_by_policy() {
    let dir = tempfile::tempdir().unwrap();
    let store = eager(&dir);
    store.set_policies(&PolicySpec::from_json(r#"{"abuse": {"limit": 3, "window_ms": 60000}}"#).unwrap(), NOW).unwrap();
    let k = store.create_key(&spec(r#"{"rate_limit": {"limit": 1, "window_ms": 60000}}"#), NOW).unwrap();
    let calm = store.create_key(&spec(r#"{"rate_limit": {"limit": 1, "window_ms": 60000}}"#), NOW).unwrap();
    assert_eq!(status(&store, &k.key, NOW), Status::Ok);
    for i in 1..=3 {
        assert_eq!(status(&store, &k.key, NOW + i), Status::RateLimitExceeded);
    }
    assert_eq!(store.get_key(&k.record.id).unwrap().revoked_at_ms, None, "3 refusals is the limit, not over it");
    assert_eq!(status(&store, &k.key, NOW + 4), Status::RateLimitExceeded);
    assert_eq!(status(&store, &k.key, NOW + 60_000), Status::ApiKeyRevoked, "over the limit: revoked");
    let r = store.get_key(&k.record.id).unwrap();
    assert_eq!((r.revoked_reason.as_deref(), r.revoked_at_ms), (Some("abuse"), Some(NOW + 4)));

    // Refusals in separate windows do not add up.
    assert_eq!(status(&store, &calm.key, NOW), Status::Ok);
    for minute in 0..5 {
        let at = NOW + minute * 60_000 + 30_000;
        assert_eq!(status(&store, &calm.key, at), if minute == 0 { Status::RateLimitExceeded } else { Status::Ok });
        assert_eq!(status(&store, &calm.key, at + 1), Status::RateLimitExceeded);
    }
    assert_eq!(store.get_key(&calm.record.id).unwrap().revoked_at_ms, None);
}

#[test]
fn usage_is_bucketed_by_utc_day_across_midnight() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("keys.db")).unwrap();
    let k = store.create_key(&spec(r#"{"quota": {"limit": 3, "period": "daily"}, "rate_limit": null}"#), NOW).unwrap();
    let midnight = (NOW / DAY + 1) * DAY;
    for _ in 0..3 {
        assert_eq!(status(&store, &k.key, midnight - 1), Status::Ok);
    }
    assert_eq!(status(&store, &k.key, midnight - 1), Status::ApiKeyQuotaExceeded);
    assert_eq!(status(&store, &k.key, midnight), Status::Ok, "a new UTC day, a new quota");
    store.revoke_key(&k.record.id, midnight + 10, None).unwrap();
    assert_eq!(status(&store, &k.key, midnight + 20), Status::ApiKeyRevoked);

    let h = store.usage(&k.record.id, midnight - 2 * DAY, midnight).unwrap();
    assert_eq!(h.days.len(), 3);
    let (before, last, today) = (&h.days[0], &h.days[1], &h.days[2]);
    assert_eq!((before.admitted, before.rejected.api_key_quota_exceeded), (0, 0));
    assert_eq!((last.admitted, last.rejected.api_key_quota_exceeded), (3, 1));
    assert_eq!((today.admitted, today.rejected.api_key_revoked), (1, 1));
    assert_eq!(today.start_ms, midnight);
    assert_eq!(h.last_used_at_ms, Some(midnight));
    let json = serde_json::to_value(&h).unwrap();
    assert_eq!(json["days"][1]["rejected"]["api_key_quota_exceeded"], 1);
    assert_eq!(json["days"][2]["date"].as_str().unwrap().len(), 10);
}

/// A flush writes a day's counts only when they changed since the last one: yesterday's, written once,
/// is not written again, but a late decision for yesterday (a process whose clock is behind) still is.
#[test]
fn a_flush_writes_each_day_that_changed_and_only_those() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("keys.db")).unwrap();
    let k = store.create_key(&spec(r#"{"quota": null, "rate_limit": null}"#), NOW).unwrap();
    let midnight = (NOW / DAY + 1) * DAY;
    let admitted = |store: &Store| -> Vec<i64> {
        store.usage(&k.record.id, midnight - DAY, midnight).unwrap().days.iter().map(|d| d.admitted).collect()
    };
    assert_eq!(status(&store, &k.key, midnight - 5), Status::Ok);
    store.flush().unwrap();
    assert_eq!(status(&store, &k.key, midnight + 5), Status::Ok);
    store.flush().unwrap();
    assert_eq!(admitted(&store), [1, 1]);
    assert_eq!(status(&store, &k.key, midnight - 1), Status::Ok, "a clock a little behind");
    store.flush().unwrap();
    assert_eq!(admitted(&store), [2, 1]);
    drop(store);
    let store = Store::open(dir.path().join("keys.db")).unwrap();
    assert_eq!(admitted(&store), [2, 1], "as written");
}

#[test]
fn every_admin_change_is_audited_with_its_actor() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("keys.db")).unwrap();
    store.set_actor("ops:alice").unwrap();
    let k = store.create_key(&spec(r#"{"plan": "pro"}"#), NOW).unwrap();
    store.update_key(&k.record.id, &KeyPatch::from_json(r#"{"name": "renamed"}"#).unwrap()).unwrap();
    let rotated = store.rotate_key(&k.record.id, 0, NOW + 1).unwrap();
    store.revoke_key(&rotated.record.id, NOW + 2, Some("leaked")).unwrap();
    store.put_plan(&plan(r#"{"name": "pro"}"#), NOW + 3).unwrap();
    store.set_policies(&PolicySpec::from_json(r#"{"idle": {"days": 90}}"#).unwrap(), NOW + 4).unwrap();

    let events = store.audit_events(&AuditFilter::default()).unwrap();
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["key.create", "key.update", "key.rotate", "key.revoke", "plan.put", "policy.set"]);
    assert!(events.iter().all(|e| e.actor == "ops:alice"));
    assert_eq!(events[1].detail["name"], "renamed");
    let revoke = events.iter().find(|e| e.action == "key.revoke").unwrap();
    assert_eq!(
        (revoke.key_id.as_deref(), revoke.detail["reason"].as_str()),
        (Some(rotated.record.id.as_str()), Some("leaked"))
    );

    let of_key = store.audit_events(&AuditFilter { key_id: Some(k.record.id.clone()), ..Default::default() }).unwrap();
    assert_eq!(
        of_key.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["key.create", "key.update", "key.rotate"]
    );
    let since = store.audit_events(&AuditFilter { since_ms: Some(NOW + 3), ..Default::default() }).unwrap();
    assert_eq!(since.len(), 2);
    assert!(!format!("{events:?}").contains(&k.key), "the audit log never holds a plaintext key");
}

#[test]
fn metrics_in_prometheus_text() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("keys.db")).unwrap();
    // Metrics are of the present, so this test runs on the wall clock.
    let now = ms_auth::store::clock_ms();
    store.put_plan(&plan(r#"{"name": "pro", "quota": {"limit": 10, "period": "daily"}}"#), now).unwrap();
    let k = store.create_key(&spec(r#"{"plan": "pro"}"#), now).unwrap();
    let gone = store.create_key(&spec("{}"), now).unwrap();
    store.revoke_key(&gone.record.id, now, None).unwrap();
    store.create_key(&spec(&format!(r#"{{"expires_at_ms": {}}}"#, now - 1)), now - 10).unwrap();
    for _ in 0..4 {
        assert_eq!(status(&store, &k.key, now), Status::Ok);
    }
    assert_eq!(status(&store, &gone.key, now), Status::ApiKeyRevoked);
    assert_eq!(status(&store, "not-a-key-at-all", now), Status::ApiKeyInvalid);
    store.check(None, now).unwrap();
    let text = store.metrics_text(ms_auth::store::clock_ms()).unwrap();
    for line in [
        "# TYPE ms_auth_checks_total counter",
        "ms_auth_checks_total{status=\"ok\"} 4",
        "ms_auth_checks_total{status=\"api_key_revoked\"} 1",
        "ms_auth_unmatched_checks_total{status=\"api_key_missing\"} 1",
        "ms_auth_unmatched_checks_total{status=\"api_key_invalid\"} 1",
        "ms_auth_keys{state=\"active\"} 1",
        "ms_auth_keys{state=\"expired\"} 1",
        "ms_auth_keys{state=\"revoked\"} 1",
        "ms_auth_quota_used{plan=\"pro\"} 4",
        "ms_auth_quota_limit{plan=\"pro\"} 10",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
    }
}

#[test]
fn bad_lifecycle_input_is_refused_clearly() {
    let err = |r: Result<PlanSpec, ms_auth::Error>| r.unwrap_err().message;
    assert!(err(PlanSpec::from_json(r#"{"quota": null}"#)).contains("plan.name"));
    assert!(err(PlanSpec::from_json(r#"{"name": "p", "lifetime_ms": -1}"#)).contains("lifetime_ms"));
    assert!(err(PlanSpec::from_json(r#"{"name": "p", "colour": 1}"#)).contains("colour"));
    let perr = |t: &str| PolicySpec::from_json(t).unwrap_err().message;
    assert!(perr(r#"{"idle": {"days": 0}}"#).contains("idle"));
    assert!(perr(r#"{"abuse": {"limit": 5}}"#).contains("abuse"));
    assert!(perr(r#"{"rotated": false}"#).contains("always applies"));
    let rotate = |t: &str| ms_auth::store::RotateOptions::from_json(t).map(|o| o.grace_ms).map_err(|e| e.message);
    assert_eq!(rotate(r#"{"grace_ms": 5}"#), Ok(5));
    assert_eq!(rotate("{}"), Ok(ms_auth::store::DEFAULT_GRACE_MS));
    for whole in [r#"{"grace": 1}"#, r#"{"grace_ms": 1, "x": 2}"#, "[1]", "1", "{"] {
        assert_eq!(rotate(whole), Err(r#"opts_json must be {"grace_ms": N}"#.to_string()), "{whole}");
    }
    for field in [r#"{"grace_ms": null}"#, r#"{"grace_ms": 1.5}"#, r#"{"grace_ms": "1"}"#] {
        assert_eq!(rotate(field), Err("grace_ms must be an integer".to_string()), "{field}");
    }
    let (_dir, store) = temp_store();
    let k = store.create_key(&spec("{}"), NOW).unwrap();
    store.revoke_key(&k.record.id, NOW, None).unwrap();
    assert!(store.rotate_key(&k.record.id, 0, NOW).unwrap_err().message.contains("revoked"));
    assert_eq!(store.rotate_key("key_nope", 0, NOW).unwrap_err().status, Status::ErrNotFound);
    assert!(store.usage(&k.record.id, NOW, NOW - 1).is_err());
}

#[test]
fn a_version_1_file_is_migrated_and_keeps_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    // The schema of ms-auth 1.0.0, frozen here as released.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TABLE keys (row INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, digest BLOB NOT NULL UNIQUE,
            prefix TEXT NOT NULL, env TEXT NOT NULL, name TEXT, plan TEXT, created_at_ms INTEGER NOT NULL,
            expires_at_ms INTEGER, revoked_at_ms INTEGER, revoked_reason TEXT, quota_limit INTEGER, quota_period TEXT,
            rate_limit INTEGER, rate_window_ms INTEGER, rate_burst INTEGER, meta TEXT NOT NULL DEFAULT '{}');
         CREATE INDEX keys_plan ON keys(plan);
         CREATE TABLE usage (key_row INTEGER PRIMARY KEY REFERENCES keys(row) ON DELETE CASCADE,
            period_start_ms INTEGER NOT NULL, used INTEGER NOT NULL, total INTEGER NOT NULL,
            last_used_at_ms INTEGER, rate_tat_ns INTEGER NOT NULL);
         CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
         INSERT INTO meta (name, value) VALUES ('generation', 0);
         PRAGMA user_version = 1;",
    )
    .unwrap();
    let key = "legacy-key-0001";
    conn.execute(
        "INSERT INTO keys (id, digest, prefix, env, plan, created_at_ms, quota_limit, quota_period) VALUES ('key_legacy', ?1, 'leg', 'live', 'pro', ?2, 3, 'daily')",
        rusqlite::params![ms_auth::key::digest(key.as_bytes()).to_vec(), NOW],
    )
    .unwrap();
    drop(conn);

    let store = Store::open(&path).unwrap();
    store.put_plan(&plan(r#"{"name": "pro", "quota": {"limit": 100, "period": "daily"}}"#), NOW).unwrap();
    let d = store.check(Some(key.as_bytes()), NOW).unwrap().decision;
    assert_eq!((d.status, d.quota_limit), (Status::Ok, 3), "a v1 key keeps its own limits");
    store.close().unwrap();
    let version: i64 =
        rusqlite::Connection::open(&path).unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version as usize, ms_auth::store::schema_version());
}

/// Issue 21, item 3: the state of a key is worked out in one place. The flush, which records the
/// revocations checks already enforce, changes no key's state or reason; the metrics count the states
/// the records show; a check refuses exactly the keys whose state is revoked or expired.
#[test]
fn records_flushes_metrics_and_checks_agree_on_every_state() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("keys.db")).unwrap();
    // States are of the present: this test runs on the wall clock.
    let now = ms_auth::store::clock_ms();
    store.set_policies(&PolicySpec::from_json(r#"{"idle": {"days": 1}}"#).unwrap(), now).unwrap();
    let mut keys = vec![];
    let mut create = |json: &str, at: i64| {
        let created = store.create_key(&spec(json), at).unwrap();
        keys.push(created.key.clone());
        created.record.id
    };
    create("{}", now);
    create(&format!(r#"{{"expires_at_ms": {}}}"#, now + DAY), now);
    let rotating = create("{}", now);
    let rotated = create("{}", now - 60_000);
    let revoked = create("{}", now);
    create(&format!(r#"{{"expires_at_ms": {}}}"#, now - 1), now - 60_000);
    let idle = create("{}", now - 3 * DAY);
    keys.push(store.rotate_key(&rotating, DAY, now).unwrap().key);
    keys.push(store.rotate_key(&rotated, 1000, now - 10_000).unwrap().key);
    store.revoke_key(&revoked, now, Some("leaked")).unwrap();

    let states = |store: &Store| -> Vec<(String, &'static str, Option<String>)> {
        let records = store.list_keys(&Default::default()).unwrap();
        records.into_iter().map(|r| (r.id, r.state.state.as_str(), r.state.state_reason)).collect()
    };
    let before = states(&store);
    let text = store.metrics_text(ms_auth::store::clock_ms()).unwrap(); // flushes first
    assert_eq!(states(&store), before, "a flush changes no state");
    for id in [&rotated, &idle] {
        assert!(store.get_key(id).unwrap().revoked_at_ms.is_some(), "recorded by the flush: {id}");
    }
    let count = |s: &str| before.iter().filter(|(_, state, _)| *state == s).count();
    let expected = [("active", 3), ("expiring", 1), ("rotating", 1), ("revoked", 3), ("expired", 1)];
    for (state, n) in expected {
        assert_eq!(count(state), n, "{state}: {before:?}");
        let line = format!("ms_auth_keys{{state=\"{state}\"}} {n}");
        assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
    }
    let reasons: Vec<_> = before.iter().filter_map(|(_, _, r)| r.as_deref()).collect();
    assert_eq!(reasons, ["rotated", "leaked", "idle"]);

    // Checks refuse exactly the revoked and expired keys (idle after `idle` never used: refused too).
    let records = store.list_keys(&Default::default()).unwrap();
    for key in &keys {
        let status = status(&store, key, ms_auth::store::clock_ms());
        let r = records.iter().find(|r| key.starts_with(&r.prefix)).unwrap();
        let expected = match r.state.state.as_str() {
            "revoked" => Status::ApiKeyRevoked,
            "expired" => Status::ApiKeyExpired,
            _ => Status::Ok,
        };
        assert_eq!(status, expected, "{}: {:?}", r.id, r.state);
    }
}

/// Issue 21, item 6: a key on a label that names no plan (put there with `new_plan`, or whose plan is
/// gone) keeps working on its own limits: no quota unless it set one, the rate limit it was created
/// with (the store default unless it set one); once a plan of that name is put, it follows it.
#[test]
fn a_key_on_a_plan_not_defined_keeps_its_own_limits_until_the_plan_is_put() {
    let dir = tempfile::tempdir().unwrap();
    let store = eager(&dir);
    store.put_plan(&plan(r#"{"name": "pro", "quota": {"limit": 5, "period": "daily"}}"#), NOW).unwrap();
    let refused = store.create_key(&spec(r#"{"plan": "beta"}"#), NOW).unwrap_err();
    assert!(refused.message.contains("pro"), "{}", refused.message);
    let k = store.create_key(&spec(r#"{"plan": "beta", "new_plan": true}"#), NOW).unwrap();
    assert_eq!((k.record.quota.as_ref(), k.record.rate_limit.as_ref().map(|r| r.limit)), (None, Some(60)));
    for _ in 0..10 {
        assert_eq!(status(&store, &k.key, NOW), Status::Ok, "no quota");
    }
    store.put_plan(&plan(r#"{"name": "beta", "quota": {"limit": 2, "period": "daily"}}"#), NOW).unwrap();
    assert_eq!(status(&store, &k.key, NOW), Status::Ok);
    assert_eq!(status(&store, &k.key, NOW), Status::Ok);
    assert_eq!(status(&store, &k.key, NOW), Status::ApiKeyQuotaExceeded, "the plan's quota, from the next check");
}
