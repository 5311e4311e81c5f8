//! The memory part: keys with quotas created on one host of a fleet of its own, leases, usage rows, what
//! lease hashes and grants cost with more hosts than this machine runs, and a late host's catch-up.

use std::time::{Duration, Instant};

use redis::Commands;

use super::fleet::{self, within, Host};
use super::{spec, status, Settings, Stats, FLEET};
use ms_auth::store::clock_ms;

pub struct Memory {
    pub keys: usize,
    pub create_seconds: f64,
    pub publish_seconds: f64,
    pub used_per_key: f64,
    pub state_per_key: f64,
    pub log_entries: u64,
    pub log_per_entry: f64,
    pub leased: usize,
    pub used_per_lease: f64,
    pub lease_hash: f64,
    /// The host's usage history hash and the usage stream, per row (a key's counts on one host and day).
    pub usage_hash_per_row: f64,
    pub usage_stream_per_row: f64,
    /// (hosts, bytes, Redis's encoding) of lease hashes written directly.
    pub synthetic_lease_hashes: Vec<(usize, u64, String)>,
    /// (hosts, Redis's µs) per call of the grant script on a lease hash of that many hosts.
    pub grant_usec: Vec<(usize, f64)>,
    /// One HGETALL of the state hash: Redis's time (µs) and the reply's bytes.
    pub state_read: (u64, u64),
    pub catch_up_seconds: f64,
}

fn used_memory(c: &mut redis::Connection) -> i64 {
    let info: String = redis::cmd("INFO").arg("memory").query(c).unwrap();
    info.lines().find_map(|l| l.strip_prefix("used_memory:")).unwrap().trim().parse().unwrap()
}

/// Redis's total time in one command so far, in µs (INFO commandstats).
fn server_usec(c: &mut redis::Connection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(c).unwrap();
    let line = info.lines().find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:"))).unwrap_or("");
    line.split(',').find_map(|f| f.strip_prefix("usec=")).map_or(0, |v| v.parse().unwrap())
}

fn memory_usage(c: &mut redis::Connection, key: &str) -> u64 {
    let bytes: Option<u64> = redis::cmd("MEMORY").arg("USAGE").arg(key).arg("SAMPLES").arg(0).query(c).unwrap();
    bytes.unwrap_or_else(|| panic!("no key {key} in Redis: the bench names the agents' keys wrongly"))
}

/// `keys` keys with quotas created on one host (its agent publishing them), then `leased` of them checked
/// once there (each check asks the agent for a lease), then a second host started to catch up.
pub fn measure_memory(s: &Settings) -> Memory {
    let (dir, redis, mut hosts) = fleet::fleet(1);
    let store = hosts[0].store();
    let mut c = redis.conn();
    let (state, log) = (format!("ms-auth:{{{FLEET}}}:state"), format!("ms-auth:{{{FLEET}}}:log"));
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
    let pattern = format!("ms-auth:{{{FLEET}}}:quota:*");
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
    // The host's usage history, by host id (its rows, and a field naming the host), once its agent has
    // published the checks just made (about once a second).
    let host_id = store.fleet_host_id().unwrap().expect("a member");
    let usage_key = format!("ms-auth:{{{FLEET}}}:usage-host:{host_id}");
    let reached = within(Duration::from_secs(10), || {
        std::thread::sleep(Duration::from_millis(100));
        redis::cmd("HLEN").arg(&usage_key).query::<u64>(&mut c).unwrap() > 1
    });
    if reached.is_none() {
        eprintln!("[memory] the host's usage did not reach Redis within 10 s: usage figures reported as 0");
    }
    let usage_rows: u64 = redis::cmd("HLEN").arg(&usage_key).query::<u64>(&mut c).unwrap().saturating_sub(1);
    let usage_hash = if usage_rows > 0 { memory_usage(&mut c, &usage_key) } else { 0 };
    let usage_stream = memory_usage(&mut c, &format!("ms-auth:{{{FLEET}}}:usage"));
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
    // A grant is now a signed read and a compare-and-set computed by the agent (lease_hash.rs), not one
    // script: its Redis time is in the commands per grant the traffic figures count.
    let grant_usec = Vec::new();
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
