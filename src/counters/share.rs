//! What the fleet agent keeps in the counters file's header for its host's checks, beside the leases
//! (`lease.rs`): how many live hosts share each key's rate limit, and until when this host may use its
//! share. The agent renews the share while it runs; when it stops renewing (it died, or stopped), the
//! share lapses before the other hosts count this one out and take it, and checks then refuse keys with
//! a rate limit (fail closed, as a spent lease does): so hosts never hold more than the whole rate
//! between them. Also: forgetting every lease, when a store takes a new identity in its fleet.

use std::sync::atomic::Ordering;

use super::SharedCounters;

impl SharedCounters {
    /// Fleet mode: each key's rate limit is shared by `hosts` live hosts, for `holds_for_ms` from now
    /// (`None`: with no end, for a file built before shares lapsed, or a test). The end is kept in this
    /// boot's monotonic clock, not in the callers' `now_ms`: a caller whose clock runs ahead (or stamps
    /// requests with their own time) must not lapse the share, nor one running behind keep it.
    pub fn set_rate_share(&self, hosts: u32, holds_for_ms: Option<i64>) {
        let until = holds_for_ms.map_or(0, |d| boot_clock_ms() + d.max(0));
        self.set_rate_share_until(hosts, until);
    }

    fn set_rate_share_until(&self, hosts: u32, until_boot_ms: i64) {
        let h = self.header();
        h.rate_sharers.store(hosts, Ordering::Release);
        h.rate_share_until_ms.store(until_boot_ms, Ordering::Release);
    }

    /// How many hosts share each key's rate limit now (0 or 1: this host has the whole of it); `None`
    /// when this host's share has lapsed (its agent stopped renewing it).
    pub fn rate_share(&self) -> Option<u32> {
        // The clock is read only for a share that can lapse (fleet mode): a standalone store's check pays
        // nothing for it.
        self.rate_share_with(boot_clock_ms)
    }

    fn rate_share_with(&self, boot_ms: impl FnOnce() -> i64) -> Option<u32> {
        let h = self.header();
        let until = h.rate_share_until_ms.load(Ordering::Acquire);
        if until != 0 && boot_ms() >= until {
            return None;
        }
        Some(h.rate_sharers.load(Ordering::Acquire))
    }

    #[cfg(test)]
    fn rate_share_at(&self, boot_ms: i64) -> Option<u32> {
        self.rate_share_with(|| boot_ms)
    }

    /// A share with no end (a file just built from the database, or from before shares could lapse; a
    /// store that just joined its fleet) is withheld until the agent renews it: until then nobody knows
    /// how many hosts share.
    pub fn withhold_rate_share_until_renewed(&self) {
        let _ = self.header().rate_share_until_ms.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire);
    }

    /// A larger file takes the share of the one it replaces (else it would be unshared until the agent's
    /// next renewal).
    pub(super) fn carry_rate_share(&self, from: &SharedCounters) {
        let h = from.header();
        self.set_rate_share_until(
            h.rate_sharers.load(Ordering::Acquire),
            h.rate_share_until_ms.load(Ordering::Acquire),
        );
    }

    /// Forgets every lease this file holds: they were granted to another identity (this store is a copy
    /// of another member's, whose leases they are).
    pub fn forget_leases(&self) {
        for b in 0..self.blocks_used().min(self.layout.max_blocks) {
            for word in &self.cell(b).leases {
                word.store(0, Ordering::Release);
            }
        }
    }
}

/// Milliseconds of this boot's monotonic clock (coarse: a vDSO read, no system call). The counters file
/// belongs to one boot, so every process of the host reads the same clock.
pub(super) fn boot_clock_ms() -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we own; CLOCK_MONOTONIC_COARSE exists on every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::boot_clock_ms;
    use crate::counters::testing::{built, entry_with_daily_quota};
    use crate::counters::{Found, Policies};
    use crate::period::Period;
    use crate::status::Status;

    #[test]
    fn a_lapsed_share_refuses_a_rate_without_charging_or_counting_abuse() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = entry_with_daily_quota(1, 1_000_000);
        e.policy.rate = Some(crate::gcra::RateLimit { limit: 600, window_ms: 60_000, burst: 30 });
        let (_, c) = built(&dir, std::slice::from_ref(&e));
        c.set_policies(&Policies { abuse_limit: 1, abuse_window_ms: 60_000, ..Policies::default() });
        let now = 1_800_000_000_000;
        let admit = |at: i64| match c.admit(&e.digest, at) {
            Found::Key(a) => a,
            other => panic!("{other:?}"),
        };
        c.set_rate_share(3, Some(60_000));
        assert_eq!(c.rate_share(), Some(3));
        let admitted = (0..100).filter(|_| admit(now).decision.status == Status::Ok).count();
        assert_eq!(admitted, 10, "a third of the burst of 30");
        // Lapsed: refused, with a retry of the agent's renewal, never counted as abuse or charged.
        let later = now + 60_000;
        c.set_rate_share(3, Some(0));
        assert_eq!(c.rate_share(), None);
        assert_eq!(c.rate_share_at(boot_clock_ms() - 1), Some(3), "held until the end, not after");
        for _ in 0..5 {
            let a = admit(later);
            assert_eq!(a.decision.status, Status::RateLimitExceeded);
            assert!(a.decision.retry_after_ms >= 1000 && !a.abusive, "{a:?}");
            assert_eq!(a.decision.rate_remaining, 0);
        }
        // Renewed: the whole share is there again (nothing was charged while it lapsed).
        c.set_rate_share(3, Some(60_000));
        assert_eq!((0..100).filter(|_| admit(later).decision.status == Status::Ok).count(), 10);
        c.set_rate_share(0, None);
        assert_eq!(c.rate_share_at(i64::MAX), Some(0), "no end: never lapses");
        c.withhold_rate_share_until_renewed();
        assert_eq!(c.rate_share(), None, "until the agent renews it");
        c.set_rate_share(2, Some(60_000));
        c.withhold_rate_share_until_renewed();
        assert_eq!(c.rate_share(), Some(2), "a share the agent keeps is kept");
    }

    /// A share held by the agent is not lapsed by a caller stamping checks with a clock of its own
    /// (ahead by a minute, as nginx's cached time or a request's timestamp may be), nor kept by one behind.
    #[test]
    fn a_share_lasts_by_the_boot_clock_whatever_clock_callers_stamp_checks_with() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = entry_with_daily_quota(1, 1_000_000);
        e.policy.rate = Some(crate::gcra::RateLimit { limit: 600, window_ms: 60_000, burst: 30 });
        let (_, c) = built(&dir, std::slice::from_ref(&e));
        let now = 1_800_000_000_000;
        c.set_rate_share(3, Some(60_000));
        for at in [now + 60_000, now + 3_600_000] {
            match c.admit(&e.digest, at) {
                Found::Key(a) => assert_eq!(a.decision.status, Status::Ok, "stamped {at}"),
                other => panic!("{other:?}"),
            }
        }
        c.set_rate_share(3, Some(0));
        match c.admit(&e.digest, now - 3_600_000) {
            Found::Key(a) => assert_eq!(a.decision.status, Status::RateLimitExceeded),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn forgetting_the_leases_empties_every_lease_word() {
        let dir = tempfile::tempdir().unwrap();
        let e = entry_with_daily_quota(1, 100);
        let (_, c) = built(&dir, std::slice::from_ref(&e));
        let now = 1_800_000_000_000;
        let start = Period::Daily.bounds(now).0;
        c.set_lease(&e.digest, start, 40, false, false);
        c.set_lease(&e.digest, start + crate::period::DAY_MS, 7, false, false);
        c.forget_leases();
        let q = c.quota_cell(&e.digest, now).unwrap();
        assert_eq!((q.lease, q.next_lease, q.wanted), (0, 0, false));
    }
}
