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

#[path = "../tests/common/fleet.rs"]
mod fleet;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use fleet::{within, Host, Redis};
use ms_auth::store::clock_ms;
use ms_auth::{KeySpec, Status, Store};
use redis::streams::StreamRangeReply;
use redis::Commands;

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

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
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
    let newest: StreamRangeReply = c.xrevrange_count(format!("ms-auth:{FLEET}:log"), "+", "-", 50).unwrap();
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
    let pattern = format!("ms-auth:{FLEET}:quota:*");
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

struct Memory {
    keys: usize,
    create_seconds: f64,
    publish_seconds: f64,
    used_per_key: f64,
    state_per_key: f64,
    log_entries: u64,
    log_per_entry: f64,
    leased: usize,
    used_per_lease: f64,
    lease_hash: f64,
    /// The host's usage history hash and the usage stream, per row (a key's counts on one host and day).
    usage_hash_per_row: f64,
    usage_stream_per_row: f64,
    /// (hosts, bytes, Redis's encoding) of lease hashes written directly.
    synthetic_lease_hashes: Vec<(usize, u64, String)>,
    /// (hosts, Redis's µs) per call of the grant script on a lease hash of that many hosts.
    grant_usec: Vec<(usize, f64)>,
    /// One HGETALL of the state hash: Redis's time (µs) and the reply's bytes.
    state_read: (u64, u64),
    catch_up_seconds: f64,
}

fn used_memory(c: &mut redis::Connection) -> i64 {
    let info: String = redis::cmd("INFO").arg("memory").query(c).unwrap();
    info.lines().find_map(|l| l.strip_prefix("used_memory:")).unwrap().trim().parse().unwrap()
}

/// Redis's own time for one call of the grant script on a key's lease hash holding `hosts` hosts (the
/// agents' script, called the way they call it), in µs: what bounds the lease grants one Redis serves.
fn grant_cost(c: &mut redis::Connection, hosts: usize) -> f64 {
    let grant = redis::Script::new(ms_auth::fleet::quota::GRANT);
    let name = format!("bench:grant-cost-{hosts}");
    let call = |c: &mut redis::Connection, host: usize| {
        let _: (i64, i64, i64) = grant
            .key(&name)
            .arg(format!("host{host}"))
            .arg(100)
            .arg(LOAD_QUOTA)
            .arg(0)
            .arg(0)
            .arg(3600)
            .invoke(c)
            .unwrap();
    };
    for h in 0..hosts {
        call(c, h);
    }
    let (calls, usec) = (server_calls(c, "evalsha"), server_usec(c, "evalsha"));
    for i in 0..2000 {
        call(c, i % hosts);
    }
    let per_call = (server_usec(c, "evalsha") - usec) as f64 / (server_calls(c, "evalsha") - calls) as f64;
    let _: () = c.del(&name).unwrap();
    per_call
}

fn server_calls(c: &mut redis::Connection, command: &str) -> u64 {
    Stats::of(c).calls(command)
}

/// Redis's total time in one command so far, in µs (INFO commandstats).
fn server_usec(c: &mut redis::Connection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(c).unwrap();
    let line = info.lines().find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:"))).unwrap_or("");
    line.split(',').find_map(|f| f.strip_prefix("usec=")).map_or(0, |v| v.parse().unwrap())
}

fn memory_usage(c: &mut redis::Connection, key: &str) -> u64 {
    redis::cmd("MEMORY").arg("USAGE").arg(key).arg("SAMPLES").arg(0).query(c).unwrap()
}

/// `keys` keys with quotas created on one host (its agent publishing them), then `leased` of them checked
/// once there (each check asks the agent for a lease), then a second host started to catch up.
fn measure_memory(s: &Settings) -> Memory {
    let (dir, redis, mut hosts) = fleet::fleet(1);
    let store = hosts[0].store();
    let mut c = redis.conn();
    let (state, log) = (format!("ms-auth:{FLEET}:state"), format!("ms-auth:{FLEET}:log"));
    std::thread::sleep(Duration::from_secs(2)); // the agent's first usage and member reports
    let base = used_memory(&mut c);
    let spec = spec(r#"{"quota": {"limit": 1000000, "period": "daily"}, "rate_limit": null}"#);
    let started = Instant::now();
    let created: Vec<_> = (0..s.keys).map(|_| store.create_key(&spec, clock_ms()).unwrap()).collect();
    let create_seconds = started.elapsed().as_secs_f64();
    let published = within(Duration::from_secs(600), || {
        std::thread::sleep(Duration::from_millis(50));
        redis::cmd("HLEN").arg(&state).query::<usize>(&mut c).unwrap() >= s.keys
    });
    let publish_seconds = published.expect("the agent never published every key").as_secs_f64() + create_seconds;
    std::thread::sleep(Duration::from_secs(2));
    let with_keys = used_memory(&mut c);
    let state_bytes = memory_usage(&mut c, &state);
    let log_bytes = memory_usage(&mut c, &log);
    let log_entries: u64 = redis::cmd("XLEN").arg(&log).query(&mut c).unwrap();
    eprintln!("[memory] {} keys created in {create_seconds:.1} s, published by {publish_seconds:.1} s", s.keys);

    let leased = s.leased.min(s.keys);
    let hashes_before: usize = redis::cmd("DBSIZE").query(&mut c).unwrap();
    for k in &created[..leased] {
        let _ = status(&store, &k.key); // no lease yet: refused, and the agent's cue to ask
    }
    let all_leased = within(Duration::from_secs(300), || {
        std::thread::sleep(Duration::from_millis(50));
        redis::cmd("DBSIZE").query::<usize>(&mut c).unwrap() >= hashes_before + leased
    });
    assert!(all_leased.is_some(), "the agent never leased every key checked\n{}", hosts[0].log());
    std::thread::sleep(Duration::from_secs(2));
    let with_leases = used_memory(&mut c);
    let pattern = format!("ms-auth:{FLEET}:quota:*");
    let sample: Vec<String> = redis::cmd("SCAN")
        .arg(0)
        .arg("MATCH")
        .arg(&pattern)
        .arg("COUNT")
        .arg(1000)
        .query::<(u64, Vec<String>)>(&mut c)
        .unwrap()
        .1;
    let lease_hash = sample.iter().map(|n| memory_usage(&mut c, n)).sum::<u64>() as f64 / sample.len().max(1) as f64;
    let usage_rows: u64 = redis::cmd("HLEN").arg(format!("ms-auth:{FLEET}:usage:host0")).query(&mut c).unwrap();
    let usage_hash = memory_usage(&mut c, &format!("ms-auth:{FLEET}:usage:host0"));
    let usage_stream = memory_usage(&mut c, &format!("ms-auth:{FLEET}:usage"));
    eprintln!("[memory] {leased} keys leased in {:.1} s", all_leased.unwrap().as_secs_f64());
    // A lease hash as P hosts would leave it (each host's two fields, written the way the grant script
    // writes them, here directly): the 32-host figure checks it against the agents' real hashes above.
    let synthetic_lease_hashes: Vec<(usize, u64, String)> = [32, 200, 257, 1000]
        .into_iter()
        .map(|p| {
            let name = format!("bench:lease-hash-of-{p}-hosts");
            for h in 0..p {
                let _: () = c
                    .hset_multiple(&name, &[(format!("lease:host{h}"), 123_456), (format!("used:host{h}"), 120_000)])
                    .unwrap();
            }
            let bytes = memory_usage(&mut c, &name);
            let encoding: String = redis::cmd("OBJECT").arg("ENCODING").arg(&name).query(&mut c).unwrap();
            let _: () = c.del(&name).unwrap();
            (p, bytes, encoding)
        })
        .collect();
    let grant_usec = [3, 32, 200].into_iter().map(|p| (p, grant_cost(&mut c, p))).collect();
    // What reading the whole state costs (a host starting from scratch, or one the log trimmed past):
    // Redis's own time for the HGETALL, during which it serves no one else, and the reply's size.
    let (usec0, out0) = (server_usec(&mut c, "hgetall"), Stats::of(&mut c).net.1);
    let _: redis::Value = redis::cmd("HGETALL").arg(&state).query(&mut redis.conn()).unwrap();
    let state_read = (server_usec(&mut c, "hgetall") - usec0, Stats::of(&mut c).net.1 - out0);

    // A host joining now starts from the state hash (every record) and the audit events the log holds.
    let mut late = Host::new(dir.path(), "late");
    let started = Instant::now();
    late.start_agent(&redis.url());
    late.wait_until_in_the_fleet();
    let late_store = late.store();
    let last = &created.last().unwrap().record.id;
    let caught_up = within(Duration::from_secs(600), || {
        std::thread::sleep(Duration::from_millis(20));
        late_store.get_key(last).is_ok()
    });
    assert!(caught_up.is_some(), "the late host never caught up\n{}", late.log());
    let catch_up_seconds = started.elapsed().as_secs_f64();
    hosts.push(late);
    Memory {
        keys: s.keys,
        create_seconds,
        publish_seconds,
        used_per_key: (with_keys - base) as f64 / s.keys as f64,
        state_per_key: state_bytes as f64 / s.keys as f64,
        log_entries,
        log_per_entry: log_bytes as f64 / log_entries.max(1) as f64,
        leased,
        used_per_lease: (with_leases - with_keys) as f64 / leased.max(1) as f64,
        lease_hash,
        usage_hash_per_row: usage_hash as f64 / usage_rows.max(1) as f64,
        usage_stream_per_row: usage_stream as f64 / usage_rows.max(1) as f64,
        synthetic_lease_hashes,
        grant_usec,
        state_read,
        catch_up_seconds,
    }
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

fn report(s: &Settings, runs: &[FleetFigures], memory: Option<&Memory>) {
    let load_average = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\nfleet_scale: one redis-server, {} checks/s over {} key(s) with a quota, {} s windows, {} trials; \
         {} cores, load average at the end {}",
        s.rate,
        s.load_keys,
        s.seconds,
        s.trials,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    let header: Vec<String> = runs.iter().map(|r| format!("{} hosts", r.hosts)).collect();
    println!("{:<58} {}", "", header.iter().map(|h| format!("{h:>30}")).collect::<String>());
    let row = |label: &str, cells: Vec<String>| {
        println!("{label:<58} {}", cells.iter().map(|c| format!("{c:>30}")).collect::<String>());
    };
    for (i, what) in ["key create", "revocation"].iter().enumerate() {
        row(
            &format!("{what}: per host, p50 / p99"),
            runs.iter()
                .map(|r| {
                    let d = &r.propagation.per_host[i];
                    format!("{} / {} (n={})", ms(quantile(d, 0.5)), ms(quantile(d, 0.99)), d.len())
                })
                .collect(),
        );
        row(
            &format!("{what}: until every host, p50 / p99 / max"),
            runs.iter()
                .map(|r| {
                    let d = &r.propagation.every_host[i];
                    format!("{} / {} / {}", ms(quantile(d, 0.5)), ms(quantile(d, 0.99)), ms(*d.last().unwrap()))
                })
                .collect(),
        );
        for (part, fan_out) in
            [("  of which: until in the log (origin's agent)", false), ("  of which: from the log to every host", true)]
        {
            let list = |r: &FleetFigures| {
                let p = &r.propagation;
                if fan_out {
                    p.fan_out[i].clone()
                } else {
                    p.published[i].clone()
                }
            };
            row(
                &format!("{part}, p50 / p99"),
                runs.iter()
                    .map(|r| format!("{} / {}", ms(quantile(&list(r), 0.5)), ms(quantile(&list(r), 0.99))))
                    .collect(),
            );
        }
    }
    row("Redis commands/s, all hosts idle", runs.iter().map(|r| format!("{:.0}", r.idle.commands)).collect());
    row(
        "Redis commands/s per idle host",
        runs.iter().map(|r| format!("{:.1}", r.idle.commands / r.hosts as f64)).collect(),
    );
    row(
        "Redis network in / out per idle host, KB/s",
        runs.iter()
            .map(|r| format!("{:.2} / {:.2}", r.idle.net.0 / 1e3 / r.hosts as f64, r.idle.net.1 / 1e3 / r.hosts as f64))
            .collect(),
    );
    row(
        "Redis CPU, idle / under load (% of a core)",
        runs.iter()
            .map(|r| format!("{:.1}% / {:.1}%", 100.0 * r.idle.redis_cpu, 100.0 * r.load.window.redis_cpu))
            .collect(),
    );
    row(
        "agent CPU per host, idle / under load (% of a core)",
        runs.iter()
            .map(|r| format!("{:.1}% / {:.1}%", 100.0 * r.idle.agent_cpu, 100.0 * r.load.window.agent_cpu))
            .collect(),
    );
    row(
        "checks/s during the load window (admitted / refused)",
        runs.iter()
            .map(|r| format!("{:.0} ({}/{})", r.load.checks_per_second, r.load.admitted, r.load.refused))
            .collect(),
    );
    row("Redis commands/s under load", runs.iter().map(|r| format!("{:.0}", r.load.window.commands)).collect());
    row(
        "Redis commands/s per 1,000 checks/s (load - idle)",
        runs.iter()
            .map(|r| format!("{:.1}", (r.load.window.commands - r.idle.commands) / (r.load.checks_per_second / 1000.0)))
            .collect(),
    );
    row(
        "lease grants (script calls) per 1,000 checks",
        runs.iter().map(|r| format!("{:.1}", 1000.0 * r.load.window.grants / r.load.checks_per_second)).collect(),
    );
    row(
        "lease grants/s per (host, key) in use",
        runs.iter().map(|r| format!("{:.2}", r.load.window.grants / (r.hosts * s.load_keys) as f64)).collect(),
    );
    row(
        "a lease hash of a key used on every host: bytes (fields)",
        runs.iter().map(|r| format!("{:.0} ({:.0})", r.load.lease_hash.0, r.load.lease_hash.1)).collect(),
    );
    row(
        "load warm-up (every host topped up once)",
        runs.iter().map(|r| format!("{:.1} s", r.load.warmup.as_secs_f64())).collect(),
    );
    for r in runs {
        let top: Vec<String> = r
            .idle
            .by_command
            .iter()
            .take(8)
            .map(|(name, rate)| format!("{name} {:.2}", rate / r.hosts as f64))
            .collect();
        println!("  idle, per host and second ({} hosts): {}", r.hosts, top.join(", "));
        let top: Vec<String> =
            r.load.window.by_command.iter().take(8).map(|(name, rate)| format!("{name} {rate:.0}")).collect();
        println!("  under load, per second ({} hosts, {:.0} s): {}", r.hosts, r.load.window.seconds, top.join(", "));
    }
    if let Some(m) = memory {
        println!(
            "\nmemory: {} keys with a quota created on one host (Store::create_key, {:.1} s; all published by {:.1} s)",
            m.keys, m.create_seconds, m.publish_seconds
        );
        let per_100k = |bytes: f64, what: &str| format!("{:.1} MB per 100,000 {what}", bytes * 100_000.0 / 1e6);
        println!(
            "  used_memory after - before:          {:>6.0} B per key  ({})",
            m.used_per_key,
            per_100k(m.used_per_key, "keys")
        );
        println!(
            "  state hash (MEMORY USAGE):           {:>6.0} B per key  ({})",
            m.state_per_key,
            per_100k(m.state_per_key, "keys")
        );
        println!(
            "  change log (MEMORY USAGE):           {:>6.0} B per entry ({} entries: a key and its audit event each, trimmed at ~100,000; {})",
            m.log_per_entry,
            m.log_entries,
            per_100k(m.log_per_entry, "entries")
        );
        println!(
            "  {} keys leased by that host: used_memory {:.0} B per key leased; a lease hash (1 host) {:.0} B",
            m.leased, m.used_per_lease, m.lease_hash
        );
        println!(
            "  usage rows (a key's day on one host; the check above made one per key): {:.0} B in the host's history hash, {:.0} B in the usage stream",
            m.usage_hash_per_row, m.usage_stream_per_row
        );
        let synthetic: Vec<String> = m
            .synthetic_lease_hashes
            .iter()
            .map(|(p, bytes, encoding)| format!("{p} hosts {bytes} B ({encoding})"))
            .collect();
        println!("  a lease hash written directly with each host's two fields: {}", synthetic.join(", "));
        let grants: Vec<String> = m.grant_usec.iter().map(|(p, usec)| format!("{p} hosts {usec:.1} µs")).collect();
        println!(
            "  Redis's time per lease grant (the grant script), by hosts in the key's lease hash: {}",
            grants.join(", ")
        );
        println!(
            "  reading the whole state hash (HGETALL): {:.0} ms in Redis, a reply of {:.1} MB",
            m.state_read.0 as f64 / 1000.0,
            m.state_read.1 as f64 / 1e6
        );
        println!("  a host joining later caught up from the state hash in {:.1} s", m.catch_up_seconds);
    }
}
