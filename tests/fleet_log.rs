//! The fleet's change log under attack and failure (issue 22, item 2), against a real redis-server: old
//! signed entries added to the log again, an old signed entry put back into the state hash, entries
//! deleted from the log, and an agent that dies between publishing a change and recording it published.
//! No replayed, reordered, reinserted or deleted entry may make any host admit what the newest state
//! refuses.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::fleet::*;
use common::*;
use ms_auth::{KeyPatch, Status, Store};
use redis::streams::StreamRangeReply;
use serde_json::Value;

/// One at a time: each test starts a Redis and agents, and their timing bounds are about the product.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn clock() -> i64 {
    ms_auth::store::clock_ms()
}

fn checks_as(store: &Store, key: &str, wanted: Status) -> bool {
    store.check(Some(key.as_bytes()), clock()).is_ok_and(|c| c.decision.status == wanted)
}

const LOG: &str = "ms-auth:{test}:log";
const STATE: &str = "ms-auth:{test}:state";

/// Every entry of the log, oldest first: its id and its fields.
fn log_entries(redis: &Redis) -> Vec<(String, HashMap<String, String>)> {
    let reply: StreamRangeReply = redis::cmd("XRANGE").arg(LOG).arg("-").arg("+").query(&mut redis.conn()).unwrap();
    reply
        .ids
        .into_iter()
        .map(|e| {
            let fields = e.map.keys().map(|name| (name.clone(), e.get::<String>(name).unwrap_or_default())).collect();
            (e.id, fields)
        })
        .collect()
}

/// The body of a log entry, parsed.
fn body(fields: &HashMap<String, String>) -> Value {
    serde_json::from_str(fields.get("body").map_or("null", String::as_str)).unwrap_or(Value::Null)
}

fn is_key_entry(fields: &HashMap<String, String>, id: &str) -> bool {
    fields.get("kind").map(String::as_str) == Some("key") && fields.get("id").map(String::as_str) == Some(id)
}

/// Adds a copy of an entry to the log (every field as it is, signature included); the copy's id.
fn xadd_copy(redis: &Redis, fields: &HashMap<String, String>) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(LOG).arg("*");
    for (name, value) in fields {
        cmd.arg(name).arg(value);
    }
    cmd.query(&mut redis.conn()).unwrap()
}

fn state_entry(redis: &Redis, kind: &str, id: &str) -> Option<String> {
    redis::cmd("HGET").arg(STATE).arg(format!("{kind}:{id}")).query(&mut redis.conn()).unwrap()
}

fn put_state_entry(redis: &Redis, kind: &str, id: &str, entry: &str) {
    let _: i64 = redis::cmd("HSET").arg(STATE).arg(format!("{kind}:{id}")).arg(entry).query(&mut redis.conn()).unwrap();
}

/// `ms-auth fleet status --json` on a host.
fn status_json(host: &Host) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_ms-auth"))
        .arg("--db")
        .arg(&host.db)
        .args(["fleet", "status", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `ms-auth fleet status` on a host, as an operator reads it.
fn status_text(host: &Host) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ms-auth"))
        .arg("--db")
        .arg(&host.db)
        .args(["fleet", "status"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or(("0", "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// Until the host's agent reports a position at or past `id` (it reports every second).
fn wait_position(host: &Host, id: &str) {
    let reached = within(Duration::from_secs(10), || {
        status_json(host)["position"].as_str().is_some_and(|p| stream_id(p) >= stream_id(id))
    });
    assert!(reached.is_some(), "{} did not read the log up to {id}\n{}", host.name, host.log());
}

fn stale(host: &Host) -> i64 {
    status_json(host)["log"]["stale"].as_i64().unwrap_or(-1)
}

fn patch(json: &str) -> KeyPatch {
    KeyPatch::from_json(json).unwrap()
}

fn quota_limit(store: &Store, id: &str) -> Option<i64> {
    store.get_key(id).unwrap().quota.map(|q| q.limit)
}

fn plan_quota(store: &Store, name: &str) -> Option<i64> {
    store.list_plans().unwrap().into_iter().find(|p| p.name == name).and_then(|p| p.quota.map(|q| q.limit))
}

fn idle_days(store: &Store) -> Option<i64> {
    store.policies().unwrap().idle.map(|i| i.days)
}

#[test]
fn old_signed_entries_added_to_the_log_again_change_nothing_and_are_counted_stale() {
    let _serial = serial();
    let (_dir, redis, hosts) = fleet(2);
    let (a, b) = (hosts[0].store(), hosts[1].store());
    let plan =
        ms_auth::store::PlanSpec::from_json(r#"{"name": "pro", "quota": {"limit": 100, "period": "daily"}}"#).unwrap();
    a.put_plan(&plan, clock()).unwrap();
    a.set_policies(&ms_auth::store::PolicySpec::from_json(r#"{"idle": {"days": 30}}"#).unwrap(), clock()).unwrap();
    let expiring = a.create_key(&spec(r#"{"rate_limit": null}"#), clock()).unwrap();
    let rotating = a.create_key(&spec(r#"{"rate_limit": null}"#), clock()).unwrap();
    let limited =
        a.create_key(&spec(r#"{"quota": {"limit": 1000, "period": "daily"}, "rate_limit": null}"#), clock()).unwrap();
    let all_there =
        || checks_as(&b, &limited.key, Status::Ok) && plan_quota(&b, "pro") == Some(100) && idle_days(&b) == Some(30);
    assert!(within(Duration::from_secs(5), all_there).is_some(), "{}", hosts[1].log());
    let old: Vec<HashMap<String, String>> = log_entries(&redis)
        .into_iter()
        .map(|(_, fields)| fields)
        .filter(|f| matches!(f.get("kind").map(String::as_str), Some("key" | "plan" | "policies")))
        .collect();

    // The operator moves an expiry into the past, rotates a key (its old one revoked after a grace),
    // lowers a quota from 1,000 to 5 a day, and changes a plan and the policies.
    a.update_key(&expiring.record.id, &patch(&format!(r#"{{"expires_at_ms": {}}}"#, clock() - 1000))).unwrap();
    let successor = a.rotate_key(&rotating.record.id, 3_600_000, clock()).unwrap();
    a.update_key(&limited.record.id, &patch(r#"{"quota": {"limit": 5, "period": "daily"}}"#)).unwrap();
    let plan =
        ms_auth::store::PlanSpec::from_json(r#"{"name": "pro", "quota": {"limit": 7, "period": "daily"}}"#).unwrap();
    a.put_plan(&plan, clock()).unwrap();
    a.set_policies(&ms_auth::store::PolicySpec::from_json(r#"{"idle": {"days": 60}}"#).unwrap(), clock()).unwrap();
    let newest = |s: &Store| {
        checks_as(s, &expiring.key, Status::ApiKeyExpired)
            && s.get_key(&rotating.record.id).unwrap().rotated_to.as_deref() == Some(successor.record.id.as_str())
            && s.get_key(&rotating.record.id).unwrap().revoke_at_ms.is_some()
            && quota_limit(s, &limited.record.id) == Some(5)
            && plan_quota(s, "pro") == Some(7)
            && idle_days(s) == Some(60)
    };
    assert!(within(Duration::from_secs(5), || newest(&b)).is_some(), "{}", hosts[1].log());
    let stale_before: Vec<i64> = hosts.iter().map(stale).collect();

    // Someone with write access to Redis adds copies of the old signed entries to the log.
    let mut last = String::new();
    for fields in &old {
        last = xadd_copy(&redis, fields);
    }
    for (h, store) in hosts.iter().zip([&a, &b]) {
        wait_position(h, &last);
        assert!(newest(store), "{} holds an older state again\n{}", h.name, h.log());
        assert_eq!(quota_limit(store, &limited.record.id), Some(5));
        assert!(checks_as(store, &expiring.key, Status::ApiKeyExpired));
    }
    // Every replayed entry is counted as stale on every host, and said in its agent's log.
    for (h, before) in hosts.iter().zip(stale_before) {
        let counted = within(Duration::from_secs(5), || stale(h) >= before + old.len() as i64);
        assert!(
            counted.is_some(),
            "{}: stale {} (before {before}, replayed {})\n{}",
            h.name,
            stale(h),
            old.len(),
            h.log()
        );
        assert!(h.log().contains("stale"), "{}", h.log());
        assert!(status_text(h).contains("stale"), "{}", status_text(h));
    }
}

#[test]
fn a_pre_revocation_state_entry_put_back_is_refused_by_a_host_that_joins_later() {
    let _serial = serial();
    let (dir, redis, mut hosts) = fleet(2);
    let a = hosts[0].store();
    let k = a.create_key(&spec(r#"{"rate_limit": null}"#), clock()).unwrap();
    let b = hosts[1].store();
    assert!(within(Duration::from_secs(5), || checks_as(&b, &k.key, Status::Ok)).is_some(), "{}", hosts[1].log());
    let before = state_entry(&redis, "key", &k.record.id).expect("the key's state");
    a.revoke_key(&k.record.id, clock(), Some("leaked")).unwrap();
    assert!(within(Duration::from_secs(5), || checks_as(&b, &k.key, Status::ApiKeyRevoked)).is_some());
    let revoked = within(Duration::from_secs(5), || state_entry(&redis, "key", &k.record.id).as_ref() != Some(&before));
    assert!(revoked.is_some());
    // No live agent to repair it: the log still holds the revocation, and that must win.
    for h in &mut hosts {
        h.stop_agent();
    }
    put_state_entry(&redis, "key", &k.record.id, &before);
    let mut late = Host::new(dir.path(), "late");
    late.start_agent(&redis.url());
    let l = late.store();
    assert!(within(Duration::from_secs(10), || l.get_key(&k.record.id).is_ok()).is_some(), "{}", late.log());
    wait_position(&late, &log_entries(&redis).last().unwrap().0);
    assert_eq!(
        l.check(Some(k.key.as_bytes()), clock()).unwrap().decision.status,
        Status::ApiKeyRevoked,
        "{}",
        late.log()
    );
}

/// A fleet of `n` hosts whose agents run with `extra` arguments.
fn fleet_with(n: usize, extra: &[&str]) -> (tempfile::TempDir, Redis, Vec<Host>) {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(&dir.path().join("redis"), None);
    let extra: Vec<&std::ffi::OsStr> = extra.iter().map(|a| a.as_ref()).collect();
    let mut hosts: Vec<Host> = (0..n).map(|i| Host::new(dir.path(), &format!("host{i}"))).collect();
    for h in &mut hosts {
        h.start_agent_with(&redis.url(), &extra);
    }
    for h in &hosts {
        h.wait_until_in_the_fleet();
    }
    (dir, redis, hosts)
}

#[test]
fn a_tampered_state_hash_is_repaired_by_the_live_agents_once_the_log_is_trimmed_past_it() {
    let _serial = serial();
    let (dir, redis, hosts) = fleet_with(2, &["--max-log", "10"]);
    let a = hosts[0].store();
    let k = a.create_key(&spec(r#"{"rate_limit": null}"#), clock()).unwrap();
    let b = hosts[1].store();
    assert!(within(Duration::from_secs(5), || checks_as(&b, &k.key, Status::Ok)).is_some(), "{}", hosts[1].log());
    let before = state_entry(&redis, "key", &k.record.id).expect("the key's state");
    a.revoke_key(&k.record.id, clock(), Some("leaked")).unwrap();
    assert!(within(Duration::from_secs(5), || checks_as(&b, &k.key, Status::ApiKeyRevoked)).is_some());
    let revocation = log_entries(&redis)
        .into_iter()
        .find(|(_, f)| is_key_entry(f, &k.record.id) && body(f)["revoked_at_ms"].is_i64())
        .expect("the revocation in the log")
        .0;
    // More changes until the log no longer holds the revocation (`MAXLEN ~` trims whole nodes).
    let trimmed = within(Duration::from_secs(60), || {
        a.create_key(&spec(r#"{"rate_limit": null}"#), clock()).unwrap();
        log_entries(&redis).first().is_some_and(|(id, _)| stream_id(id) > stream_id(&revocation))
    });
    assert!(trimmed.is_some(), "the log was not trimmed past the revocation");
    put_state_entry(&redis, "key", &k.record.id, &before);
    let started = Instant::now();
    let repaired = within(Duration::from_secs(20), || {
        state_entry(&redis, "key", &k.record.id).is_some_and(|e| {
            let e: Value = serde_json::from_str(&e).unwrap_or(Value::Null);
            let body: Value = serde_json::from_str(e["body"].as_str().unwrap_or("null")).unwrap_or(Value::Null);
            body["revoked_at_ms"].is_i64()
        })
    });
    assert!(repaired.is_some(), "the state hash still holds the pre-revocation entry\n{}", hosts[0].log());
    eprintln!("a pre-revocation state entry put back was repaired by the live agents in {:?}", started.elapsed());
    let mut late = Host::new(dir.path(), "late");
    late.start_agent(&redis.url());
    let l = late.store();
    assert!(within(Duration::from_secs(10), || l.get_key(&k.record.id).is_ok()).is_some(), "{}", late.log());
    assert_eq!(
        l.check(Some(k.key.as_bytes()), clock()).unwrap().decision.status,
        Status::ApiKeyRevoked,
        "{}",
        late.log()
    );
}

#[test]
fn a_revocation_deleted_from_the_log_is_detected_as_a_gap_and_repaired() {
    let _serial = serial();
    let (_dir, redis, mut hosts) = fleet(2);
    let a = hosts[0].store();
    let k = a.create_key(&spec(r#"{"rate_limit": null}"#), clock()).unwrap();
    let b = hosts[1].store();
    assert!(within(Duration::from_secs(5), || checks_as(&b, &k.key, Status::Ok)).is_some(), "{}", hosts[1].log());
    let before = state_entry(&redis, "key", &k.record.id).expect("the key's state");
    hosts[1].stop_agent();
    a.revoke_key(&k.record.id, clock(), Some("leaked")).unwrap();
    let published =
        within(Duration::from_secs(5), || state_entry(&redis, "key", &k.record.id).as_ref() != Some(&before));
    assert!(published.is_some(), "{}", hosts[0].log());
    hosts[0].stop_agent();
    // The revocation and its audit event leave the log; the state hash gets its pre-revocation entry.
    let mut conn = redis.conn();
    for (id, fields) in log_entries(&redis) {
        let revocation = is_key_entry(&fields, &k.record.id) && body(&fields)["revoked_at_ms"].is_i64();
        let audit = fields.get("kind").map(String::as_str) == Some("audit")
            && body(&fields)["action"] == "key.revoke"
            && body(&fields)["key_id"] == k.record.id.as_str();
        if revocation || audit {
            let _: i64 = redis::cmd("XDEL").arg(LOG).arg(&id).query(&mut conn).unwrap();
        }
    }
    put_state_entry(&redis, "key", &k.record.id, &before);

    // B comes back while A's agent is down: it cannot have the revocation, but it knows it lacks something.
    hosts[1].start_agent(&redis.url());
    let gap = within(Duration::from_secs(10), || status_json(&hosts[1])["log"]["caught_up"] == false);
    assert!(gap.is_some(), "{}\n{}", status_json(&hosts[1]), hosts[1].log());
    let report = status_json(&hosts[1]);
    let gaps = report["log"]["gaps"].as_array().cloned().unwrap_or_default();
    assert_eq!(gaps.len(), 1, "{report}");
    assert_eq!(gaps[0]["host"], "host0", "{report}");
    let text = status_text(&hosts[1]);
    assert!(text.contains("NOT caught up") && text.contains("host0"), "{text}");
    let metrics = b.metrics_text(clock()).unwrap();
    assert!(metrics.contains("ms_auth_fleet_log_caught_up 0\n"), "{metrics}");
    assert!(metrics.contains("ms_auth_fleet_log_gaps 1\n"), "{metrics}");

    // A's agent answers B's request for a republish: B refuses the key, and is caught up.
    hosts[0].start_agent(&redis.url());
    let started = Instant::now();
    let repaired = within(Duration::from_secs(10), || checks_as(&b, &k.key, Status::ApiKeyRevoked));
    assert!(repaired.is_some(), "{}\n{}", hosts[0].log(), hosts[1].log());
    eprintln!(
        "a deleted revocation reached the host that lacked it {:?} after its origin's agent restarted",
        started.elapsed()
    );
    let caught_up = within(Duration::from_secs(10), || status_json(&hosts[1])["log"]["caught_up"] == true);
    assert!(caught_up.is_some(), "{}", status_json(&hosts[1]));
    assert!(b.metrics_text(clock()).unwrap().contains("ms_auth_fleet_log_caught_up 1\n"));
}

/// A replica of `master` (a redis-server with --replicaof), killed on drop.
struct Replica(Child);

impl Drop for Replica {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGCONT) };
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn replica_of(dir: &Path, master: &Redis) -> Replica {
    std::fs::create_dir_all(dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--appendonly", "no", "--save", ""])
        .args(["--replicaof", "127.0.0.1", &master.port.to_string()])
        .arg("--dir")
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let replica = Replica(child);
    assert!(
        within(Duration::from_secs(10), || replica_acknowledges(master)).is_some(),
        "the replica never acknowledged"
    );
    replica
}

/// True when a write on the master reaches the replica within 100 ms.
fn replica_acknowledges(master: &Redis) -> bool {
    let mut conn = master.conn();
    let _: () = redis::cmd("SET").arg("ms-auth-test:probe").arg(clock()).query(&mut conn).unwrap();
    redis::cmd("WAIT").arg(1).arg(100).query::<i64>(&mut conn).is_ok_and(|n| n >= 1)
}

#[test]
fn a_change_published_again_after_an_agent_died_does_not_undo_a_newer_change() {
    let _serial = serial();
    let (dir, redis, mut hosts) = fleet(2);
    let replica = replica_of(&dir.path().join("replica"), &redis);
    let (a, b) = (hosts[0].store(), hosts[1].store());
    let k =
        a.create_key(&spec(r#"{"quota": {"limit": 1000, "period": "daily"}, "rate_limit": null}"#), clock()).unwrap();
    let id = k.record.id.clone();
    assert!(within(Duration::from_secs(5), || b.get_key(&id).is_ok()).is_some(), "{}", hosts[1].log());
    // The replica stops answering: A's agent publishes its change, then waits for an acknowledgement that
    // never comes (its change not recorded as published), and dies there.
    unsafe { libc::kill(replica.0.id() as i32, libc::SIGSTOP) };
    a.update_key(&id, &patch(r#"{"quota": {"limit": 100, "period": "daily"}}"#)).unwrap();
    let with_quota = |limit: i64| {
        log_entries(&redis).into_iter().filter(|(_, f)| is_key_entry(f, &id) && body(f)["quota_limit"] == limit).count()
    };
    assert!(within(Duration::from_secs(5), || with_quota(100) >= 1).is_some(), "{}", hosts[0].log());
    assert!(within(Duration::from_secs(5), || quota_limit(&b, &id) == Some(100)).is_some(), "{}", hosts[1].log());
    let mut agent = hosts[0].agent.take().unwrap();
    unsafe { libc::kill(agent.id() as i32, libc::SIGKILL) };
    agent.wait().unwrap();
    unsafe { libc::kill(replica.0.id() as i32, libc::SIGCONT) };
    assert!(within(Duration::from_secs(10), || replica_acknowledges(&redis)).is_some());

    // B then lowers the quota to 5; A's agent restarts and publishes its change again.
    b.update_key(&id, &patch(r#"{"quota": {"limit": 5, "period": "daily"}}"#)).unwrap();
    assert!(within(Duration::from_secs(5), || with_quota(5) >= 1).is_some(), "{}", hosts[1].log());
    let copies = with_quota(100);
    hosts[0].start_agent(&redis.url());
    assert!(within(Duration::from_secs(10), || with_quota(100) > copies).is_some(), "{}", hosts[0].log());
    let last = log_entries(&redis).last().unwrap().0.clone();
    for h in &hosts {
        wait_position(h, &last);
    }
    assert_eq!(quota_limit(&a, &id), Some(5), "{}", hosts[0].log());
    assert_eq!(quota_limit(&b, &id), Some(5), "{}", hosts[1].log());
    let state: Value = serde_json::from_str(&state_entry(&redis, "key", &id).unwrap()).unwrap();
    let state_body: Value = serde_json::from_str(state["body"].as_str().unwrap()).unwrap();
    assert_eq!(state_body["quota_limit"], 5, "the state hash keeps the newest: {state}");
}

/// Entries of a key's quota in the log whose body has this limit.
fn with_quota(redis: &Redis, id: &str, limit: i64) -> Vec<(String, HashMap<String, String>)> {
    log_entries(redis).into_iter().filter(|(_, f)| is_key_entry(f, id) && body(f)["quota_limit"] == limit).collect()
}

#[test]
fn entries_deleted_and_added_again_in_the_reverse_order_leave_the_newest_state() {
    let _serial = serial();
    let (_dir, redis, mut hosts) = fleet(2);
    let a = hosts[0].store();
    let k =
        a.create_key(&spec(r#"{"quota": {"limit": 1000, "period": "daily"}, "rate_limit": null}"#), clock()).unwrap();
    let id = k.record.id.clone();
    let b = hosts[1].store();
    assert!(within(Duration::from_secs(5), || b.get_key(&id).is_ok()).is_some(), "{}", hosts[1].log());
    hosts[1].stop_agent();
    for limit in [100, 5] {
        a.update_key(&id, &patch(&format!(r#"{{"quota": {{"limit": {limit}, "period": "daily"}}}}"#))).unwrap();
        let sent = within(Duration::from_secs(5), || !with_quota(&redis, &id, limit).is_empty());
        assert!(sent.is_some(), "{}", hosts[0].log());
    }
    // While B's agent is down, the two changes leave the log and come back newest first.
    let (newer, older) = (with_quota(&redis, &id, 5).remove(0), with_quota(&redis, &id, 100).remove(0));
    let _: i64 = redis::cmd("XDEL").arg(LOG).arg(&newer.0).arg(&older.0).query(&mut redis.conn()).unwrap();
    xadd_copy(&redis, &newer.1);
    let last = xadd_copy(&redis, &older.1);
    hosts[1].start_agent(&redis.url());
    wait_position(&hosts[1], &last);
    assert_eq!(quota_limit(&b, &id), Some(5), "{}", hosts[1].log());
    // The older change filled B's gap in A's sequence: B is caught up, and counted it stale.
    let settled = within(Duration::from_secs(5), || {
        let report = status_json(&hosts[1]);
        report["log"]["caught_up"] == true && report["log"]["stale"].as_i64() >= Some(1)
    });
    assert!(settled.is_some(), "{}\n{}", status_json(&hosts[1]), hosts[1].log());
    assert_eq!(quota_limit(&b, &id), Some(5));
}

#[test]
fn a_request_for_entries_older_than_the_journal_publishes_every_record_again_from_a_floor() {
    let _serial = serial();
    let (_dir, redis, hosts) = fleet_with(2, &["--max-log", "10"]);
    let a = hosts[0].store();
    let k = a.create_key(&spec(r#"{"rate_limit": null}"#), clock()).unwrap();
    let b = hosts[1].store();
    assert!(within(Duration::from_secs(5), || checks_as(&b, &k.key, Status::Ok)).is_some(), "{}", hosts[1].log());
    a.revoke_key(&k.record.id, clock(), Some("leaked")).unwrap();
    // Twenty more changes, each published: A's journal keeps its last 10 entries.
    for i in 0..20 {
        a.update_key(&k.record.id, &patch(&format!(r#"{{"name": "n{i}"}}"#))).unwrap();
        let sent = within(Duration::from_secs(5), || {
            log_entries(&redis).iter().any(|(_, f)| is_key_entry(f, &k.record.id) && body(f)["name"] == format!("n{i}"))
        });
        assert!(sent.is_some(), "{}", hosts[0].log());
    }
    assert!(within(Duration::from_secs(5), || checks_as(&b, &k.key, Status::ApiKeyRevoked)).is_some());
    let head = |h: &Host| -> Value {
        let origin = h.store().fleet_host_id().unwrap().unwrap();
        let text: String =
            redis::cmd("HGET").arg("ms-auth:{test}:heads").arg(&origin).query(&mut redis.conn()).unwrap();
        serde_json::from_str(&text).unwrap()
    };
    let before = head(&hosts[0]);
    assert_eq!(before["floor"], 0, "{before}");
    // A host asks for A's entries from seq 1, which A's journal no longer holds (a request signed with the
    // fleet's secret and stamped with Redis's clock, as an agent makes it).
    let origin = a.fleet_host_id().unwrap().unwrap();
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query(&mut redis.conn()).unwrap();
    let at = (secs * 1000 + micros / 1000).to_string();
    let sig = ms_auth::fleet::Secret::new(SECRET.as_bytes()).sign_parts("test", &["repair", &origin, "1", &at]);
    let request = format!("1:{at}:{sig}");
    let _: i64 =
        redis::cmd("HSET").arg("ms-auth:{test}:repair").arg(&origin).arg(&request).query(&mut redis.conn()).unwrap();
    let answered = within(Duration::from_secs(10), || head(&hosts[0])["floor"].as_i64() > before["seq"].as_i64());
    assert!(answered.is_some(), "{}", hosts[0].log());
    assert!(hosts[0].log().contains("published again as new versions"), "{}", hosts[0].log());
    // Every record again, as new versions: nothing changes on any host, and none is missing anything.
    let floor = head(&hosts[0])["floor"].as_i64().unwrap();
    let republished = within(Duration::from_secs(10), || {
        log_entries(&redis)
            .iter()
            .any(|(_, f)| is_key_entry(f, &k.record.id) && f["seq"].parse::<i64>().unwrap() >= floor)
    });
    assert!(republished.is_some(), "{}", hosts[0].log());
    let last = log_entries(&redis).last().unwrap().0.clone();
    for (h, s) in hosts.iter().zip([&a, &b]) {
        wait_position(h, &last);
        assert!(checks_as(s, &k.key, Status::ApiKeyRevoked), "{}", h.log());
        assert_eq!(s.get_key(&k.record.id).unwrap().name.as_deref(), Some("n19"));
        let settled = within(Duration::from_secs(5), || status_json(h)["log"]["caught_up"] == true);
        assert!(settled.is_some(), "{}\n{}", status_json(h), h.log());
    }
}

fn redis_stat(redis: &Redis, name: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("stats").query(&mut redis.conn()).unwrap();
    info.lines().find_map(|l| l.strip_prefix(&format!("{name}:"))).and_then(|v| v.trim().parse().ok()).unwrap()
}

#[test]
fn the_sweep_puts_back_a_thousand_deleted_state_entries_within_a_pass_at_a_bounded_cost() {
    let _serial = serial();
    let (_dir, redis, hosts) = fleet(2);
    let a = hosts[0].store();
    let n = 1000;
    let keys: Vec<_> = (0..n).map(|_| a.create_key(&spec(r#"{"rate_limit": null}"#), clock()).unwrap()).collect();
    let b = hosts[1].store();
    assert!(within(Duration::from_secs(30), || b.get_key(&keys[n - 1].record.id).is_ok()).is_some());
    // Idle (after a first pass that verified every entry once), the sweep's cost is what it reads.
    std::thread::sleep(Duration::from_secs(8));
    let (commands, bytes) =
        (redis_stat(&redis, "total_commands_processed"), redis_stat(&redis, "total_net_output_bytes"));
    std::thread::sleep(Duration::from_secs(10));
    let commands = (redis_stat(&redis, "total_commands_processed") - commands) / 10;
    let bytes = (redis_stat(&redis, "total_net_output_bytes") - bytes) / 10;
    let mut conn = redis.conn();
    for k in &keys {
        let _: i64 = redis::cmd("HDEL").arg(STATE).arg(format!("key:{}", k.record.id)).query(&mut conn).unwrap();
    }
    let started = Instant::now();
    let whole = within(Duration::from_secs(30), || {
        redis::cmd("HLEN").arg(STATE).query::<usize>(&mut redis.conn()).is_ok_and(|len| len >= n)
    });
    eprintln!(
        "2 idle agents, {n} keys: {commands} commands/s (Lua's included), {bytes} bytes/s out of Redis; \
         {n} state entries deleted, all put back in {:?}",
        started.elapsed()
    );
    // A pass over n records takes n / 200 rounds of about a second.
    assert!(whole.is_some_and(|t| t <= Duration::from_secs(8)), "{whole:?}\n{}", hosts[0].log());
    assert!(bytes <= 2 * 40_000, "{bytes} bytes/s");
}
