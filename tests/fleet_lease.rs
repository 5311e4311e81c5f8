//! Quota leases seen from the check (issue 22, item 1), against a real redis-server with 3 hosts, each with
//! its agent: `api_key_quota_exceeded` only once the fleet's quota is spent; a host out of lease while the
//! fleet has room waits a bounded time for its agent (one Redis round trip) or answers
//! `rate_limit_exceeded` with a Retry-After of at most 1 s; never more than the quota fleet-wide.

mod common;

use std::time::{Duration, Instant};

use common::fleet::*;
use common::*;
use ms_auth::{Status, Store};

/// These tests run one at a time: each starts a Redis, agents and busy checking threads, and their
/// figures are about the product, not about sharing 2 cores with each other.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn clock() -> i64 {
    ms_auth::store::clock_ms()
}

/// Until every store of `hosts` has the key (read from the database: no check, so no lease is asked).
fn until_everywhere(hosts: &[Host], id: &str) {
    for h in hosts {
        let s = h.store();
        assert!(within(Duration::from_secs(10), || s.get_key(id).is_ok()).is_some(), "{}: {}", h.name, h.log());
    }
}

#[test]
fn a_hosts_first_request_on_a_key_whose_fleet_quota_has_room_is_admitted() {
    let _serial = serial();
    let (_dir, _redis, hosts) = fleet(3);
    let keys: Vec<_> = (0..5)
        .map(|_| {
            hosts[0]
                .store()
                .create_key(&spec(r#"{"quota": {"limit": 1000, "period": "daily"}, "rate_limit": null}"#), clock())
                .unwrap()
        })
        .collect();
    for k in &keys {
        until_everywhere(&hosts, &k.record.id);
    }
    let stores: Vec<Store> = hosts.iter().map(Host::store).collect();
    let mut answers = Vec::new();
    for k in &keys {
        for s in &stores {
            let started = Instant::now();
            let d = s.check(Some(k.key.as_bytes()), clock()).unwrap().decision;
            answers.push((d.status, d.retry_after_ms, started.elapsed()));
        }
    }
    let admitted = answers.iter().filter(|a| a.0 == Status::Ok).count();
    let mut waits: Vec<Duration> = answers.iter().map(|a| a.2).collect();
    waits.sort();
    eprintln!(
        "first requests, 5 keys x 3 hosts, quota 1,000/day: {admitted} of 15 admitted; check time p50 {:?}, max {:?}",
        waits[waits.len() / 2],
        waits.last().unwrap()
    );
    assert_eq!(admitted, 15, "every first request admitted: {answers:?}\n{}", hosts[0].log());
}

/// A checking process of the burst (this test binary run again): 2 threads, each waits for the start
/// instant and then checks the key `MS_AUTH_LEASE_EACH` times as fast as it can; prints one line per
/// answer: status, retry in ms, and how long the check took in µs.
#[test]
fn burst_child() {
    let (Ok(db), Ok(key)) = (std::env::var("MS_AUTH_LEASE_DB"), std::env::var("MS_AUTH_LEASE_KEY")) else { return };
    let each: usize = std::env::var("MS_AUTH_LEASE_EACH").unwrap().parse().unwrap();
    let start_at: i64 = std::env::var("MS_AUTH_LEASE_START_AT").unwrap().parse().unwrap();
    let store = Store::open(&db).unwrap();
    let lines: Vec<String> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    while clock() < start_at {
                        std::hint::spin_loop();
                    }
                    (0..each)
                        .map(|_| {
                            let started = Instant::now();
                            let d = store.check(Some(key.as_bytes()), clock()).unwrap().decision;
                            format!("ANSWER {} {} {}", d.status.code(), d.retry_after_ms, started.elapsed().as_micros())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads.into_iter().flat_map(|t| t.join().unwrap()).collect()
    });
    println!("\n{}", lines.join("\n"));
}

/// One answer of a burst: status code, retry in ms, µs the check took.
struct Answer(String, i64, u128);

/// `processes` checking processes of 2 threads on `db`, each thread `each` checks, all starting at once.
fn burst(db: &std::path::Path, key: &str, processes: usize, each: usize) -> Vec<Answer> {
    let start_at = clock() + 500; // every process started and mapped by then
    let children: Vec<_> = (0..processes)
        .map(|_| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "burst_child", "--nocapture", "--test-threads=1"])
                .env("MS_AUTH_LEASE_DB", db)
                .env("MS_AUTH_LEASE_KEY", key)
                .env("MS_AUTH_LEASE_EACH", each.to_string())
                .env("MS_AUTH_LEASE_START_AT", start_at.to_string())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut answers = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(rest) = line.strip_prefix("ANSWER ") else { continue };
            let f: Vec<&str> = rest.split(' ').collect();
            answers.push(Answer(f[0].to_string(), f[1].parse().unwrap(), f[2].parse().unwrap()));
        }
    }
    assert_eq!(answers.len(), processes * 2 * each, "every check answered");
    answers
}

fn percentile(sorted: &[u128], p: f64) -> u128 {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

#[test]
fn a_burst_on_a_fresh_key_is_never_told_its_quota_is_exceeded_and_throttled_at_most_one_percent() {
    let _serial = serial();
    let (_dir, _redis, hosts) = fleet(3);
    let k = hosts[0]
        .store()
        .create_key(&spec(r#"{"quota": {"limit": 100000, "period": "daily"}, "rate_limit": null}"#), clock())
        .unwrap();
    until_everywhere(&hosts, &k.record.id);
    // 2,000 requests at once on one host: 4 processes x 2 threads x 250, on a key no check has used yet.
    let answers = burst(&hosts[1].db, &k.key, 4, 250);
    let count = |code: &str| answers.iter().filter(|a| a.0 == code).count();
    let (admitted, throttled, exceeded) = (count("ok"), count("rate_limit_exceeded"), count("api_key_quota_exceeded"));
    let mut took: Vec<u128> = answers.iter().map(|a| a.2).collect();
    took.sort();
    eprintln!(
        "burst of 2,000 on one host, fresh key, 100,000/day: {admitted} admitted, {throttled} rate_limit_exceeded, \
         {exceeded} api_key_quota_exceeded; check time p50 {} µs, p99 {} µs, max {} µs",
        percentile(&took, 0.5),
        percentile(&took, 0.99),
        took.last().unwrap()
    );
    assert_eq!(exceeded, 0, "the fleet's quota has room: never api_key_quota_exceeded\n{}", hosts[1].log());
    assert!(throttled <= 20, "at most 1% throttled: {throttled}\n{}", hosts[1].log());
    assert_eq!(admitted + throttled, 2000);
    assert!(answers.iter().filter(|a| a.0 == "rate_limit_exceeded").all(|a| (1..=1000).contains(&a.1)), "retry <= 1 s");
    let used = hosts[1].store().get_key(&k.record.id).unwrap().usage.used;
    assert_eq!(used, admitted as i64, "the host counted what it admitted");
    // What the burst leaves leased and unused once the agent has settled: what a period ending then would
    // leave unadmitted, at most a second of traffic (this second's: the burst).
    std::thread::sleep(Duration::from_millis(1500));
    let store = hosts[1].store();
    let q = store.fleet_quota_view(clock()).unwrap().into_iter().find(|q| q.owner == k.record.id).unwrap().quota;
    eprintln!("after the burst: lease {}, used {}", q.lease, q.used);
    assert!(q.lease - q.used <= 2000, "{} unused after a burst of 2,000", q.lease - q.used);
}

#[test]
fn a_small_quota_hammered_from_three_hosts_admits_exactly_the_quota() {
    let _serial = serial();
    let (_dir, redis, hosts) = fleet(3);
    let k = hosts[0]
        .store()
        .create_key(&spec(r#"{"quota": {"limit": 30, "period": "daily"}, "rate_limit": null}"#), clock())
        .unwrap();
    until_everywhere(&hosts, &k.record.id);
    // Each host: 2 processes x 2 threads x 40 checks at once, 480 in all against a quota of 30; then each host
    // asks until its agent has heard that the fleet's quota is spent.
    let mut admitted = 0;
    let mut answers = Vec::new();
    std::thread::scope(|s| {
        let runs: Vec<_> = hosts.iter().map(|h| s.spawn(|| burst(&h.db, &k.key, 2, 40))).collect();
        for r in runs {
            answers.extend(r.join().unwrap());
        }
    });
    admitted += answers.iter().filter(|a| a.0 == "ok").count();
    for h in &hosts {
        let store = h.store();
        let spent = within(Duration::from_secs(10), || {
            let d = store.check(Some(k.key.as_bytes()), clock()).unwrap().decision;
            admitted += usize::from(d.status == Status::Ok);
            d.status == Status::ApiKeyQuotaExceeded
        });
        assert!(spent.is_some(), "{}: {}", h.name, h.log());
    }
    let mut conn = redis.conn();
    let hashes: Vec<String> = redis::cmd("KEYS").arg("ms-auth:{test}:quota:*").query(&mut conn).unwrap();
    let hash: std::collections::HashMap<String, i64> = redis::cmd("HGETALL").arg(&hashes[0]).query(&mut conn).unwrap();
    let leased: i64 = hash.iter().filter(|(f, _)| f.starts_with("lease:")).map(|(_, v)| v).sum();
    eprintln!("quota 30 hammered from 3 hosts: {admitted} admitted; leases {hash:?}");
    assert_eq!(admitted, 30, "exactly the quota, fleet-wide");
    assert_eq!(leased, 30, "every unit leased, none twice");
    let refused = answers.iter().filter(|a| a.0 != "ok");
    assert!(refused.clone().all(|a| a.0 != "api_key_quota_exceeded" || a.1 > 1000), "quota_exceeded waits for the day");
}

/// What a run of checks found: how many were admitted, the statuses seen, how long each check took
/// (sorted), and how many times the checking thread slept (voluntary context switches: a wait for the
/// agent is one; being preempted on a busy machine is not).
struct Run {
    admitted: usize,
    statuses: Vec<Status>,
    took: Vec<Duration>,
    slept: i64,
}

fn voluntary_switches() -> i64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    usage.ru_nvcsw
}

/// Checks on `store` for `how_long`.
fn checks_for(store: &Store, key: &str, how_long: Duration) -> Run {
    let mut run = Run { admitted: 0, statuses: Vec::new(), took: Vec::new(), slept: voluntary_switches() };
    let started = Instant::now();
    while started.elapsed() < how_long {
        let t = Instant::now();
        let d = store.check(Some(key.as_bytes()), clock()).unwrap().decision;
        run.took.push(t.elapsed());
        run.admitted += usize::from(d.status == Status::Ok);
        if !run.statuses.contains(&d.status) {
            run.statuses.push(d.status);
        }
    }
    run.slept = voluntary_switches() - run.slept;
    run.took.sort();
    run
}

impl Run {
    fn p99(&self) -> Duration {
        self.took[self.took.len() * 99 / 100]
    }

    /// Microseconds: p99 under 1 ms, and the thread slept at most a few times (a flush turn's I/O).
    fn never_waited(&self) -> bool {
        self.p99() < Duration::from_millis(1) && self.slept <= 5
    }
}

#[test]
fn a_host_without_its_agent_never_waits_and_never_admits_past_its_lease() {
    let _serial = serial();
    let (_dir, _redis, mut hosts) = fleet(2);
    let k = hosts[0]
        .store()
        .create_key(&spec(r#"{"quota": {"limit": 100000, "period": "daily"}, "rate_limit": null}"#), clock())
        .unwrap();
    until_everywhere(&hosts, &k.record.id);
    let lease_of = |s: &Store| {
        let q = s.fleet_quota_view(clock()).unwrap().pop().unwrap().quota;
        (q.lease, q.used)
    };
    // Host 0's agent stopped (SIGTERM: it hands back what it did not use): at once, no check waits.
    let a = hosts[0].store();
    assert!(within(Duration::from_secs(5), || a.check(Some(k.key.as_bytes()), clock()).unwrap().decision.status
        == Status::Ok)
    .is_some());
    hosts[0].stop_agent();
    let (lease, used) = lease_of(&a);
    assert_eq!(lease, used, "the agent handed back what it did not use\n{}", hosts[0].log());
    let run = checks_for(&a, &k.key, Duration::from_millis(500));
    eprintln!(
        "agent stopped: lease {lease}, used {used}; then {} checks: {} admitted, {:?}, p99 {:?}, slept {} times",
        run.took.len(),
        run.admitted,
        run.statuses,
        run.p99(),
        run.slept
    );
    assert_eq!(run.admitted, 0, "what it held, not one more");
    assert_eq!(run.statuses, [Status::RateLimitExceeded], "the fleet's quota has room");
    assert!(run.never_waited(), "no wait for an agent that is gone");
    // Host 1's agent killed -9 (it cannot say it is gone): at most one bounded wait, then none.
    let b = hosts[1].store();
    let ok = || b.check(Some(k.key.as_bytes()), clock()).unwrap().decision.status == Status::Ok;
    assert!(within(Duration::from_secs(5), ok).is_some());
    let mut agent = hosts[1].agent.take().unwrap();
    unsafe { libc::kill(agent.id() as i32, libc::SIGKILL) };
    agent.wait().unwrap();
    let (lease, used) = lease_of(&b);
    let at_once = checks_for(&b, &k.key, Duration::from_millis(1100));
    let after = checks_for(&b, &k.key, Duration::from_millis(500));
    eprintln!(
        "agent killed: lease {lease}, used {used}; then {} + {} admitted, {:?}; in the first 1.1 s the longest \
         check took {:?} and the thread slept {} times; then p99 {:?}, slept {} times",
        at_once.admitted,
        after.admitted,
        after.statuses,
        at_once.took.last().unwrap(),
        at_once.slept,
        after.p99(),
        after.slept
    );
    assert_eq!((at_once.admitted + after.admitted) as i64, lease - used, "what it held, not one more");
    assert!(*at_once.took.last().unwrap() < Duration::from_millis(150), "a wait of at most lease_wait (50 ms)");
    assert!(at_once.slept <= 10, "one wait, not one per check");
    assert!(after.never_waited(), "then no wait");
}

#[test]
fn leases_left_unused_at_any_instant_stay_within_half_a_percent_or_a_second_of_traffic() {
    let _serial = serial();
    let (_dir, _redis, hosts) = fleet(3);
    let quota = 100_000;
    let k = hosts[0]
        .store()
        .create_key(
            &spec(&format!(r#"{{"quota": {{"limit": {quota}, "period": "daily"}}, "rate_limit": null}}"#)),
            clock(),
        )
        .unwrap();
    until_everywhere(&hosts, &k.record.id);
    let stores: Vec<Store> = hosts.iter().map(Host::store).collect();
    // About 1,000 checks/s fleet-wide for 4 s; the unused leases sampled every 50 ms after the first second.
    let (seconds, per_host) = (4.0, 333.0);
    let started = Instant::now();
    let admitted = std::sync::atomic::AtomicUsize::new(0);
    let mut outstanding = Vec::new();
    std::thread::scope(|s| {
        for store in &stores {
            let (key, admitted) = (&k.key, &admitted);
            s.spawn(move || {
                let mut next = Instant::now();
                while started.elapsed().as_secs_f64() < seconds {
                    if store.check(Some(key.as_bytes()), clock()).unwrap().decision.status == Status::Ok {
                        admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    next += Duration::from_secs_f64(1.0 / per_host);
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
            });
        }
        while started.elapsed().as_secs_f64() < seconds {
            std::thread::sleep(Duration::from_millis(50));
            if started.elapsed().as_secs_f64() > 1.0 {
                let now = clock();
                let unused: i64 = stores
                    .iter()
                    .flat_map(|s| s.fleet_quota_view(now).unwrap())
                    .map(|q| (q.quota.lease - q.quota.used).max(0))
                    .sum();
                outstanding.push(unused);
            }
        }
    });
    let rate = admitted.into_inner() as f64 / started.elapsed().as_secs_f64();
    let max = *outstanding.iter().max().unwrap();
    let bound = (quota as f64 * 0.005).max(rate);
    eprintln!(
        "{rate:.0} checks/s over 3 hosts, quota {quota}: unused leases max {max} ({:.2}% of the quota, {:.2} s of \
         traffic); bound {bound:.0}",
        100.0 * max as f64 / quota as f64,
        max as f64 / rate
    );
    assert!(rate > 800.0, "the load was applied: {rate:.0}/s");
    assert!(max as f64 <= bound, "{max} unused > {bound:.0}");
}

#[test]
fn with_lease_wait_ms_0_a_check_never_blocks_and_the_agent_leases_all_the_same() {
    let _serial = serial();
    let (_dir, _redis, hosts) = fleet(2);
    let k = hosts[0]
        .store()
        .create_key(&spec(r#"{"quota": {"limit": 1000, "period": "daily"}, "rate_limit": null}"#), clock())
        .unwrap();
    until_everywhere(&hosts, &k.record.id);
    // What an event-loop server passes to ms_store_open_v2.
    let options = ms_auth::StoreOptions::from_json(r#"{"lease_wait_ms": 0}"#).unwrap();
    let store = Store::open_with(&hosts[1].db, options).unwrap();
    let (slept, now) = (voluntary_switches(), clock());
    let d = store.check(Some(k.key.as_bytes()), now).unwrap().decision;
    assert_eq!((d.status, d.retry_after_ms), (Status::RateLimitExceeded, 1000), "refused at once, quota not exceeded");
    assert_eq!(voluntary_switches() - slept, 0, "the check did not block");
    // The answer's fields, from the one place that builds them: wait a second; the quota has room.
    let windows = ms_auth::headers::Windows { quota: Some(ms_auth::period::Period::Daily), rate_window_ms: None };
    let fields = ms_auth::headers::http_fields(&d, windows, now);
    assert!(fields.starts_with("Retry-After: 1\r\n"), "{fields}");
    assert!(fields.contains("RateLimit: \"quota\";r=1000;"), "{fields}");
    // Its cue woke the agent all the same: admitted within a round trip or so.
    let ok = || store.check(Some(k.key.as_bytes()), clock()).unwrap().decision.status == Status::Ok;
    let took = within(Duration::from_secs(2), ok);
    eprintln!("lease_wait_ms 0: first check refused without blocking, admitted {took:?} later");
    assert!(took.is_some_and(|t| t < Duration::from_millis(100)), "{took:?}\n{}", hosts[1].log());
    for bad in ["1001", "-1", "\"50\"", "1.5", "null"] {
        let e = ms_auth::StoreOptions::from_json(&format!(r#"{{"lease_wait_ms": {bad}}}"#)).unwrap_err();
        assert!(e.message.contains("lease_wait_ms"), "{bad}: {}", e.message);
    }
}
