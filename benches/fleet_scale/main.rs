//! Fleet mode past three hosts (issue 22): N simulated hosts on this machine (a store and an agent each, one
//! redis-server), and 3 hosts measured the same way in the same run (machines are noisy):
//! - propagation: a key created, then revoked, on one host; the time until each other host's store answers
//!   the new state (a check polled every millisecond), and until every host does, split into the wait for
//!   the origin's agent to put it in the log and the fan-out from there;
//! - Redis commands per second per idle host, and per 1,000 checks/s (a paced check rate spread over the
//!   hosts on keys with quotas, minus the same agents idle), Redis's network bytes and the agents' CPU;
//! - lease round trips: calls of the grant script (counted by the EXPIRE only it runs) per 1,000 checks;
//! - Redis memory per 100,000 keys with quotas created on one host (change log, state hash), and per key
//!   leased (the lease hashes), and how long a host joining later takes to catch up from the state hash.
//!
//! Run: cargo bench --bench fleet_scale   (needs redis-server)
//! Env: HOSTS (32), KEYS (100000), DURATION (seconds per traffic window, 10), TRIALS (40), RATE (checks/s,
//! 2000), LOAD_KEYS (keys the checks use, 1), LEASED (keys leased in the memory part, 10000).

#[path = "../../tests/common/fleet.rs"]
mod fleet;
mod memory;
mod report;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use fleet::{within, Host, Redis};
use memory::measure_memory;
use ms_auth::store::clock_ms;
use ms_auth::{KeySpec, Status, Store};
use redis::streams::StreamRangeReply;
use redis::Commands;
use report::report;

/// The quota of the keys the load uses: large, so that the fleet never comes near spending it. A host's
/// first ask is then 1,000 (the cap), and the warm-up lasts until every host has topped its lease up once.
const LOAD_QUOTA: i64 = 1_000_000_000;
const FIRST_ASK: i64 = 1_000;
const FLEET: &str = "test"; // the harness's fleet name

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Settings {
    hosts: usize,
    keys: usize,
    seconds: f64,
    trials: usize,
    rate: f64,
    load_keys: usize,
    leased: usize,
}

/// Counters of the Redis server: every command processed (a script's own commands included) and each
/// command's calls.
struct Stats {
    total: u64,
    /// Bytes Redis received and sent (`total_net_input_bytes`, `total_net_output_bytes`).
    net: (u64, u64),
    /// CPU seconds the server has used (`used_cpu_user` + `used_cpu_sys`).
    cpu: f64,
    calls: HashMap<String, u64>,
}

impl Stats {
    /// Read on a connection opened beforehand (opening one sends commands of its own).
    fn of(c: &mut redis::Connection) -> Stats {
        let info: String = redis::cmd("INFO").arg("stats").arg("commandstats").arg("cpu").query(c).unwrap();
        let mut stats = Stats { total: 0, net: (0, 0), cpu: 0.0, calls: HashMap::new() };
        for line in info.lines() {
            if let Some(v) = line.strip_prefix("total_commands_processed:") {
                stats.total = v.trim().parse().unwrap();
            } else if let Some(v) = line.strip_prefix("used_cpu_user:").or_else(|| line.strip_prefix("used_cpu_sys:")) {
                stats.cpu += v.trim().parse::<f64>().unwrap();
            } else if let Some(v) = line.strip_prefix("total_net_input_bytes:") {
                stats.net.0 = v.trim().parse().unwrap();
            } else if let Some(v) = line.strip_prefix("total_net_output_bytes:") {
                stats.net.1 = v.trim().parse().unwrap();
            } else if let Some((name, rest)) = line.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) {
                let calls = rest.strip_prefix("calls=").and_then(|c| c.split(',').next()).unwrap_or("0");
                stats.calls.insert(name.to_string(), calls.parse().unwrap());
            }
        }
        stats
    }

    fn calls(&self, name: &str) -> u64 {
        self.calls.get(name).copied().unwrap_or(0)
    }
}

/// What happened between two readings, per second.
struct Window {
    seconds: f64,
    commands: f64,
    /// Bytes per second into and out of Redis (our own INFO included: a few KB).
    net: (f64, f64),
    /// Redis's CPU time per second of the window.
    redis_cpu: f64,
    grants: f64,
    by_command: Vec<(String, f64)>,
    /// CPU time of one agent per second of the window, on average.
    agent_cpu: f64,
}

fn window(before: &Stats, after: &Stats, seconds: f64) -> Window {
    let mut by_command: Vec<(String, f64)> = after
        .calls
        .iter()
        .map(|(name, n)| (name.clone(), (n - before.calls(name)) as f64 / seconds))
        .filter(|(name, rate)| *rate > 0.0 && name != "info")
        .collect();
    by_command.sort_by(|a, b| b.1.total_cmp(&a.1));
    Window {
        seconds,
        // Less our own INFO (one per reading).
        commands: (after.total - before.total - 1) as f64 / seconds,
        net: ((after.net.0 - before.net.0) as f64 / seconds, (after.net.1 - before.net.1) as f64 / seconds),
        redis_cpu: (after.cpu - before.cpu) / seconds,
        // Only the grant script runs EXPIRE (the lease hash's time to live).
        grants: (after.calls("expire") - before.calls("expire")) as f64 / seconds,
        by_command,
        agent_cpu: 0.0,
    }
}

/// CPU seconds the hosts' agents have run so far (the scheduler's count, in ns: /proc/PID/stat's ticks
/// are too coarse for an idle agent).
fn agents_cpu_seconds(hosts: &[Host]) -> f64 {
    let of = |pid: u32| -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap_or_default();
        stat.split_whitespace().next().and_then(|ns| ns.parse::<f64>().ok()).unwrap_or(0.0) / 1e9
    };
    hosts.iter().filter_map(|h| h.agent.as_ref()).map(|child| of(child.id())).sum()
}

fn status(store: &Store, key: &str) -> Option<Status> {
    store.check(Some(key.as_bytes()), clock_ms()).ok().map(|c| c.decision.status)
}

fn spec(json: &str) -> KeySpec {
    KeySpec::from_json(json).unwrap()
}
/// Polls every host but `origin` until each answers `wanted` for `key`; the time each took from `started`.
fn until_every_host(
    stores: &[Store],
    hosts: &[Host],
    origin: usize,
    key: &str,
    wanted: Status,
    started: Instant,
) -> Vec<Duration> {
    let mut pending: Vec<usize> = (0..stores.len()).filter(|i| *i != origin).collect();
    let mut took = Vec::new();
    while !pending.is_empty() {
        pending.retain(|&i| {
            let done = status(&stores[i], key) == Some(wanted);
            if done {
                took.push(started.elapsed());
            }
            !done
        });
        if let Some(&late) = pending.first() {
            assert!(started.elapsed() < Duration::from_secs(30), "{wanted:?} never reached {}", hosts[late].name);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    took
}

#[derive(Default)]
struct Propagation {
    per_host: [Vec<Duration>; 2],
    every_host: [Vec<Duration>; 2],
    /// From the change to its entry in the log (the origin's agent publishing it)...
    published: [Vec<Duration>; 2],
    /// ...and from there until every other host answers it.
    fan_out: [Vec<Duration>; 2],
}

/// When the log's newest entry for key `id` was added, in ms since the epoch (a stream id is Redis's
/// clock, the same as ours here).
fn logged_at_ms(c: &mut redis::Connection, id: &str) -> i64 {
    let newest: StreamRangeReply = c.xrevrange_count(format!("ms-auth:{{{FLEET}}}:log"), "+", "-", 50).unwrap();
    let entry = newest
        .ids
        .iter()
        .find(|e| e.get::<String>("kind").as_deref() == Some("key") && e.get::<String>("id").as_deref() == Some(id))
        .expect("the change is in the log");
    entry.id.split('-').next().unwrap().parse().unwrap()
}

/// Each trial: a key created on one host (in turn) until every other host admits it, then revoked there
/// until every other host refuses it. Each change waits a random 0-250 ms first, so that it lands at any
/// point of the agents' rounds (about 100 ms each) as an admin's change does; made right after the
/// previous change reached every host it would land at the same point each time.
fn propagation(redis: &Redis, stores: &[Store], hosts: &[Host], trials: usize) -> Propagation {
    let mut c = redis.conn();
    let mut seed = clock_ms() as u64 | 1;
    let mut pause = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(seed % 250));
    };
    let mut p = Propagation::default();
    for trial in 0..trials {
        let origin = trial % stores.len();
        let mut id = String::new();
        let mut key = String::new();
        for (i, wanted) in [Status::Ok, Status::ApiKeyRevoked].into_iter().enumerate() {
            pause();
            let (started, started_ms) = (Instant::now(), clock_ms());
            if wanted == Status::Ok {
                let created = stores[origin].create_key(&spec("{}"), clock_ms()).unwrap();
                (id, key) = (created.record.id, created.key);
            } else {
                stores[origin].revoke_key(&id, clock_ms(), Some("leaked")).unwrap();
            }
            let took = until_every_host(stores, hosts, origin, &key, wanted, started);
            let every_host = *took.iter().max().unwrap();
            let published = Duration::from_millis((logged_at_ms(&mut c, &id) - started_ms).max(0) as u64);
            p.every_host[i].push(every_host);
            p.published[i].push(published);
            p.fan_out[i].push(every_host.saturating_sub(published));
            p.per_host[i].extend(took);
        }
    }
    for list in p.per_host.iter_mut().chain(&mut p.every_host).chain(&mut p.published).chain(&mut p.fan_out) {
        list.sort();
    }
    p
}

struct Load {
    checks_per_second: f64,
    admitted: u64,
    refused: u64,
    warmup: Duration,
    window: Window,
    /// Per lease hash of a key used on every host: (MEMORY USAGE bytes, fields).
    lease_hash: (f64, f64),
}

/// `rate` checks/s over every host and `keys`, from up to 4 paced threads: after a warm-up (until every host
/// has topped up its first lease of every key, at most 90 s), one window of `seconds`.
fn load(redis: &Redis, hosts: &[Host], stores: &[Store], keys: &[String], rate: f64, seconds: f64) -> Load {
    let threads = stores.len().min(4);
    let (checks, admitted, refused) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let stop = AtomicBool::new(false);
    let pattern = format!("ms-auth:{{{FLEET}}}:quota:*");
    let (mut c, mut counters) = (redis.conn(), redis.conn());
    let mut lease_hashes = || -> Vec<HashMap<String, i64>> {
        let names: Vec<String> = redis::cmd("KEYS").arg(&pattern).query(&mut c).unwrap();
        names.iter().map(|n| redis::cmd("HGETALL").arg(n).query(&mut c).unwrap()).collect()
    };
    let started = Instant::now();
    let result = std::thread::scope(|scope| {
        for t in 0..threads {
            let (checks, admitted, refused, stop) = (&checks, &admitted, &refused, &stop);
            scope.spawn(move || {
                let mine: Vec<&Store> = stores.iter().skip(t).step_by(threads).collect();
                let interval = Duration::from_secs_f64(threads as f64 / rate);
                let mut next = Instant::now();
                let mut i = 0usize;
                while !stop.load(Relaxed) {
                    let (store, key) = (mine[i % mine.len()], &keys[(i / mine.len()) % keys.len()]);
                    match status(store, key) {
                        Some(Status::Ok) => admitted.fetch_add(1, Relaxed),
                        _ => refused.fetch_add(1, Relaxed),
                    };
                    checks.fetch_add(1, Relaxed);
                    i += 1;
                    next += interval;
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
            });
        }
        let pairs = stores.len() * keys.len();
        let topped_up = within(Duration::from_secs(90), || {
            std::thread::sleep(Duration::from_millis(250));
            let hashes = lease_hashes();
            let n: usize = hashes
                .iter()
                .map(|h| h.iter().filter(|(f, v)| f.starts_with("lease:") && **v > FIRST_ASK).count())
                .sum();
            n >= pairs
        });
        let warmup = topped_up.unwrap_or_else(|| started.elapsed());
        let (before, checks0, admitted0, refused0) =
            (Stats::of(&mut counters), checks.load(Relaxed), admitted.load(Relaxed), refused.load(Relaxed));
        let cpu0 = agents_cpu_seconds(hosts);
        let measured = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(seconds));
        let after = Stats::of(&mut counters);
        let elapsed = measured.elapsed().as_secs_f64();
        let agent_cpu = (agents_cpu_seconds(hosts) - cpu0) / elapsed / hosts.len() as f64;
        let (checks1, admitted1, refused1) = (checks.load(Relaxed), admitted.load(Relaxed), refused.load(Relaxed));
        stop.store(true, Relaxed);
        Load {
            checks_per_second: (checks1 - checks0) as f64 / elapsed,
            admitted: admitted1 - admitted0,
            refused: refused1 - refused0,
            warmup,
            window: Window { agent_cpu, ..window(&before, &after, elapsed) },
            lease_hash: (0.0, 0.0),
        }
    });
    let names: Vec<String> = redis::cmd("KEYS").arg(&pattern).query(&mut c).unwrap();
    let (mut bytes, mut fields) = (0u64, 0u64);
    for n in &names {
        bytes += redis::cmd("MEMORY").arg("USAGE").arg(n).arg("SAMPLES").arg(0).query::<u64>(&mut c).unwrap();
        fields += redis::cmd("HLEN").arg(n).query::<u64>(&mut c).unwrap();
    }
    let count = names.len().max(1) as f64;
    Load { lease_hash: (bytes as f64 / count, fields as f64 / count), ..result }
}

struct FleetFigures {
    hosts: usize,
    propagation: Propagation,
    idle: Window,
    load: Load,
}

fn measure_fleet(n: usize, s: &Settings) -> FleetFigures {
    let started = Instant::now();
    let (_dir, redis, hosts) = fleet::fleet(n);
    let stores: Vec<Store> = hosts.iter().map(Host::store).collect();
    eprintln!("[{n} hosts] agents connected in {:.1} s", started.elapsed().as_secs_f64());
    let load_spec = format!(r#"{{"quota": {{"limit": {LOAD_QUOTA}, "period": "daily"}}, "rate_limit": null}}"#);
    let keys: Vec<String> =
        (0..s.load_keys).map(|_| stores[0].create_key(&spec(&load_spec), clock_ms()).unwrap().key).collect();
    let propagation = propagation(&redis, &stores, &hosts, s.trials);
    for (st, h) in stores.iter().zip(&hosts) {
        let known =
            within(Duration::from_secs(30), || keys.iter().all(|k| status(st, k) != Some(Status::ApiKeyInvalid)));
        assert!(known.is_some(), "the load's keys never reached {}", h.name);
    }
    eprintln!("[{n} hosts] propagation done at {:.1} s", started.elapsed().as_secs_f64());
    // The checks above asked for leases (and the propagation's keys' usage is being published): settle.
    std::thread::sleep(Duration::from_secs(3));
    let mut counters = redis.conn();
    let (before, cpu0) = (Stats::of(&mut counters), agents_cpu_seconds(&hosts));
    let idle_started = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(s.seconds));
    let elapsed = idle_started.elapsed().as_secs_f64();
    let agent_cpu = (agents_cpu_seconds(&hosts) - cpu0) / elapsed / n as f64;
    let idle = Window { agent_cpu, ..window(&before, &Stats::of(&mut counters), elapsed) };
    eprintln!("[{n} hosts] idle done at {:.1} s", started.elapsed().as_secs_f64());
    let load = load(&redis, &hosts, &stores, &keys, s.rate, s.seconds);
    eprintln!(
        "[{n} hosts] load done at {:.1} s (warm-up {:.1} s)",
        started.elapsed().as_secs_f64(),
        load.warmup.as_secs_f64()
    );
    FleetFigures { hosts: n, propagation, idle, load }
}
fn main() {
    let s = Settings {
        hosts: env("HOSTS", 32),
        keys: env("KEYS", 100_000),
        seconds: env("DURATION", 10.0),
        trials: env("TRIALS", 40),
        rate: env("RATE", 2000.0),
        load_keys: env("LOAD_KEYS", 1),
        leased: env("LEASED", 10_000),
    };
    let started = Instant::now();
    let mut runs = vec![measure_fleet(s.hosts, &s)];
    if s.hosts != 3 {
        runs.push(measure_fleet(3, &s));
    }
    let memory = (s.keys > 0).then(|| measure_memory(&s));
    report(&s, &runs, memory.as_ref());
    println!("(whole run: {:.0} s)", started.elapsed().as_secs_f64());
}
