//! A host's leases of its keys' quotas, in fleet mode (the agent's side is `crate::fleet::quota`): two
//! words per cell, each one period's lease — the period's first UTC day (24 bits), whether the fleet's
//! quota for it is spent (1 bit) and how much this host may count in it (39 bits). Two, so that the agent
//! can take the next period's lease before the current one ends. Within a period a lease only grows
//! (except when the agent hands back what it did not use), so a check that read an older value can only
//! admit less, never more.

use std::sync::atomic::Ordering;

use super::cell::{decode, Cell};
use super::SharedCounters;
use crate::key::KeyDigest;
use crate::period::DAY_MS;
use crate::policy::{Allowance, Quota};

const AMOUNT_MASK: u64 = (1 << 39) - 1;
const SPENT: u64 = 1 << 39;

fn pack(period_start_ms: i64, up_to: i64, spent: bool) -> u64 {
    let day = (period_start_ms.div_euclid(DAY_MS) as u64) & 0xFF_FFFF;
    day << 40 | if spent { SPENT } else { 0 } | (up_to.max(0) as u64).min(AMOUNT_MASK)
}

/// (period's first day, up to, spent) of a word; `None` for an empty one.
fn unpack(word: u64) -> Option<(i64, i64, bool)> {
    (word != 0).then_some(((word >> 40) as i64, (word & AMOUNT_MASK) as i64, word & SPENT != 0))
}

/// A key's quota and this host's use and lease of it, for the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaCell {
    pub limit: i64,
    pub period_start_ms: i64,
    pub period_end_ms: i64,
    /// Counted on this host in the current period.
    pub used: i64,
    /// This host's lease of the current period, and whether the fleet's quota is spent.
    pub lease: i64,
    pub spent: bool,
    /// This host's lease of the next period, if taken already.
    pub next_lease: i64,
    /// Checks on this host asked for the key in the current period (it holds a lease word, maybe empty):
    /// the agent leases only keys its host uses.
    pub wanted: bool,
}

/// Puts a lease word in the cell: into the slot of the same period (never lowering it unless `lower`),
/// else over the slot of an older period. A newer period's lease is never overwritten by an older one.
pub(super) fn merge_word(cell: &Cell, word: u64, lower: bool) {
    let Some((day, up_to, spent)) = unpack(word) else { return };
    loop {
        let words = [0, 1].map(|i| cell.leases[i].load(Ordering::Acquire));
        let same = (0..2).find(|&i| unpack(words[i]).is_some_and(|(d, _, _)| d == day));
        let (slot, next) = match same {
            Some(i) => {
                let (_, held, was_spent) = unpack(words[i]).expect("found above");
                // The larger lease is the newer grant, and says whether the fleet's quota was all leased
                // with it: a host that another host's hand-back lets grow is no longer told "spent".
                let (up_to, spent) = match () {
                    _ if lower => (up_to, spent),
                    _ if up_to > held => (up_to, spent),
                    _ if up_to < held => (held, was_spent),
                    _ => (held, spent || was_spent),
                };
                (i, pack(day * DAY_MS, up_to, spent))
            }
            None => {
                // The slot holding the older period (or none) gives way; if both are newer, nothing to do.
                let age = |i: usize| unpack(words[i]).map_or(i64::MIN, |(d, _, _)| d);
                let i = if age(0) <= age(1) { 0 } else { 1 };
                if age(i) > day {
                    return;
                }
                (i, word)
            }
        };
        if cell.leases[slot].compare_exchange(words[slot], next, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            return;
        }
    }
}

impl SharedCounters {
    /// In fleet mode, what the lease of the cell allows in the quota period of `counted_at` (the
    /// check's counting instant: nothing without one); `None` outside fleet mode.
    pub(super) fn allowance(&self, cell: &Cell, quota: &Quota, counted_at: i64) -> Option<Allowance> {
        if self.header().fleet_leases.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let start = quota.period.bounds(counted_at).0;
        let day = start.div_euclid(DAY_MS);
        let lease = (0..2).find_map(|i| unpack(cell.leases[i].load(Ordering::Acquire)).filter(|(d, _, _)| *d == day));
        Some(match lease {
            Some((_, up_to, spent)) => Allowance { up_to, fleet_spent: spent },
            None => {
                // The key is wanted here in this period: an empty lease word tells the agent to ask the
                // fleet for some (it leases only what its host's checks use).
                merge_word(cell, pack(start, 0, false), false);
                Allowance { up_to: 0, fleet_spent: false }
            }
        })
    }

    /// Records this host's lease of a key's quota for the period starting at `period_start_ms` (every
    /// key counting in the same cell shares it). `lower`: the agent hands back what it did not use.
    /// False when the file does not hold the key.
    pub fn set_lease(&self, digest: &KeyDigest, period_start_ms: i64, up_to: i64, spent: bool, lower: bool) -> bool {
        let Some(record) = self.valid_record_of(digest) else { return false };
        merge_word(self.cell(record.cell), pack(period_start_ms, up_to, spent), lower);
        true
    }

    /// The number of the cell the key counts in (what a check cues the lease thread with), if the file
    /// holds the key.
    pub fn cell_of(&self, digest: &KeyDigest) -> Option<u64> {
        self.valid_record_of(digest).map(|r| r.cell)
    }

    /// The key's quota as this host sees it at `now_ms`: `None` when it has none (or the file does not
    /// hold it). The period is the one a check at `now_ms` would count in: the cell's own when it is
    /// already in a later one (an agent whose clock is behind its host's checks').
    pub fn quota_cell(&self, digest: &KeyDigest, now_ms: i64) -> Option<QuotaCell> {
        let record = self.valid_record_of(digest)?;
        let quota = super::index::policy_of(record).quota?;
        let cell = self.cell(record.cell);
        let usage = decode(cell.state.load(Ordering::Acquire));
        let (start, end) = quota.period.bounds(usage.counting_instant(now_ms));
        let used = usage.used_in(start);
        let lease_of = |start_ms: i64| {
            (0..2).find_map(|i| {
                unpack(cell.leases[i].load(Ordering::Acquire)).filter(|(d, _, _)| *d == start_ms.div_euclid(DAY_MS))
            })
        };
        let current = lease_of(start);
        let (lease, spent) = current.map_or((0, false), |(_, up_to, spent)| (up_to, spent));
        let next_lease = lease_of(end).map_or(0, |(_, up_to, _)| up_to);
        Some(QuotaCell {
            limit: quota.limit,
            period_start_ms: start,
            period_end_ms: end,
            used,
            lease,
            spent,
            next_lease,
            wanted: current.is_some(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::testing::{built, entry_with_daily_quota};
    use crate::counters::{Found, Policies};
    use crate::period::Period;
    use crate::status::Status;

    #[test]
    fn a_shared_rate_keeps_the_fleets_rate_and_bounds_its_burst() {
        let mut rate = crate::gcra::RateLimit { limit: 600, window_ms: 60_000, burst: 100 };
        rate.share_among(3);
        assert_eq!((rate.limit, rate.window_ms, rate.burst), (600, 180_000, 34), "200 a minute each, burst 34");
        let mut alone = crate::gcra::RateLimit { limit: 600, window_ms: 60_000, burst: 100 };
        alone.share_among(1);
        assert_eq!(alone.window_ms, 60_000);
    }

    #[test]
    fn a_fleet_host_admits_exactly_its_lease_and_leases_never_shrink_by_accident() {
        let dir = tempfile::tempdir().unwrap();
        let e = entry_with_daily_quota(1, 100);
        let (_, c) = built(&dir, std::slice::from_ref(&e));
        c.set_policies(&Policies { fleet_leases: true, ..Policies::default() });
        let now = 1_800_000_000_000;
        let status = |c: &SharedCounters| match c.admit(&e.digest, now) {
            Found::Key(a) => a.decision.status,
            other => panic!("{other:?}"),
        };
        let start = Period::Daily.bounds(now).0;
        assert!(!c.quota_cell(&e.digest, now).unwrap().wanted, "not used here: the agent leases nothing");
        assert_eq!(status(&c), Status::RateLimitExceeded, "no lease yet: nothing admitted, the quota not exceeded");
        let q = c.quota_cell(&e.digest, now).unwrap();
        assert!(q.wanted && q.lease == 0, "a check asked for it: the agent leases some");
        assert!(c.set_lease(&e.digest, start, 3, false, false));
        assert!(c.set_lease(&e.digest, start, 2, false, false), "an older, smaller grant does not lower it");
        let admitted = (0..10).filter(|_| status(&c) == Status::Ok).count();
        assert_eq!(admitted, 3);
        let q = c.quota_cell(&e.digest, now).unwrap();
        assert_eq!((q.used, q.lease, q.next_lease), (3, 3, 0));
        // The next period's lease, taken early, does not touch the current one.
        c.set_lease(&e.digest, start + DAY_MS, 5, false, false);
        assert_eq!(c.quota_cell(&e.digest, now).unwrap().lease, 3);
        assert_eq!(c.quota_cell(&e.digest, now).unwrap().next_lease, 5);
        assert_eq!(c.quota_cell(&e.digest, now + DAY_MS).unwrap().lease, 5);
        // Handing back lowers it to what was used.
        c.set_lease(&e.digest, start, 3, false, true);
        assert_eq!(c.quota_cell(&e.digest, now).unwrap().lease, 3);
        c.set_policies(&Policies::default());
        assert_eq!(status(&c), Status::Ok, "outside fleet mode the key's own quota is all that counts");
    }

    #[test]
    fn a_host_out_of_lease_cues_its_agent_and_says_quota_exceeded_only_once_the_fleets_quota_is_all_leased() {
        let dir = tempfile::tempdir().unwrap();
        let e = entry_with_daily_quota(1, 100);
        let (_, c) = built(&dir, std::slice::from_ref(&e));
        c.set_policies(&Policies { fleet_leases: true, ..Policies::default() });
        let now = 1_800_000_000_000;
        let (start, end) = Period::Daily.bounds(now);
        let answer = |c: &SharedCounters| match c.admit(&e.digest, now) {
            Found::Key(a) => (a.decision.status, a.decision.retry_after_ms),
            other => panic!("{other:?}"),
        };
        let cue = c.lease_cue();
        assert_eq!(answer(&c), (Status::RateLimitExceeded, crate::policy::TOP_UP_RETRY_MS));
        assert_eq!(c.lease_cue(), cue.wrapping_add(1), "the check cued the agent");
        c.set_lease(&e.digest, start, 2, false, false);
        assert_eq!(answer(&c).0, Status::Ok);
        assert_eq!(c.lease_cue(), cue.wrapping_add(1), "lease left: no cue");
        assert_eq!(answer(&c).0, Status::Ok);
        assert_eq!(c.lease_cue(), cue.wrapping_add(2), "the last unit taken: the agent tops up before it is needed");
        assert_eq!(answer(&c).0, Status::RateLimitExceeded);
        c.set_lease(&e.digest, start, 2, true, false);
        assert_eq!(answer(&c), (Status::ApiKeyQuotaExceeded, end - now), "the fleet's quota is all leased");
        c.set_lease(&e.digest, start, 4, false, false);
        assert_eq!(answer(&c).0, Status::Ok, "a larger grant after a hand-back elsewhere: no longer spent");
        c.set_lease(&e.digest, start, 3, true, false);
        assert_eq!(answer(&c).0, Status::Ok, "an older grant neither lowers the lease nor says spent");
        assert_eq!(answer(&c).0, Status::RateLimitExceeded);
    }

    #[test]
    fn a_check_stamped_before_the_cells_period_is_held_to_that_periods_lease() {
        let dir = tempfile::tempdir().unwrap();
        let e = entry_with_daily_quota(1, 100);
        let (_, c) = built(&dir, std::slice::from_ref(&e));
        c.set_policies(&Policies { fleet_leases: true, ..Policies::default() });
        let midnight = Period::Daily.bounds(1_800_000_000_000).1;
        c.set_lease(&e.digest, midnight - DAY_MS, 50, false, false);
        c.set_lease(&e.digest, midnight, 2, false, false);
        let status = |now: i64| match c.admit(&e.digest, now) {
            Found::Key(a) => (a.decision.status, a.decision.quota_reset_ms),
            other => panic!("{other:?}"),
        };
        assert_eq!(status(midnight + 1), (Status::Ok, midnight + DAY_MS));
        // A host whose clock is 2 ms behind: counted in the new day, within the new day's lease of 2.
        assert_eq!(status(midnight - 1), (Status::Ok, midnight + DAY_MS));
        assert_eq!(status(midnight - 1).0, Status::RateLimitExceeded, "the old day's lease of 50 lends nothing");
        let q = c.quota_cell(&e.digest, midnight - 1).unwrap();
        assert_eq!((q.period_start_ms, q.used, q.lease), (midnight, 2, 2), "the agent sees the cell's period");
    }
}
