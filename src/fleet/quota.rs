//! Quotas exact fleet-wide, by leases (the agent's side; the check's side is `policy::Allowance`).
//!
//! For each key with a quota and each period, Redis holds one hash, `ms-auth:FLEET:quota:KEY:PERIOD`, with
//! per host its lease (how much of the quota the host may count, cumulative, never lowered except by
//! the host handing back what it did not use) and its count (absolute: replays and restarts never double
//! count), signed with the fleet's secret and written with a compare-and-set (`lease_hash.rs`), so the
//! leases of all hosts never add up to more than the quota, and a host's checks never count past its
//! lease: **the fleet never admits more than the quota**, with or without Redis, across partitions and
//! crashes. The price is under-admission: at most the leases outstanding and unused at the period's end
//! (each host's last chunk).
//!
//! Chunks follow each host's demand: the agent measures how fast each key is used on its host and asks for
//! about a second of it (1% of the quota at first, doubling each round the host ran out), topping up when
//! less than half a chunk is left; a grant gives at most half of what is left of the quota, so the last
//! units are shared among the hosts that ask.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use super::lease_hash::grant;
use super::link::{Failure, Link};
use crate::store::{clock_ms, FleetQuota, Store};

/// The agent's side of every lease this host holds: how much to ask for next, from demand.
#[derive(Default)]
pub struct Leases {
    /// (owner, period start) → (chunk, used at the last round, when)
    seen: HashMap<(String, i64), (i64, i64, Instant)>,
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
}

/// A first ask takes 1% of the quota, at most this much: a big quota is not tied up by a quiet host (the
/// chunk then follows the host's rate).
pub const FIRST_CHUNK_MAX: i64 = 1000;

/// After an outage, how long hosts only re-assert their leases: longer than an agent's longest
/// reconnection backoff (2 s) and a round.
pub const REASSERT_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

impl Leases {
    /// How much to ask for: a second of this host's recent rate for the key, doubled each round the host
    /// ran out (so a burst ramps up in a few rounds); a first ask takes 1% of the quota, at least 1 and at
    /// most [`FIRST_CHUNK_MAX`].
    pub fn chunk(&mut self, q: &FleetQuota) -> i64 {
        let now = Instant::now();
        let c = &q.quota;
        let first = (c.limit / 100).clamp(1, FIRST_CHUNK_MAX);
        if !c.wanted {
            // Not used here this period: nothing to learn (and an empty lease is not a host running out).
            return first;
        }
        let entry = self.seen.entry((q.owner.clone(), c.period_start_ms)).or_insert((first, c.used, now));
        let elapsed = now.duration_since(entry.2).as_secs_f64();
        if elapsed >= 0.05 {
            let per_second = ((c.used - entry.1).max(0) as f64 / elapsed).ceil() as i64;
            let ran_out = c.used >= c.lease;
            entry.0 = if ran_out { (entry.0 * 2).max(per_second) } else { per_second.max(1) };
            entry.0 = entry.0.clamp(1, c.limit.max(1));
            entry.1 = c.used;
            entry.2 = now;
        }
        entry.0
    }

    /// True when the host should ask for more of this key now.
    pub fn wants_more(&mut self, q: &FleetQuota, chunk: i64) -> bool {
        let c = &q.quota;
        if !c.wanted || c.lease - c.used > chunk / 2 {
            return false;
        }
        if !c.spent {
            return true;
        }
        // Spent: ask again now and then, in case another host handed some back.
        let key = (q.owner.clone(), c.period_start_ms);
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

    /// Forgets periods that ended.
    pub fn forget_before(&mut self, period_start_ms: i64) {
        self.seen.retain(|(_, start), _| *start >= period_start_ms);
        self.fleet_leased.retain(|(_, start), _| *start >= period_start_ms);
        self.next_retry_of_spent.retain(|(_, start), _| *start >= period_start_ms);
    }
}

// The demand side of leases, run by the agent each round (the Redis side is `lease_hash.rs`).

/// Tops up this host's leases of the quotas its checks are using (and takes the next period's a few
/// seconds before it starts), so that local checks count within what the fleet granted this host.
pub(super) fn lease_round(link: &mut Link, leases: &mut Leases) -> std::result::Result<(), Failure> {
    let store = link.store;
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
    leases.reassert_all = false;
    if oldest_period != i64::MAX {
        leases.forget_before(oldest_period);
    }
    Ok(())
}
