//! The rate limiter: GCRA, the Generic Cell Rate Algorithm, which is a token bucket kept as one number,
//! the theoretical arrival time (TAT). Capacity `burst`, refilled at `limit` per `window_ms`.
//! Time is kept in nanoseconds so that windows not divisible by the limit stay exact to well under a
//! millisecond, and `retry_after_ms` is rounded up so a client that waits it is admitted.

use crate::error::{Error, Result};
use crate::period::CLOCK_TOLERANCE_MS;

const NS_PER_MS: i64 = 1_000_000;
const CLOCK_TOLERANCE_NS: i64 = CLOCK_TOLERANCE_MS * NS_PER_MS;

/// The longest time a rate limit's bucket may take to refill from empty (`burst` × `window_ms` / `limit`):
/// ten years, so that a time before 2200 plus a full bucket's tolerance stays within 64-bit nanoseconds.
pub const MAX_REFILL_MS: i64 = 3653 * 86_400_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub limit: i64,
    pub window_ms: i64,
    pub burst: i64,
}

/// A rate limit whose arithmetic cannot overflow: at most one request per nanosecond, a window of at
/// most a year, and a bucket that refills from empty within [`MAX_REFILL_MS`] (ten years). Anything
/// larger is refused here rather than represented inexactly: a limiter must never stop limiting.
pub fn checked_rate(limit: i64, window_ms: i64, burst: i64) -> Result<RateLimit> {
    const YEAR_MS: i64 = 366 * 86_400_000;
    if limit < 1 || window_ms < 1 || burst < 1 {
        return Err(Error::invalid("rate_limit.limit, window_ms and burst must be positive integers"));
    }
    if window_ms > YEAR_MS {
        return Err(Error::invalid("rate_limit.window_ms must be at most a year"));
    }
    if limit > window_ms.saturating_mul(1_000_000) {
        return Err(Error::invalid("rate_limit.limit is more than one request per nanosecond"));
    }
    // Exact in 128 bits: burst × window ≤ MAX_REFILL × limit.
    if burst as i128 * window_ms as i128 > MAX_REFILL_MS as i128 * limit as i128 {
        let max_burst = (MAX_REFILL_MS as i128 * limit as i128 / window_ms as i128).max(1);
        return Err(Error::invalid(format!(
            "rate_limit.burst {burst} at {limit} per {window_ms} ms would take more than 10 years to refill; \
             the largest burst for this rate is {max_burst}"
        )));
    }
    Ok(RateLimit { limit, window_ms, burst })
}

/// The outcome of offering one request to a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rate {
    /// Admitted: the new TAT to store, and the figures after this request.
    Admit { tat_ns: i64, remaining: i64, reset_ms: i64 },
    /// Refused: nothing to store.
    Reject { retry_after_ms: i64, remaining: i64, reset_ms: i64 },
}

/// A rate limit with its emission interval and tolerance worked out, once per check.
///
/// Arithmetic is in 64 bits, which holds every value a check meets: times are below 2^63 ns (the year
/// 2262) and `checked_rate` bounds the tolerance to ten years. A record read from a shared
/// (possibly hostile) file, or a fleet's share of a rate, may go past that: then the interval is worked out
/// in 128 bits (a cold path), the tolerance saturates and a TAT that would pass 2^63 refuses, so nothing
/// wraps and nothing is admitted that the exact figures would refuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    interval_ns: i64,
    tolerance_ns: i64,
    burst: i64,
}

impl RateLimit {
    /// In fleet mode each of `hosts` live hosts enforces its share of a key's rate limit: the same
    /// interval times the number of hosts (so the fleet's sustained rate stays the limit) and a burst of
    /// `ceil(burst / hosts)` (so the fleet's burst is at most `burst + hosts - 1`).
    pub fn share_among(&mut self, hosts: u32) {
        if hosts > 1 {
            let n = i64::from(hosts.min(1024));
            self.window_ms = self.window_ms.saturating_mul(n);
            self.burst = self.burst.saturating_add(n - 1) / n;
        }
    }

    /// No share of the rate is this host's: every request is refused and nothing is charged (the interval
    /// is longer than any time, so no TAT can take it).
    pub fn withhold(&mut self) {
        self.window_ms = i64::MAX;
        self.burst = 1;
    }

    pub fn bucket(&self) -> Bucket {
        let limit = self.limit.max(1);
        let interval_ns = match self.window_ms.checked_mul(NS_PER_MS) {
            Some(window_ns) => window_ns / limit,
            None => interval_ns_wide(self.window_ms, limit),
        }
        .max(1);
        Bucket { interval_ns, tolerance_ns: interval_ns.saturating_mul(self.burst.max(1) - 1), burst: self.burst }
    }
}

#[cold]
fn interval_ns_wide(window_ms: i64, limit: i64) -> i64 {
    (window_ms as i128 * NS_PER_MS as i128 / limit as i128).clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

impl Bucket {
    /// Offers one request at `now_ms` to a bucket whose TAT is `tat_ns` (0 for a fresh bucket).
    #[inline]
    pub fn offer(&self, tat_ns: i64, now_ms: i64) -> Rate {
        let now = now_ms.saturating_mul(NS_PER_MS);
        let tat = self.tat_at(tat_ns, now);
        // `tat >= now`, so the distance cannot overflow unless `now` is negative (a time before 1970,
        // which the store refuses): then it saturates and refuses.
        let ahead = tat.saturating_sub(now);
        match tat.checked_add(self.interval_ns) {
            Some(new_tat) if ahead <= self.tolerance_ns => {
                Rate::Admit { tat_ns: new_tat, remaining: self.remaining(new_tat, now), reset_ms: ceil_ms(new_tat) }
            }
            _ => Rate::Reject {
                retry_after_ms: ceil_ms(ahead - self.tolerance_ns).max(1),
                remaining: self.remaining(tat, now),
                reset_ms: ceil_ms(tat),
            },
        }
    }

    /// Requests that would be admitted at `now_ms` without charging anything, and when the bucket is full.
    #[inline]
    pub fn peek(&self, tat_ns: i64, now_ms: i64) -> (i64, i64) {
        let now = now_ms.saturating_mul(NS_PER_MS);
        let tat = self.tat_at(tat_ns, now);
        (self.remaining(tat, now), ceil_ms(tat))
    }

    /// The TAT a check at `now` (ns) is decided on. A late check (a clock behind the latest one's) finds
    /// the bucket as the latest check left it; only a TAT further ahead than any check within
    /// [`CLOCK_TOLERANCE_MS`] of `now` could have left it — set by a clock set wrong — is not held
    /// against it, or one check from a clock a year ahead would refuse the key for a year.
    #[inline]
    fn tat_at(&self, tat_ns: i64, now: i64) -> i64 {
        let furthest = self.tolerance_ns.saturating_add(self.interval_ns).saturating_add(CLOCK_TOLERANCE_NS);
        if tat_ns.saturating_sub(now) > furthest {
            now
        } else {
            tat_ns.max(now)
        }
    }

    /// How many requests in a row a bucket at `tat` (`>= now`) admits at `now`.
    #[inline]
    fn remaining(&self, tat: i64, now: i64) -> i64 {
        let slack = self.tolerance_ns - tat.saturating_sub(now);
        if slack < 0 {
            0
        } else {
            (slack / self.interval_ns + 1).min(self.burst)
        }
    }
}

fn ceil_ms(ns: i64) -> i64 {
    ns.div_euclid(NS_PER_MS) + i64::from(ns.rem_euclid(NS_PER_MS) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000_000;

    fn run(rl: &RateLimit, tat: &mut i64, now: i64) -> Rate {
        let r = rl.bucket().offer(*tat, now);
        if let Rate::Admit { tat_ns, .. } = r {
            *tat = tat_ns;
        }
        r
    }

    #[test]
    fn burst_then_refill() {
        let rl = RateLimit { limit: 60, window_ms: 60_000, burst: 60 };
        let mut tat = 0;
        for i in 0..60 {
            match run(&rl, &mut tat, T0) {
                Rate::Admit { remaining, .. } => assert_eq!(remaining, 59 - i),
                r => panic!("request {i} refused: {r:?}"),
            }
        }
        // The 61st at the same instant waits exactly one interval.
        assert_eq!(run(&rl, &mut tat, T0), Rate::Reject { retry_after_ms: 1000, remaining: 0, reset_ms: T0 + 60_000 });
        assert!(matches!(run(&rl, &mut tat, T0 + 999), Rate::Reject { retry_after_ms: 1, .. }));
        assert!(matches!(run(&rl, &mut tat, T0 + 1000), Rate::Admit { remaining: 0, .. }));
        // After a full window the bucket is full again.
        assert_eq!(rl.bucket().peek(tat, T0 + 61_000), (60, T0 + 61_000));
    }

    #[test]
    fn burst_smaller_than_limit() {
        let rl = RateLimit { limit: 10, window_ms: 1000, burst: 2 };
        let mut tat = 0;
        assert!(matches!(run(&rl, &mut tat, T0), Rate::Admit { remaining: 1, reset_ms, .. } if reset_ms == T0 + 100));
        assert!(matches!(run(&rl, &mut tat, T0), Rate::Admit { remaining: 0, reset_ms, .. } if reset_ms == T0 + 200));
        assert_eq!(run(&rl, &mut tat, T0 + 50), Rate::Reject { retry_after_ms: 50, remaining: 0, reset_ms: T0 + 200 });
        assert!(matches!(run(&rl, &mut tat, T0 + 100), Rate::Admit { .. }));
    }

    /// Review: 1 per 366 days with burst 1000 admitted 3,000 checks at one instant (the tolerance was
    /// capped and `tat + interval` wrapped). The largest bucket accepted now admits exactly its burst.
    #[test]
    fn the_largest_accepted_buckets_admit_exactly_their_burst() {
        let year = 366 * 86_400_000;
        let late = crate::period::MAX_TIME_MS - 1;
        for (limit, window_ms) in [(1, year), (1, 86_400_000), (10, 86_400_000), (1, 3_600_000)] {
            let burst = (MAX_REFILL_MS as i128 * limit as i128 / window_ms as i128) as i64;
            let rl = checked_rate(limit, window_ms, burst).unwrap();
            for now in [T0, late] {
                let mut tat = 0;
                let admitted =
                    (0..rl.burst + 100).filter(|_| matches!(run(&rl, &mut tat, now), Rate::Admit { .. })).count();
                assert_eq!(admitted as i64, rl.burst, "{rl:?} at {now}");
            }
        }
    }

    /// The limiter as it was written first, in 128 bits throughout: the reference the 64-bit arithmetic
    /// must equal wherever a check can meet the values.
    fn offer_wide(rl: &RateLimit, tat_ns: i64, now_ms: i64) -> Rate {
        let ns = NS_PER_MS as i128;
        let interval = (rl.window_ms as i128 * ns / rl.limit.max(1) as i128).max(1);
        // Past i128 (hostile figures only) the tolerance is larger than any distance, as it would be.
        let tolerance = interval.checked_mul(rl.burst.max(1) as i128 - 1).unwrap_or(i128::MAX);
        let ceil = |v: i128| (v.div_euclid(ns) + i128::from(v.rem_euclid(ns) != 0)) as i64;
        let remaining = |tat: i128, now: i128| {
            let slack = tolerance - (tat - now);
            if slack < 0 {
                0
            } else {
                (slack / interval + 1).min(rl.burst as i128) as i64
            }
        };
        let now = now_ms as i128 * ns;
        let clock_tolerance = CLOCK_TOLERANCE_MS as i128 * ns;
        let furthest = tolerance.saturating_add(interval).saturating_add(clock_tolerance);
        let tat = if tat_ns as i128 - now > furthest { now } else { (tat_ns as i128).max(now) };
        let new_tat = tat + interval;
        if tat - now > tolerance || new_tat > i64::MAX as i128 {
            Rate::Reject {
                retry_after_ms: ceil(tat - tolerance - now).max(1),
                remaining: remaining(tat, now),
                reset_ms: ceil(tat),
            }
        } else {
            Rate::Admit { tat_ns: new_tat as i64, remaining: remaining(new_tat, now), reset_ms: ceil(new_tat) }
        }
    }

    proptest::proptest! {
        /// Every rate `checked_rate` accepts, shared by up to 1,024 fleet hosts, at every time the
        /// store accepts, from any TAT: the 64-bit limiter answers exactly as the 128-bit one.
        #[test]
        fn the_64_bit_limiter_equals_the_128_bit_one(
            limit in 1i64..=1_000_000_000,
            window_ms in 1i64..=366 * 86_400_000,
            burst in 1i64..=1_000_000_000,
            hosts in 1u32..=1024,
            now_ms in crate::period::MIN_TIME_MS..crate::period::MAX_TIME_MS,
            tat_offset_ns in proptest::prelude::any::<i64>(),
            tat_mode in 0u8..3,
        ) {
            let Ok(mut rl) = checked_rate(limit, window_ms, burst) else { return Ok(()) };
            rl.share_among(hosts);
            let now_ns = now_ms * NS_PER_MS;
            let tat = match tat_mode {
                0 => 0,
                1 => now_ns.saturating_add(tat_offset_ns % (1 << 60)),
                _ => tat_offset_ns,
            };
            proptest::prop_assert_eq!(rl.bucket().offer(tat, now_ms), offer_wide(&rl, tat, now_ms), "{:?} tat {}", rl, tat);
        }

        /// Any record at all (a hostile file): never a panic, and never admitted where the exact 128-bit
        /// figures refuse.
        #[test]
        fn a_hostile_rate_never_admits_what_the_exact_figures_refuse(
            limit in proptest::prelude::any::<i64>(),
            window_ms in proptest::prelude::any::<i64>(),
            burst in proptest::prelude::any::<i64>(),
            now_ms in crate::period::MIN_TIME_MS..crate::period::MAX_TIME_MS,
            tat in proptest::prelude::any::<i64>(),
        ) {
            let rl = RateLimit { limit, window_ms, burst };
            if let Rate::Admit { .. } = rl.bucket().offer(tat, now_ms) {
                let exact = offer_wide(&rl, tat, now_ms);
                proptest::prop_assert!(matches!(exact, Rate::Admit { .. }), "{:?} at {}: {:?}", rl, tat, exact);
            }
        }
    }

    #[test]
    fn a_late_check_finds_the_bucket_as_left_unless_a_clock_set_wrong_left_it() {
        let rl = RateLimit { limit: 1, window_ms: 1000, burst: 1 };
        let day_ns = CLOCK_TOLERANCE_MS * NS_PER_MS;
        // Left by a check up to a day ahead of this one's clock: held against it.
        let mut tat = (T0 + 1000) * NS_PER_MS + day_ns;
        assert!(matches!(run(&rl, &mut tat, T0), Rate::Reject { .. }));
        // Further ahead than any check within a day of this one could have left it: a clock set wrong.
        let mut tat = tat + 1;
        assert!(matches!(run(&rl, &mut tat, T0), Rate::Admit { .. }));
        assert_eq!(tat, (T0 + 1000) * NS_PER_MS);
    }

    #[test]
    fn uneven_interval_rounds_retry_up() {
        // 7 per second: 142.857… ms apart.
        let rl = RateLimit { limit: 7, window_ms: 1000, burst: 1 };
        let mut tat = 0;
        assert!(matches!(run(&rl, &mut tat, T0), Rate::Admit { .. }));
        assert_eq!(run(&rl, &mut tat, T0), Rate::Reject { retry_after_ms: 143, remaining: 0, reset_ms: T0 + 143 });
        assert!(matches!(run(&rl, &mut tat, T0 + 142), Rate::Reject { retry_after_ms: 1, .. }));
        assert!(matches!(run(&rl, &mut tat, T0 + 143), Rate::Admit { .. }));
        // Over a long run exactly 7 per second are admitted.
        let mut admitted = 0;
        for ms in 1..=10_000 {
            if let Rate::Admit { .. } = run(&rl, &mut tat, T0 + 143 + ms) {
                admitted += 1;
            }
        }
        assert!((69..=71).contains(&admitted), "{admitted}");
    }

    #[test]
    fn rate_limits_that_cannot_be_represented_are_refused() {
        // Review: 1 per 366 days with burst 1000, and 1 per day with burst 100,000, never limited.
        let year = 366 * 86_400_000;
        let e = checked_rate(1, year, 1000).unwrap_err().message;
        assert!(e.contains("10 years") && e.contains("largest burst for this rate is 9"), "{e}");
        assert!(checked_rate(1, 86_400_000, 100_000).unwrap_err().message.contains("largest burst"));
        assert!(checked_rate(1, 86_400_000, 3653).is_ok(), "exactly ten years is allowed");
        assert!(checked_rate(1, 86_400_000, 3654).is_err());
        assert!(checked_rate(1, year, 1).is_ok());
        assert!(checked_rate(1_000_000, 1000, 1_000_000_000).is_ok());
    }
}
