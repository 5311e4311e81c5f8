//! The pure policy: (key policy, usage state, now) → decision and the figures of `ms_check_result`.
//! No I/O, no clock: everything it needs is passed in, so every rule is tested with exact instants.

use crate::gcra::{Rate, RateLimit};
use crate::period::{Period, CLOCK_TOLERANCE_MS};
use crate::status::Status;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub limit: i64,
    pub period: Period,
}

/// What the policy needs to know about a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyPolicy {
    pub revoked: bool,
    /// A revocation that takes effect at this instant: the end of a rotation's grace, or the moment the
    /// key became idle under the store's idle policy.
    pub revoke_at_ms: Option<i64>,
    /// `None`: never expires.
    pub expires_at_ms: Option<i64>,
    pub quota: Option<Quota>,
    pub rate: Option<RateLimit>,
}

/// The counter state of one key: the quota period it counts in, the count, and the GCRA TAT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub period_start_ms: i64,
    pub used: i64,
    pub tat_ns: i64,
}

impl Usage {
    /// The instant whose quota period a check stamped `now_ms` counts in. A counter never moves back to
    /// an older period: callers' clocks are not one sequence (nginx workers' cached time, preempted
    /// threads, hosts milliseconds apart, NTP stepping back), so a check stamped before the period the
    /// counter is already in counts in that newer period. Each period's count then only grows, and no
    /// period admits more than the quota; the cost is that a late check may be refused against the
    /// newer period although the older one had room.
    ///
    /// Clocks are trusted to agree within [`CLOCK_TOLERANCE_MS`]: a counter whose period begins later
    /// than that after the stamp was moved there by a clock set wrong, and holding every later check to
    /// that far period would refuse the key until the clock reached it.
    #[inline]
    pub fn counting_instant(&self, now_ms: i64) -> i64 {
        if self.period_start_ms - now_ms <= CLOCK_TOLERANCE_MS {
            now_ms.max(self.period_start_ms)
        } else {
            now_ms
        }
    }

    /// Requests counted in the period that starts at `period_start_ms` (a count of any other period is 0).
    pub fn used_in(&self, period_start_ms: i64) -> i64 {
        if self.period_start_ms == period_start_ms {
            self.used
        } else {
            0
        }
    }
}

/// A decision with the figures a caller turns into headers (the fields of `ms_check_result`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub status: Status,
    pub retry_after_ms: i64,
    pub quota_limit: i64,
    pub quota_remaining: i64,
    pub quota_reset_ms: i64,
    pub rate_limit: i64,
    pub rate_remaining: i64,
    pub rate_reset_ms: i64,
}

impl Decision {
    /// A decision about a request that matched no key (missing or invalid): no figures.
    pub fn without_key(status: Status) -> Decision {
        Decision {
            status,
            retry_after_ms: 0,
            quota_limit: -1,
            quota_remaining: -1,
            quota_reset_ms: 0,
            rate_limit: -1,
            rate_remaining: -1,
            rate_reset_ms: 0,
        }
    }
}

/// In fleet mode, what this host may count of a key's quota in the current period: the lease its agent
/// holds (the leases of all hosts never add up to more than the quota), and whether the fleet's quota for
/// the period is spent (every unit of it leased to some host), which alone makes a host that used its
/// lease answer `api_key_quota_exceeded`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allowance {
    pub up_to: i64,
    pub fleet_spent: bool,
}

impl Allowance {
    /// True when this host has used its lease while the fleet's quota has room: the host waits for its
    /// share (the agent is cued), and the request is refused as `rate_limit_exceeded`, never as
    /// `api_key_quota_exceeded`, with a retry of at most [`TOP_UP_RETRY_MS`].
    #[inline(always)]
    pub fn short(&self, used: i64) -> bool {
        !self.fleet_spent && used >= self.up_to
    }
}

/// The retry of a request refused while this host waits for its share of a quota the fleet has room in
/// (the agent answers a check's cue in about a Redis round trip, and tops leases up every 100 ms).
pub const TOP_UP_RETRY_MS: i64 = 1000;

/// Decides steps 3 to 7 of the decision order. Returns the new usage state when the request is admitted
/// (both quota and rate charged) and `None` when it is refused (neither charged).
pub fn decide(policy: &KeyPolicy, usage: &Usage, now_ms: i64) -> (Decision, Option<Usage>) {
    decide_within(policy, usage, now_ms, None)
}

/// [`decide`] on a host of a fleet, whose counts in the quota period the check counts in (that of
/// [`Usage::counting_instant`]) may not pass `allowance`, this host's lease of that period.
// Inlined into the check's compare-and-swap loop: returned through memory, its answer was read back
// before the CPU had it stored (a store-forwarding stall on every check).
#[inline(always)]
pub fn decide_within(
    policy: &KeyPolicy,
    usage: &Usage,
    now_ms: i64,
    allowance: Option<Allowance>,
) -> (Decision, Option<Usage>) {
    let mut d = Decision::without_key(Status::Ok);
    let mut waits_for_lease = false;
    // Without a quota the count is left as it is: a rotated key's successor shares its counter.
    let mut period_start = usage.period_start_ms;
    let mut used = usage.used;
    if let Some(q) = policy.quota {
        let (start, end) = q.period.bounds(usage.counting_instant(now_ms));
        period_start = start;
        used = usage.used_in(start);
        d.quota_limit = q.limit;
        d.quota_remaining = (q.limit - used).max(0);
        d.quota_reset_ms = end;
        if let Some(a) = allowance {
            if a.fleet_spent {
                // The fleet's quota is all leased: this host's lease is all it will count.
                d.quota_remaining = d.quota_remaining.min((a.up_to - used).max(0));
            } else {
                // The quota has room fleet-wide: the figure is the key's quota less this host's count (the
                // others' counts are not known here), and a host out of lease waits for its share.
                waits_for_lease = a.short(used);
            }
        }
    }
    // The interval and tolerance are worked out once; the bucket's figures before this request are only
    // needed when it is refused before the rate is offered (an offer gives them otherwise).
    let bucket = policy.rate.map(|r| {
        d.rate_limit = r.limit;
        r.bucket()
    });
    let refused_before_rate = |status: Status, retry_after_ms: i64, mut d: Decision| {
        if let Some(b) = bucket {
            (d.rate_remaining, d.rate_reset_ms) = b.peek(usage.tat_ns, now_ms);
        }
        (Decision { status, retry_after_ms, ..d }, None)
    };

    if policy.revoked || policy.revoke_at_ms.is_some_and(|at| now_ms >= at) {
        return refused_before_rate(Status::ApiKeyRevoked, 0, d);
    }
    if policy.expires_at_ms.is_some_and(|at| now_ms >= at) {
        return refused_before_rate(Status::ApiKeyExpired, 0, d);
    }
    if policy.quota.is_some() && d.quota_remaining == 0 {
        return refused_before_rate(Status::ApiKeyQuotaExceeded, d.quota_reset_ms - now_ms, d);
    }
    if waits_for_lease {
        // Not the client's quota: this host's share of it, which its agent is asked for now.
        return refused_before_rate(Status::RateLimitExceeded, TOP_UP_RETRY_MS.min(d.quota_reset_ms - now_ms), d);
    }
    let mut tat_ns = usage.tat_ns;
    if let Some(b) = bucket {
        match b.offer(usage.tat_ns, now_ms) {
            Rate::Reject { retry_after_ms, remaining, reset_ms } => {
                let refused = Decision {
                    status: Status::RateLimitExceeded,
                    retry_after_ms,
                    rate_remaining: remaining,
                    rate_reset_ms: reset_ms,
                    ..d
                };
                return (refused, None);
            }
            Rate::Admit { tat_ns: new_tat, remaining, reset_ms } => {
                tat_ns = new_tat;
                d.rate_remaining = remaining;
                d.rate_reset_ms = reset_ms;
            }
        }
    }
    if policy.quota.is_some() {
        used += 1;
        d.quota_remaining -= 1;
    }
    (d, Some(Usage { period_start_ms: period_start, used, tat_ns }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::period::DAY_MS;
    use chrono::{TimeZone, Utc};

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i64 {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap().timestamp_millis()
    }

    const NOW: i64 = 1_800_000_000_000;

    fn open_policy() -> KeyPolicy {
        KeyPolicy { revoked: false, revoke_at_ms: None, expires_at_ms: None, quota: None, rate: None }
    }

    fn run(p: &KeyPolicy, u: &mut Usage, now: i64) -> Decision {
        let (d, next) = decide(p, u, now);
        if let Some(n) = next {
            *u = n;
        }
        d
    }

    #[test]
    fn unlimited_key_is_admitted_with_no_figures() {
        let (d, next) = decide(&open_policy(), &Usage::default(), NOW);
        assert_eq!(d, Decision::without_key(Status::Ok));
        assert!(next.is_some());
    }

    #[test]
    fn revoked_comes_before_expired_and_limits() {
        let p = KeyPolicy { revoked: true, expires_at_ms: Some(NOW - 1), ..open_policy() };
        assert_eq!(decide(&p, &Usage::default(), NOW).0.status, Status::ApiKeyRevoked);
        assert_eq!(decide(&p, &Usage::default(), NOW).1, None);
    }

    #[test]
    fn a_scheduled_revocation_is_exact_to_the_millisecond() {
        let p = KeyPolicy { revoke_at_ms: Some(NOW), ..open_policy() };
        assert_eq!(decide(&p, &Usage::default(), NOW - 1).0.status, Status::Ok);
        assert_eq!(decide(&p, &Usage::default(), NOW).0.status, Status::ApiKeyRevoked);
    }

    #[test]
    fn expiry_is_exact_to_the_millisecond() {
        let p = KeyPolicy { expires_at_ms: Some(NOW), ..open_policy() };
        assert_eq!(decide(&p, &Usage::default(), NOW - 1).0.status, Status::Ok);
        assert_eq!(decide(&p, &Usage::default(), NOW).0.status, Status::ApiKeyExpired);
        assert_eq!(decide(&p, &Usage::default(), NOW).1, None);
    }

    #[test]
    fn daily_quota_counts_until_the_last_millisecond() {
        let p = KeyPolicy { quota: Some(Quota { limit: 2, period: Period::Daily }), ..open_policy() };
        let mut u = Usage::default();
        let morning = at(2026, 12, 31, 8, 0, 0);
        let last_ms = at(2027, 1, 1, 0, 0, 0) - 1;
        let d = run(&p, &mut u, morning);
        assert_eq!((d.status, d.quota_remaining, d.quota_reset_ms), (Status::Ok, 1, last_ms + 1));
        assert_eq!(run(&p, &mut u, morning).quota_remaining, 0);
        let refused = run(&p, &mut u, last_ms);
        assert_eq!(refused.status, Status::ApiKeyQuotaExceeded);
        assert_eq!(refused.retry_after_ms, 1);
        assert_eq!(refused.http(), 429);
        // Dec 31 → Jan 1: a new day and a new year.
        let d = run(&p, &mut u, last_ms + 1);
        assert_eq!((d.status, d.quota_remaining), (Status::Ok, 1));
    }

    #[test]
    fn monthly_quota_resets_on_the_first() {
        let p = KeyPolicy { quota: Some(Quota { limit: 1, period: Period::Monthly }), ..open_policy() };
        for (last_day, next_first) in [
            (at(2026, 1, 31, 23, 59, 59) + 999, at(2026, 2, 1, 0, 0, 0)),
            (at(2026, 2, 28, 23, 59, 59) + 999, at(2026, 3, 1, 0, 0, 0)),
            (at(2028, 2, 29, 23, 59, 59) + 999, at(2028, 3, 1, 0, 0, 0)),
        ] {
            let mut u = Usage::default();
            assert_eq!(run(&p, &mut u, last_day - 86_000_000).status, Status::Ok);
            let refused = run(&p, &mut u, last_day);
            assert_eq!((refused.status, refused.retry_after_ms), (Status::ApiKeyQuotaExceeded, 1));
            assert_eq!(run(&p, &mut u, next_first).status, Status::Ok);
        }
    }

    #[test]
    fn a_check_stamped_before_the_counters_period_counts_in_that_newer_period() {
        let p = KeyPolicy { quota: Some(Quota { limit: 2, period: Period::Daily }), ..open_policy() };
        let midnight = at(2027, 1, 1, 0, 0, 0);
        let mut u = Usage::default();
        assert_eq!(run(&p, &mut u, midnight - 1).quota_reset_ms, midnight);
        assert_eq!(run(&p, &mut u, midnight + 1).quota_remaining, 1, "a new day");
        let late = run(&p, &mut u, midnight - 1);
        assert_eq!((late.status, late.quota_remaining, late.quota_reset_ms), (Status::Ok, 0, midnight + DAY_MS));
        assert_eq!(u.period_start_ms, midnight, "the counter stays in the new day");
        let refused = run(&p, &mut u, midnight - 1);
        assert_eq!(refused.status, Status::ApiKeyQuotaExceeded, "the new day's quota is spent");
        assert_eq!(refused.retry_after_ms, DAY_MS + 1, "until the end of the day it was counted in");
    }

    #[test]
    fn a_refusal_charges_nothing() {
        let p = KeyPolicy {
            quota: Some(Quota { limit: 5, period: Period::Daily }),
            rate: Some(RateLimit { limit: 1, window_ms: 1000, burst: 1 }),
            ..open_policy()
        };
        let mut u = Usage::default();
        assert_eq!(run(&p, &mut u, NOW).status, Status::Ok);
        let before = u;
        let d = run(&p, &mut u, NOW + 10);
        assert_eq!((d.status, d.retry_after_ms), (Status::RateLimitExceeded, 990));
        assert_eq!(d.quota_remaining, 4, "the rate-limited request took no quota");
        assert_eq!(u, before);
    }

    #[test]
    fn quota_is_checked_before_rate() {
        let p = KeyPolicy {
            quota: Some(Quota { limit: 1, period: Period::Daily }),
            rate: Some(RateLimit { limit: 1, window_ms: 60_000, burst: 1 }),
            ..open_policy()
        };
        let mut u = Usage::default();
        run(&p, &mut u, NOW);
        let d = run(&p, &mut u, NOW + 1);
        assert_eq!(d.status, Status::ApiKeyQuotaExceeded);
        assert_eq!(d.rate_remaining, 0);
    }

    #[test]
    fn figures_of_an_admitted_request() {
        let p = KeyPolicy {
            quota: Some(Quota { limit: 100, period: Period::Daily }),
            rate: Some(RateLimit { limit: 60, window_ms: 60_000, burst: 60 }),
            ..open_policy()
        };
        let d = decide(&p, &Usage::default(), NOW).0;
        assert_eq!(d.quota_limit, 100);
        assert_eq!(d.quota_remaining, 99);
        assert_eq!(d.rate_limit, 60);
        assert_eq!(d.rate_remaining, 59);
        assert_eq!(d.rate_reset_ms, NOW + 1000);
        assert_eq!(d.retry_after_ms, 0);
    }

    #[test]
    fn a_fleet_host_counts_only_up_to_its_lease_and_says_quota_exceeded_only_when_the_fleets_is_spent() {
        let p = KeyPolicy { quota: Some(Quota { limit: 10, period: Period::Daily }), ..open_policy() };
        let lease = Some(Allowance { up_to: 2, fleet_spent: false });
        let mut u = Usage::default();
        for remaining in [9, 8] {
            let (d, next) = decide_within(&p, &u, NOW, lease);
            assert_eq!((d.status, d.quota_limit, d.quota_remaining), (Status::Ok, 10, remaining), "the key's quota");
            u = next.unwrap();
        }
        let (refused, next) = decide_within(&p, &u, NOW, lease);
        assert_eq!(
            (refused.status, refused.retry_after_ms, refused.quota_remaining, next),
            (Status::RateLimitExceeded, TOP_UP_RETRY_MS, 8, None),
            "out of lease while the fleet has room: this host waits for its share, the quota is not exceeded"
        );
        let spent = Some(Allowance { up_to: 2, fleet_spent: true });
        let refused = decide_within(&p, &u, NOW, spent).0;
        assert_eq!((refused.status, refused.quota_remaining), (Status::ApiKeyQuotaExceeded, 0));
        assert_eq!(
            refused.retry_after_ms,
            refused.quota_reset_ms - NOW,
            "the fleet's quota is spent: wait for the period"
        );
        let none = decide_within(&p, &Usage::default(), NOW, Some(Allowance { up_to: 0, fleet_spent: false })).0;
        assert_eq!(none.status, Status::RateLimitExceeded, "no lease yet: refused, never over-admitted");
        let generous = decide_within(&p, &u, NOW, Some(Allowance { up_to: 50, fleet_spent: false })).0;
        assert_eq!(generous.quota_remaining, 7, "a lease never lifts the key's own quota");
        let mut own = Usage { used: 10, ..u };
        own.period_start_ms = Period::Daily.bounds(NOW).0;
        let refused = decide_within(&p, &own, NOW, Some(Allowance { up_to: 10, fleet_spent: false })).0;
        assert_eq!(refused.status, Status::ApiKeyQuotaExceeded, "the key's own count reached its limit");
        // A refusal while waiting for a share gives the rate limit's figures as they are, and charges nothing.
        let rated = KeyPolicy { rate: Some(RateLimit { limit: 5, window_ms: 1000, burst: 5 }), ..p };
        let (d, next) = decide_within(&rated, &u, NOW, lease);
        assert_eq!((d.status, d.rate_limit, d.rate_remaining, next), (Status::RateLimitExceeded, 5, 5, None));
        // Less than a second before the period's end, the retry is the period's end.
        let last = Period::Daily.bounds(NOW).1 - 300;
        let d = decide_within(&p, &Usage { period_start_ms: Period::Daily.bounds(NOW).0, ..u }, last, lease).0;
        assert_eq!((d.status, d.retry_after_ms), (Status::RateLimitExceeded, 300));
    }

    impl Decision {
        fn http(&self) -> i32 {
            self.status.http()
        }
    }
}
