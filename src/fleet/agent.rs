//! The fleet agent: the one process per host that talks to Redis. In a loop it publishes this host's
//! changes (the store's outbox) to the fleet's log and applies the log to the store (`changelog`),
//! exchanges daily usage (`usage`), and reports itself in the fleet's member list; beside the loop, once
//! it holds its host's identity, its lease thread (`lease_thread`, with a connection of its own) keeps
//! this host's quota leases topped up and answers a check that runs out at once. Redis being
//! unreachable never touches the check path: servers keep deciding
//! from their store, changes made meanwhile wait in the outbox, and the agent reconnects with backoff.
//!
//! It holds its host's identity for as long as it runs (`members`: a second agent with the same identity,
//! a copy of a store, is refused), and keeps its host's share of rate limits in the counters file, renewed
//! every [`RENEW_EVERY`] while it runs: when it stops, the share lapses before the other hosts count
//! this one out and take it.
//!
//! Redis keys, for fleet F: `ms-auth:{F}:log` (a Stream: fields `v`, `kind`, `id`, `body`, `origin`,
//! `host`, `seq`, `version`, `sig`), `ms-auth:{F}:state` (a hash: the newest change of every record, for
//! hosts that start from scratch or whose position the log trimmed past), `ms-auth:{F}:heads` (a hash:
//! origin → its newest seq, signed), `ms-auth:{F}:repair` (a hash: origin → the seq from which a host asks
//! it to send its entries again), `ms-auth:{F}:members` (a hash: host → last report).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::streams::StreamRangeReply;
use redis::Commands;
use serde_json::{json, Value};

use super::changelog::{publish_outbox, step, stream_id, PUBLISH};
use super::connect::connect;
pub use super::connect::{redacted, url_has_password};
use super::lease_epoch::check_redis_settings;
use super::lease_hash::{hand_back, LeaseScripts};
use super::link::{Config, Failure, Health, Link, Names, Scripts};
use super::members::{heartbeat, leave, Beat, Claimant, Claimed};
use super::usage::UsageSync;
use crate::error::{Error, Result};
use crate::store::{clock_ms, Store};

/// How often the agent renews its host's share of rates, and how long a renewal holds (the host's
/// clock). A host whose agent stopped withholds its share at most `SHARE_HOLDS` after the agent's last
/// renewal, and so at most `SHARE_HOLDS` after the agent stopped; the other hosts count it out
/// [`LIVE_HEARTBEATS`](super::members::LIVE_HEARTBEATS) heartbeats (3 s) after its last heartbeat, at
/// least 2 s after it stopped: its share is never used twice (docs/fleet.md states the bound).
pub const RENEW_EVERY: Duration = Duration::from_millis(200);
pub const SHARE_HOLDS: Duration = Duration::from_millis(1200);

/// How an agent's run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Asked to stop (SIGTERM): it published what was pending, handed back unused leases, left.
    Stopped,
    /// Another running agent holds this host's identity (this store is a copy of another member's):
    /// who (its process and machine). Nothing was leased or published.
    IdentityInUse(String),
}

/// Makes the store a member of `fleet` as `host` (a label) if it is not, and returns its identity.
pub fn join(store: &Store, fleet: &str, host: &str, log: &mut dyn FnMut(&str)) -> Result<String> {
    if store.fleet_join(fleet, host)? {
        log(&format!("joined fleet {fleet:?} as host {host:?}: this store's records are published"));
    }
    store.fleet_host_id()?.ok_or_else(|| Error::store("the store has no fleet identity after joining"))
}

/// The host's share of rates, as the agent keeps it in the counters file: `None` while it is not to be
/// renewed (before the first heartbeat, after the end).
struct ShareKeeper(Mutex<Option<u32>>);

impl ShareKeeper {
    fn set(&self, store: &Store, hosts: u32) -> Result<()> {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *held = Some(hosts);
        store.fleet_set_rate_share(hosts, SHARE_HOLDS)
    }

    fn renew(&self, store: &Store) {
        let held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hosts) = *held {
            let _ = store.fleet_set_rate_share(hosts, SHARE_HOLDS);
        }
    }

    /// Withholds the share from now on (the agent stops: the others take it).
    fn lapse(&self, store: &Store) {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hosts) = held.take() {
            let _ = store.fleet_set_rate_share(hosts, std::time::Duration::ZERO);
        }
    }
}

/// Runs until `stop` is set (SIGTERM), then publishes what is pending if Redis is there, and returns; or
/// until it finds another agent running with this host's identity.
pub fn run(store: &Store, cfg: &Config, stop: &AtomicBool, log: &mut dyn FnMut(&str)) -> Result<Ended> {
    if store.fleet_host_id()?.as_deref() != Some(cfg.host_id.as_str()) {
        return Err(Error::invalid("the store's fleet identity is not the one the agent was started with"));
    }
    let claimant = Claimant::new(cfg)?;
    store.fleet_withhold_rate_share_until_renewed()?;
    let share = ShareKeeper(Mutex::new(None));
    let done = AtomicBool::new(false);
    let ended = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                share.renew(store);
                std::thread::sleep(RENEW_EVERY);
            }
        });
        let ended = run_loop(store, cfg, stop, &claimant, &share, log);
        share.lapse(store);
        done.store(true, Ordering::Relaxed);
        ended
    });
    log("stopped");
    ended
}

fn run_loop(
    store: &Store,
    cfg: &Config,
    stop: &AtomicBool,
    claimant: &Claimant,
    share: &ShareKeeper,
    log: &mut dyn FnMut(&str),
) -> Result<Ended> {
    let names = Names::of(&cfg.fleet);
    let scripts = Scripts { publish: redis::Script::new(PUBLISH), leases: LeaseScripts::new() };
    let mut usage = UsageSync::default();
    let mut health = Health::default();
    let mut conn: Option<redis::Connection> = None;
    let mut backoff = Duration::from_millis(100);
    let mut ever_connected = false;
    let mut next_report = Instant::now();
    let (lease_log, lease_lines) = std::sync::mpsc::channel::<String>();
    // The lease thread stops with this loop (`leasing_stops`, the scope's end): it grants nothing after
    // the hand-back, nor after another agent was found holding this host's identity.
    let leasing_stops = AtomicBool::new(false);
    // What the lease thread says of the quota hashes (epoch, forgeries, losses), for `fleet status`.
    let lease_status = Mutex::new(Value::Null);
    let ended = std::thread::scope(|s| {
        let mut lease_log = Some(lease_log);
        let ended = loop {
            if stop.load(Ordering::Relaxed) {
                break Ok(None);
            }
            for line in lease_lines.try_iter() {
                log(&line);
            }
            health.lease_report = lease_status.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if conn.is_none() {
                let mut refusal = None;
                let claimed = connect(cfg).and_then(|mut c| {
                    // What the quota guarantees need of Redis, checked on every connection (a failover may
                    // reach a server configured otherwise).
                    match check_redis_settings(&mut c, cfg.allow_evicting_redis) {
                        Ok(warnings) => warnings.iter().for_each(|w| log(&format!("warning: {w}"))),
                        Err(why) => {
                            refusal = Some(why.clone());
                            return Err(why);
                        }
                    }
                    match claimant.claim(&mut c, cfg, stop, log) {
                        Ok(claimed) => Ok((c, claimed)),
                        Err(e) => Err(format!("{e:?}")),
                    }
                });
                if let Some(why) = refusal {
                    log(&format!("refusing to run: {why}"));
                    break Err(why);
                }
                match claimed {
                    Ok((_, Claimed::Stopping)) => break Ok(None),
                    Ok((_, Claimed::HeldBy(holder))) => break Ok(Some(holder)),
                    Ok((c, Claimed::Ours)) => {
                        log(&format!(
                            "connected to Redis at {} as host {:?} (host id {})",
                            redacted(&cfg.redis_url),
                            cfg.host,
                            cfg.host_id
                        ));
                        conn = Some(c);
                        health.redis_ok = true;
                        health.position_checked = false;
                        ever_connected = true;
                        usage.reconnected();
                        backoff = Duration::from_millis(100);
                        next_report = Instant::now();
                        // Leasing starts only once this agent holds the identity: a copy of a store must
                        // never be granted under the original's.
                        if let Some(lease_log) = lease_log.take() {
                            let (names, scripts, leasing_stops, lease_status) =
                                (&names, &scripts, &leasing_stops, &lease_status);
                            s.spawn(move || {
                                super::lease_thread::run(
                                    store,
                                    cfg,
                                    names,
                                    scripts,
                                    leasing_stops,
                                    lease_log,
                                    lease_status,
                                )
                            });
                        }
                    }
                    Err(e) => {
                        let why = format!("Redis at {} unreachable: {e}", redacted(&cfg.redis_url));
                        if health.redis_ok || health.last_error.as_deref() != Some(why.as_str()) {
                            log(&format!("{why}; checks go on from the local store, changes wait in its outbox"));
                        }
                        health.redis_ok = false;
                        health.last_error = Some(why);
                        report_locally(store, cfg, &health, &usage, true, log);
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        continue;
                    }
                }
            }
            let conn_now = conn.as_mut().expect("connected above");
            let mut link = Link { store, cfg, names: &names, scripts: &scripts, conn: conn_now, health: &mut health };
            let due = Instant::now() >= next_report;
            if due {
                next_report = Instant::now() + cfg.heartbeat;
            }
            match round(&mut link, &mut usage, claimant, share, due, log) {
                Ok(None) => {}
                Ok(Some(holder)) => break Ok(Some(holder)),
                Err(Failure::Redis(e)) => {
                    if !stop.load(Ordering::Relaxed) {
                        log(&format!("lost Redis: {e}; reconnecting"));
                    }
                    health.last_error = Some(format!("Redis: {e}"));
                    health.redis_ok = false;
                    conn = None;
                }
                Err(Failure::Store(e)) => {
                    log(&format!("store: {}", e.message));
                    health.last_error = Some(e.message);
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        };
        leasing_stops.store(true, Ordering::Relaxed);
        ended
    });
    for line in lease_lines.try_iter() {
        log(&line);
    }
    match ended {
        Err(refusal) => return Err(crate::error::Error::invalid(refusal)),
        Ok(Some(holder)) => return Ok(refused(store, cfg, &mut health, &usage, holder, log)),
        Ok(None) => {}
    }
    // The others take this host's share once it leaves the member list: it is withheld first.
    share.lapse(store);
    if conn.is_none() && ever_connected {
        // The stop signal often cuts a blocking read short (EINTR), which dropped the connection: one more,
        // for what is pending, the unused leases and leaving.
        conn = connect(cfg).ok();
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
        let _ = leave(&mut link, claimant);
    }
    health.redis_ok = false;
    report_locally(store, cfg, &health, &usage, false, log);
    Ok(Ended::Stopped)
}

/// One round while connected: the change log, and when `due` the heartbeat and what follows
/// it. `Some(holder)` when another agent took this host's identity.
fn round(
    link: &mut Link,
    usage: &mut UsageSync,
    claimant: &Claimant,
    share: &ShareKeeper,
    due: bool,
    log: &mut dyn FnMut(&str),
) -> std::result::Result<Option<String>, Failure> {
    if !due {
        step(link, log)?;
        return Ok(None);
    }
    // The heartbeat first: after a (re)start the host's share of rates is withheld until it, and the
    // change log's step may take long (catching up from the fleet's state).
    match heartbeat(link, claimant)? {
        Beat::IdentityTaken(holder) => return Ok(Some(holder)),
        Beat::Members(members, live) => {
            let live = live.max(1);
            share.set(link.store, live as u32)?;
            link.health.rate_sharers = live;
            link.health.members = Value::Array(members);
        }
    }
    step(link, log)?;
    let last: StreamRangeReply = link.conn.xrevrange_count(&link.names.log, "+", "-", 1)?;
    link.health.last_id = last.ids.first().map(|e| e.id.clone());
    link.health.redis_ok = true;
    link.health.last_error = None;
    usage.round(link, log)?;
    report_locally(link.store, link.cfg, link.health, usage, true, log);
    Ok(None)
}

/// Another agent runs with this host's identity: this one stops without touching the fleet (its leases
/// and member entry are the other's), withholds its host's share of rates, and says so.
fn refused(
    store: &Store,
    cfg: &Config,
    health: &mut Health,
    usage: &UsageSync,
    holder: String,
    log: &mut dyn FnMut(&str),
) -> Ended {
    let why = format!("another agent runs with this host's identity (host id {}): {holder}", cfg.host_id);
    log(&why);
    // This store is a copy of another member's (or the other is): the leases its counters file holds are
    // the identity's, which the other agent keeps using, so this host's servers must not spend them too.
    match store.fleet_forget_leases() {
        Ok(()) => log(
            "dropped the quota leases this store holds: its checks count no quota until it has an identity of its own",
        ),
        Err(e) => log(&format!("could not drop this store's quota leases: {}", e.message)),
    }
    health.redis_ok = false;
    health.last_error = Some(why);
    report_locally(store, cfg, health, usage, false, log);
    Ended::IdentityInUse(holder)
}

/// Writes what `ms-auth fleet status` shows into the store.
fn report_locally(
    store: &Store,
    cfg: &Config,
    health: &Health,
    usage: &UsageSync,
    running: bool,
    log: &mut dyn FnMut(&str),
) {
    let position = store.fleet_position().ok().flatten();
    let lag_ms = match (position.as_deref().and_then(stream_id), health.last_id.as_deref().and_then(stream_id)) {
        (Some((at, _)), Some((head, _))) => json!(head.saturating_sub(at)),
        _ => Value::Null,
    };
    let status = json!({
        "fleet": cfg.fleet,
        "host": cfg.host,
        "host_id": cfg.host_id,
        "redis": {"url": redacted(&cfg.redis_url), "reachable": health.redis_ok, "last_error": health.last_error},
        "position": position,
        "log_head": health.last_id,
        "lag_ms": lag_ms,
        "published": health.published,
        "applied": health.applied,
        "refused": health.refused,
        "sweep": {"put_back": health.log.state_repaired, "applied": health.log.state_applied},
        "members": health.members,
        "rate_shared_by": health.rate_sharers,
        "rate_share": match store.fleet_rate_share() {
            Ok(Some(n)) => json!(n.max(1)),
            _ => json!("withheld"),
        },
        "leases": health.lease_report,
        "usage_rows": {"published": usage.published_rows, "received": usage.received_rows, "refused": usage.refused_rows},
        "reported_at_ms": clock_ms(),
        "agent_pid": std::process::id(),
        "agent_running": running,
    });
    if let Err(e) = store.fleet_set_status(&status) {
        log(&format!("cannot record the status in the store: {}", e.message));
    }
}
