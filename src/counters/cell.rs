//! The counter cell of a key, 128 bytes: the state word (quota period and count, GCRA arrival time)
//! that a check decides on and charges with one 128-bit compare-and-swap, the totals, the abuse window,
//! and the decisions per UTC day. A cell of a superseded file is frozen (a bit of the state word) so
//! that no check charges it any more.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use portable_atomic::AtomicU128;

use super::index::policy_of;
use super::{Admission, DayCounts, Found, Policies, SharedCounters, Tally};
use crate::key::KeyDigest;
use crate::key_state::idle_revocation_at;
use crate::period::{CLOCK_TOLERANCE_MS, DAY_MS};
use crate::policy::{self, Usage};
use crate::status::Status;

const USED_BITS: u32 = 40;
pub(super) const USED_MASK: u64 = (1 << USED_BITS) - 1;

#[repr(C, align(64))]
pub(super) struct Cell {
    /// Low 64 bits: UTC day of the quota period's start (24 bits) and the count (40 bits).
    /// High 64 bits: the GCRA theoretical arrival time in Unix nanoseconds.
    pub(super) state: AtomicU128,
    pub(super) total: AtomicU64,
    pub(super) last_used_ms: AtomicI64,
    pub(super) row: AtomicI64,
    /// Rate-limit refusals in the abuse policy's current window: window number (32 bits), count (32 bits).
    pub(super) abuse: AtomicU64,
    /// Decisions per UTC day, for the two most recent days (by day parity); see `DAY_FIELDS`. Every
    /// decision changes one, so they also tell whether the database is behind.
    pub(super) days: [AtomicU128; 2],
    /// The day words the database has seen; `STALE` forces the next flush to write this cell.
    pub(super) flushed_days: [AtomicU128; 2],
    /// In fleet mode, this host's leases of the quota for two periods (see `lease.rs`).
    pub(super) leases: [AtomicU64; 2],
}

const _: () = assert!(std::mem::size_of::<Cell>() == 128);

/// The retry a refusal gives while this host's share of rates is withheld (its agent is not running).
const WITHHELD_RETRY_MS: i64 = 1000;

impl SharedCounters {
    pub(super) fn cell(&self, i: u64) -> &Cell {
        unsafe { &(*self.block(i)).cell }
    }

    /// Decides one request for the key with this digest and charges it if admitted.
    pub fn admit(&self, digest: &KeyDigest, now_ms: i64) -> Found {
        self.admit_waiting(digest, now_ms, Duration::ZERO)
    }

    /// [`SharedCounters::admit`]; in fleet mode, a check that finds this host out of lease while the
    /// fleet's quota has room cues the agent and may wait for its answer, at most `lease_wait` (see
    /// `cue.rs`), then decides again, once.
    pub fn admit_waiting(&self, digest: &KeyDigest, now_ms: i64, lease_wait: Duration) -> Found {
        let Some((_, _, r)) = self.find(digest) else { return Found::Unknown };
        if r == u64::MAX {
            return self.damaged("an index slot names a record outside the file");
        }
        let record = self.record(r);
        if let Err(why) = self.valid_record(record) {
            return self.damaged(why);
        }
        // Read once: the file may change under us, and this is the cell the check charges.
        let cell_no = record.cell;
        let cell = self.cell(cell_no);
        let mut policy = policy_of(record);
        let idle_ms = self.header().idle_ms.load(Ordering::Relaxed);
        if idle_ms > 0 {
            let last_used_ms = Some(cell.last_used_ms.load(Ordering::Relaxed));
            let idle_at = idle_revocation_at(record.created_at_ms, last_used_ms, idle_ms);
            policy.revoke_at_ms = policy.revoke_at_ms.into_iter().chain(idle_at).min();
        }
        // A fleet host enforces its share of a key's rate, and none of it once its agent stopped renewing
        // the share (the others take it).
        // (Read only for a key with a rate: the share's end is read off the boot clock.)
        let share = if policy.rate.is_some() { self.rate_share() } else { Some(0) };
        if let (Some(rate), Some(hosts)) = (policy.rate.as_mut(), share) {
            rate.share_among(hosts);
        }
        let rate_window_ms = policy.rate.map(|r| r.window_ms);
        let withheld = share.is_none() && policy.rate.is_some();
        if let (Some(rate), true) = (policy.rate.as_mut(), withheld) {
            rate.withhold();
        }
        let mut current = cell.state.load(Ordering::Acquire);
        let mut counted_at;
        // While waiting for the agent: when the wait ends, and the lease this check last waited at.
        let (mut lease_deadline_ns, mut waited_at_lease) = (0, 0);
        let mut waits_for_lease = false;
        let decision = loop {
            if current as u64 & FROZEN != 0 {
                return Found::Moved;
            }
            let usage = decode(current);
            counted_at = usage.counting_instant(now_ms);
            // The lease of the period the check counts in. A lease only grows within its period: read
            // before the compare-and-swap, a stale one under-admits.
            let allowance = policy.quota.and_then(|q| self.allowance(cell, &q, counted_at));
            let (decision, next) = policy::decide_within(&policy, &usage, now_ms, allowance);
            let Some(next) = next else {
                // Out of lease while the fleet has room: the one refusal the agent can lift at once.
                let short = allowance.filter(|a| {
                    decision.status == Status::RateLimitExceeded
                        && policy.quota.is_some_and(|q| a.short(usage.used_in(q.period.bounds(counted_at).0)))
                });
                waits_for_lease = short.is_some();
                if let Some(a) = short {
                    let cue = self.cue_lease_agent(cell_no);
                    // Wait (again) only if the last answer brought a lease, which others used up first.
                    let first = lease_deadline_ns == 0;
                    if !lease_wait.is_zero() && (first || a.up_to > waited_at_lease) && self.lease_agent_responsive() {
                        if first {
                            lease_deadline_ns = super::monotonic_ns().saturating_add(lease_wait.as_nanos() as u64);
                        }
                        if self.await_lease_answer(cue, lease_deadline_ns) {
                            waited_at_lease = a.up_to;
                            current = cell.state.load(Ordering::Acquire);
                            continue;
                        }
                        if first {
                            self.suspend_lease_waits();
                        }
                    }
                }
                break decision;
            };
            match cell.state.compare_exchange_weak(current, encode(&next), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    if allowance.is_some_and(|a| a.short(next.used)) {
                        // This check took the lease's last unit: the agent tops it up before the next needs it.
                        self.cue_lease_agent(cell_no);
                    }
                    cell.total.fetch_add(1, Ordering::Relaxed);
                    // A plain store, not a read-modify-write (a locked instruction on every admitted check):
                    // two checks racing within the same microseconds may leave the earlier of their two
                    // times, a few ms behind, until the key's next check. It only feeds `last_used_at_ms`
                    // and the idle policy, counted in days.
                    if cell.last_used_ms.load(Ordering::Relaxed) < now_ms {
                        cell.last_used_ms.store(now_ms, Ordering::Relaxed);
                    }
                    break decision;
                }
                Err(seen) => current = seen,
            }
        };
        let mut decision = decision;
        if withheld && decision.status == Status::RateLimitExceeded {
            // Until the agent renews the share: its renewal's pace, not the bucket's figures.
            decision.retry_after_ms = decision.retry_after_ms.max(WITHHELD_RETRY_MS);
            decision.rate_remaining = 0;
        }
        // In the day of the period it was charged in, so that the day reports agree with the quota.
        count_day(cell, counted_at, decision.status);
        // A refusal for want of a share, or while waiting for this host's lease, is this host's doing, not
        // the client's: it never counts towards revocation.
        let abusive = decision.status == Status::RateLimitExceeded
            && !withheld
            && !waits_for_lease
            && self.count_abuse(cell, now_ms);
        Found::Key(Admission { decision, abusive, record: r, cell: cell_no, rate_window_ms })
    }

    fn damaged(&self, why: &'static str) -> Found {
        self.supersede();
        Found::Damaged(why)
    }

    /// Counts a rate-limit refusal; true when it is the one that goes over the abuse limit.
    fn count_abuse(&self, cell: &Cell, now_ms: i64) -> bool {
        let h = self.header();
        let limit = h.abuse_limit.load(Ordering::Relaxed);
        let window_ms = h.abuse_window_ms.load(Ordering::Relaxed);
        if limit <= 0 || window_ms <= 0 {
            return false;
        }
        let own_window = (now_ms / window_ms) as u64 & 0xFFFF_FFFF;
        let mut current = cell.abuse.load(Ordering::Acquire);
        loop {
            // Like a quota's counter, never moved back to an older window: a refusal stamped before the
            // window the counter is in (a clock behind, within the tolerance) counts in that newer one.
            let counter_window = current >> 32;
            let counter_start = (counter_window as i64).saturating_mul(window_ms);
            let late = counter_window > own_window && counter_start - now_ms <= CLOCK_TOLERANCE_MS;
            let window = if late { counter_window } else { own_window };
            let count = if counter_window == window { (current & 0xFFFF_FFFF) + 1 } else { 1 };
            let next = window << 32 | count.min(0xFFFF_FFFF);
            match cell.abuse.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return count as i64 == limit + 1,
                Err(seen) => current = seen,
            }
        }
    }

    /// Fleet mode: how many live hosts share each key's rate limit, with no end (benches; the agent
    /// sets a share that lapses, `set_rate_share`).
    pub fn set_rate_sharers(&self, hosts: u32) {
        self.set_rate_share(hosts, None);
    }

    /// Fleet mode: how many live hosts share each key's rate limit (at least 1).
    pub fn rate_sharers(&self) -> u32 {
        self.header().rate_sharers.load(Ordering::Acquire).max(1)
    }

    /// Sets the store-wide policies (with the database's write lock held: they are in the content checksum).
    pub fn set_policies(&self, p: &Policies) {
        let before = self.header_part();
        let h = self.header();
        h.idle_ms.store(p.idle_ms, Ordering::Release);
        h.abuse_limit.store(p.abuse_limit, Ordering::Release);
        h.abuse_window_ms.store(p.abuse_window_ms, Ordering::Release);
        h.fleet_leases.store(p.fleet_leases as u32, Ordering::Release);
        self.amend_seal(before, self.header_part());
    }

    /// The store-wide policies this file applies (for `ms-auth doctor` to compare with the database's).
    pub fn policies(&self) -> Policies {
        let h = self.header();
        Policies {
            idle_ms: h.idle_ms.load(Ordering::Acquire),
            abuse_limit: h.abuse_limit.load(Ordering::Acquire),
            abuse_window_ms: h.abuse_window_ms.load(Ordering::Acquire),
            fleet_leases: h.fleet_leases.load(Ordering::Acquire) != 0,
        }
    }

    /// The counts of the key with this digest.
    pub fn tally(&self, digest: &KeyDigest) -> Option<Tally> {
        let (_, _, r) = self.find(digest)?;
        let record = (r != u64::MAX).then(|| self.record(r))?;
        self.valid_record(record).ok()?;
        Some(tally_of(self.cell(record.cell)))
    }
}

/// Top bit of the quota word: the counter belongs to a superseded file and must not change any more.
pub(super) const FROZEN: u64 = 1 << 63;

pub(super) fn encode(u: &Usage) -> u128 {
    let day = (u.period_start_ms.div_euclid(DAY_MS) as u64) & 0x7F_FFFF;
    let quota_word = day << USED_BITS | (u.used as u64 & USED_MASK);
    (u.tat_ns as u64 as u128) << 64 | quota_word as u128
}

pub(super) fn decode(v: u128) -> Usage {
    let quota_word = v as u64;
    Usage {
        period_start_ms: ((quota_word & !FROZEN) >> USED_BITS) as i64 * DAY_MS,
        used: (quota_word & USED_MASK) as i64,
        tat_ns: (v >> 64) as u64 as i64,
    }
}

pub(super) fn tally_of(cell: &Cell) -> Tally {
    let last = cell.last_used_ms.load(Ordering::Acquire);
    Tally {
        usage: decode(cell.state.load(Ordering::Acquire)),
        total: cell.total.load(Ordering::Acquire) as i64,
        last_used_at_ms: (last > 0).then_some(last),
    }
}

// A day's decisions packed in 128 bits: day 20, admitted 34, expired 16, revoked 16, quota 20, rate 22.
pub(super) const DAY_FIELDS: [(u32, u32); 6] = [(0, 20), (20, 34), (54, 16), (70, 16), (86, 20), (106, 22)];

pub(super) fn field(word: u128, (at, bits): (u32, u32)) -> u128 {
    (word >> at) & ((1u128 << bits) - 1)
}

pub(super) fn decode_day(word: u128) -> DayCounts {
    let f = |i: usize| field(word, DAY_FIELDS[i]) as i64;
    DayCounts { day: f(0), admitted: f(1), expired: f(2), revoked: f(3), quota_exceeded: f(4), rate_limited: f(5) }
}

/// Counts one decision in the cell's slot for its UTC day, saturating rather than wrapping.
fn count_day(cell: &Cell, now_ms: i64, status: Status) {
    let which = match status {
        Status::Ok => 1,
        Status::ApiKeyExpired => 2,
        Status::ApiKeyRevoked => 3,
        Status::ApiKeyQuotaExceeded => 4,
        Status::RateLimitExceeded => 5,
        _ => return,
    };
    let day = (now_ms.div_euclid(DAY_MS) as u128) & ((1 << 20) - 1);
    let slot = &cell.days[(day & 1) as usize];
    let mut current = slot.load(Ordering::Acquire);
    loop {
        let slot_day = field(current, DAY_FIELDS[0]);
        if slot_day > day && current != 0 {
            return; // a later day already took this slot (clocks that disagree): never erase it
        }
        let base = if slot_day == day && current != 0 { current } else { day };
        let (at, bits) = DAY_FIELDS[which];
        let next = if field(base, (at, bits)) == (1u128 << bits) - 1 { base } else { base + (1u128 << at) };
        match slot.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return,
            Err(seen) => current = seen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_round_trips_through_the_packed_word() {
        let u = Usage { period_start_ms: 20_000 * DAY_MS, used: 123_456_789, tat_ns: 1_800_000_000_000_000_000 };
        assert_eq!(decode(encode(&u)), u);
        assert_eq!(decode(encode(&Usage::default())), Usage::default());
    }
}
