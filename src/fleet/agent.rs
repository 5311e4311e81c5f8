//! The fleet agent: the one process per host that talks to Redis. In a loop it publishes this host's
//! changes (the store's outbox) to the fleet's log, applies the log to the store, and reports itself in
//! the fleet's member list. Redis being unreachable never touches the check path: servers keep deciding
//! from their store, changes made meanwhile wait in the outbox, and the agent reconnects with backoff.
//!
//! Redis keys, for fleet F: `ms-auth:F:log` (a Stream: fields `kind`, `id`, `body`, `origin`, `sig`),
//! `ms-auth:F:state` (a hash: the newest change of every record, for hosts that start from scratch or
//! whose position the log trimmed past), `ms-auth:F:members` (a hash: host → last report).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::streams::{StreamId, StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::Commands;
use serde_json::{json, Value};

use super::quota::{self, Leases};
use super::usage::UsageSync;
use super::{Change, Secret, KINDS};
use crate::error::{Error, Result};
use crate::store::{clock_ms, Store};

pub struct Config {
    /// `redis://[user:password@]host:port[/db]` or `rediss://…` for TLS.
    pub redis_url: String,
    /// The CA certificate (PEM) that signed the server's, for `rediss://`.
    pub ca_file: Option<PathBuf>,
    pub fleet: String,
    pub host: String,
    pub secret: Secret,
    /// Entries the log keeps (about; older ones are trimmed, the state hash covers them).
    pub max_log: usize,
    /// How often the agent reports itself (and reads the member list).
    pub heartbeat: Duration,
    /// What a host admits while Redis is unreachable, once its leases run out.
    pub when_down: super::WhenDown,
}

/// Publishes one change: appends it to the log and makes it the record's newest state, atomically (an
/// audit event is history, not state: the log only).
const PUBLISH: &str = r#"
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
    'kind', ARGV[2], 'id', ARGV[3], 'body', ARGV[4], 'origin', ARGV[5], 'sig', ARGV[6])
if ARGV[2] ~= 'audit' then
  redis.call('HSET', KEYS[2], ARGV[2] .. ':' .. ARGV[3], cjson.encode({stream_id = id, kind = ARGV[2],
      id = ARGV[3], body = ARGV[4], origin = ARGV[5], sig = ARGV[6]}))
end
return id
"#;

/// How long Redis must be unreachable before `WhenDown::Share` takes its share (not for a blip).
const SHARE_AFTER: Duration = Duration::from_secs(2);

struct Names {
    log: String,
    state: String,
    members: String,
}

/// What the agent counts and reports (`ms-auth fleet status`).
#[derive(Default)]
struct Health {
    redis_ok: bool,
    last_error: Option<String>,
    published: u64,
    applied: u64,
    refused: u64,
    last_id: Option<String>,
    members: Value,
    /// Live members sharing each key's rate limit.
    rate_sharers: usize,
    /// Whether the position was compared with the log since the last (re)connection.
    position_checked: bool,
}

/// Runs until `stop` is set (SIGTERM), then publishes what is pending if Redis is there, and returns.
pub fn run(store: &Store, cfg: &Config, stop: &AtomicBool, log: &mut dyn FnMut(&str)) -> Result<()> {
    if store.fleet_join(&cfg.fleet, &cfg.host)? {
        log(&format!("joined fleet {:?} as host {:?}: this store's records are published", cfg.fleet, cfg.host));
    }
    let names = Names {
        log: format!("ms-auth:{}:log", cfg.fleet),
        state: format!("ms-auth:{}:state", cfg.fleet),
        members: format!("ms-auth:{}:members", cfg.fleet),
    };
    let scripts = Scripts {
        publish: redis::Script::new(PUBLISH),
        grant: redis::Script::new(quota::GRANT),
        hand_back: redis::Script::new(quota::HAND_BACK),
    };
    let mut leases = Leases::default();
    let mut usage = UsageSync::default();
    let mut health = Health::default();
    let mut conn: Option<redis::Connection> = None;
    let mut backoff = Duration::from_millis(100);
    let mut down_since: Option<Instant> = None;
    let mut ever_connected = false;
    let mut next_report = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            match connect(cfg) {
                Ok(c) => {
                    log(&format!("connected to Redis at {}", redacted(&cfg.redis_url)));
                    conn = Some(c);
                    health.redis_ok = true;
                    health.position_checked = false;
                    leases.reconnected(ever_connected);
                    ever_connected = true;
                    usage.reconnected();
                    down_since = None;
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    let why = format!("Redis at {} unreachable: {e}", redacted(&cfg.redis_url));
                    if health.redis_ok || health.last_error.as_deref() != Some(why.as_str()) {
                        log(&format!("{why}; checks go on from the local store, changes wait in its outbox"));
                    }
                    health.redis_ok = false;
                    health.last_error = Some(why);
                    let down_for = down_since.get_or_insert_with(Instant::now).elapsed();
                    if cfg.when_down == super::WhenDown::Share && down_for >= SHARE_AFTER {
                        match leases.share_while_down(store, health.rate_sharers, clock_ms()) {
                            Ok(0) => {}
                            Ok(n) => log(&format!(
                                "Redis unreachable for {} s: raised this host's lease of {n} quotas by its share \
                                 (1/{}) of what the fleet had not leased (--when-redis-down share)",
                                down_for.as_secs(),
                                health.rate_sharers
                            )),
                            Err(e) => log(&format!("store: {}", e.message)),
                        }
                    }
                    report_locally(store, cfg, &health, &usage, log);
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        let stepped = step(store, cfg, &names, &scripts, c, &mut health, log).and_then(|()| {
            lease_round(store, cfg, &scripts, c, &mut leases)?;
            if Instant::now() >= next_report {
                next_report = Instant::now() + cfg.heartbeat;
                heartbeat(store, cfg, &names, c, &mut health)?;
                if cfg.when_down == super::WhenDown::Share {
                    refresh_fleet_leased(store, cfg, c, &mut leases)?;
                }
                usage.round(store, cfg, c, log)?;
                report_locally(store, cfg, &health, &usage, log);
            }
            Ok(())
        });
        if let Err(e) = stepped {
            match e {
                Failure::Redis(e) => {
                    log(&format!("lost Redis: {e}; reconnecting"));
                    health.last_error = Some(format!("Redis: {e}"));
                    health.redis_ok = false;
                    conn = None;
                }
                Failure::Store(e) => {
                    log(&format!("store: {}", e.message));
                    health.last_error = Some(e.message);
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
    if let Some(c) = conn.as_mut() {
        if let Err(e) = publish_outbox(store, cfg, &names, &scripts, c, &mut health) {
            log(&format!("at exit, pending changes stay in the outbox: {e:?}"));
        }
        match hand_back(store, cfg, &scripts, c) {
            Ok(n) if n > 0 => log(&format!("handed back the unused leases of {n} quotas")),
            Ok(_) => {}
            Err(e) => log(&format!("at exit, could not hand back unused leases: {e:?}")),
        }
        let _: redis::RedisResult<()> = c.hdel(&names.members, &cfg.host);
    }
    health.redis_ok = false;
    report_locally(store, cfg, &health, &usage, log);
    log("stopped");
    Ok(())
}

/// The agent's Lua scripts (loaded once per connection by EVALSHA, sent whole when Redis lacks them).
struct Scripts {
    publish: redis::Script,
    grant: redis::Script,
    hand_back: redis::Script,
}

/// Tops up this host's leases of the quotas its checks are using (and takes the next period's a few
/// seconds before it starts), so that local checks count within what the fleet granted this host.
fn lease_round(
    store: &Store,
    cfg: &Config,
    scripts: &Scripts,
    c: &mut redis::Connection,
    leases: &mut Leases,
) -> std::result::Result<(), Failure> {
    let now = clock_ms();
    let generation = store.admin_generation()?;
    if leases.owners_generation != Some(generation) {
        leases.owners = store.fleet_quota_owners()?;
        leases.owners_generation = Some(generation);
    }
    let view = store.fleet_quota_cells(&leases.owners, now)?;
    let mut oldest_period = i64::MAX;
    let may_ask = leases.may_ask();
    for q in &view {
        let cell = &q.quota;
        oldest_period = oldest_period.min(cell.period_start_ms);
        let chunk = leases.chunk(q);
        let current = (q.owner.clone(), cell.period_start_ms);
        if leases.reassert_all && cell.lease > 0 {
            let leased =
                grant(store, cfg, scripts, c, q, cell.period_start_ms, cell.period_end_ms, 0, cell.used, cell.lease)?;
            leases.fleet_leased.insert(current.clone(), leased);
        }
        if may_ask && leases.wants_more(q, chunk) {
            let leased = grant(
                store,
                cfg,
                scripts,
                c,
                q,
                cell.period_start_ms,
                cell.period_end_ms,
                chunk,
                cell.used,
                cell.lease,
            )?;
            leases.fleet_leased.insert(current, leased);
        }
        if may_ask && cell.wanted && cell.period_end_ms - now < 5_000 && cell.next_lease == 0 {
            let leased = grant(
                store,
                cfg,
                scripts,
                c,
                q,
                cell.period_end_ms,
                cell.period_end_ms + 31 * 86_400_000,
                chunk,
                0,
                0,
            )?;
            leases.fleet_leased.insert((q.owner.clone(), cell.period_end_ms), leased);
        }
    }
    leases.reassert_all = false;
    if oldest_period != i64::MAX {
        leases.forget_before(oldest_period);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn grant(
    store: &Store,
    cfg: &Config,
    scripts: &Scripts,
    c: &mut redis::Connection,
    q: &crate::store::FleetQuota,
    period_start_ms: i64,
    expires_after_ms: i64,
    want: i64,
    used: i64,
    held: i64,
) -> std::result::Result<i64, Failure> {
    let ttl_s = (expires_after_ms - clock_ms()).max(0) / 1000 + 2 * 86_400;
    let (lease, spent, fleet_leased): (i64, i64, i64) = scripts
        .grant
        .key(quota::hash_name(&cfg.fleet, &q.owner, period_start_ms))
        .arg(&cfg.host)
        .arg(want)
        .arg(q.quota.limit)
        .arg(used)
        .arg(held)
        .arg(ttl_s)
        .invoke(c)?;
    store.fleet_set_lease(&q.digest, period_start_ms, lease, spent == 1, false)?;
    Ok(fleet_leased)
}

/// `WhenDown::Share`: learns, once a heartbeat, what the fleet has leased of every quota this host holds
/// a lease of (one pipelined read), so that a share taken in an outage starts from a current view.
fn refresh_fleet_leased(
    store: &Store,
    cfg: &Config,
    c: &mut redis::Connection,
    leases: &mut Leases,
) -> std::result::Result<(), Failure> {
    let held: Vec<(String, i64)> = store
        .fleet_quota_cells(&leases.owners, clock_ms())?
        .into_iter()
        .filter(|q| q.quota.lease > 0)
        .map(|q| (q.owner, q.quota.period_start_ms))
        .collect();
    if held.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for (owner, start) in &held {
        pipe.hgetall(quota::hash_name(&cfg.fleet, owner, *start));
    }
    let hashes: Vec<std::collections::HashMap<String, i64>> = pipe.query(c)?;
    for (key, hash) in held.into_iter().zip(hashes) {
        let leased = hash.iter().filter(|(field, _)| field.starts_with("lease:")).map(|(_, v)| v).sum();
        leases.fleet_leased.insert(key, leased);
    }
    Ok(())
}

/// Gives the fleet back what this host holds and did not use (the agent is stopping): local checks stop
/// counting past what they used, then Redis learns the lease is no larger than that.
fn hand_back(
    store: &Store,
    cfg: &Config,
    scripts: &Scripts,
    c: &mut redis::Connection,
) -> std::result::Result<usize, Failure> {
    let now = clock_ms();
    let held: Vec<_> = store.fleet_quota_view(now)?.into_iter().filter(|q| q.quota.lease > q.quota.used).collect();
    for q in &held {
        store.fleet_set_lease(&q.digest, q.quota.period_start_ms, q.quota.used, q.quota.spent, true)?;
    }
    // Checks that read the lease just before it was lowered finish within microseconds.
    std::thread::sleep(Duration::from_millis(20));
    for q in store.fleet_quota_view(now)? {
        if let Some(before) = held.iter().find(|h| h.owner == q.owner) {
            let used = q.quota.used.max(before.quota.used);
            let _: i64 = scripts
                .hand_back
                .key(quota::hash_name(&cfg.fleet, &q.owner, q.quota.period_start_ms))
                .arg(&cfg.host)
                .arg(used)
                .invoke(c)?;
        }
    }
    Ok(held.len())
}

#[derive(Debug)]
pub(crate) enum Failure {
    Redis(redis::RedisError),
    Store(Error),
}

impl From<redis::RedisError> for Failure {
    fn from(e: redis::RedisError) -> Failure {
        Failure::Redis(e)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Store(e)
    }
}

fn connect(cfg: &Config) -> std::result::Result<redis::Connection, String> {
    let client = if let Some(sentinel) = cfg.redis_url.strip_prefix("redis-sentinel://") {
        if cfg.ca_file.is_some() {
            return Err("TLS through Sentinel is not supported yet (use rediss:// to one server)".into());
        }
        let (sentinels, master, node) = sentinel_parts(sentinel)?;
        let mut client = redis::sentinel::SentinelClient::build(
            sentinels,
            master,
            Some(node),
            redis::sentinel::SentinelServerType::Master,
        )
        .map_err(|e| e.to_string())?;
        // Sentinel names the current master; after a failover the next connection goes to the new one.
        client.get_client().map_err(|e| format!("Sentinel: {e}"))?
    } else {
        match &cfg.ca_file {
            Some(ca) => {
                let root_cert = std::fs::read(ca).map_err(|e| format!("cannot read CA file {}: {e}", ca.display()))?;
                let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) };
                redis::Client::build_with_tls(cfg.redis_url.as_str(), certs).map_err(|e| e.to_string())?
            }
            None => redis::Client::open(cfg.redis_url.as_str()).map_err(|e| e.to_string())?,
        }
    };
    let conn = client.get_connection_with_timeout(Duration::from_secs(2)).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    conn.set_write_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    Ok(conn)
}

/// `[[user]:password@]host[:port][,host[:port]]...[/db]#master` (after `redis-sentinel://`, the form
/// Lettuce uses): the Sentinel nodes (port 26379 by default), the master's name, and the credentials and
/// database for the master.
fn sentinel_parts(
    text: &str,
) -> std::result::Result<(Vec<String>, String, redis::sentinel::SentinelNodeConnectionInfo), String> {
    let bad = |why: &str| {
        format!(
            "redis-sentinel:// URL: {why} (redis-sentinel://[[user]:password@]host[:port][,host[:port]][/db]#master)"
        )
    };
    let (rest, master) = text.split_once('#').ok_or_else(|| bad("no #master"))?;
    if master.is_empty() {
        return Err(bad("an empty master name"));
    }
    let (userinfo, rest) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let (hosts, db) = match rest.split_once('/') {
        Some((hosts, "")) => (hosts, 0),
        Some((hosts, db)) => (hosts, db.parse::<i64>().map_err(|_| bad("the database is not a number"))?),
        None => (rest, 0),
    };
    let sentinels: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| if h.contains(':') { format!("redis://{h}") } else { format!("redis://{h}:26379") })
        .collect();
    if sentinels.is_empty() {
        return Err(bad("no Sentinel host"));
    }
    let mut info = redis::RedisConnectionInfo::default().set_db(db);
    if let Some(userinfo) = userinfo {
        let (user, password) = userinfo.split_once(':').unwrap_or(("", userinfo));
        if !user.is_empty() {
            info = info.set_username(user);
        }
        if !password.is_empty() {
            info = info.set_password(password);
        }
    }
    let node = redis::sentinel::SentinelNodeConnectionInfo::default().set_redis_connection_info(info);
    Ok((sentinels, master.to_string(), node))
}

/// One round: catch up if needed, publish the outbox, apply what the log has after our position
/// (waiting up to 100 ms for news).
fn step(
    store: &Store,
    cfg: &Config,
    names: &Names,
    scripts: &Scripts,
    c: &mut redis::Connection,
    health: &mut Health,
    log: &mut dyn FnMut(&str),
) -> std::result::Result<(), Failure> {
    let position = match store.fleet_position()? {
        Some(p) if health.position_checked => p,
        Some(p) if !trimmed_past(c, &names.log, &p)? => p,
        _ => load_snapshot(store, cfg, names, c, health, log)?,
    };
    health.position_checked = true;
    publish_outbox(store, cfg, names, scripts, c, health)?;
    let options = StreamReadOptions::default().count(500).block(100);
    let reply: StreamReadReply = c.xread_options(&[&names.log], &[&position], &options)?;
    let entries: Vec<StreamId> = reply.keys.into_iter().flat_map(|k| k.ids).collect();
    let Some(last) = entries.last().map(|e| e.id.clone()) else { return Ok(()) };
    let changes = verified(cfg, &entries, health, log);
    apply(store, &changes, &last, health, log)?;
    health.last_id = Some(last);
    Ok(())
}

fn apply(
    store: &Store,
    changes: &[Change],
    position: &str,
    health: &mut Health,
    log: &mut dyn FnMut(&str),
) -> Result<()> {
    let refused = store.fleet_apply(changes, position)?;
    health.applied += (changes.len() - refused.len()) as u64;
    health.refused += refused.len() as u64;
    for r in refused {
        log(&format!("not applied: {} {}: {}", r.kind, r.id, r.why));
    }
    Ok(())
}

/// The changes of log entries whose signature is the fleet's; the others are logged and counted.
fn verified(cfg: &Config, entries: &[StreamId], health: &mut Health, log: &mut dyn FnMut(&str)) -> Vec<Change> {
    let mut out = Vec::new();
    for e in entries {
        let field = |name: &str| e.get::<String>(name);
        let change = match (field("kind"), field("id"), field("body"), field("origin")) {
            (Some(kind), Some(id), Some(body), Some(origin)) if KINDS.contains(&kind.as_str()) => {
                Change { kind, id, body, origin }
            }
            _ => {
                health.refused += 1;
                log(&format!("refused log entry {}: not an ms-auth change", e.id));
                continue;
            }
        };
        match field("sig") {
            Some(sig) if cfg.secret.verify(&cfg.fleet, &change, &sig) => out.push(change),
            _ => {
                health.refused += 1;
                log(&format!(
                    "refused log entry {} ({} {} from {:?}): not signed with this fleet's secret",
                    e.id, change.kind, change.id, change.origin
                ));
            }
        }
    }
    out
}

fn publish_outbox(
    store: &Store,
    cfg: &Config,
    names: &Names,
    scripts: &Scripts,
    c: &mut redis::Connection,
    health: &mut Health,
) -> std::result::Result<(), Failure> {
    loop {
        let (changes, upto) = store.fleet_outbox(&cfg.host, 200)?;
        if changes.is_empty() {
            return Ok(());
        }
        for change in &changes {
            let sig = cfg.secret.sign(&cfg.fleet, change);
            let _id: String = scripts
                .publish
                .key(&names.log)
                .key(&names.state)
                .arg(cfg.max_log)
                .arg(&change.kind)
                .arg(&change.id)
                .arg(&change.body)
                .arg(&change.origin)
                .arg(sig)
                .invoke(c)?;
            health.published += 1;
        }
        // With replicas (a Sentinel setup), a change leaves the outbox only once a replica has it, so a
        // failover cannot lose it; until then it is published again (applying twice changes nothing).
        let replicas = connected_replicas(c)?;
        if replicas > 0 {
            let acked: i64 = redis::cmd("WAIT").arg(1).arg(REPLICA_WAIT_MS).query(c)?;
            if acked < 1 {
                health.last_error = Some("no replica acknowledged the last changes: they stay in the outbox".into());
                return Ok(());
            }
        }
        store.fleet_published(upto)?;
    }
}

/// How long publishing waits for a replica to acknowledge (when the server has replicas).
const REPLICA_WAIT_MS: i64 = 500;

fn connected_replicas(c: &mut redis::Connection) -> redis::RedisResult<i64> {
    let info: String = redis::cmd("INFO").arg("replication").query(c)?;
    Ok(info.lines().find_map(|l| l.strip_prefix("connected_slaves:")).and_then(|n| n.trim().parse().ok()).unwrap_or(0))
}

/// True when the log no longer holds every entry after `position` (it was trimmed, or Redis lost it).
pub(crate) fn trimmed_past(c: &mut redis::Connection, stream: &str, position: &str) -> redis::RedisResult<bool> {
    let first: StreamRangeReply = c.xrange_count(stream, "-", "+", 1)?;
    let last: StreamRangeReply = c.xrevrange_count(stream, "+", "-", 1)?;
    let (Some(first), Some(last)) = (first.ids.first(), last.ids.first()) else {
        // An empty log: nothing to miss, unless Redis lost what we had applied (restarted empty).
        return Ok(position != "0-0");
    };
    // Our last applied entry is still in the log unless the log starts after it; a log that ends before
    // it lost entries (Redis restarted from older data).
    let pos = stream_id_key(position);
    Ok(stream_id_key(&first.id) > pos || stream_id_key(&last.id) < pos)
}

fn stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Applies the newest state of every record (the state hash) and returns the log position it covers.
/// If Redis lost everything (restarted empty), this host's records are published again.
fn load_snapshot(
    store: &Store,
    cfg: &Config,
    names: &Names,
    c: &mut redis::Connection,
    health: &mut Health,
    log: &mut dyn FnMut(&str),
) -> std::result::Result<String, Failure> {
    let last: StreamRangeReply = c.xrevrange_count(&names.log, "+", "-", 1)?;
    let position = last.ids.first().map_or_else(|| "0-0".to_string(), |e| e.id.clone());
    let state: std::collections::HashMap<String, String> = c.hgetall(&names.state)?;
    let mut records: Vec<(String, Change, String)> = Vec::new();
    for (field, text) in state {
        let entry: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let get = |name: &str| entry[name].as_str().map(str::to_string);
        match (get("kind"), get("id"), get("body"), get("origin"), get("sig"), get("stream_id")) {
            (Some(kind), Some(id), Some(body), Some(origin), Some(sig), Some(stream_id)) => {
                let change = Change { kind, id, body, origin };
                if cfg.secret.verify(&cfg.fleet, &change, &sig) {
                    records.push((stream_id, change, field));
                } else {
                    health.refused += 1;
                    log(&format!("refused state {field}: not signed with this fleet's secret"));
                }
            }
            _ => {
                health.refused += 1;
                log(&format!("refused state {field}: not an ms-auth change"));
            }
        }
    }
    // Policies and plans before keys; keys in the order they were created, so that a rotated key's
    // successor finds the key it counts with.
    let rank = |c: &Change| KINDS.iter().position(|k| *k == c.kind).unwrap_or(KINDS.len());
    let created =
        |c: &Change| serde_json::from_str::<Value>(&c.body).ok().and_then(|v| v["created_at_ms"].as_i64()).unwrap_or(0);
    records.sort_by_key(|(stream_id, c, _)| (rank(c), created(c), stream_id_key(stream_id)));
    let mut changes: Vec<Change> = records.into_iter().map(|(_, c, _)| c).collect();
    changes.extend(audit_in_log(cfg, names, c, &position, health, log)?);
    let had_position = store.fleet_position()?.is_some();
    log(&format!("catching up from the fleet's state: {} records, position {position}", changes.len()));
    apply(store, &changes, &position, health, log)?;
    if changes.is_empty() && had_position {
        // Redis came back empty: republish this host's records (the others do the same).
        store.fleet_republish()?;
        log("the fleet's state was empty: this host's records are published again");
    }
    Ok(position)
}

/// The audit events the log still holds up to `position` (they are history, not in the state hash): a
/// host starting from the state gets the fleet's recent audit trail too.
fn audit_in_log(
    cfg: &Config,
    names: &Names,
    c: &mut redis::Connection,
    position: &str,
    health: &mut Health,
    log: &mut dyn FnMut(&str),
) -> std::result::Result<Vec<Change>, Failure> {
    let mut out = Vec::new();
    let mut from = "-".to_string();
    loop {
        let page: StreamRangeReply = c.xrange_count(&names.log, &from, position, 1000)?;
        let Some(last) = page.ids.last().map(|e| e.id.clone()) else { break };
        let audit: Vec<StreamId> =
            page.ids.into_iter().filter(|e| e.get::<String>("kind").as_deref() == Some("audit")).collect();
        out.extend(verified(cfg, &audit, health, log));
        if last == position {
            break;
        }
        from = format!("({last}");
    }
    Ok(out)
}

fn stream_id_key(id: &str) -> (u64, u64) {
    stream_id(id).unwrap_or((0, 0))
}

fn heartbeat(
    store: &Store,
    cfg: &Config,
    names: &Names,
    c: &mut redis::Connection,
    health: &mut Health,
) -> std::result::Result<(), Failure> {
    let position = store.fleet_position()?;
    let report = json!({"last_seen_ms": clock_ms(), "position": position, "version": env!("CARGO_PKG_VERSION")});
    let _: () = c.hset(&names.members, &cfg.host, report.to_string())?;
    let members: std::collections::HashMap<String, String> = c.hgetall(&names.members)?;
    let mut list: Vec<Value> = members
        .into_iter()
        .map(|(host, text)| {
            let mut v: Value = serde_json::from_str(&text).unwrap_or(json!({}));
            v["host"] = json!(host);
            v
        })
        .collect();
    list.sort_by(|a, b| a["host"].as_str().cmp(&b["host"].as_str()));
    // Members that reported within three heartbeats share each key's rate limit.
    let live_after = clock_ms() - 3 * cfg.heartbeat.as_millis() as i64;
    let live = list.iter().filter(|m| m["last_seen_ms"].as_i64().is_some_and(|t| t >= live_after)).count();
    store.fleet_set_rate_sharers(live.max(1) as u32)?;
    health.rate_sharers = live.max(1);
    health.members = Value::Array(list);
    let last: StreamRangeReply = c.xrevrange_count(&names.log, "+", "-", 1)?;
    health.last_id = last.ids.first().map(|e| e.id.clone());
    health.redis_ok = true;
    health.last_error = None;
    Ok(())
}

/// Writes what `ms-auth fleet status` shows into the store.
fn report_locally(store: &Store, cfg: &Config, health: &Health, usage: &UsageSync, log: &mut dyn FnMut(&str)) {
    let position = store.fleet_position().ok().flatten();
    let lag_ms = match (position.as_deref().and_then(stream_id), health.last_id.as_deref().and_then(stream_id)) {
        (Some((at, _)), Some((head, _))) => json!(head.saturating_sub(at)),
        _ => Value::Null,
    };
    let status = json!({
        "fleet": cfg.fleet,
        "host": cfg.host,
        "redis": {"url": redacted(&cfg.redis_url), "reachable": health.redis_ok, "last_error": health.last_error},
        "position": position,
        "log_head": health.last_id,
        "lag_ms": lag_ms,
        "published": health.published,
        "applied": health.applied,
        "refused": health.refused,
        "members": health.members,
        "rate_shared_by": health.rate_sharers,
        "usage_rows": {"published": usage.published_rows, "received": usage.received_rows, "refused": usage.refused_rows},
        "reported_at_ms": clock_ms(),
        "agent_pid": std::process::id(),
    });
    if let Err(e) = store.fleet_set_status(&status) {
        log(&format!("cannot record the status in the store: {}", e.message));
    }
}

/// The URL without its password.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sentinel_url_names_its_nodes_its_master_and_nothing_else() {
        let (nodes, master, _) = sentinel_parts(":pw@10.0.0.1,10.0.0.2:26380/2#prod").unwrap();
        assert_eq!(nodes, ["redis://10.0.0.1:26379", "redis://10.0.0.2:26380"]);
        assert_eq!(master, "prod");
        for bad in ["10.0.0.1", "10.0.0.1#", "#prod", "10.0.0.1/x#prod"] {
            assert!(sentinel_parts(bad).is_err(), "{bad}");
        }
        assert_eq!(redacted("redis-sentinel://user:pw@h1,h2#m"), "redis-sentinel://user:***@h1,h2#m");
    }
}
