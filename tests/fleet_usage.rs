//! Fleet-wide usage is keyed by each host's identity, not its name (issue 22), against a real
//! redis-server: two hosts given one name (machines cloned from one image) and a third each count in every
//! host's `usage` and metrics, told apart by their host ids; a usage row of the previous format (keyed by
//! name) or signed for another host id is refused; a store upgraded from name-keyed rows keeps the other
//! hosts' history once.

mod common;

use std::process::Command;
use std::time::Duration;

use common::fleet::*;
use common::*;
use ms_auth::{Status, Store};

/// One at a time: each test starts a Redis and agents on a small machine.
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

fn admitted_today(store: &Store, id: &str) -> i64 {
    let now = clock();
    store.usage(id, now, now).unwrap().days[0].admitted
}

fn host_id(host: &Host) -> String {
    host.store().fleet_host_id().unwrap().unwrap()
}

/// Hosts `web` (dir a), `web` (dir b) and `api` (dir c), each with its agent; a key made on a without a
/// rate limit, admitted 4, 7 and 11 times on a, b and c (22 in the fleet), once every host has it.
fn two_webs_and_an_api(dir: &std::path::Path, redis: &Redis) -> (Vec<Host>, String) {
    let mut hosts: Vec<Host> = ["a", "b", "c"].iter().map(|d| Host::new(dir, d)).collect();
    for (h, name) in hosts.iter_mut().zip(["web", "web", "api"]) {
        h.name = name.into();
        h.start_agent(&redis.url());
    }
    for h in &hosts {
        h.wait_until_in_the_fleet();
    }
    let k = hosts[0].store().create_key(&spec(r#"{"rate_limit": null}"#), clock()).unwrap();
    for (h, n) in hosts.iter().zip([4, 7, 11]) {
        let s = h.store();
        // The first admission once the key has reached the host, then the rest.
        assert!(within(Duration::from_secs(5), || checks_as(&s, &k.key, Status::Ok)).is_some(), "{}", h.log());
        for _ in 1..n {
            assert!(checks_as(&s, &k.key, Status::Ok));
        }
    }
    (hosts, k.record.id)
}

#[test]
fn two_hosts_of_one_name_and_a_third_each_count_in_every_hosts_usage_and_metrics() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(&dir.path().join("redis"), None);
    let (hosts, id) = two_webs_and_an_api(dir.path(), &redis);
    let ids: Vec<String> = hosts.iter().map(host_id).collect();
    assert_ne!(ids[0], ids[1]);
    for h in &hosts {
        let s = h.store();
        let took = within(Duration::from_secs(5), || admitted_today(&s, &id) == 22);
        assert!(took.is_some(), "{} ({}) sees {} of 22\n{}", h.name, h.db.display(), admitted_today(&s, &id), h.log());
    }
    // `ms-auth usage` says so too.
    let out = Command::new(env!("CARGO_BIN_EXE_ms-auth"))
        .arg("--db")
        .arg(&hosts[1].db)
        .args(["usage", &id, "--days", "1", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let history: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(history["days"][0]["admitted"], 22, "{history}");
    // Every host's metrics: one series per host, the two `web`s told apart by their host ids.
    for h in &hosts {
        let metrics = h.store().metrics_text(clock()).unwrap();
        for ((name, host_id), n) in ["web", "web", "api"].iter().zip(&ids).zip([4, 7, 11]) {
            let line =
                format!("ms_auth_fleet_checks_total{{host=\"{name}\",host_id=\"{host_id}\",status=\"ok\"}} {n}\n");
            assert!(metrics.contains(&line), "{}: {line} in\n{metrics}", h.db.display());
        }
        let ok_series =
            metrics.lines().filter(|l| l.starts_with("ms_auth_fleet_checks_total{") && l.contains("\"ok\""));
        assert_eq!(ok_series.count(), 3, "{metrics}");
    }
    // Redis keeps one usage hash per host, not per name.
    let mut conn = redis.conn();
    let mut hashes: Vec<String> = redis::cmd("KEYS").arg("ms-auth:{test}:usage-host:*").query(&mut conn).unwrap();
    hashes.sort();
    let mut want: Vec<String> = ids.iter().map(|i| format!("ms-auth:{{test}}:usage-host:{i}")).collect();
    want.sort();
    assert_eq!(hashes, want);
}

#[test]
fn a_usage_row_of_the_previous_format_or_signed_for_another_host_id_is_refused() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(&dir.path().join("redis"), None);
    let (hosts, id) = two_webs_and_an_api(dir.path(), &redis);
    for h in &hosts {
        let s = h.store();
        assert!(within(Duration::from_secs(5), || admitted_today(&s, &id) == 22).is_some(), "{}", h.log());
    }
    let mut conn = redis.conn();
    let day = clock().div_euclid(86_400_000);
    // An agent of the previous format reporting 1,000 admissions as `web`: its row signed with the fleet's
    // secret, by name (`["usage", host, row]`), in an entry without an id.
    let secret = ms_auth::fleet::Secret::new(SECRET.as_bytes());
    let row = format!("{id},{day},1000,0,0,0,0,");
    let line = format!("{row};{}", secret.sign_parts("test", &["usage", "web", &row]));
    let _: String = redis::cmd("XADD")
        .arg("ms-auth:{test}:usage")
        .arg("*")
        .arg("host")
        .arg("web")
        .arg("rows")
        .arg(&line)
        .query(&mut conn)
        .unwrap();
    // a's genuine row (4 admitted) presented as b's and as the api host's: it is signed for a's id.
    let a_hash = format!("ms-auth:{{test}}:usage-host:{}", host_id(&hosts[0]));
    let a_line: String = redis::cmd("HGET").arg(&a_hash).arg(format!("{id}:{day}")).query(&mut conn).unwrap();
    let bumped = a_line.replacen(",4,", ",400,", 1);
    for (victim, line) in [(&hosts[1], &a_line), (&hosts[2], &a_line), (&hosts[2], &bumped)] {
        let _: String = redis::cmd("XADD")
            .arg("ms-auth:{test}:usage")
            .arg("*")
            .arg("v")
            .arg("2")
            .arg("host_id")
            .arg(host_id(victim))
            .arg("host")
            .arg(&victim.name)
            .arg("rows")
            .arg(line.as_str())
            .query(&mut conn)
            .unwrap();
    }
    for (i, h) in hosts.iter().enumerate() {
        let refused = within(Duration::from_secs(5), || {
            let log = h.log();
            log.contains("in the previous format") && log.contains("not signed with this fleet's secret")
        });
        assert!(refused.is_some(), "host {i} logs the refusals:\n{}", h.log());
        assert_eq!(admitted_today(&h.store(), &id), 22, "host {i}: nothing refused counts\n{}", h.log());
    }
}

/// The schema version before usage was keyed by host id (migration 8 makes it so).
const BEFORE_USAGE_BY_ID: i64 = 7;

#[test]
fn a_store_upgraded_from_usage_keyed_by_name_keeps_the_other_hosts_history_once() {
    let _serial = serial();
    let (dir, store) = temp_store();
    let k = store.create_key(&spec(r#"{"rate_limit": null}"#), clock()).unwrap();
    store.fleet_join("test", "web").unwrap();
    let here = store.fleet_host_id().unwrap().unwrap();
    drop(store);
    let path = dir.path().join("keys.db");
    // Back to the schema before: fleet usage rows keyed by host name, as that version kept them (this
    // host's own rows, what it published, and the others').
    let day = clock().div_euclid(86_400_000);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(&format!(
        "DROP VIEW fleet_usage_counted; DROP TABLE fleet_usage; DROP TABLE fleet_usage_by_name;
         CREATE TABLE fleet_usage (
            host TEXT NOT NULL, key_id TEXT NOT NULL, day INTEGER NOT NULL, admitted INTEGER NOT NULL,
            expired INTEGER NOT NULL, revoked INTEGER NOT NULL, quota_exceeded INTEGER NOT NULL,
            rate_limited INTEGER NOT NULL, last_used_at_ms INTEGER, PRIMARY KEY (host, key_id, day)
         ) WITHOUT ROWID;
         CREATE INDEX fleet_usage_key ON fleet_usage(key_id, day);
         INSERT INTO fleet_usage VALUES ('web', '{id}', {day}, 5, 0, 0, 0, 0, NULL),
             ('api', '{id}', {day}, 7, 0, 0, 0, 0, NULL), ('gone', '{id}', {day}, 2, 0, 0, 0, 0, NULL),
             ('api', '{id}', {old}, 3, 0, 0, 0, 0, NULL);
         INSERT INTO settings (name, value) VALUES ('fleet_usage_position', '1-0')
             ON CONFLICT (name) DO UPDATE SET value = '1-0';
         PRAGMA user_version = {BEFORE_USAGE_BY_ID};",
        id = k.record.id,
        old = day - 200,
    ))
    .unwrap();
    drop(conn);
    let store = Store::open(&path).unwrap();
    let on = |d: i64| store.usage(&k.record.id, d * 86_400_000, d * 86_400_000).unwrap().days[0].admitted;
    // This host's own rows were what it published (its database counts them): not counted again.
    assert_eq!(on(day), 7 + 2, "the others' rows by name, this host's own dropped");
    assert_eq!(on(day - 200), 3, "older history kept");
    assert_eq!(store.fleet_usage_position().unwrap(), None, "the usage stream is read again from the hosts' hashes");
    // The `api` host, upgraded, publishes its rows under its id: they replace its rows by name, once.
    let row = ms_auth::store::FleetUsageRow {
        key_id: k.record.id.clone(),
        day,
        counts: [9, 0, 0, 0, 0],
        last_used_at_ms: None,
    };
    store.fleet_usage_merge("0123456789abcdef0123456789abcdef", "api", std::slice::from_ref(&row)).unwrap();
    assert_eq!(on(day), 9 + 2, "api's row by id replaces its row by name");
    assert_eq!(on(day - 200), 3);
    // Renamed later, it is still one host: the row by name it replaced stays replaced.
    store.fleet_usage_merge("0123456789abcdef0123456789abcdef", "api-2", &[row]).unwrap();
    assert_eq!(on(day), 9 + 2);
    let metrics = store.metrics_text(clock()).unwrap();
    for line in [
        format!("ms_auth_fleet_checks_total{{host=\"web\",host_id=\"{here}\",status=\"ok\"}} 0\n"),
        "ms_auth_fleet_checks_total{host=\"api-2\",host_id=\"0123456789abcdef0123456789abcdef\",status=\"ok\"} 9\n"
            .into(),
        "ms_auth_fleet_checks_total{host=\"api\",host_id=\"\",status=\"ok\"} 3\n".into(),
        "ms_auth_fleet_checks_total{host=\"gone\",host_id=\"\",status=\"ok\"} 2\n".into(),
    ] {
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
}
