//! Fleet mode against a real redis-server (3 hosts, each with its agent): a host's first request on a key
//! and a burst on a fresh key (how many are refused although the fleet's quota has room, and how long
//! checks wait for the agent); the Redis traffic that checks cause, per 1,000 checks/s fleet-wide
//! (commands/s under load minus commands/s of the same agents idle, measured in the same run); and the
//! under-admission a quota period's end would cost at each instant: the leases the hosts hold and have not
//! used, as a share of the quota and in seconds of traffic.
//! Run: cargo bench --bench fleet_traffic   (needs redis-server; MS_AUTH_BENCH_SECONDS=10 by default)

#[path = "../tests/common/fleet.rs"]
mod fleet;

use std::time::{Duration, Instant};

use fleet::{Host, Redis};
use ms_auth::{KeySpec, Status, Store};

const QUOTA: i64 = 1_000_000;

fn commands_processed(redis: &Redis) -> (u64, u64) {
    let info: String = redis::cmd("INFO").arg("all").query(&mut redis.conn()).unwrap();
    let field = |prefix: &str| -> u64 {
        info.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| {
                let v = l.split_once(':')?.1;
                v.split("calls=").nth(1).map_or(v, |c| c.split(',').next().unwrap_or("0")).trim().parse::<u64>().ok()
            })
            .sum()
    };
    (field("total_commands_processed:"), field("cmdstat_evalsha:") + field("cmdstat_eval:"))
}

/// Unused leases of the key `id` the hosts hold now (what a period ending now would leave unadmitted).
fn outstanding(stores: &[Store], id: &str) -> i64 {
    let now = ms_auth::store::clock_ms();
    stores
        .iter()
        .flat_map(|s| s.fleet_quota_view(now).unwrap())
        .filter(|q| q.owner == id)
        .map(|q| (q.quota.lease - q.quota.used).max(0))
        .sum()
}

fn percentiles(mut took: Vec<Duration>) -> String {
    took.sort();
    let at = |p: f64| took[((took.len() - 1) as f64 * p) as usize];
    format!("p50 {:?}, p99 {:?}, max {:?}", at(0.5), at(0.99), took.last().unwrap())
}

/// A fresh key with a daily quota of `limit`, on every host: (id, key).
fn fresh_key(hosts: &[Host], stores: &[Store], limit: i64) -> (String, String) {
    let spec = format!(r#"{{"quota": {{"limit": {limit}, "period": "daily"}}, "rate_limit": null}}"#);
    let k = hosts[0].store().create_key(&KeySpec::from_json(&spec).unwrap(), ms_auth::store::clock_ms()).unwrap();
    for s in stores {
        assert!(fleet::within(Duration::from_secs(10), || s.get_key(&k.record.id).is_ok()).is_some());
    }
    (k.record.id, k.key)
}

/// Each host's first request on 20 fresh keys with a quota of 1,000/day: how many are refused, and how
/// long they take (the wait for the agent's lease).
fn first_requests(hosts: &[Host], stores: &[Store]) {
    let keys: Vec<String> = (0..20).map(|_| fresh_key(hosts, stores, 1000).1).collect();
    let (mut refused, mut took) = (0, Vec::new());
    for key in &keys {
        for s in stores {
            let started = Instant::now();
            let d = s.check(Some(key.as_bytes()), ms_auth::store::clock_ms()).unwrap().decision;
            took.push(started.elapsed());
            refused += usize::from(d.status != Status::Ok);
        }
    }
    println!("first requests, 20 keys x 3 hosts, 1,000/day: {refused} of 60 refused; {}", percentiles(took));
}

/// Bursts of 2,000 checks at once on one host (8 threads, each with its own handle, 250 checks each) on
/// fresh keys with 100,000/day: the answers, and how long checks took.
fn bursts(hosts: &[Host], stores: &[Store], trials: usize) {
    let (mut admitted, mut throttled, mut exceeded, mut took, mut left) = (0, 0, 0, Vec::new(), Vec::new());
    for trial in 0..trials {
        let (id, key) = fresh_key(hosts, stores, 100_000);
        let handles: Vec<Store> = (0..8).map(|_| hosts[trial % 3].store()).collect();
        let start = Instant::now() + Duration::from_millis(100);
        let answers: Vec<(Status, Duration)> = std::thread::scope(|scope| {
            let threads: Vec<_> = handles
                .iter()
                .map(|s| {
                    let key = &key;
                    scope.spawn(move || {
                        while Instant::now() < start {
                            std::hint::spin_loop();
                        }
                        (0..250)
                            .map(|_| {
                                let t = Instant::now();
                                let d = s.check(Some(key.as_bytes()), ms_auth::store::clock_ms()).unwrap().decision;
                                (d.status, t.elapsed())
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            threads.into_iter().flat_map(|t| t.join().unwrap()).collect()
        });
        for (status, t) in answers {
            match status {
                Status::Ok => admitted += 1,
                Status::RateLimitExceeded => throttled += 1,
                Status::ApiKeyQuotaExceeded => exceeded += 1,
                other => panic!("{other:?}"),
            }
            took.push(t);
        }
        // What the burst leaves leased and unused once the agents have settled (a period ending then).
        std::thread::sleep(Duration::from_millis(1500));
        left.push(outstanding(stores, &id));
    }
    let waited: Vec<Duration> = took.iter().copied().filter(|t| *t > Duration::from_micros(50)).collect();
    println!(
        "bursts of 2,000 at once on one host, fresh key, 100,000/day, {trials} trials: {admitted} admitted, \
         {throttled} rate_limit_exceeded ({:.2}%), {exceeded} api_key_quota_exceeded; check time {}; \
         {} checks over 50 µs (waits for the agent): {}; unused leases left after each burst {left:?}",
        100.0 * throttled as f64 / (2000 * trials) as f64,
        percentiles(took),
        waited.len(),
        if waited.is_empty() { "-".to_string() } else { percentiles(waited) }
    );
}

fn main() {
    let seconds: f64 = std::env::var("MS_AUTH_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10.0);
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(&dir.path().join("redis"), None);
    let mut hosts: Vec<Host> = (0..3).map(|i| Host::new(dir.path(), &format!("host{i}"))).collect();
    for h in &mut hosts {
        h.start_agent(&redis.url());
    }
    for h in &hosts {
        h.wait_until_in_the_fleet();
    }
    let spec = format!(r#"{{"quota": {{"limit": {QUOTA}, "period": "daily"}}, "rate_limit": null}}"#);
    let key = hosts[0].store().create_key(&KeySpec::from_json(&spec).unwrap(), ms_auth::store::clock_ms()).unwrap();
    let stores: Vec<Store> = hosts.iter().map(Host::store).collect();
    for s in &stores {
        assert!(fleet::within(Duration::from_secs(10), || s.get_key(&key.record.id).is_ok()).is_some());
    }
    first_requests(&hosts, &stores);
    bursts(&hosts, &stores, 5);
    println!("fleet_traffic: 3 hosts, one key with a quota of {QUOTA}/day, {seconds} s per measurement");
    let measure = |label: &str, checks_per_second: f64| -> f64 {
        let (commands0, scripts0) = commands_processed(&redis);
        let started = Instant::now();
        let window = Duration::from_secs_f64(seconds);
        let admitted = std::sync::atomic::AtomicU64::new(0);
        let mut samples = Vec::new();
        std::thread::scope(|scope| {
            if checks_per_second > 0.0 {
                for s in &stores {
                    let (key, admitted) = (&key.key, &admitted);
                    scope.spawn(move || {
                        let interval = Duration::from_secs_f64(3.0 / checks_per_second);
                        let mut next = Instant::now();
                        while started.elapsed() < window {
                            let d = s.check(Some(key.as_bytes()), ms_auth::store::clock_ms()).unwrap().decision;
                            if d.status == Status::Ok {
                                admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            next += interval;
                            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                                std::thread::sleep(wait);
                            }
                        }
                    });
                }
            }
            while started.elapsed() < window {
                std::thread::sleep(Duration::from_millis(200));
                if started.elapsed() > window / 4 {
                    samples.push(outstanding(&stores, &key.record.id));
                }
            }
        });
        let elapsed = started.elapsed().as_secs_f64();
        let (commands1, scripts1) = commands_processed(&redis);
        let commands = (commands1 - commands0) as f64 / elapsed;
        let scripts = (scripts1 - scripts0) as f64 / elapsed;
        let rate = admitted.into_inner() as f64 / elapsed;
        let mean = samples.iter().sum::<i64>() as f64 / samples.len().max(1) as f64;
        let max = samples.iter().copied().max().unwrap_or(0);
        println!(
            "{label:<34} {rate:>8.0} checks/s admitted; Redis {commands:>6.1} commands/s ({scripts:>5.1} script calls/s); \
             unused leases outstanding: mean {mean:.0}, max {max} ({:.2}% of the quota{}; bound {:.0})",
            100.0 * max as f64 / QUOTA as f64,
            if rate > 0.0 { format!(", {:.2} s of traffic", max as f64 / rate) } else { String::new() },
            (QUOTA as f64 * 0.005).max(rate)
        );
        commands
    };
    let idle = measure("idle agents (baseline)", 0.0);
    for rate in [1_000.0, 10_000.0] {
        let loaded = measure(&format!("{rate:.0} checks/s over 3 hosts"), rate);
        println!(
            "  -> Redis traffic caused by checks: {:.1} commands/s per 1,000 checks/s",
            (loaded - idle) / (rate / 1000.0)
        );
    }
}
