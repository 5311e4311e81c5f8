//! The rate limiter: GCRA, the Generic Cell Rate Algorithm, which is a token bucket kept as one number,
//! the theoretical arrival time (TAT). Capacity `burst`, refilled at `limit` per `window_ms`.
//! Time is kept in nanoseconds so that windows not divisible by the limit stay exact to well under a
//! millisecond, and `retry_after_ms` is rounded up so a client that waits it is admitted.

const NS_PER_MS: i64 = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub limit: i64,
    pub window_ms: i64,
    pub burst: i64,
}

/// The outcome of offering one request to a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rate {
    /// Admitted: the new TAT to store, and the figures after this request.
    Admit { tat_ns: i64, remaining: i64, reset_ms: i64 },
    /// Refused: nothing to store.
    Reject { retry_after_ms: i64, reset_ms: i64 },
}

impl RateLimit {
    // Arithmetic in 128 bits: `spec::checked_rate` and the time bounds keep every value far inside 64
    // bits, but a record read from a shared (possibly hostile) file must not make the limiter wrap.
    fn interval_ns(&self) -> i128 {
        (self.window_ms as i128 * NS_PER_MS as i128 / self.limit.max(1) as i128).max(1)
    }

    fn tolerance_ns(&self) -> i128 {
        self.interval_ns() * (self.burst.max(1) as i128 - 1)
    }

    /// Offers one request at `now_ms` to a bucket whose TAT is `tat_ns` (0 for a fresh bucket).
    pub fn offer(&self, tat_ns: i64, now_ms: i64) -> Rate {
        let now = now_ms as i128 * NS_PER_MS as i128;
        let tat = (tat_ns as i128).max(now);
        let tolerance = self.tolerance_ns();
        let new_tat = tat + self.interval_ns();
        if tat - now > tolerance || new_tat > i64::MAX as i128 {
            return Rate::Reject { retry_after_ms: ceil_ms(tat - tolerance - now).max(1), reset_ms: ceil_ms(tat) };
        }
        Rate::Admit { tat_ns: new_tat as i64, remaining: self.remaining(new_tat, now), reset_ms: ceil_ms(new_tat) }
    }

    /// Requests that would be admitted at `now_ms` without charging anything, and when the bucket is full.
    pub fn peek(&self, tat_ns: i64, now_ms: i64) -> (i64, i64) {
        let now = now_ms as i128 * NS_PER_MS as i128;
        let tat = (tat_ns as i128).max(now);
        (self.remaining(tat, now), ceil_ms(tat))
    }

    /// How many requests in a row a bucket at `tat` admits at `now`.
    fn remaining(&self, tat: i128, now: i128) -> i64 {
        let slack = now + self.tolerance_ns() - tat;
        if slack < 0 {
            0
        } else {
            (slack / self.interval_ns() + 1).min(self.burst as i128) as i64
        }
    }
}

fn ceil_ms(ns: i128) -> i64 {
    let ms = ns.div_euclid(NS_PER_MS as i128) + i128::from(ns.rem_euclid(NS_PER_MS as i128) != 0);
    ms.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000_000;

    fn run(rl: &RateLimit, tat: &mut i64, now: i64) -> Rate {
        let r = rl.offer(*tat, now);
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
        assert_eq!(run(&rl, &mut tat, T0), Rate::Reject { retry_after_ms: 1000, reset_ms: T0 + 60_000 });
        assert!(matches!(run(&rl, &mut tat, T0 + 999), Rate::Reject { retry_after_ms: 1, .. }));
        assert!(matches!(run(&rl, &mut tat, T0 + 1000), Rate::Admit { remaining: 0, .. }));
        // After a full window the bucket is full again.
        assert_eq!(rl.peek(tat, T0 + 61_000), (60, T0 + 61_000));
    }

    #[test]
    fn burst_smaller_than_limit() {
        let rl = RateLimit { limit: 10, window_ms: 1000, burst: 2 };
        let mut tat = 0;
        assert!(matches!(run(&rl, &mut tat, T0), Rate::Admit { remaining: 1, reset_ms, .. } if reset_ms == T0 + 100));
        assert!(matches!(run(&rl, &mut tat, T0), Rate::Admit { remaining: 0, reset_ms, .. } if reset_ms == T0 + 200));
        assert_eq!(run(&rl, &mut tat, T0 + 50), Rate::Reject { retry_after_ms: 50, reset_ms: T0 + 200 });
        assert!(matches!(run(&rl, &mut tat, T0 + 100), Rate::Admit { .. }));
    }

    /// Review: 1 per 366 days with burst 1000 admitted 3,000 checks at one instant (the tolerance was
    /// capped and `tat + interval` wrapped). The largest bucket accepted now admits exactly its burst.
    #[test]
    fn the_largest_accepted_buckets_admit_exactly_their_burst() {
        let year = 366 * 86_400_000;
        let late = crate::spec::MAX_TIME_MS - 1;
        for (limit, window_ms) in [(1, year), (1, 86_400_000), (10, 86_400_000), (1, 3_600_000)] {
            let burst = (crate::spec::MAX_REFILL_MS as i128 * limit as i128 / window_ms as i128) as i64;
            let rl = crate::spec::checked_rate(limit, window_ms, burst).unwrap();
            for now in [T0, late] {
                let mut tat = 0;
                let admitted =
                    (0..rl.burst + 100).filter(|_| matches!(run(&rl, &mut tat, now), Rate::Admit { .. })).count();
                assert_eq!(admitted as i64, rl.burst, "{rl:?} at {now}");
            }
        }
    }

    #[test]
    fn uneven_interval_rounds_retry_up() {
        // 7 per second: 142.857… ms apart.
        let rl = RateLimit { limit: 7, window_ms: 1000, burst: 1 };
        let mut tat = 0;
        assert!(matches!(run(&rl, &mut tat, T0), Rate::Admit { .. }));
        assert_eq!(run(&rl, &mut tat, T0), Rate::Reject { retry_after_ms: 143, reset_ms: T0 + 143 });
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
}
