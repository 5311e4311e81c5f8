//! Quotas exact fleet-wide, by leases (the agent's side; the check's side is `policy::Allowance`).
//!
//! For each key with a quota and each period, Redis holds one hash, `ms-auth:{FLEET}:quota:KEY:PERIOD`, with
//! per host its lease (how much of the quota the host may count, cumulative, never lowered except by
//! the host handing back what it did not use) and its count (absolute: replays and restarts never double
//! count), signed with the fleet's secret and written with a compare-and-set (`lease_hash.rs`), so the
//! leases of all hosts never add up to more than the quota, and a host's checks never count past its
//! lease: **the fleet never admits more than the quota**, with or without Redis, across partitions and
//! crashes. The price is under-admission: at most the leases outstanding and unused at the period's end
//! (each host's last chunk).
//!
//! Chunks follow each host's demand: the agent measures how fast each key is used on its host and tops a
//! lease up by a quarter of a second of it when no more than that is left; a host that runs out (a
//! check cues the agent's lease thread, which asks at once: `lease_thread`) asks for twice what it asked
//! last time it ran out, starting from a small share of the quota, so a burst ramps up in a few round
//! trips and leaves at most about its own size unused. A grant gives at most half of what is left of
//! the quota, so the last units are shared among the hosts that ask.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use super::lease_hash::grant;
use super::link::{Failure, Link};
use crate::store::{clock_ms, FleetQuota, Store};

/// The agent's side of every lease this host holds: how much to ask for next, from demand.
#[derive(Default)]
pub struct Leases {
    /// (owner, period start) → what this host's demand for the quota was found to be.
    seen: HashMap<(String, i64), Demand>,
    /// When a spent quota is asked again (another host may have handed some back).
    next_retry_of_spent: HashMap<(String, i64), Instant>,
    /// Set on every (re)connection: every lease held is re-asserted once (asking for nothing more), so
    /// that a Redis that lost its data learns them before it grants anyone else more.
    pub reassert_all: bool,
    /// The keys with a quota, and the admin generation they were read at (read again when it changes).
    pub owners: Vec<(String, crate::key::KeyDigest)>,
    pub owners_generation: Option<i64>,
    /// (owner, period start) → the leases of all hosts when this host last heard (for `WhenDown::Share`).
    pub fleet_leased: HashMap<(String, i64), i64>,
    /// The quotas whose unleased rest this host took its share of during the current outage.
    shared_while_down: HashSet<(String, i64)>,
    no_asking_until: Option<Instant>,
    /// The fleet's live members (as the last heartbeat counted them), who share first asks.
    pub members: i64,
    /// Where the lease thread is in the checks' ring of cued cells, which owner each cell is (an index in
    /// `owners`, mapped when they are read), and when the map was last made.
    pub cues: crate::counters::CueReader,
    pub by_cell: HashMap<u64, usize>,
    pub cells_mapped_at: Option<Instant>,
    pub owners_read_at: Option<Instant>,
    /// Cells cued or found in use lately: served at every tick, ahead of the sweep.
    pub hot: HashMap<u64, Instant>,
    /// The sweep over every key with a quota, a slice per tick: the next owner, and the oldest period
    /// seen since it started.
    pub sweep_at: usize,
    pub sweep_oldest: Option<i64>,
}

/// One quota's demand on this host in one period.
struct Demand {
    /// What to ask for when the host runs out: doubled each time it does.
    chunk: i64,
    /// What to top up by ahead of need: [`CHUNK_SECONDS`] of the rate measured over the last window.
    steady: i64,
    /// The count and the instant this host's rate is measured from.
    used: i64,
    at: Instant,
    /// The lease this host last ran out of: the chunk doubles once per lease run out.
    ran_out_of: i64,
    /// The count at the last round, and whether it grew since the round before: a lease that is not used
    /// up is topped up only while the key is in use (a burst that ended leaves no more than it took).
    used_at_round: i64,
    in_use: bool,
}

/// A first ask takes the host's share (1/members) of [`FIRST_ASKS_SHARE`] of the quota, at least 1 and at
/// most this much: a big quota is not tied up by a quiet host (the chunk then follows the host's rate).
pub const FIRST_CHUNK_MAX: i64 = 1000;

/// What the first asks of every host together take of a quota at most (a quarter of a percent): what
/// hosts that asked once and went quiet leave unused at the period's end (a check that runs out is answered in a round trip, so a
/// small first ask costs a few round trips of a burst's first milliseconds, not refusals).
pub const FIRST_ASKS_SHARE: f64 = 0.0025;

/// A chunk is this many seconds of the host's recent rate for the key: the lease is topped up when no more
/// than a chunk is left (2.5 of the lease thread's rounds ahead), so at most 2 chunks, 0.5 s of the host's
/// traffic, are unused at any instant (what a period's end leaves unadmitted), and a host at a steady rate
/// asks about 4 times a second.
pub const CHUNK_SECONDS: f64 = 0.25;

/// The shortest span a host's rate is measured over: a second, so that a burst of a few milliseconds is
/// not taken for a rate it would keep up (a host whose demand grows faster is followed by doubling).
const RATE_WINDOW: f64 = 1.0;

/// After an outage, how long hosts only re-assert their leases: longer than an agent's longest
/// reconnection backoff (2 s) and a round.
pub const REASSERT_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// A quota's first ask on a host of a fleet of `members` live hosts.
pub fn first_chunk(limit: i64, members: i64) -> i64 {
    ((limit as f64 * FIRST_ASKS_SHARE / members.max(1) as f64) as i64).clamp(1, FIRST_CHUNK_MAX)
}

impl Leases {
    /// How much to ask for this round: when the host ran out of its lease, twice what it asked the last
    /// time it ran out (a first ask is [`first_chunk`]), so a burst ramps up in a few round trips; else
    /// [`CHUNK_SECONDS`] of this host's rate for the key over the last second (or less than that), so
    /// that a burst that ended is not taken for a rate the host keeps up.
    pub fn chunk(&mut self, q: &FleetQuota) -> i64 {
        let now = Instant::now();
        let c = &q.quota;
        let first = first_chunk(c.limit, self.members);
        if !c.wanted {
            // Not used here this period: nothing to learn (and an empty lease is not a host running out).
            return first;
        }
        let d = self.seen.entry((q.owner.clone(), c.period_start_ms)).or_insert(Demand {
            chunk: first,
            steady: first,
            used: c.used,
            at: now,
            ran_out_of: 0,
            used_at_round: c.used,
            in_use: true,
        });
        d.in_use = c.used > d.used_at_round || c.used >= c.lease;
        d.used_at_round = c.used;
        let ran_out = c.lease > 0 && c.used >= c.lease;
        if ran_out && c.lease > d.ran_out_of {
            d.ran_out_of = c.lease;
            d.chunk = d.chunk.saturating_mul(2);
        }
        let elapsed = now.duration_since(d.at).as_secs_f64();
        if elapsed >= RATE_WINDOW {
            let by_rate = ((c.used - d.used).max(0) as f64 / elapsed * CHUNK_SECONDS).ceil() as i64;
            d.steady = by_rate.max(1);
            d.chunk = if ran_out { d.chunk.max(by_rate) } else { d.steady };
            d.used = c.used;
            d.at = now;
        }
        d.chunk = d.chunk.clamp(1, c.limit.max(1));
        if ran_out {
            d.chunk
        } else {
            d.chunk.min(d.steady)
        }
    }

    /// True when the host should ask for more of this key now: it ran out, or it has no more than a chunk
    /// left of a key in use since the last round ([`Leases::chunk`] is called first, each round).
    pub fn wants_more(&mut self, q: &FleetQuota, chunk: i64) -> bool {
        let c = &q.quota;
        if !c.wanted || c.lease - c.used > chunk {
            return false;
        }
        let key = (q.owner.clone(), c.period_start_ms);
        if !self.seen.get(&key).is_none_or(|d| d.in_use) {
            return false;
        }
        if !c.spent {
            return true;
        }
        // Spent: ask again now and then, in case another host handed some back.
        let now = Instant::now();
        match self.next_retry_of_spent.get(&key) {
            Some(at) if *at > now => false,
            _ => {
                self.next_retry_of_spent.insert(key, now + std::time::Duration::from_secs(1));
                true
            }
        }
    }

    /// `WhenDown::Share`, Redis unreachable: raises this host's lease of every quota it counts by its
    /// share (1/`members`) of what the fleet had not leased when this host last heard, once per outage
    /// and period, for the keys its checks use. A quota this host never asked about counts as wholly
    /// unleased. Returns how many
    /// leases were raised.
    pub fn share_while_down(&mut self, store: &Store, members: usize, now_ms: i64) -> crate::error::Result<usize> {
        let mut raised = 0;
        for q in store.fleet_quota_view(now_ms)? {
            let c = &q.quota;
            let key = (q.owner.clone(), c.period_start_ms);
            if !c.wanted || !self.shared_while_down.insert(key.clone()) {
                continue;
            }
            let leased = self.fleet_leased.get(&key).copied().unwrap_or(c.lease).max(c.lease);
            let share = (c.limit - leased).max(0) / members.max(1) as i64;
            if share > 0 {
                store.fleet_set_lease(&q.digest, c.period_start_ms, c.lease + share, false, false)?;
                self.fleet_leased.insert(key, leased + share);
                raised += 1;
            }
        }
        Ok(raised)
    }

    /// Connected to Redis: every lease held is re-asserted (see `reassert_all`). After an outage (not at
    /// the agent's start) no more is asked for during [`REASSERT_GRACE`], so that the other hosts, which
    /// reconnect within their backoff, re-assert what they hold (a lease raised by `share_while_down`, or
    /// one a Redis restarted empty or from an older AOF lost) before anyone is granted more.
    pub fn reconnected(&mut self, after_outage: bool) {
        self.reassert_all = true;
        // The sweep that re-asserts every lease starts over.
        self.sweep_at = 0;
        self.shared_while_down.clear();
        if after_outage {
            self.no_asking_until = Some(Instant::now() + REASSERT_GRACE);
        }
    }

    /// False while the hosts re-assert their leases after an outage.
    pub fn may_ask(&mut self) -> bool {
        match self.no_asking_until {
            Some(until) if Instant::now() < until => false,
            _ => {
                self.no_asking_until = None;
                true
            }
        }
    }

    /// True when the key was used on this host since the round before the last that saw it.
    pub fn in_use(&self, q: &FleetQuota) -> bool {
        self.seen.get(&(q.owner.clone(), q.quota.period_start_ms)).is_some_and(|d| d.in_use)
    }

    /// Forgets periods that ended.
    pub fn forget_before(&mut self, period_start_ms: i64) {
        self.seen.retain(|(_, start), _| *start >= period_start_ms);
        self.fleet_leased.retain(|(_, start), _| *start >= period_start_ms);
        self.next_retry_of_spent.retain(|(_, start), _| *start >= period_start_ms);
    }
}

// The demand side of leases, run by the agent each round (the Redis side is `lease_hash.rs`).

/// Tops up this host's leases of these quotas if its checks are using them (and takes the next period's a
/// few seconds before it starts), so that local checks count within what the fleet granted this host;
/// re-asserts them after a reconnection. Which quotas, and when, is `round.rs`'s. Returns the oldest
/// period seen.
pub(super) fn lease_round(
    link: &mut Link,
    leases: &mut Leases,
    view: &[FleetQuota],
) -> std::result::Result<i64, Failure> {
    let now = clock_ms();
    let mut oldest_period = i64::MAX;
    let may_ask = leases.may_ask();
    for q in view {
        let cell = &q.quota;
        oldest_period = oldest_period.min(cell.period_start_ms);
        let chunk = leases.chunk(q);
        let current = (q.owner.clone(), cell.period_start_ms);
        if leases.reassert_all && cell.lease > 0 {
            let leased = grant(link, q, cell.period_start_ms, cell.period_end_ms, 0, cell.used, cell.lease)?;
            leases.fleet_leased.insert(current.clone(), leased);
        }
        if may_ask && leases.wants_more(q, chunk) {
            let leased = grant(link, q, cell.period_start_ms, cell.period_end_ms, chunk, cell.used, cell.lease)?;
            leases.fleet_leased.insert(current, leased);
        }
        if may_ask && cell.wanted && cell.period_end_ms - now < 5_000 && cell.next_lease == 0 {
            let leased = grant(link, q, cell.period_end_ms, cell.period_end_ms + 31 * 86_400_000, chunk, 0, 0)?;
            leases.fleet_leased.insert((q.owner.clone(), cell.period_end_ms), leased);
        }
    }
    Ok(oldest_period)
}
