//! Settling a lease exactly (the fleet agent hands back what its host did not use): the lease is lowered
//! to the count, and the count is known final once no check can still charge against the higher lease.
//!
//! A check reads the lease after loading the cell's state word and charges with a compare-and-swap of
//! that word (`cell.rs`, `admit`). So after the lease is lowered, one successful compare-and-swap of the
//! state word by the settler (to a value a check cannot have loaded: the GCRA arrival time 1 ns later)
//! fails every check that loaded the state before it, and those retry and read the lowered lease; every
//! check that loads the state after it reads the lowered lease too (the lease was stored before, with
//! release ordering). No sleep, no bound on how long a check may be preempted mid-way.

use std::sync::atomic::Ordering;

use super::cell::{decode, FROZEN};
use super::SharedCounters;
use crate::key::KeyDigest;

/// What settling a lease found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// The lease is now this count, which no check can raise any more.
    At(i64),
    /// The counter moved on to a later period: that period's count is final but no longer known (its
    /// lease is left as it is).
    MovedOn,
    /// The file does not hold the key, or was superseded (the caller looks again in the current file).
    Elsewhere,
}

impl SharedCounters {
    /// Lowers this host's lease of the period starting at `period_start_ms` to what the cell counted in
    /// it, and returns that count once it is final.
    pub fn settle_lease(&self, digest: &KeyDigest, period_start_ms: i64, spent: bool) -> Settled {
        let Some(record) = self.valid_record_of(digest) else { return Settled::Elsewhere };
        let cell = self.cell(record.cell);
        loop {
            let state = cell.state.load(Ordering::Acquire);
            if state as u64 & FROZEN != 0 {
                return Settled::Elsewhere;
            }
            let usage = decode(state);
            if usage.period_start_ms > period_start_ms {
                return Settled::MovedOn;
            }
            let used = usage.used_in(period_start_ms);
            if !self.set_lease(digest, period_start_ms, used, spent, true) {
                return Settled::Elsewhere;
            }
            // Any check that charged since `state` was loaded makes this fail: then its count is read.
            let tat = (state >> 64) as u64;
            let bumped = ((tat.wrapping_add(1) as u128) << 64) | (state as u64 as u128);
            if cell.state.compare_exchange(state, bumped, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                return Settled::At(used);
            }
        }
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
    fn a_settled_lease_is_final_whatever_checks_race_it() {
        let dir = tempfile::tempdir().unwrap();
        let e = entry_with_daily_quota(1, 100_000_000);
        let (_, c) = built(&dir, std::slice::from_ref(&e));
        c.set_policies(&Policies { fleet_leases: true, ..Policies::default() });
        let now = 1_800_000_000_000;
        let start = Period::Daily.bounds(now).0;
        for round in 0..200 {
            let used = c.quota_cell(&e.digest, now).unwrap().used;
            c.set_lease(&e.digest, start, used + 100_000, false, false);
            let stop = std::sync::atomic::AtomicBool::new(false);
            let settled = std::thread::scope(|s| {
                for _ in 0..3 {
                    s.spawn(|| {
                        while !stop.load(Ordering::Relaxed) {
                            match c.admit(&e.digest, now) {
                                Found::Key(_) => {}
                                other => panic!("{other:?}"),
                            }
                        }
                    });
                }
                std::thread::sleep(std::time::Duration::from_micros(200));
                let settled = c.settle_lease(&e.digest, start, false);
                stop.store(true, Ordering::Relaxed);
                settled
            });
            let Settled::At(final_count) = settled else { panic!("{settled:?}") };
            let counted = c.quota_cell(&e.digest, now).unwrap().used;
            assert_eq!(counted, final_count, "round {round}: a check counted past the settled lease");
            // Refused: out of lease (while the fleet's quota has room, the answer is a wait for the host's
            // share, `rate_limit_exceeded`, not "quota exceeded").
            assert!(matches!(c.admit(&e.digest, now), Found::Key(a) if a.decision.status == Status::RateLimitExceeded));
        }
    }

    #[test]
    fn a_counter_in_a_later_period_is_not_settled() {
        let dir = tempfile::tempdir().unwrap();
        let e = entry_with_daily_quota(1, 100);
        let (_, c) = built(&dir, std::slice::from_ref(&e));
        c.set_policies(&Policies { fleet_leases: true, ..Policies::default() });
        let now = 1_800_000_000_000;
        let start = Period::Daily.bounds(now).0;
        c.set_lease(&e.digest, start + crate::period::DAY_MS, 5, false, false);
        assert!(matches!(c.admit(&e.digest, now + crate::period::DAY_MS), Found::Key(_)));
        assert_eq!(c.settle_lease(&e.digest, start, false), Settled::MovedOn);
        assert_eq!(c.settle_lease(&e.digest, start + crate::period::DAY_MS, false), Settled::At(1));
    }
}
