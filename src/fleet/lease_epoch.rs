//! The fleet's lease epoch: how an agent finds that Redis lost what it held of the quotas (FLUSHDB, a
//! restart without persistence: no epoch), and the recovery from a quota hash found lost, forged or
//! rolled back (`lease_hash.rs`): a new epoch, whose grace holds every grant of more back while every
//! host re-asserts what it holds. Also the Redis settings those guarantees need, checked on connection.
//!
//! Redis keys, for fleet F: `ms-auth:{F}:epoch` (a hash: `id`, random, and `until`, Redis's time in ms
//! before which nothing more is granted; no TTL) and `ms-auth:{F}:quotas:EPOCH` (a sorted set: the quota
//! hashes written in that epoch, scored by when they expire; no TTL).

use std::time::Duration;

use super::link::{Failure, Link};

pub(super) fn epoch_name(fleet: &str) -> String {
    format!("ms-auth:{{{fleet}}}:epoch")
}

pub(super) fn registry_name(fleet: &str, epoch: &str) -> String {
    format!("ms-auth:{{{fleet}}}:quotas:{epoch}")
}

/// Makes a new epoch when there is none, or, to recover, when it is still the one this agent knows.
/// KEYS: the epoch, the registry of the epoch this agent knows, a hash to drop in a recovery. ARGV: the
/// id this agent knows, a new id, the grace in ms, 1 to recover. Returns {the epoch's id, 1 if new}.
pub(super) const EPOCH: &str = r#"
local id = redis.call('HGET', KEYS[1], 'id')
if id == false or (ARGV[4] == '1' and id == ARGV[1]) then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('HSET', KEYS[1], 'id', ARGV[2], 'until', now + tonumber(ARGV[3]))
  redis.call('DEL', KEYS[2])
  if ARGV[4] == '1' then redis.call('DEL', KEYS[3]) end
  return {ARGV[2], 1}
end
return {id, 0}
"#;

/// How long a recovery holds grants of more back: the agents see a new epoch within a heartbeat and
/// re-assert within a round.
pub(super) fn grace(link: &Link) -> Duration {
    (link.cfg.heartbeat * 2 + Duration::from_secs(1)).max(Duration::from_secs(3))
}

/// Why a quota hash cannot be granted from.
pub(super) enum Problem {
    Lost,
    Forged(String),
    RolledBack(i64, i64),
}

/// Learns the fleet's epoch, making one if Redis has none (a new fleet, or Redis lost its data). A new
/// or changed epoch: every lease held is re-asserted.
pub(super) fn ensure_epoch(link: &mut Link, seen_in_redis: Option<&str>) -> std::result::Result<String, Failure> {
    if let (Some(known), Some(now)) = (link.health.leases.epoch.as_deref(), seen_in_redis) {
        if known == now {
            return Ok(known.to_string());
        }
    }
    let (id, created) = run_epoch(link, false, "")?;
    if created {
        let line = format!(
            "the fleet's lease epoch is missing in Redis (a new fleet, or Redis lost its data): started epoch \
             {id}; every host re-asserts the leases it holds, and no more is granted for {} s",
            grace(link).as_secs()
        );
        link.health.leases.log.push(line);
    }
    adopt(link, &id);
    Ok(id)
}

fn adopt(link: &mut Link, id: &str) {
    let watch = &mut link.health.leases;
    if watch.epoch.as_deref() != Some(id) {
        if watch.epoch.is_some() {
            watch.log.push(format!(
                "the fleet's lease epoch changed to {id} (a host found a quota hash lost, forged or rolled \
                 back, or Redis lost its data): re-asserting every lease this host holds"
            ));
        }
        watch.epoch = Some(id.to_string());
        watch.reassert = true;
    }
}

fn run_epoch(link: &mut Link, recover: bool, drop: &str) -> std::result::Result<(String, bool), Failure> {
    let fleet = &link.cfg.fleet;
    let known = link.health.leases.epoch.clone().unwrap_or_default();
    let (id, created): (String, i64) = link
        .scripts
        .leases
        .epoch
        .key(epoch_name(fleet))
        .key(registry_name(fleet, &known))
        .key(if drop.is_empty() { format!("ms-auth:{{{fleet}}}:none") } else { drop.to_string() })
        .arg(&known)
        .arg(new_epoch_id()?)
        .arg(grace(link).as_millis() as i64)
        .arg(recover as i64)
        .invoke(link.conn)?;
    Ok((id, created == 1))
}

fn new_epoch_id() -> std::result::Result<String, Failure> {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| Failure::Store(crate::error::Error::internal(format!("no randomness: {e}"))))?;
    Ok(crate::text::hex(&bytes))
}

/// Refuses to grant from a hash found lost, forged or rolled back, says so loudly, and starts a
/// recovery: a new epoch (the hash dropped), in whose grace every host re-asserts what it holds.
pub(super) fn recover(link: &mut Link, name: &str, problem: Problem) -> std::result::Result<(), Failure> {
    let watch = &mut link.health.leases;
    let why = match problem {
        Problem::Lost => {
            watch.lost += 1;
            "was lost (evicted or deleted while hosts held leases in it)".to_string()
        }
        Problem::Forged(why) => {
            watch.forged += 1;
            format!("is forged or altered ({why})")
        }
        Problem::RolledBack(found, seen) => {
            watch.rolled_back += 1;
            format!("was rolled back (sequence {found}, this host saw {seen})")
        }
    };
    watch.recoveries += 1;
    let (id, _) = run_epoch(link, true, name)?;
    let line = format!(
        "REFUSED: quota hash {name} {why}: nothing is granted from it; recovering (epoch {id}): every host \
         re-asserts the leases it holds, no more is granted for {} s",
        grace(link).as_secs()
    );
    let watch = &mut link.health.leases;
    watch.log.push(line);
    watch.epoch = Some(id);
    watch.reassert = true;
    Ok(())
}

/// Checks, on each connection, the Redis settings the quota guarantees need: an evicting
/// `maxmemory-policy` is refused (unless `allow_evicting`), no persistence is warned about. Returns the
/// warnings, or why the agent must not run against this Redis.
pub(super) fn check_redis_settings(
    conn: &mut redis::Connection,
    allow_evicting: bool,
) -> std::result::Result<Vec<String>, String> {
    let mut get = |name: &str| -> redis::RedisResult<String> {
        let pair: Vec<String> = redis::cmd("CONFIG").arg("GET").arg(name).query(conn)?;
        Ok(pair.get(1).cloned().unwrap_or_default())
    };
    let policy = match get("maxmemory-policy") {
        Ok(policy) => policy,
        Err(e) => {
            return Ok(vec![format!(
                "cannot read Redis's settings (CONFIG GET: {e}): make sure its maxmemory-policy is noeviction and \
                 it persists its data (appendonly yes), or quotas may be over-admitted (docs/fleet.md)"
            )])
        }
    };
    let mut warnings = Vec::new();
    if policy != "noeviction" {
        let risk = format!(
            "Redis's maxmemory-policy is {policy}: under memory pressure it may evict the fleet's quota leases, \
             and a quota would no longer be exact"
        );
        if !allow_evicting {
            return Err(format!(
                "{risk}. Set `maxmemory-policy noeviction` (CONFIG SET maxmemory-policy noeviction, and in \
                 redis.conf), or start the agent with --allow-evicting-redis to accept the risk"
            ));
        }
        warnings.push(format!("{risk} (accepted: --allow-evicting-redis)"));
    }
    let aof = get("appendonly").unwrap_or_default();
    let save = get("save").unwrap_or_default();
    if aof == "no" && save.trim().is_empty() {
        warnings.push(
            "Redis persists nothing (appendonly no, save \"\"): a restart loses every lease and count it holds; \
             the hosts re-assert theirs, but a host that is down meanwhile is forgotten (set appendonly yes)"
                .to_string(),
        );
    }
    Ok(warnings)
}
