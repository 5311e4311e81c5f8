//! The agent's lease thread: this host's quota leases, with a Redis connection of its own, so that a
//! check that runs out is answered in about a Redis round trip rather than at the agent's next round.
//!
//! It sleeps on the checks' cue (FUTEX_WAIT on the counters file's header, at most [`ROUND`]); a check
//! that finds this host out of lease while the fleet has room, or takes a lease's last unit, bumps the
//! cue and wakes it. Each time it wakes (cued, or every [`ROUND`] to top leases up ahead of demand) it
//! serves the cells cued, and at a tick a slice of the sweep over every key (`round.rs`), then answers
//! the cues it served, which wakes the checks waiting for
//! them. While it can reach Redis and may ask for more (not in the grace after an outage, when hosts only
//! re-assert their leases) it says so in the header at every look; checks wait for it only then
//! (see `crate::counters`, `cue.rs`). It also keeps what the agent's loop kept for leases: re-asserting
//! them after a reconnection, `--when-redis-down share`, and the view that needs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use super::connect::connect;
use super::lease_hash::refresh_fleet_leased;
use super::link::{Config, Failure, Health, Link, Names, Scripts};
use super::quota::Leases;
use super::round::serve;
use super::WhenDown;
use crate::store::{clock_ms, Store};

/// How often the thread tops leases up when no check cues it (as the agent's loop did).
pub const ROUND: Duration = Duration::from_millis(100);

/// How long Redis must be unreachable before `WhenDown::Share` takes its share (not for a blip).
pub const SHARE_AFTER: Duration = Duration::from_secs(2);

/// Runs until `stop` is set; log lines go to `log` (the agent's loop writes them).
pub(super) fn run(
    store: &Store,
    cfg: &Config,
    names: &Names,
    scripts: &Scripts,
    stop: &AtomicBool,
    log: Sender<String>,
    status: &std::sync::Mutex<serde_json::Value>,
) {
    let mut leases = Leases::default();
    let mut health = Health::default();
    let mut conn: Option<redis::Connection> = None;
    let mut backoff = Duration::from_millis(100);
    let mut down_since: Option<Instant> = None;
    let mut ever_connected = false;
    let mut next_view = Instant::now();
    let mut next_tick = Instant::now();
    let say = |line: String| {
        let _ = log.send(line);
    };
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = conn.as_mut() else {
            match connect(cfg) {
                Ok(c) => {
                    conn = Some(c);
                    leases.reconnected(ever_connected);
                    ever_connected = true;
                    down_since = None;
                    backoff = Duration::from_millis(100);
                }
                Err(_) => {
                    // The agent's loop logs Redis's state; here, checks stop waiting for this thread.
                    let _ = store.fleet_lease_agent_reachable(false);
                    let down_for = down_since.get_or_insert_with(Instant::now).elapsed();
                    if cfg.when_down == WhenDown::Share && down_for >= SHARE_AFTER {
                        let members = store.fleet_rate_sharers().unwrap_or(1) as usize;
                        match leases.share_while_down(store, members, clock_ms()) {
                            Ok(0) => {}
                            Ok(n) => say(format!(
                                "Redis unreachable for {} s: raised this host's lease of {n} quotas by its share \
                                 (1/{members}) of what the fleet had not leased (--when-redis-down share)",
                                down_for.as_secs(),
                            )),
                            Err(e) => say(format!("store: {}", e.message)),
                        }
                    }
                    sleep_unless_stopped(backoff, stop);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
            continue;
        };
        // The cues this round serves: every one made before it reads the shared counters.
        let cue = match store.fleet_lease_cue() {
            Ok(cue) => cue,
            Err(e) => {
                say(format!("store: {}", e.message));
                sleep_unless_stopped(Duration::from_millis(200), stop);
                continue;
            }
        };
        // While the hosts re-assert their leases after an outage nobody is granted more: checks that ran
        // out are better answered at once than after a round that cannot help them.
        let _ = store.fleet_lease_agent_reachable(leases.may_ask());
        let mut link = Link { store, cfg, names, scripts, conn: c, health: &mut health };
        // A tick tops up leases ahead of demand and sweeps on; a cue between ticks serves the cells cued.
        let tick = Instant::now() >= next_tick;
        if tick {
            next_tick = Instant::now() + ROUND;
        }
        let mut cue = cue;
        let round = serve(&mut link, &mut leases, cue, tick).and_then(|answered| {
            cue = answered;
            // Every mode, once a heartbeat: a lost, forged or rolled-back quota hash is found without
            // waiting for a grant (and `--when-redis-down share` gets its view of what the fleet leased).
            if Instant::now() >= next_view {
                next_view = Instant::now() + cfg.heartbeat;
                refresh_fleet_leased(&mut link, &mut leases)?;
            }
            Ok(())
        });
        for line in link.health.leases.take_log() {
            say(line);
        }
        *status.lock().unwrap_or_else(|e| e.into_inner()) = link.health.leases.status();
        match round {
            Ok(()) => {}
            Err(Failure::Redis(e)) => {
                say(format!("leases: lost Redis: {e}; reconnecting"));
                conn = None;
                let _ = store.fleet_lease_agent_reachable(false);
                continue;
            }
            Err(Failure::Store(e)) => {
                say(format!("store: {}", e.message));
                let _ = store.fleet_answer_lease_cue(cue);
                sleep_unless_stopped(Duration::from_millis(200), stop);
                continue;
            }
        }
        let _ = store.fleet_answer_lease_cue(cue);
        let _ = store.fleet_wait_for_lease_cue(cue, next_tick.saturating_duration_since(Instant::now()));
    }
    let _ = store.fleet_lease_agent_reachable(false);
}

fn sleep_unless_stopped(how_long: Duration, stop: &AtomicBool) {
    let until = Instant::now() + how_long;
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20).min(until.saturating_duration_since(Instant::now())));
    }
}
