//! Fleet mode against a real redis-server (3 hosts, each with its agent): the Redis traffic that checks
//! cause, per 1,000 checks/s fleet-wide (commands/s under load minus commands/s of the same agents idle,
//! measured in the same run), and the under-admission a quota period's end would cost at each instant: the
//! leases the hosts hold and have not used, as a share of the quota and in seconds of traffic.
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

/// Unused leases the hosts hold now (what a period ending now would leave unadmitted).
fn outstanding(stores: &[Store]) -> i64 {
    let now = ms_auth::store::clock_ms();
    stores.iter().flat_map(|s| s.fleet_quota_view(now).unwrap()).map(|q| (q.quota.lease - q.quota.used).max(0)).sum()
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
                    samples.push(outstanding(&stores));
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
             unused leases outstanding: mean {mean:.0}, max {max} ({:.2}% of the quota{})",
            100.0 * max as f64 / QUOTA as f64,
            if rate > 0.0 { format!(", {:.1} s of traffic", max as f64 / rate) } else { String::new() }
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
