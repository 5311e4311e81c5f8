//! The Redis side of quota leases against a real redis-server (issue 22, item 3): what Redis holds for
//! a quota may be lost (FLUSHDB, eviction), forged or rolled back, a host may reboot and rebuild its
//! counters file from its database, and the agent hands back what its host did not use at SIGTERM. In
//! none of these does the fleet admit more than the quota.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::fleet::*;
use common::*;
use ms_auth::{Status, Store};

/// One at a time: each starts a Redis, agents and busy checking processes.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn clock() -> i64 {
    ms_auth::store::clock_ms()
}

/// A checking process of a host (this test binary run again): checks one key from 2 threads, each
/// `MS_AUTH_LR_PACE_US` apart, until the fleet's quota is spent (or for ever with `MS_AUTH_LR_FOREVER`),
/// and prints how many it admitted.
#[test]
fn lr_hammer_child() {
    let (Ok(db), Ok(key)) = (std::env::var("MS_AUTH_LR_DB"), std::env::var("MS_AUTH_LR_KEY")) else { return };
    let pace = std::env::var("MS_AUTH_LR_PACE_US").ok().and_then(|p| p.parse().ok()).map(Duration::from_micros);
    let forever = std::env::var("MS_AUTH_LR_FOREVER").is_ok();
    let store = std::sync::Arc::new(Store::open(&db).unwrap());
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (store, key) = (store.clone(), key.clone());
            std::thread::spawn(move || {
                let (mut admitted, mut spent_in_a_row) = (0u64, 0);
                let deadline = Instant::now() + Duration::from_secs(60);
                while forever || (spent_in_a_row < 300 && Instant::now() < deadline) {
                    if let Some(pace) = pace {
                        std::thread::sleep(pace);
                    }
                    let d = store.check(Some(key.as_bytes()), clock()).unwrap().decision;
                    match d.status {
                        Status::Ok => {
                            admitted += 1;
                            spent_in_a_row = 0;
                        }
                        Status::ApiKeyQuotaExceeded if d.retry_after_ms > ms_auth::policy::TOP_UP_RETRY_MS => {
                            spent_in_a_row += 1;
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Status::ApiKeyQuotaExceeded if forever => {}
                        Status::ApiKeyQuotaExceeded => std::thread::sleep(Duration::from_millis(1)),
                        // Out of lease while the fleet's quota has room: waiting for this host's share.
                        Status::RateLimitExceeded if forever => {}
                        Status::RateLimitExceeded => std::thread::sleep(Duration::from_millis(1)),
                        other => panic!("{other:?}"),
                    }
                }
                admitted
            })
        })
        .collect();
    let admitted: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    println!("\nADMITTED {admitted}");
}

fn hammer(db: &Path, key: &str, pace: Option<Duration>, forever: bool) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "lr_hammer_child", "--nocapture", "--test-threads=1"])
        .env("MS_AUTH_LR_DB", db)
        .env("MS_AUTH_LR_KEY", key)
        .stdout(Stdio::piped());
    if let Some(pace) = pace {
        cmd.env("MS_AUTH_LR_PACE_US", pace.as_micros().to_string());
    }
    if forever {
        cmd.env("MS_AUTH_LR_FOREVER", "1");
    }
    cmd.spawn().unwrap()
}

fn admitted_by(child: Child) -> u64 {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|l| l.split_once("ADMITTED ").and_then(|(_, n)| n.trim().parse().ok())).expect("a count")
}

/// The quota hashes of fleet `test` in Redis.
fn quota_hashes(conn: &mut redis::Connection) -> Vec<String> {
    redis::cmd("KEYS").arg("ms-auth:{test}:quota:*").query(conn).unwrap()
}

fn hash_of(conn: &mut redis::Connection, name: &str) -> HashMap<String, String> {
    redis::cmd("HGETALL").arg(name).query(conn).unwrap()
}

/// A key with a daily quota of `limit` (no rate limit) created on the first host, once every host has it.
fn quota_key(hosts: &[Host], limit: i64) -> ms_auth::Created {
    let k = hosts[0]
        .store()
        .create_key(
            &spec(&format!(r#"{{"quota": {{"limit": {limit}, "period": "daily"}}, "rate_limit": null}}"#)),
            clock(),
        )
        .unwrap();
    for h in &hosts[1..] {
        let s = h.store();
        assert!(within(Duration::from_secs(5), || s.get_key(&k.record.id).is_ok()).is_some(), "{}", h.log());
    }
    k
}

/// What the hosts counted of the key so far, from their own stores.
fn counted(hosts: &[Host], id: &str) -> i64 {
    hosts.iter().map(|h| h.store().get_key(id).map_or(0, |k| k.usage.used)).sum()
}

/// Checking processes killed when dropped (a failed assertion must not leave them running).
struct Reap(Vec<Child>);

impl Drop for Reap {
    fn drop(&mut self) {
        for c in &mut self.0 {
            signal(c, libc::SIGCONT);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn signal(child: &Child, signal: libc::c_int) {
    unsafe { libc::kill(child.id() as i32, signal) };
}

/// Three hosts check a key with a quota of 400 at a steady pace. Once about a third of it is admitted,
/// hosts 1 and 2 pause (their checking processes stopped: each still holds what is left of its lease),
/// `damage` does something to what Redis holds, host 0 checks until the fleet refuses, then hosts 1 and
/// 2 resume and spend what they hold. Returns what the fleet admitted, and the hosts.
fn quota_of_400_with(damage: impl FnOnce(&mut redis::Connection, &str)) -> (u64, Vec<Host>, tempfile::TempDir) {
    let (dir, redis, hosts) = fleet(3);
    let k = quota_key(&hosts, 400);
    let mut children: Vec<Child> =
        hosts.iter().map(|h| hammer(&h.db, &k.key, Some(Duration::from_millis(30)), false)).collect();
    let a_third = within(Duration::from_secs(20), || counted(&hosts, &k.record.id) >= 130);
    assert!(a_third.is_some(), "{}", hosts[0].log());
    for c in &children[1..] {
        signal(c, libc::SIGSTOP);
    }
    let mut conn = redis.conn();
    let hash = quota_hashes(&mut conn).pop().expect("the quota's hash");
    damage(&mut conn, &hash);
    let mut total = admitted_by(children.remove(0));
    for c in &children {
        signal(c, libc::SIGCONT);
    }
    total += children.into_iter().map(admitted_by).sum::<u64>();
    eprintln!("quota 400 over 3 hosts, Redis damaged mid-load: admitted {total}");
    (total, hosts, dir)
}

#[test]
fn a_flushdb_while_the_agents_stay_connected_never_admits_past_the_quota() {
    let _serial = serial();
    let (total, hosts, _dir) = quota_of_400_with(|conn, _| redis::cmd("FLUSHDB").query::<()>(conn).unwrap());
    assert!(total <= 400, "admitted {total} against a quota of 400\n{}", hosts[0].log());
    assert!(total >= 250, "the quota is still granted after the recovery: {total}\n{}", hosts[0].log());
}

#[test]
fn a_quota_hash_lost_alone_never_admits_past_the_quota() {
    let _serial = serial();
    let (total, hosts, _dir) = quota_of_400_with(|conn, hash| redis::cmd("DEL").arg(hash).query::<()>(conn).unwrap());
    assert!(total <= 400, "admitted {total} against a quota of 400\n{}", hosts[0].log());
    let logs: String = hosts.iter().map(Host::log).collect();
    assert!(logs.contains("lost"), "the loss is logged\n{logs}");
}

/// The forgery is refused, logged and counted in `fleet status`.
fn assert_forgery_refused(hosts: &[Host], total: u64) {
    let logs: String = hosts.iter().map(Host::log).collect();
    assert!(total <= 400, "admitted {total} against a quota of 400\n{logs}");
    assert!(logs.contains("forged"), "the forgery is logged\n{logs}");
    for line in logs.lines().filter(|l| l.contains("REFUSED") || l.contains("epoch")) {
        eprintln!("  {line}");
    }
    let counted = within(Duration::from_secs(5), || {
        hosts.iter().any(|h| {
            h.store().fleet_status().ok().flatten().is_some_and(|s| s["leases"]["forged"].as_u64().unwrap_or(0) >= 1)
        })
    });
    assert!(counted.is_some(), "fleet status counts the forgery: {:?}", hosts[0].store().fleet_status());
    let text: String = hosts
        .iter()
        .map(|h| {
            let out =
                Command::new(env!("CARGO_BIN_EXE_ms-auth")).arg("--db").arg(&h.db).args(["fleet", "status"]).output();
            String::from_utf8_lossy(&out.unwrap().stdout).into_owned()
        })
        .collect();
    assert!(text.lines().any(|l| l.starts_with("leases:") && !l.contains(" 0 forged")), "{text}");
}

#[test]
fn a_forged_ghost_lease_is_refused() {
    let _serial = serial();
    let (total, hosts, _dir) = quota_of_400_with(|conn, hash| {
        redis::cmd("HSET").arg(hash).arg("lease:ghost").arg(-1_000_000).query::<()>(conn).unwrap()
    });
    assert_forgery_refused(&hosts, total);
}

#[test]
fn a_forged_larger_lease_for_a_victim_host_is_refused() {
    let _serial = serial();
    let (total, hosts, _dir) = quota_of_400_with(|conn, hash| {
        // (Fields are keyed by host id: the victim is the first host holding a lease.)
        let fields = hash_of(conn, hash);
        let victim = fields.keys().filter(|f| f.starts_with("lease:")).min().cloned().expect("a lease field");
        let lease: i64 = fields.get(&victim).and_then(|v| v.parse().ok()).unwrap_or(0);
        redis::cmd("HSET").arg(hash).arg(&victim).arg(lease + 300).query::<()>(conn).unwrap()
    });
    assert_forgery_refused(&hosts, total);
}

#[test]
fn a_deleted_lease_field_is_refused() {
    let _serial = serial();
    let (total, hosts, _dir) = quota_of_400_with(|conn, hash| {
        let fields = hash_of(conn, hash);
        let victim = fields.keys().filter(|f| f.starts_with("lease:")).min().cloned().expect("a lease field");
        let id = victim.trim_start_matches("lease:").to_string();
        redis::cmd("HDEL").arg(hash).arg(&victim).arg(format!("used:{id}")).query::<()>(conn).unwrap()
    });
    assert_forgery_refused(&hosts, total);
}

/// A host reboots: its counters file is rebuilt from its database, whose last flush is older than what
/// it admitted (a reboot makes the file "from an earlier boot", which the store treats as absent: the
/// test removes it), and its agent starts again. What it admitted before is never admitted again.
#[test]
fn a_rebooted_host_never_admits_its_old_lease_again() {
    let _serial = serial();
    let (_dir, redis, mut hosts) = fleet(2);
    let k = quota_key(&hosts, 400);
    // Host 0 admits 200, flushing to its database only when it closes (never, here: power is cut).
    let slow_flush = ms_auth::StoreOptions { flush_interval: Duration::from_secs(3600), ..Default::default() };
    let before = Store::open_with(&hosts[0].db, slow_flush).unwrap();
    let mut admitted = 0u64;
    let deadline = Instant::now() + Duration::from_secs(20);
    while admitted < 200 {
        assert!(Instant::now() < deadline, "host 0 admitted only {admitted}\n{}", hosts[0].log());
        match before.check(Some(k.key.as_bytes()), clock()).unwrap().decision.status {
            Status::Ok => admitted += 1,
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    let mut agent = hosts[0].agent.take().unwrap();
    unsafe { libc::kill(agent.id() as i32, libc::SIGKILL) };
    agent.wait().unwrap();
    std::mem::forget(before); // the machine lost power: nothing flushed at close
    let counters = format!("{}-counters", std::fs::canonicalize(&hosts[0].db).unwrap().display());
    std::fs::remove_file(&counters).unwrap();
    let flushed = Store::open(&hosts[0].db).unwrap().get_key(&k.record.id).unwrap().usage.used;
    assert!(flushed < 200, "the database's count ({flushed}) is older than what the host admitted");
    hosts[0].start_agent(&redis.url());
    hosts[0].wait_until_in_the_fleet();
    let children: Vec<Child> = hosts.iter().map(|h| hammer(&h.db, &k.key, None, false)).collect();
    let after: u64 = children.into_iter().map(admitted_by).sum();
    let total = admitted + after;
    eprintln!("quota 400, host 0 rebooted after admitting 200 (database at {flushed}): admitted {total}");
    assert!(total <= 400, "admitted {total} against 400\n{}", hosts[0].log());
    assert!(total >= 300, "the rest of the quota is still granted: {total}\n{}", hosts[0].log());
}

#[test]
fn an_agent_refuses_a_redis_that_may_evict_unless_told_to_accept_it() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(&dir.path().join("redis"), None);
    let mut conn = redis.conn();
    redis::cmd("CONFIG").arg("SET").arg("maxmemory-policy").arg("volatile-lru").query::<()>(&mut conn).unwrap();
    let mut refused = Host::new(dir.path(), "refused");
    refused.start_agent(&redis.url());
    let child = refused.agent.as_mut().unwrap();
    let exited = within(Duration::from_secs(10), || child.try_wait().unwrap().is_some());
    assert!(exited.is_some(), "the agent runs against an evicting Redis\n{}", refused.log());
    assert!(!child.wait().unwrap().success());
    assert!(refused.log().contains("maxmemory-policy"), "{}", refused.log());
    assert!(refused.log().contains("noeviction"), "the message says what to set\n{}", refused.log());
    let mut accepted = Host::new(dir.path(), "accepted");
    accepted.start_agent_with(&redis.url(), &["--allow-evicting-redis".as_ref()]);
    accepted.wait_until_in_the_fleet();
    assert!(accepted.log().contains("volatile-lru"), "a warning names the policy\n{}", accepted.log());
    // A Redis user not allowed CONFIG: the agent cannot tell, warns and goes on.
    redis::cmd("CONFIG").arg("SET").arg("maxmemory-policy").arg("noeviction").query::<()>(&mut conn).unwrap();
    redis::cmd("ACL")
        .arg(&["SETUSER", "agent", "on", ">agent-pass", "~*", "&*", "+@all", "-config"][..])
        .query::<()>(&mut conn)
        .unwrap();
    let mut limited = Host::new(dir.path(), "limited");
    limited.start_agent(&format!("redis://agent:agent-pass@127.0.0.1:{}", redis.port));
    limited.wait_until_in_the_fleet();
    assert!(limited.log().contains("cannot read"), "a warning says the settings were not checked\n{}", limited.log());
    assert!(!limited.log().contains("agent-pass"));
}

/// The agent hands back at SIGTERM while its host's checks are in flight (stopped mid-check by SIGSTOP,
/// the worst a scheduler can do): what Redis records as the host's count is final, no check admits past
/// it afterwards.
#[test]
fn a_hand_back_racing_checks_is_exact() {
    let _serial = serial();
    let (_dir, redis, mut hosts) = fleet(1);
    let k = quota_key(&hosts, 1_000_000);
    let mut conn = redis.conn();
    let mut over = Vec::new();
    for round in 0..30 {
        if round > 0 {
            hosts[0].start_agent(&redis.url());
        }
        let children = Reap((0..4).map(|_| hammer(&hosts[0].db, &k.key, None, true)).collect());
        let s = hosts[0].store();
        let start = s.get_key(&k.record.id).unwrap().usage.used;
        assert!(within(Duration::from_secs(10), || s.get_key(&k.record.id).unwrap().usage.used > start + 100).is_some());
        for c in &children.0 {
            signal(c, libc::SIGSTOP);
        }
        assert!(hosts[0].stop_agent().unwrap().success(), "{}", hosts[0].log());
        for c in &children.0 {
            signal(c, libc::SIGCONT);
        }
        std::thread::sleep(Duration::from_millis(30));
        drop(children);
        let hash = quota_hashes(&mut conn).pop().unwrap();
        let fields = hash_of(&mut conn, &hash);
        let field = |f: &str| fields.get(f).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        // What Redis records this host may count, in the host's own terms.
        let id = s.fleet_host_id().unwrap().expect("a member");
        let told = field(&format!("lease:{id}")) - field(&format!("base:{id}"));
        let local = s.get_key(&k.record.id).unwrap().usage.used;
        if local > told {
            over.push((round, local - told));
        }
    }
    assert!(over.is_empty(), "checks admitted past what was handed back (round, how many): {over:?}");
}
