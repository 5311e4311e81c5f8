//! Fleet mode against a real redis-server (Debian's, which the test command installs): "hosts" are
//! separate store directories on this machine, each with its own agent (`ms-auth fleet sync`, a child
//! process); all traffic stays on 127.0.0.1.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::fleet::*;
use common::*;
use ms_auth::{Status, Store};

/// The fleet tests run one at a time: each starts a Redis, agents and busy checking processes, and their
/// timing bounds (within a second) are about the product, not about sharing 2 cores with each other.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// A checking process of a host (this test binary run again): checks one key from 2 threads until the
/// fleet's quota is spent (refusals that say to wait for the period's end), prints how many it admitted.
#[test]
fn hammer_child() {
    let (Ok(db), Ok(key)) = (std::env::var("MS_AUTH_FLEET_DB"), std::env::var("MS_AUTH_FLEET_KEY")) else { return };
    // A pace between checks, to model steady traffic rather than a tight loop.
    let pace = std::env::var("MS_AUTH_FLEET_PACE_US").ok().and_then(|p| p.parse().ok()).map(Duration::from_micros);
    let store = std::sync::Arc::new(Store::open(&db).unwrap());
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (store, key) = (store.clone(), key.clone());
            std::thread::spawn(move || {
                let (mut admitted, mut spent_in_a_row) = (0u64, 0);
                let deadline = Instant::now() + Duration::from_secs(60);
                while spent_in_a_row < 200 && Instant::now() < deadline {
                    if let Some(pace) = pace {
                        std::thread::sleep(pace);
                    }
                    let d = store.check(Some(key.as_bytes()), clock()).unwrap().decision;
                    match d.status {
                        Status::Ok => {
                            admitted += 1;
                            spent_in_a_row = 0;
                        }
                        Status::ApiKeyQuotaExceeded => {
                            spent_in_a_row += 1;
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        // This host waits for its share of a quota the fleet has room in.
                        Status::RateLimitExceeded if d.retry_after_ms <= ms_auth::policy::TOP_UP_RETRY_MS => {
                            std::thread::sleep(Duration::from_millis(1))
                        }
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

fn hammer(db: &Path, key: &str) -> Child {
    hammer_paced(db, key, None)
}

fn hammer_paced(db: &Path, key: &str, pace: Option<Duration>) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "hammer_child", "--nocapture", "--test-threads=1"])
        .env("MS_AUTH_FLEET_DB", db)
        .env("MS_AUTH_FLEET_KEY", key)
        .stdout(Stdio::piped());
    if let Some(pace) = pace {
        cmd.env("MS_AUTH_FLEET_PACE_US", pace.as_micros().to_string());
    }
    cmd.spawn().unwrap()
}

fn admitted_by(child: Child) -> u64 {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|l| l.split_once("ADMITTED ").and_then(|(_, n)| n.trim().parse().ok())).expect("a count")
}

/// Script calls Redis has served (publish and lease grants).
fn script_calls(redis: &Redis) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(&mut redis.conn()).unwrap();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| l.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn a_quota_is_exact_across_three_hosts_of_four_processes() {
    let _serial = serial();
    let (_dir, redis, hosts) = fleet(3);
    let k = hosts[0]
        .store()
        .create_key(&spec(r#"{"quota": {"limit": 10000, "period": "daily"}, "rate_limit": null}"#), clock())
        .unwrap();
    for h in &hosts[1..] {
        let s = h.store();
        assert!(within(Duration::from_secs(5), || s.get_key(&k.record.id).is_ok()).is_some(), "{}", h.log());
    }
    let (started, calls_before) = (Instant::now(), script_calls(&redis));
    let children: Vec<Child> =
        hosts.iter().flat_map(|h| (0..4).map(|_| hammer(&h.db, &k.key)).collect::<Vec<_>>()).collect();
    let per_process: Vec<u64> = children.into_iter().map(admitted_by).collect();
    let total: u64 = per_process.iter().sum();
    let calls = script_calls(&redis) - calls_before;
    eprintln!(
        "quota 10000 over 3 hosts x 4 processes: admitted {total} in {:?} ({per_process:?}); {calls} script calls",
        started.elapsed()
    );
    assert_eq!(total, 10_000, "exactly the quota, fleet-wide\n{}", hosts[0].log());
    // Each host's own count agrees, and no host counted past its lease.
    let used: i64 = hosts.iter().map(|h| h.store().get_key(&k.record.id).unwrap().usage.used).sum();
    assert_eq!(used, 10_000);
}

#[test]
fn an_agent_killed_and_restarted_mid_load_keeps_the_quota_exact() {
    let _serial = serial();
    let (_dir, redis, mut hosts) = fleet(2);
    let k = hosts[0]
        .store()
        .create_key(&spec(r#"{"quota": {"limit": 5000, "period": "daily"}, "rate_limit": null}"#), clock())
        .unwrap();
    let b = hosts[1].store();
    assert!(within(Duration::from_secs(5), || b.get_key(&k.record.id).is_ok()).is_some());
    let children: Vec<Child> =
        hosts.iter().flat_map(|h| (0..2).map(|_| hammer(&h.db, &k.key)).collect::<Vec<_>>()).collect();
    std::thread::sleep(Duration::from_millis(700));
    let mut agent = hosts[0].agent.take().unwrap();
    unsafe { libc::kill(agent.id() as i32, libc::SIGKILL) };
    agent.wait().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    hosts[0].start_agent(&redis.url());
    let total: u64 = children.into_iter().map(admitted_by).sum();
    assert_eq!(total, 5000, "{}", hosts[0].log());
}

#[test]
fn without_its_agent_a_fleet_host_never_admits_past_its_lease() {
    let _serial = serial();
    let (_dir, mut redis, mut hosts) = fleet(2);
    let k = hosts[0]
        .store()
        .create_key(&spec(r#"{"quota": {"limit": 1000, "period": "daily"}, "rate_limit": null}"#), clock())
        .unwrap();
    let b = hosts[1].store();
    assert!(within(Duration::from_secs(5), || checks_as(&b, &k.key, Status::Ok)).is_some(), "{}", hosts[1].log());
    redis.stop();
    hosts[0].stop_agent();
    // Whatever each host held when Redis went away is all it can spend: never more than the quota.
    let a = hosts[0].store();
    let spent = (0..3000).filter(|_| checks_as(&a, &k.key, Status::Ok)).count()
        + (0..3000).filter(|_| checks_as(&b, &k.key, Status::Ok)).count();
    assert!(spent < 1000, "{spent}");
    let refused = a.check(Some(k.key.as_bytes()), clock()).unwrap().decision;
    // The fleet's quota has room: this host waits for its share (issue 22), the key's quota is not exceeded.
    assert_eq!((refused.status, refused.retry_after_ms), (Status::RateLimitExceeded, 1000));
}

#[test]
fn a_rate_limit_is_shared_by_the_live_hosts_within_the_stated_bound() {
    let _serial = serial();
    let (_dir, _redis, hosts) = fleet(3);
    // 600 a minute, burst 30: each of 3 hosts gets 200 a minute with a burst of 10.
    let k = hosts[0]
        .store()
        .create_key(&spec(r#"{"rate_limit": {"limit": 600, "window_ms": 60000, "burst": 30}}"#), clock())
        .unwrap();
    let stores: Vec<Store> = hosts.iter().map(Host::store).collect();
    for s in &stores {
        assert!(within(Duration::from_secs(5), || s.get_key(&k.record.id).is_ok()).is_some());
    }
    // Every agent has seen all three members (they report each second).
    for h in &hosts {
        let s = h.store();
        let three = within(Duration::from_secs(5), || {
            s.fleet_status().ok().flatten().is_some_and(|st| st["rate_shared_by"] == 3)
        });
        assert!(three.is_some(), "{}", h.log());
    }
    let started = Instant::now();
    let mut admitted = 0u64;
    while started.elapsed() < Duration::from_secs(3) {
        for s in &stores {
            admitted += u64::from(checks_as(s, &k.key, Status::Ok));
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    // The documented bound: the fleet's rate (10/s) over the time, plus a burst of at most burst + hosts - 1.
    let bound = (10.0 * seconds).ceil() as u64 + 30 + 2;
    eprintln!(
        "rate 600/min burst 30 over 3 hosts for {seconds:.2} s: admitted {admitted} (bound {bound}; unshared: {})",
        3 * bound
    );
    assert!(admitted <= bound, "{admitted} > {bound}");
    assert!(admitted >= (10.0 * seconds) as u64, "the fleet still gets its whole rate: {admitted}");
}

fn checks_as(store: &Store, key: &str, status_wanted: Status) -> bool {
    store.check(Some(key.as_bytes()), clock()).is_ok_and(|c| c.decision.status == status_wanted)
}

fn clock() -> i64 {
    ms_auth::store::clock_ms()
}

#[test]
fn a_key_created_on_one_host_is_admitted_on_the_others_within_a_second() {
    let _serial = serial();
    let (_dir, _redis, hosts) = fleet(3);
    let created = hosts[1].store().create_key(&spec(r#"{"plan": "pro"}"#), clock()).unwrap();
    for h in [&hosts[0], &hosts[2]] {
        let store = h.store();
        let took = within(Duration::from_secs(5), || checks_as(&store, &created.key, Status::Ok));
        assert!(took.is_some_and(|t| t <= Duration::from_secs(1)), "{}: {took:?}\n{}", h.name, h.log());
        let record = store.get_key(&created.record.id).unwrap();
        assert_eq!((record.plan.as_deref(), record.prefix.as_str()), (Some("pro"), created.record.prefix.as_str()));
    }
}

#[test]
fn a_revocation_on_one_host_is_refused_everywhere_within_a_second_p99() {
    let _serial = serial();
    let (_dir, _redis, hosts) = fleet(3);
    let stores: Vec<Store> = hosts.iter().map(Host::store).collect();
    let mut times = Vec::new();
    for trial in 0..20 {
        let k = stores[trial % 3].create_key(&spec("{}"), clock()).unwrap();
        for s in &stores {
            assert!(within(Duration::from_secs(5), || checks_as(s, &k.key, Status::Ok)).is_some(), "created");
        }
        let started = Instant::now();
        stores[trial % 3].revoke_key(&k.record.id, clock(), Some("leaked")).unwrap();
        for (i, s) in stores.iter().enumerate().filter(|(i, _)| *i != trial % 3) {
            within(Duration::from_secs(5), || checks_as(s, &k.key, Status::ApiKeyRevoked))
                .unwrap_or_else(|| panic!("trial {trial}: not revoked on host{i}\n{}", hosts[i].log()));
            times.push(started.elapsed());
        }
    }
    times.sort();
    let (p50, p99) = (times[times.len() / 2], times[times.len() * 99 / 100]);
    eprintln!(
        "revocation propagation over {} host-trials: p50 {p50:?}, p99 {p99:?}, max {:?}",
        times.len(),
        times.last().unwrap()
    );
    assert!(p99 <= Duration::from_secs(1), "p99 {p99:?}");
}

#[test]
fn plans_policies_and_rotations_reach_every_host() {
    let _serial = serial();
    let (_dir, _redis, hosts) = fleet(2);
    let (a, b) = (hosts[0].store(), hosts[1].store());
    let plan =
        ms_auth::store::PlanSpec::from_json(r#"{"name": "pro", "quota": {"limit": 3, "period": "daily"}}"#).unwrap();
    a.put_plan(&plan, clock()).unwrap();
    let k = a.create_key(&spec(r#"{"plan": "pro"}"#), clock()).unwrap();
    let policy = ms_auth::store::PolicySpec::from_json(r#"{"idle": {"days": 30}}"#).unwrap();
    a.set_policies(&policy, clock()).unwrap();
    let rotated = a.rotate_key(&k.record.id, 60_000, clock()).unwrap();
    assert!(within(Duration::from_secs(5), || checks_as(&b, &rotated.key, Status::Ok)).is_some(), "{}", hosts[1].log());
    let on_b = b.get_key(&rotated.record.id).unwrap();
    assert_eq!(on_b.quota.map(|q| q.limit), Some(3), "the plan's quota");
    assert_eq!(on_b.rotated_from.as_deref(), Some(k.record.id.as_str()));
    assert!(b.get_key(&k.record.id).unwrap().revoke_at_ms.is_some(), "the old key's grace");
    assert_eq!(b.policies().unwrap().idle.map(|i| i.days), Some(30));
}

#[test]
fn a_change_not_signed_with_the_fleet_secret_is_refused_by_every_agent() {
    let _serial = serial();
    let (_dir, redis, hosts) = fleet(2);
    let a = hosts[0].store();
    let k = a.create_key(&spec("{}"), clock()).unwrap();
    let b = hosts[1].store();
    assert!(within(Duration::from_secs(5), || checks_as(&b, &k.key, Status::Ok)).is_some());
    // Someone with write access to Redis, but not the secret, tries to lift a revocation and to mint a key.
    a.revoke_key(&k.record.id, clock(), None).unwrap();
    assert!(within(Duration::from_secs(5), || checks_as(&b, &k.key, Status::ApiKeyRevoked)).is_some());
    let mut conn = redis.conn();
    let state: String =
        redis::cmd("HGET").arg("ms-auth:{test}:state").arg(format!("key:{}", k.record.id)).query(&mut conn).unwrap();
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    let mut body: serde_json::Value = serde_json::from_str(state["body"].as_str().unwrap()).unwrap();
    assert!(body["revoked_at_ms"].is_i64(), "the newest state is the revocation");
    body["revoked_at_ms"] = serde_json::Value::Null;
    for sig in ["", "00", &"ab".repeat(32)] {
        let _: String = redis::cmd("XADD")
            .arg("ms-auth:{test}:log")
            .arg("*")
            .arg(&["kind", "key", "id", &k.record.id, "body", &body.to_string(), "origin", "host0", "sig", sig])
            .query(&mut conn)
            .unwrap();
    }
    let minted = ms_auth::key::generate(ms_auth::key::Env::Live).unwrap();
    body["id"] = "key_minted".into();
    body["digest"] =
        ms_auth::key::digest(minted.as_bytes()).iter().map(|b| format!("{b:02x}")).collect::<String>().into();
    let _: String = redis::cmd("XADD")
        .arg("ms-auth:{test}:log")
        .arg("*")
        .arg(&["kind", "key", "id", "key_minted", "body", &body.to_string(), "origin", "host0", "sig", "00"])
        .query(&mut conn)
        .unwrap();
    for h in &hosts {
        assert!(
            within(Duration::from_secs(5), || h.log().matches("not signed with this fleet's secret").count() >= 4)
                .is_some(),
            "{}",
            h.log()
        );
        let store = h.store();
        assert_eq!(store.check(Some(k.key.as_bytes()), clock()).unwrap().decision.status, Status::ApiKeyRevoked);
        assert_eq!(store.check(Some(minted.as_bytes()), clock()).unwrap().decision.status, Status::ApiKeyInvalid);
    }
}

#[test]
fn changes_made_while_redis_is_down_arrive_when_it_is_back() {
    let _serial = serial();
    let (_dir, mut redis, hosts) = fleet(2);
    let (a, b) = (hosts[0].store(), hosts[1].store());
    let k = a.create_key(&spec("{}"), clock()).unwrap();
    assert!(within(Duration::from_secs(5), || checks_as(&b, &k.key, Status::Ok)).is_some());
    redis.stop();
    // Checks are local: they go on at full speed on both hosts while Redis is gone.
    let started = Instant::now();
    for _ in 0..10_000 {
        assert!(checks_as(&b, &k.key, Status::Ok) || checks_as(&b, &k.key, Status::RateLimitExceeded));
    }
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    let during = a.create_key(&spec(r#"{"rate_limit": null}"#), clock()).unwrap();
    a.revoke_key(&k.record.id, clock(), None).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(hosts[0].log().contains("unreachable") || hosts[0].log().contains("lost Redis"), "{}", hosts[0].log());
    let status = fleet_status_text(&hosts[0]);
    assert!(status.contains("(UNREACHABLE)") && status.contains("last error:"), "{status}");
    redis.restart();
    assert!(within(Duration::from_secs(10), || checks_as(&b, &during.key, Status::Ok)).is_some(), "{}", hosts[1].log());
    assert!(within(Duration::from_secs(5), || checks_as(&b, &k.key, Status::ApiKeyRevoked)).is_some());
    // Both agents report again once they are back (each reconnects within its backoff, at most 2 s).
    let back = |s: &str| s.contains("(reachable)") && s.contains("host0") && s.contains("host1");
    assert!(within(Duration::from_secs(10), || back(&fleet_status_text(&hosts[1]))).is_some());
    assert!(fleet_status_text(&hosts[1]).contains("fleet:      test"));
}

/// `ms-auth fleet status` on a host, as an operator reads it.
fn fleet_status_text(host: &Host) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ms-auth"))
        .arg("--db")
        .arg(&host.db)
        .args(["fleet", "status"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn after_redis_restarts_empty_the_fleet_converges_and_a_new_host_gets_every_key() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut redis = Redis::start(&dir.path().join("redis"), None);
    let mut hosts: Vec<Host> = (0..2).map(|i| Host::new(dir.path(), &format!("host{i}"))).collect();
    for h in &mut hosts {
        h.start_agent(&redis.url());
    }
    let keys: Vec<_> = (0..5).map(|i| hosts[i % 2].store().create_key(&spec("{}"), clock()).unwrap()).collect();
    let b = hosts[1].store();
    assert!(within(Duration::from_secs(5), || keys.iter().all(|k| checks_as(&b, &k.key, Status::Ok))).is_some());
    redis.stop();
    std::fs::remove_dir_all(dir.path().join("redis")).unwrap();
    redis.restart();
    let mut late = Host::new(dir.path(), "late");
    late.start_agent(&redis.url());
    let c = late.store();
    let took = within(Duration::from_secs(15), || keys.iter().all(|k| checks_as(&c, &k.key, Status::Ok)));
    assert!(took.is_some(), "{}\n{}\n{}", hosts[0].log(), hosts[1].log(), late.log());
}

#[test]
fn an_agent_stops_cleanly_on_sigterm_and_a_password_is_used() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(&dir.path().join("redis"), Some("s3cret-pass"));
    let mut host = Host::new(dir.path(), "solo");
    host.start_agent(&redis.url());
    let store = host.store();
    let k = store.create_key(&spec("{}"), clock()).unwrap();
    let mut conn = redis.conn();
    let published = within(Duration::from_secs(5), || {
        redis::cmd("HEXISTS")
            .arg("ms-auth:{test}:state")
            .arg(format!("key:{}", k.record.id))
            .query(&mut conn)
            .unwrap_or(false)
    });
    assert!(published.is_some(), "{}", host.log());
    let status = host.stop_agent().unwrap();
    assert!(status.success(), "{status:?}\n{}", host.log());
    assert!(!host.log().contains("s3cret-pass"), "the password never reaches the log");
    let report = store.fleet_status().unwrap().unwrap();
    assert_eq!(report["host"], "solo");
    assert_eq!(report["redis"]["url"], format!("redis://:***@127.0.0.1:{}", redis.port));
}

/// A CA and a server certificate for 127.0.0.1, made with openssl.
fn certificates(dir: &Path) -> PathBuf {
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(&certs).output().expect("openssl is installed");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=ms-auth test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(certs.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    certs
}

#[test]
fn agents_reach_redis_over_tls_with_a_password_and_refuse_an_unknown_ca() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let certs = certificates(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut redis = Redis {
        dir: dir.path().join("redis"),
        port,
        password: Some("tls-pass".into()),
        tls: Some(certs.clone()),
        child: None,
    };
    redis.restart();
    let ca = certs.join("ca.crt");
    let mut hosts: Vec<Host> = (0..2).map(|i| Host::new(dir.path(), &format!("host{i}"))).collect();
    for h in &mut hosts {
        h.start_agent_with(&redis.url(), &["--redis-ca".as_ref(), ca.as_os_str()]);
    }
    let k = hosts[0].store().create_key(&spec("{}"), clock()).unwrap();
    let b = hosts[1].store();
    assert!(within(Duration::from_secs(5), || checks_as(&b, &k.key, Status::Ok)).is_some(), "{}", hosts[1].log());
    // Without the CA the server's certificate is not trusted: no connection, and a clear line in the log.
    let mut stranger = Host::new(dir.path(), "stranger");
    stranger.start_agent(&redis.url());
    assert!(within(Duration::from_secs(5), || stranger.log().contains("unreachable")).is_some(), "{}", stranger.log());
    assert!(!stranger.log().contains("tls-pass"));
}

#[test]
fn a_store_in_no_fleet_publishes_nothing() {
    let _serial = serial();
    let (_dir, store) = temp_store();
    store.create_key(&spec("{}"), NOW).unwrap();
    assert!(store.fleet_outbox("x", 10).unwrap().0.is_empty());
    assert!(store.fleet_membership().unwrap().is_none());
}

#[test]
fn usage_audit_and_metrics_show_the_fleet_totals_on_every_host() {
    let _serial = serial();
    let (dir, redis, mut hosts) = fleet(3);
    let k = hosts[0].store().create_key(&spec(r#"{"rate_limit": null}"#), clock()).unwrap();
    let id = k.record.id.clone();
    let stores: Vec<Store> = hosts.iter().map(Host::store).collect();
    for s in &stores {
        assert!(within(Duration::from_secs(5), || checks_as(s, &k.key, Status::Ok)).is_some());
    }
    // One check each above; then 2, 5 and 8 more: 3, 6 and 9 per host, 18 in the fleet.
    for (i, s) in stores.iter().enumerate() {
        for _ in 0..(3 * i + 2) {
            assert!(checks_as(s, &k.key, Status::Ok));
        }
    }
    let today = clock();
    let admitted = |s: &Store| s.usage(&id, today, today).unwrap().days[0].admitted;
    for (i, s) in stores.iter().enumerate() {
        let took = within(Duration::from_secs(5), || admitted(s) == 18);
        assert!(took.is_some(), "host{i} sees {} of 18\n{}", admitted(s), hosts[i].log());
    }
    let metrics = stores[1].metrics_text(clock()).unwrap();
    for ((host, h), n) in ["host0", "host1", "host2"].iter().zip(&hosts).zip([3, 6, 9]) {
        let id = h.store().fleet_host_id().unwrap().unwrap();
        let line = format!("ms_auth_fleet_checks_total{{host=\"{host}\",host_id=\"{id}\",status=\"ok\"}} {n}\n");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    assert!(metrics.contains("ms_auth_checks_total{status=\"ok\"} 6\n"), "this host's own series: {metrics}");

    // The audit log of every host has every host's changes, each once, with the host that made it.
    stores[1].revoke_key(&id, clock(), Some("leaked")).unwrap();
    let trail = |s: &Store| -> Vec<(String, Option<String>)> {
        let filter = ms_auth::store::AuditFilter { key_id: Some(id.clone()), ..Default::default() };
        s.audit_events(&filter).unwrap().into_iter().map(|e| (e.action, e.host)).collect()
    };
    let want = vec![("key.create".to_string(), Some("host0".to_string())), ("key.revoke".into(), Some("host1".into()))];
    for (i, s) in stores.iter().enumerate() {
        let took = within(Duration::from_secs(5), || trail(s) == want);
        assert!(took.is_some(), "host{i}: {:?}\n{}", trail(s), hosts[i].log());
    }

    // A host that joins later gets the fleet's usage history and the key's last use.
    let mut late = Host::new(dir.path(), "late");
    late.start_agent(&redis.url());
    let l = late.store();
    let took = within(Duration::from_secs(10), || l.get_key(&id).is_ok() && admitted(&l) == 18);
    assert!(took.is_some(), "{}", late.log());
    assert!(l.usage(&id, today, today).unwrap().last_used_at_ms.is_some());
    assert_eq!(trail(&l), want, "the audit trail the log still holds");
    hosts.push(late);
}

/// How long each check takes on `store`, sampled every 100 µs for `how_long`; and how many it admitted.
fn check_latencies(store: &Store, key: &str, how_long: Duration) -> (Vec<Duration>, u64) {
    let (mut out, mut admitted) = (Vec::new(), 0);
    let start = Instant::now();
    while start.elapsed() < how_long {
        let t = Instant::now();
        let decided = store.check(Some(key.as_bytes()), clock()).unwrap();
        out.push(t.elapsed());
        match decided.decision.status {
            Status::Ok => admitted += 1,
            Status::ApiKeyQuotaExceeded | Status::RateLimitExceeded => {}
            other => panic!("{other:?}"),
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    out.sort();
    (out, admitted)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

#[test]
fn a_ten_second_redis_outage_under_load_keeps_latency_and_the_quota_exact() {
    let _serial = serial();
    let (_dir, mut redis, hosts) = fleet(3);
    let quota = 100_000;
    let k = hosts[0]
        .store()
        .create_key(
            &spec(&format!(r#"{{"quota": {{"limit": {quota}, "period": "daily"}}, "rate_limit": null}}"#)),
            clock(),
        )
        .unwrap();
    for h in &hosts[1..] {
        let s = h.store();
        assert!(within(Duration::from_secs(5), || s.get_key(&k.record.id).is_ok()).is_some(), "{}", h.log());
    }
    // Steady traffic on every host (2 processes x 2 threads each, a check every 400 us per thread).
    let children: Vec<Child> = hosts
        .iter()
        .flat_map(|h| (0..2).map(|_| hammer_paced(&h.db, &k.key, Some(Duration::from_micros(400)))).collect::<Vec<_>>())
        .collect();
    let probe = hosts[1].store();
    let (before, probed_before) = check_latencies(&probe, &k.key, Duration::from_secs(2));
    redis.stop();
    let during_outage = hosts[0].store().create_key(&spec(r#"{"rate_limit": null}"#), clock()).unwrap();
    let (during, probed_during) = check_latencies(&probe, &k.key, Duration::from_secs(10));
    let admitted_so_far: i64 = hosts.iter().map(|h| h.store().get_key(&k.record.id).unwrap().usage.used).sum();
    redis.restart();
    let total: u64 = children.into_iter().map(admitted_by).sum::<u64>() + probed_before + probed_during;
    let (b50, b99, d50, d99) =
        (percentile(&before, 0.5), percentile(&before, 0.99), percentile(&during, 0.5), percentile(&during, 0.99));
    eprintln!(
        "check latency on a fleet host, {} samples before / {} during a 10 s Redis outage under load: \
         p50 {b50:?} / {d50:?}, p99 {b99:?} / {d99:?}, max {:?} / {:?}; admitted {admitted_so_far} by the outage's end, \
         {total} in all (quota {quota})",
        before.len(),
        during.len(),
        before.last().unwrap(),
        during.last().unwrap()
    );
    assert!(admitted_so_far < quota, "the quota was not spent before Redis came back: the test tests the outage");
    assert_eq!(total, quota as u64, "exactly the quota, fleet-wide, across the outage\n{}", hosts[0].log());
    // No network on the check path: an outage does not slow checks (slack for a shared machine).
    assert!(d99 <= b99 * 3 + Duration::from_micros(50), "p99 before {b99:?}, during {d99:?}");
    let c = hosts[2].store();
    let arrived = within(Duration::from_secs(10), || checks_as(&c, &during_outage.key, Status::Ok));
    assert!(arrived.is_some(), "a key created during the outage reaches the others after it\n{}", hosts[0].log());
}

#[test]
fn with_when_redis_down_share_the_hosts_split_what_was_unleased_and_never_exceed_the_quota() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut redis = Redis::start(&dir.path().join("redis"), None);
    let mut hosts: Vec<Host> = (0..2).map(|i| Host::new(dir.path(), &format!("host{i}"))).collect();
    for h in &mut hosts {
        h.start_agent_with(&redis.url(), &["--when-redis-down".as_ref(), "share".as_ref()]);
    }
    for h in &hosts {
        h.wait_until_in_the_fleet();
    }
    let k = hosts[0]
        .store()
        .create_key(&spec(r#"{"quota": {"limit": 1000, "period": "daily"}, "rate_limit": null}"#), clock())
        .unwrap();
    let stores: Vec<Store> = hosts.iter().map(Host::store).collect();
    let mut admitted = 0;
    for s in &stores {
        assert!(within(Duration::from_secs(5), || checks_as(s, &k.key, Status::Ok)).is_some(), "{}", hosts[1].log());
        admitted += 1;
    }
    // Both hosts hold a small lease; a heartbeat later each knows what the fleet leased.
    std::thread::sleep(Duration::from_millis(1500));
    redis.stop();
    let raised = |h: &Host| h.log().contains("raised this host's lease of 1 quotas");
    assert!(within(Duration::from_secs(8), || hosts.iter().all(raised)).is_some(), "{}", hosts[0].log());
    for s in &stores {
        admitted += (0..2000).filter(|_| checks_as(s, &k.key, Status::Ok)).count();
    }
    eprintln!("Redis down, --when-redis-down share: 2 hosts admitted {admitted} of a quota of 1000");
    assert!(admitted <= 1000, "{admitted}");
    assert!(admitted >= 990, "each host took its half of what was unleased: {admitted}");
    // Back: the raised leases are the fleet's (re-asserted), and nothing more is granted.
    redis.restart();
    let leased = || -> i64 {
        let mut conn = redis.conn();
        let hashes: Vec<String> = redis::cmd("KEYS").arg("ms-auth:{test}:quota:*").query(&mut conn).unwrap();
        hashes
            .iter()
            .map(|h| {
                let all: std::collections::HashMap<String, i64> =
                    redis::cmd("HGETALL").arg(h).query(&mut conn).unwrap();
                all.iter().filter(|(f, _)| f.starts_with("lease:")).map(|(_, v)| v).sum::<i64>()
            })
            .sum()
    };
    assert!(within(Duration::from_secs(10), || leased() as usize >= admitted).is_some(), "{}", hosts[0].log());
    assert!(leased() <= 1000, "{}", leased());
}

/// A Redis Sentinel (redis-server in sentinel mode) watching `master` as `mymaster`, quick to fail over.
fn sentinel(dir: &Path, master_port: u16) -> (Child, u16) {
    std::fs::create_dir_all(dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let conf = dir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {master_port} 1\n\
             sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n",
            dir.display()
        ),
    )
    .unwrap();
    let child = Command::new("redis-server").arg(&conf).arg("--sentinel").stdout(Stdio::null()).spawn().unwrap();
    let url = format!("redis://127.0.0.1:{port}");
    assert!(within(Duration::from_secs(10), || redis::Client::open(url.as_str()).unwrap().get_connection().is_ok())
        .is_some());
    (child, port)
}

/// A child process killed when the test ends, passed or not (a leftover would keep the test's output
/// open).
struct KilledOnDrop(Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sentinel_knows_a_replica(sentinel_port: u16) -> bool {
    let Ok(mut conn) = redis::Client::open(format!("redis://127.0.0.1:{sentinel_port}")).unwrap().get_connection()
    else {
        return false;
    };
    let replicas: redis::RedisResult<Vec<redis::Value>> =
        redis::cmd("SENTINEL").arg("replicas").arg("mymaster").query(&mut conn);
    replicas.is_ok_and(|r| !r.is_empty())
}

fn master_port_by_sentinel(sentinel_port: u16) -> Option<u16> {
    let mut conn = redis::Client::open(format!("redis://127.0.0.1:{sentinel_port}")).ok()?.get_connection().ok()?;
    let addr: Vec<String> =
        redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg("mymaster").query(&mut conn).ok()?;
    addr.get(1)?.parse().ok()
}

#[test]
fn agents_find_the_master_through_sentinel_and_follow_a_failover() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut master = Redis::start(&dir.path().join("master"), None);
    let replica_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::create_dir_all(dir.path().join("replica")).unwrap();
    let _replica = KilledOnDrop(
        Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &replica_port.to_string(), "--appendonly", "yes", "--save", ""])
            .args(["--replicaof", "127.0.0.1", &master.port.to_string()])
            .arg("--dir")
            .arg(dir.path().join("replica"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (sentinel, sentinel_port) = sentinel(&dir.path().join("sentinel"), master.port);
    let _sentinel = KilledOnDrop(sentinel);
    let url = format!("redis-sentinel://127.0.0.1:{sentinel_port}#mymaster");
    let mut hosts: Vec<Host> = (0..2).map(|i| Host::new(dir.path(), &format!("host{i}"))).collect();
    for h in &mut hosts {
        h.start_agent(&url);
    }
    let (a, b) = (hosts[0].store(), hosts[1].store());
    let k = a.create_key(&spec(r#"{"rate_limit": null}"#), clock()).unwrap();
    assert!(within(Duration::from_secs(5), || checks_as(&b, &k.key, Status::Ok)).is_some(), "{}", hosts[1].log());
    assert!(hosts[0].log().contains("connected to Redis at redis-sentinel://"), "{}", hosts[0].log());

    // The master dies; Sentinel promotes the replica; the agents follow it. (Sentinel learns of replicas
    // from the master's INFO, every 10 s.)
    let known = within(Duration::from_secs(20), || sentinel_knows_a_replica(sentinel_port));
    assert!(known.is_some(), "Sentinel never saw the replica");
    // A change made just before the master dies is not lost with it (it waits for a replica's
    // acknowledgement, or in the outbox).
    let just_before = a.create_key(&spec(r#"{"rate_limit": null}"#), clock()).unwrap();
    std::thread::sleep(Duration::from_millis(150));
    master.stop();
    let promoted = within(Duration::from_secs(20), || master_port_by_sentinel(sentinel_port) == Some(replica_port));
    assert!(promoted.is_some(), "Sentinel did not fail over");
    let after = b.create_key(&spec(r#"{"rate_limit": null}"#), clock()).unwrap();
    b.revoke_key(&k.record.id, clock(), None).unwrap();
    let followed = within(Duration::from_secs(15), || {
        checks_as(&a, &after.key, Status::Ok)
            && checks_as(&a, &k.key, Status::ApiKeyRevoked)
            && checks_as(&b, &just_before.key, Status::Ok)
    });
    assert!(followed.is_some(), "{}\n{}", hosts[0].log(), hosts[1].log());
}

#[test]
fn after_redis_restarts_empty_quota_counts_and_usage_reconverge_without_double_counting() {
    let _serial = serial();
    let (dir, mut redis, hosts) = fleet(2);
    let k = hosts[0]
        .store()
        .create_key(&spec(r#"{"quota": {"limit": 100, "period": "daily"}, "rate_limit": null}"#), clock())
        .unwrap();
    let stores: Vec<Store> = hosts.iter().map(Host::store).collect();
    let mut admitted = 0;
    for (s, n) in stores.iter().zip([30, 20]) {
        for _ in 0..n {
            assert!(within(Duration::from_secs(5), || checks_as(s, &k.key, Status::Ok)).is_some());
            admitted += 1;
        }
    }
    let today = clock();
    let fleet_usage = |s: &Store| s.usage(&k.record.id, today, today).unwrap().days[0].admitted;
    assert!(within(Duration::from_secs(5), || stores.iter().all(|s| fleet_usage(s) == 50)).is_some());
    redis.stop();
    std::fs::remove_dir_all(dir.path().join("redis")).unwrap();
    redis.restart();
    // The hosts re-assert their absolute counts and leases; the rest of the quota is spent exactly once.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut spent_at = None;
    while spent_at.is_none_or(|at: Instant| at.elapsed() < Duration::from_secs(2)) && Instant::now() < deadline {
        admitted += stores.iter().filter(|s| checks_as(s, &k.key, Status::Ok)).count();
        if admitted >= 100 && spent_at.is_none() {
            spent_at = Some(Instant::now()); // and 2 s more, to see that nothing more is admitted
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut conn = redis.conn();
    let hashes: Vec<String> = redis::cmd("KEYS").arg("ms-auth:{test}:quota:*").query(&mut conn).unwrap();
    let hash: std::collections::HashMap<String, i64> = redis::cmd("HGETALL").arg(&hashes[0]).query(&mut conn).unwrap();
    let used: i64 = hash.iter().filter(|(f, _)| f.starts_with("used:")).map(|(_, v)| v).sum();
    assert_eq!(admitted, 100, "exactly the quota across the restart: {hash:?}");
    // Each host's count is under its identity (its store's host id), not its name.
    let used_by = |h: &Host| hash[&format!("used:{}", h.store().fleet_host_id().unwrap().unwrap())];
    assert!(used <= 100 && used_by(&hosts[0]) >= 30 && used_by(&hosts[1]) >= 20, "{hash:?}");
    assert!(within(Duration::from_secs(5), || stores.iter().all(|s| fleet_usage(s) == 100)).is_some(), "usage");
}
