//! The fleet agent: the one process per host that talks to Redis. In a loop it publishes this host's
//! changes (the store's outbox) to the fleet's log and applies the log to the store (`changelog`), keeps
//! this host's quota leases topped up (`quota`), exchanges daily usage (`usage`), and reports itself in
//! the fleet's member list. Redis being unreachable never touches the check path: servers keep deciding
//! from their store, changes made meanwhile wait in the outbox, and the agent reconnects with backoff.
//!
//! Redis keys, for fleet F: `ms-auth:F:log` (a Stream: fields `kind`, `id`, `body`, `origin`, `sig`),
//! `ms-auth:F:state` (a hash: the newest change of every record, for hosts that start from scratch or
//! whose position the log trimmed past), `ms-auth:F:members` (a hash: host → last report).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::streams::StreamRangeReply;
use redis::Commands;
use serde_json::{json, Value};

use super::changelog::{publish_outbox, step, stream_id, PUBLISH};
use super::connect::connect;
pub use super::connect::redacted;
use super::lease_epoch::check_redis_settings;
use super::lease_hash::{hand_back, refresh_fleet_leased, LeaseScripts};
use super::link::{Config, Failure, Health, Link, Names, Scripts};
use super::quota::{lease_round, Leases};
use super::usage::UsageSync;
use crate::error::Result;
use crate::store::{clock_ms, Store};

/// How long Redis must be unreachable before `WhenDown::Share` takes its share (not for a blip).
const SHARE_AFTER: Duration = Duration::from_secs(2);

/// Runs until `stop` is set (SIGTERM), then publishes what is pending if Redis is there, and returns.
pub fn run(store: &Store, cfg: &Config, stop: &AtomicBool, log: &mut dyn FnMut(&str)) -> Result<()> {
    if store.fleet_join(&cfg.fleet, &cfg.host)? {
        log(&format!("joined fleet {:?} as host {:?}: this store's records are published", cfg.fleet, cfg.host));
    }
    let names = Names::of(&cfg.fleet);
    let scripts = Scripts { publish: redis::Script::new(PUBLISH), leases: LeaseScripts::new() };
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
                Ok(mut c) => {
                    // What the quota guarantees need of Redis, checked on every connection (a failover
                    // may reach a server configured otherwise).
                    match check_redis_settings(&mut c, cfg.allow_evicting_redis) {
                        Ok(warnings) => warnings.iter().for_each(|w| log(&format!("warning: {w}"))),
                        Err(refusal) => {
                            log(&format!("refusing to run: {refusal}"));
                            return Err(crate::error::Error::invalid(refusal));
                        }
                    }
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
        let conn_now = conn.as_mut().expect("connected above");
        let mut link = Link { store, cfg, names: &names, scripts: &scripts, conn: conn_now, health: &mut health };
        let stepped = step(&mut link, log).and_then(|()| {
            lease_round(&mut link, &mut leases)?;
            if Instant::now() >= next_report {
                next_report = Instant::now() + cfg.heartbeat;
                heartbeat(&mut link)?;
                // Every mode: a lost, forged or rolled-back quota hash is found without waiting for a grant.
                refresh_fleet_leased(&mut link, &mut leases)?;
                usage.round(&mut link, log)?;
                report_locally(store, cfg, link.health, &usage, log);
            }
            Ok(())
        });
        health.leases.take_log().iter().for_each(|line| log(line));
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
        let mut link = Link { store, cfg, names: &names, scripts: &scripts, conn: c, health: &mut health };
        if let Err(e) = publish_outbox(&mut link) {
            log(&format!("at exit, pending changes stay in the outbox: {e:?}"));
        }
        match hand_back(&mut link) {
            Ok(n) if n > 0 => log(&format!("handed back the unused leases of {n} quotas")),
            Ok(_) => {}
            Err(e) => log(&format!("at exit, could not hand back unused leases: {e:?}")),
        }
        link.health.leases.take_log().iter().for_each(|line| log(line));
        let _: redis::RedisResult<()> = link.conn.hdel(&names.members, &cfg.host);
    }
    health.redis_ok = false;
    report_locally(store, cfg, &health, &usage, log);
    log("stopped");
    Ok(())
}

fn heartbeat(link: &mut Link) -> std::result::Result<(), Failure> {
    let Link { store, cfg, names, conn: c, health, .. } = link;
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
        "leases": health.leases.status(),
        "usage_rows": {"published": usage.published_rows, "received": usage.received_rows, "refused": usage.refused_rows},
        "reported_at_ms": clock_ms(),
        "agent_pid": std::process::id(),
    });
    if let Err(e) = store.fleet_set_status(&status) {
        log(&format!("cannot record the status in the store: {}", e.message));
    }
}
