//! The Redis side of quota leases: one hash per key's quota and period (`ms-auth:FLEET:quota:KEY:PERIOD`,
//! its content in `lease_state.rs`), read, checked and written back by the agents with a
//! compare-and-set on its sequence number, and what keeps it honest when Redis is not:
//!
//! - **Signed**: an agent grants only from a hash signed with the fleet's secret, so a forged, negative,
//!   deleted or altered field is refused (logged, counted in `fleet status`), and the hash recovered.
//! - **Rollback**: each agent remembers the last state it verified of every hash it uses; an older one
//!   (a Redis restarted from an older file, a replayed state) is refused and recovered.
//! - **Lost**: the fleet has an epoch (`ms-auth:FLEET:epoch`: a random id, and until when nothing more is
//!   granted; no TTL) and each epoch a registry of the quota hashes written in it
//!   (`ms-auth:FLEET:quotas:EPOCH`, a sorted set, no TTL). A hash missing while the registry or this
//!   agent knows it existed in this epoch was lost (evicted, deleted); an epoch missing means Redis lost
//!   its data (FLUSHDB, a restart without persistence). Writes name the epoch they read, so nothing is
//!   written into a Redis that lost it.
//! - **Recovery** (of any of these; `lease_epoch.rs`): a new epoch whose grace (Redis's clock) holds every grant of more
//!   back; every agent sees the epoch change (at its next grant or heartbeat, well within the grace),
//!   and re-asserts every lease it holds, together with the other hosts' figures of the last state it
//!   verified (a host that stopped or is partitioned is not forgotten). Only then is anyone granted more.
//!
//! Each grant also reconciles a counters file rebuilt from the database (`lease_state.rs`, incarnations),
//! and the hand-back at SIGTERM settles each lease exactly before telling Redis (`SharedCounters::settle_lease`).

use std::collections::HashMap;

use super::lease_epoch::{ensure_epoch, epoch_name, recover, registry_name, Problem, EPOCH};
use super::lease_state::{Ask, State};
use super::link::{Failure, Link};
use crate::counters::Settled;
use crate::store::{clock_ms, FleetQuota};

/// The leases' Redis hash of a key's quota in one period.
pub fn hash_name(fleet: &str, owner: &str, period_start_ms: i64) -> String {
    format!("ms-auth:{{{fleet}}}:quota:{owner}:{period_start_ms}")
}

/// Reads quota hashes with what judging them needs, atomically. KEYS: the epoch, the registry of the
/// epoch this agent knows, the hashes. Returns {epoch id, until, Redis's time (s, µs), then for each
/// hash: its registry score, its fields}.
const READ: &str = r#"
local epoch = redis.call('HMGET', KEYS[1], 'id', 'until')
local t = redis.call('TIME')
local out = {epoch[1], epoch[2], t[1], t[2]}
for i = 3, #KEYS do
  out[#out + 1] = redis.call('ZSCORE', KEYS[2], KEYS[i])
  out[#out + 1] = redis.call('HGETALL', KEYS[i])
end
return out
"#;

/// Writes a quota hash's new state if nothing moved since it was read. KEYS: the hash, the epoch, the
/// epoch's registry. ARGV: the epoch id read, the sequence number read ('' for no hash), 1 if the write
/// grants anyone more, the hash's time to live in seconds, then field, value pairs. Returns 'ok', or why
/// not: 'epoch' (a new epoch, or none), 'recovering' (the epoch's grace), 'moved' (written meanwhile).
const WRITE: &str = r#"
local epoch = redis.call('HMGET', KEYS[2], 'id', 'until')
if epoch[1] ~= ARGV[1] then return 'epoch' end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[3] == '1' and now < (tonumber(epoch[2]) or 0) then return 'recovering' end
local seq = redis.call('HGET', KEYS[1], 'seq')
if (seq or '') ~= ARGV[2] or (seq == false and redis.call('EXISTS', KEYS[1]) == 1) then return 'moved' end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
local ttl = tonumber(ARGV[4])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
redis.call('ZADD', KEYS[3], now + ttl * 1000, KEYS[1])
return 'ok'
"#;

/// The agent's scripts for leases.
pub(super) struct LeaseScripts {
    read: redis::Script,
    write: redis::Script,
    pub(super) epoch: redis::Script,
}

impl LeaseScripts {
    pub(super) fn new() -> LeaseScripts {
        LeaseScripts {
            read: redis::Script::new(READ),
            write: redis::Script::new(WRITE),
            epoch: redis::Script::new(EPOCH),
        }
    }
}

/// What the agent knows of the fleet's quota hashes between rounds, and what it counted of them.
#[derive(Default)]
pub(super) struct LeaseWatch {
    pub(super) epoch: Option<String>,
    /// Hash → the last state this agent verified or wrote, the epoch it was in, when the hash expires.
    seen: HashMap<String, (State, String, i64)>,
    /// The epoch changed: every lease this host holds is re-asserted.
    pub(super) reassert: bool,
    pub(super) forged: u64,
    pub(super) lost: u64,
    pub(super) rolled_back: u64,
    pub(super) recoveries: u64,
    pub(super) log: Vec<String>,
}

impl LeaseWatch {
    /// Lines for the agent's log (recoveries, forgeries), oldest first.
    pub(super) fn take_log(&mut self) -> Vec<String> {
        std::mem::take(&mut self.log)
    }

    pub(super) fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "epoch": self.epoch, "forged": self.forged, "lost": self.lost, "rolled_back": self.rolled_back,
            "recoveries": self.recoveries,
        })
    }
}

/// A quota hash as read, with the epoch and Redis's time, in one script call.
struct Read {
    epoch: Option<String>,
    until_ms: i64,
    now_ms: i64,
    now_us: i64,
    registered: bool,
    fields: HashMap<String, String>,
}

fn read(link: &mut Link, names: &[String]) -> std::result::Result<Vec<Read>, Failure> {
    let fleet = &link.cfg.fleet;
    let registry = registry_name(fleet, link.health.leases.epoch.as_deref().unwrap_or_default());
    let mut invocation = link.scripts.leases.read.prepare_invoke();
    invocation.key(epoch_name(fleet)).key(registry);
    for name in names {
        invocation.key(name);
    }
    let replies: Vec<redis::Value> = invocation.invoke(link.conn)?;
    fn parse<T: redis::FromRedisValue>(v: Option<&redis::Value>) -> redis::RedisResult<T> {
        Ok(redis::from_redis_value_ref(v.unwrap_or(&redis::Value::Nil))?)
    }
    let epoch: Option<String> = parse(replies.first())?;
    let until: Option<i64> = parse(replies.get(1))?;
    let (secs, micros): (i64, i64) = (parse(replies.get(2))?, parse(replies.get(3))?);
    let now_ms = secs * 1000 + micros / 1000;
    let mut out = Vec::with_capacity(names.len());
    for i in 0..names.len() {
        let expiry: Option<f64> = parse(replies.get(4 + 2 * i))?;
        out.push(Read {
            epoch: epoch.clone(),
            until_ms: until.unwrap_or(0),
            now_ms,
            now_us: secs * 1_000_000 + micros,
            registered: expiry.is_some_and(|at| at > now_ms as f64),
            fields: parse(replies.get(5 + 2 * i))?,
        });
    }
    Ok(out)
}

/// The hash's state to build on, or what is wrong with it. A hash that is not there and was not known
/// in this epoch starts from this agent's last verified view of it (after a recovery) or empty.
fn classify(link: &Link, name: &str, read: &Read) -> std::result::Result<State, Problem> {
    let watch = &link.health.leases;
    let seen = watch.seen.get(name);
    if read.fields.is_empty() {
        let known_here = seen.is_some_and(|(_, epoch, _)| Some(epoch) == watch.epoch.as_ref());
        if read.registered || known_here {
            return Err(Problem::Lost);
        }
        return Ok(seen.map(|(state, _, _)| state.clone()).unwrap_or_default());
    }
    let state = State::from_fields(&read.fields, &link.cfg.secret, &link.cfg.fleet, name).map_err(Problem::Forged)?;
    match seen {
        Some((newer, _, _)) if newer.seq > state.seq => Err(Problem::RolledBack(state.seq, newer.seq)),
        _ => Ok(state),
    }
}

/// Reads the hash, checks it, lets `change` change it (told whether it may grant more) and writes it
/// back if nothing moved meanwhile; retries a few times. `None`: no stable state this round.
fn transact<R>(
    link: &mut Link,
    name: &str,
    expires_after_ms: i64,
    mut change: impl FnMut(&mut State, bool) -> (R, bool),
) -> std::result::Result<Option<(State, R)>, Failure> {
    for _ in 0..8 {
        if link.health.leases.epoch.is_none() {
            ensure_epoch(link, None)?;
        }
        let read = read(link, &[name.to_string()])?.pop().expect("one hash read");
        if read.epoch.is_none() || read.epoch != link.health.leases.epoch {
            ensure_epoch(link, read.epoch.as_deref())?;
            continue;
        }
        let before = match classify(link, name, &read) {
            Ok(state) => state,
            Err(problem) => {
                recover(link, name, problem)?;
                continue;
            }
        };
        let mut next = before.clone();
        let (result, grows) = change(&mut next, read.now_ms >= read.until_ms);
        let epoch = read.epoch.clone().unwrap_or_default();
        if next == before && !read.fields.is_empty() && read.registered {
            remember(link, name, next.clone(), epoch, expires_after_ms);
            return Ok(Some((next, result)));
        }
        next.seq = (before.seq + 1).max(read.now_us);
        let ttl_s = (expires_after_ms - read.now_ms).max(0) / 1000 + 2 * 86_400;
        let expected = if read.fields.is_empty() { String::new() } else { before.seq.to_string() };
        let mut invocation = link.scripts.leases.write.prepare_invoke();
        invocation
            .key(name)
            .key(epoch_name(&link.cfg.fleet))
            .key(registry_name(&link.cfg.fleet, &epoch))
            .arg(&epoch)
            .arg(expected)
            .arg(grows as i64)
            .arg(ttl_s);
        for (field, value) in next.to_fields(&link.cfg.secret, &link.cfg.fleet, name) {
            invocation.arg(field).arg(value);
        }
        let outcome: String = invocation.invoke(link.conn)?;
        if outcome == "ok" {
            remember(link, name, next.clone(), epoch, expires_after_ms);
            return Ok(Some((next, result)));
        }
    }
    Ok(None)
}

fn remember(link: &mut Link, name: &str, state: State, epoch: String, expires_after_ms: i64) {
    let watch = &mut link.health.leases;
    watch.seen.insert(name.to_string(), (state, epoch, expires_after_ms + 2 * 86_400_000));
}

/// Grants this host more of a key's quota for the period starting at `period_start_ms` (`want`, 0 to
/// re-assert what it holds). `used` and `held` are as the caller read them; the grant reads both again
/// from the counters file it reconciles with (the file may have been rebuilt since). Records the lease
/// in the counters file and returns what the whole fleet holds of the quota.
pub(super) fn grant(
    link: &mut Link,
    q: &FleetQuota,
    period_start_ms: i64,
    expires_after_ms: i64,
    want: i64,
    used: i64,
    held: i64,
) -> std::result::Result<i64, Failure> {
    let _ = (used, held);
    let leased = grant_once(link, q, period_start_ms, expires_after_ms, want)?;
    reassert_if_needed(link)?;
    Ok(leased)
}

fn grant_once(
    link: &mut Link,
    q: &FleetQuota,
    period_start_ms: i64,
    expires_after_ms: i64,
    want: i64,
) -> std::result::Result<i64, Failure> {
    let name = hash_name(&link.cfg.fleet, &q.owner, period_start_ms);
    let Some((inc, used, held)) = link.store.fleet_lease_cell(&q.digest, period_start_ms, clock_ms())? else {
        return Ok(link.health.leases.seen.get(&name).map_or(0, |(s, _, _)| s.fleet_leased()));
    };
    let host = link.cfg.host_id.clone();
    let limit = q.quota.limit;
    let done = transact(link, &name, expires_after_ms, |state, may_grow| {
        let g = state.grant(&host, &Ask { inc, want, limit, used, held, may_grow });
        (g, g.more > 0)
    })?;
    let Some((_, g)) = done else {
        return Ok(link.health.leases.seen.get(&name).map_or(0, |(s, _, _)| s.fleet_leased()));
    };
    link.store.fleet_set_lease_in(inc, &q.digest, period_start_ms, g.local_lease, g.spent)?;
    Ok(g.fleet_leased)
}

/// After an epoch change: re-asserts every lease this host holds (the current period's and the next's).
fn reassert_if_needed(link: &mut Link) -> std::result::Result<(), Failure> {
    for _ in 0..3 {
        if !std::mem::take(&mut link.health.leases.reassert) {
            return Ok(());
        }
        for q in link.store.fleet_quota_view(clock_ms())? {
            let c = q.quota;
            if c.lease > 0 {
                grant_once(link, &q, c.period_start_ms, c.period_end_ms, 0)?;
            }
            if c.next_lease > 0 {
                grant_once(link, &q, c.period_end_ms, c.period_end_ms + 31 * 86_400_000, 0)?;
            }
        }
    }
    Ok(())
}

/// Once a heartbeat: checks the epoch and every quota hash this host holds a lease in (lost, forged,
/// rolled back, or missing this host's lease: recovered or re-asserted, without waiting for a grant),
/// and learns what the fleet has leased of each (for `WhenDown::Share`).
pub(super) fn refresh_fleet_leased(
    link: &mut Link,
    leases: &mut super::quota::Leases,
) -> std::result::Result<(), Failure> {
    // (owner, period start, the lease this host holds in it, when the period ends)
    let mut held = Vec::new();
    for q in link.store.fleet_quota_cells(&leases.owners, clock_ms())? {
        let c = q.quota;
        if c.lease > 0 {
            held.push((q.owner.clone(), c.period_start_ms, c.lease, c.period_end_ms));
        }
        if c.next_lease > 0 {
            held.push((q.owner, c.period_end_ms, c.next_lease, c.period_end_ms + 31 * 86_400_000));
        }
    }
    let names: Vec<String> =
        held.iter().map(|(owner, start, _, _)| hash_name(&link.cfg.fleet, owner, *start)).collect();
    let reads = if names.is_empty() { Vec::new() } else { read(link, &names)? };
    let epoch = match reads.first() {
        Some(r) => r.epoch.clone(),
        None => redis::cmd("HGET").arg(epoch_name(&link.cfg.fleet)).arg("id").query(link.conn)?,
    };
    if epoch.is_none() || epoch != link.health.leases.epoch {
        ensure_epoch(link, epoch.as_deref())?;
        return reassert_if_needed(link);
    }
    let inc = link.store.fleet_incarnation()?;
    for ((owner, start, lease, ends), (name, read)) in held.into_iter().zip(names.iter().zip(&reads)) {
        match classify(link, name, read) {
            Err(problem) => recover(link, name, problem)?,
            // Not there, and not known to have been in this epoch (it is re-created by re-asserting).
            Ok(_) if read.fields.is_empty() => link.health.leases.reassert = true,
            Ok(state) => {
                if state.local_lease(&link.cfg.host_id, inc).is_none_or(|in_redis| in_redis < lease) {
                    link.health.leases.reassert = true;
                }
                leases.fleet_leased.insert((owner, start), state.fleet_leased());
                remember(link, name, state, read.epoch.clone().unwrap_or_default(), ends);
            }
        }
    }
    let now = clock_ms();
    link.health.leases.seen.retain(|_, (_, _, expires)| *expires > now);
    reassert_if_needed(link)
}

/// Gives the fleet back what this host holds and did not use (the agent is stopping): each lease is
/// settled at its count (no check in flight can count past it), then Redis learns it.
pub(super) fn hand_back(link: &mut Link) -> std::result::Result<usize, Failure> {
    let now = clock_ms();
    let held: Vec<FleetQuota> =
        link.store.fleet_quota_view(now)?.into_iter().filter(|q| q.quota.lease > q.quota.used).collect();
    let mut handed = 0;
    for q in &held {
        let start = q.quota.period_start_ms;
        let (inc, settled) = link.store.fleet_settle_lease(&q.digest, start, q.quota.spent)?;
        // A counter that moved on to the next period no longer holds this period's final count: its
        // lease stays as it is in Redis (the fleet under-admits by the rest, never over).
        let Settled::At(used) = settled else { continue };
        let name = hash_name(&link.cfg.fleet, &q.owner, start);
        let host = link.cfg.host_id.clone();
        let done = transact(link, &name, q.quota.period_end_ms, |state, _| (state.hand_back(&host, inc, used), false))?;
        if done.is_some_and(|(_, changed)| changed) {
            handed += 1;
        }
    }
    reassert_if_needed(link)?;
    Ok(handed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::link::{Config, Health, Names, Scripts};
    use crate::fleet::{Secret, WhenDown};
    use crate::period::{Period, DAY_MS};
    use crate::store::Store;
    use redis::Commands;
    use std::time::{Duration, Instant};

    /// A redis-server on a free loopback port, killed on drop.
    struct Redis(std::process::Child, u16);

    impl Redis {
        fn start(dir: &std::path::Path) -> Redis {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let child = std::process::Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir)
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("redis-server is installed");
            let redis = Redis(child, port);
            let deadline = Instant::now() + Duration::from_secs(10);
            while redis.connection().is_err() {
                assert!(Instant::now() < deadline, "redis-server did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
            redis
        }

        fn connection(&self) -> redis::RedisResult<redis::Connection> {
            redis::Client::open(format!("redis://127.0.0.1:{}", self.1))?.get_connection()
        }
    }

    impl Drop for Redis {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn config(port: u16, host: &str) -> Config {
        Config {
            redis_url: format!("redis://127.0.0.1:{port}"),
            redis_password: None,
            ca_file: None,
            fleet: "f".into(),
            host: host.into(),
            host_id: host.into(),
            secret: Secret::new(b"a fleet secret of more than sixteen bytes"),
            max_log: 1000,
            // A short heartbeat: a recovery's grace is 3 s, its least.
            heartbeat: Duration::from_millis(100),
            when_down: WhenDown::Refuse,
            allow_evicting_redis: false,
        }
    }

    /// A host "h1" in fleet "f" with one key of a daily quota of 100.
    fn host(dir: &std::path::Path) -> (Store, crate::store::Created) {
        let store = Store::open(dir.join("keys.db")).unwrap();
        store.fleet_join("f", "h1").unwrap();
        let spec = crate::spec::KeySpec::from_json(r#"{"quota": {"limit": 100, "period": "daily"}}"#).unwrap();
        let created = store.create_key(&spec, clock_ms() - 1000).unwrap();
        (store, created)
    }

    fn quota(store: &Store, at: i64) -> FleetQuota {
        store.fleet_quota_cells(&store.fleet_quota_owners().unwrap(), at).unwrap().pop().unwrap()
    }

    /// Review of issue 21 item 1: the agent hands back at SIGTERM while its host's counter moves into
    /// the next period (a check stamped in it, by a caller's clock ahead of the agent's). The hand-back
    /// once wrote the first period's count as this host's lease of the next one, below the next period's
    /// lease the host already holds: the other hosts were then granted what this host may still admit.
    #[test]
    fn a_hand_back_while_the_counter_moves_to_the_next_period_never_lends_the_next_periods_lease_twice() {
        let dir = tempfile::tempdir().unwrap();
        let redis = Redis::start(dir.path());
        let (store, created) = host(dir.path());
        let cfg = config(redis.1, "h1");
        let scripts =
            Scripts { publish: redis::Script::new(super::super::changelog::PUBLISH), leases: LeaseScripts::new() };
        let mut c = redis.connection().unwrap();
        let (names, mut health) = (Names::of(&cfg.fleet), Health::default());
        let now = clock_ms();
        let today = Period::Daily.bounds(now).0;
        let tomorrow = today + DAY_MS;
        // The fleet's first epoch's grace passes, then: today a lease of 20, 10 used; tomorrow's lease of
        // 50 taken early (as before a period's end).
        redis::cmd("HSET")
            .arg("ms-auth:{f}:epoch")
            .arg("id")
            .arg("e0")
            .arg("until")
            .arg(0)
            .query::<()>(&mut c)
            .unwrap();
        assert!(store.check(Some(created.key.as_bytes()), now).unwrap().decision.status != crate::status::Status::Ok);
        let mut link =
            Link { store: &store, cfg: &cfg, names: &names, scripts: &scripts, conn: &mut c, health: &mut health };
        let q = quota(&store, now);
        grant(&mut link, &q, today, q.quota.period_end_ms, 20, 0, 0).unwrap();
        grant(&mut link, &q, tomorrow, tomorrow + DAY_MS, 50, 0, 0).unwrap();
        assert_eq!((quota(&store, now).quota.lease, quota(&store, now).quota.next_lease), (20, 50));
        for _ in 0..10 {
            assert_eq!(
                store.check(Some(created.key.as_bytes()), now).unwrap().decision.status,
                crate::status::Status::Ok
            );
        }
        std::thread::scope(|s| {
            // The first check stamped tomorrow lands while the hand-back settles today's lease.
            s.spawn(|| {
                let deadline = Instant::now() + Duration::from_secs(5);
                while quota(&store, now).quota.lease != 10 {
                    assert!(Instant::now() < deadline, "the hand-back never lowered today's lease");
                }
                let d = store.check(Some(created.key.as_bytes()), tomorrow + 1).unwrap().decision;
                assert_eq!(d.status, crate::status::Status::Ok);
            });
            hand_back(&mut link).unwrap();
        });
        let held_here = quota(&store, tomorrow + 1).quota.lease;
        assert_eq!(held_here, 50, "this host may still admit 50 tomorrow");
        // Another host asks for tomorrow's quota until it is spent.
        let name = hash_name("f", &created.record.id, tomorrow);
        for _ in 0..50 {
            let ask = Ask { inc: 1, want: 100, limit: 100, used: 0, held: 0, may_grow: true };
            transact(&mut link, &name, tomorrow + DAY_MS, |state, _| (state.grant("h2", &ask), true)).unwrap();
        }
        let fields: HashMap<String, String> = link.conn.hgetall(&name).unwrap();
        let state = State::from_fields(&fields, &cfg.secret, "f", &name).unwrap();
        let other = state.hosts["h2"].lease;
        assert!(held_here + other <= 100, "tomorrow's leases: {held_here} here and {other} on h2, quota 100");
    }

    /// A quota hash put back as it was before this host's last write (a Redis restarted from an older
    /// file, a replayed state: signed, but old) is refused, and the fleet recovers.
    #[test]
    fn a_quota_hash_rolled_back_to_an_older_signed_state_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let redis = Redis::start(dir.path());
        let (store, created) = host(dir.path());
        let cfg = config(redis.1, "h1");
        let scripts =
            Scripts { publish: redis::Script::new(super::super::changelog::PUBLISH), leases: LeaseScripts::new() };
        let mut c = redis.connection().unwrap();
        let (names, mut health) = (Names::of(&cfg.fleet), Health::default());
        let now = clock_ms();
        redis::cmd("HSET")
            .arg("ms-auth:{f}:epoch")
            .arg("id")
            .arg("e0")
            .arg("until")
            .arg(0)
            .query::<()>(&mut c)
            .unwrap();
        store.check(Some(created.key.as_bytes()), now).unwrap();
        let mut link =
            Link { store: &store, cfg: &cfg, names: &names, scripts: &scripts, conn: &mut c, health: &mut health };
        let q = quota(&store, now);
        let name = hash_name("f", &created.record.id, q.quota.period_start_ms);
        grant(&mut link, &q, q.quota.period_start_ms, q.quota.period_end_ms, 10, 0, 0).unwrap();
        let old: HashMap<String, String> = link.conn.hgetall(&name).unwrap();
        grant(&mut link, &q, q.quota.period_start_ms, q.quota.period_end_ms, 30, 0, 0).unwrap();
        assert_eq!(quota(&store, now).quota.lease, 40);
        let _: () = link.conn.del(&name).unwrap();
        let _: () = link.conn.hset_multiple(&name, &old.into_iter().collect::<Vec<_>>()).unwrap();
        let leased = grant(&mut link, &q, q.quota.period_start_ms, q.quota.period_end_ms, 30, 0, 0).unwrap();
        assert_eq!(link.health.leases.rolled_back, 1);
        assert!(link.health.leases.take_log().iter().any(|l| l.contains("rolled back")));
        assert_eq!(leased, 40, "re-asserted, nothing more granted during the recovery");
        assert_eq!(quota(&store, now).quota.lease, 40);
        let epoch: String = link.conn.hget("ms-auth:{f}:epoch", "id").unwrap();
        assert_ne!(epoch, "e0", "a new epoch: every host re-asserts");
    }
}
