//! The HTTP answer's rate-limit fields, built once here so that every host sends the same bytes.
//!
//! Pure: a decision, the windows of the policy it applied, and the instant of the check give the lines
//! `Name: value\r\n`, in this order and only when they apply:
//! - `Retry-After: S` on 429s: `retry_after_ms` in whole seconds, rounded up (a client waiting the
//!   advertised time must not come back early);
//! - `RateLimit-Policy` and `RateLimit` (IETF draft-ietf-httpapi-ratelimit-headers) on admitted
//!   requests and 429s of a key with a quota and/or a rate limit, one item each, quota first (the
//!   decision order checks it first): `"quota";q=LIMIT;w=WINDOW_S, "rate";q=LIMIT;w=WINDOW_S` and
//!   `"quota";r=REMAINING;t=S, "rate";r=REMAINING;t=S`, where `t` is the seconds (rounded up) until the
//!   item's reset instant (`quota_reset_ms`, `rate_reset_ms`). 401s describe no policy: an expired,
//!   revoked or unknown key has none in force.
//!
//! `w` tells `q=10000` per day from per month: 86400 for a daily quota, the current UTC month's length
//! for a monthly one (2419200 to 2678400), and the rate window in seconds; it is left out for a rate
//! window that is not a whole number of seconds, as the draft's `w` is an integer and a rounded one
//! would misstate the rate. On a fleet host it is the window this host enforces (its share: the window
//! times the live members), which `r` and `t` describe.

use crate::period::Period;
use crate::policy::Decision;
use crate::status::Status;

/// Bytes that every answer fits in, with its terminating NUL (`MS_HTTP_FIELDS_MAX` in the C ABI).
/// The longest possible answer, every number at 19 digits, is under 300 bytes.
pub const FIELDS_MAX: usize = 512;

/// The windows of the policy a decision applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Windows {
    /// The quota's calendar period; None: no quota.
    pub quota: Option<Period>,
    /// The rate limit's window in ms; None: no rate limit.
    pub rate_window_ms: Option<i64>,
}

/// The answer's fields, built in place: no allocation on the check path (every host builds them for every
/// request it decides).
pub struct Fields {
    buf: [u8; FIELDS_MAX],
    len: usize,
}

impl Fields {
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever written.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }

    fn push(&mut self, s: &str) {
        let end = (self.len + s.len()).min(FIELDS_MAX - 1);
        self.buf[self.len..end].copy_from_slice(&s.as_bytes()[..end - self.len]);
        self.len = end;
    }

    fn num(&mut self, n: i64) {
        self.push(itoa::Buffer::new().format(n));
    }
}

/// The answer's rate-limit fields for `d`, decided at `now_ms`, as `Name: value\r\n` lines ("" for none).
pub fn http_fields(d: &Decision, windows: Windows, now_ms: i64) -> String {
    build(d, windows, now_ms).as_str().to_string()
}

/// [`http_fields`] without allocating.
pub fn build(d: &Decision, windows: Windows, now_ms: i64) -> Fields {
    let mut out = Fields { buf: [0; FIELDS_MAX], len: 0 };
    if d.status.http() == 429 && d.retry_after_ms > 0 {
        out.push("Retry-After: ");
        out.num(ceil_s(d.retry_after_ms));
        out.push("\r\n");
    }
    if !matches!(d.status, Status::Ok | Status::ApiKeyQuotaExceeded | Status::RateLimitExceeded) {
        return out;
    }
    let quota = d.quota_limit >= 0;
    let rate = d.rate_limit >= 0;
    if !quota && !rate {
        return out;
    }
    let rate_w = windows.rate_window_ms.filter(|w| *w > 0 && w % 1000 == 0);
    out.push("RateLimit-Policy: ");
    if quota {
        out.push("\"quota\";q=");
        out.num(d.quota_limit);
        if let Some(period) = windows.quota {
            let w = match period {
                Period::Daily => 86_400,
                Period::Monthly => {
                    let (start, end) = period.bounds(now_ms);
                    (end - start) / 1000
                }
            };
            out.push(";w=");
            out.num(w);
        }
    }
    if rate {
        out.push(if quota { ", \"rate\";q=" } else { "\"rate\";q=" });
        out.num(d.rate_limit);
        if let Some(w) = rate_w {
            out.push(";w=");
            out.num(w / 1000);
        }
    }
    out.push("\r\nRateLimit: ");
    if quota {
        out.push("\"quota\";r=");
        out.num(d.quota_remaining.max(0));
        out.push(";t=");
        out.num(ceil_s(d.quota_reset_ms - now_ms));
    }
    if rate {
        out.push(if quota { ", \"rate\";r=" } else { "\"rate\";r=" });
        out.num(d.rate_remaining.max(0));
        out.push(";t=");
        out.num(ceil_s(d.rate_reset_ms - now_ms));
    }
    out.push("\r\n");
    out
}

/// Milliseconds in whole seconds, rounded up, never below 0.
fn ceil_s(ms: i64) -> i64 {
    if ms <= 0 {
        0
    } else {
        ms / 1000 + i64::from(ms % 1000 != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::period::DAY_MS;

    // 2026-02-14T12:00:00.250Z: in a 28-day month.
    const NOW: i64 = 1_771_070_400_250;
    const DAY_END: i64 = 1_771_113_600_000; // 2026-02-15T00:00:00Z
    const FEB_END: i64 = 1_772_323_200_000; // 2026-03-01T00:00:00Z

    fn decision(status: Status) -> Decision {
        Decision { status, ..Decision::without_key(status) }
    }

    fn both() -> Windows {
        Windows { quota: Some(Period::Daily), rate_window_ms: Some(60_000) }
    }

    #[test]
    fn an_admitted_request_states_both_policies_with_their_windows_quota_first() {
        let d = Decision {
            quota_limit: 10_000,
            quota_remaining: 9_999,
            quota_reset_ms: DAY_END,
            rate_limit: 60,
            rate_remaining: 59,
            rate_reset_ms: NOW + 1_000,
            ..decision(Status::Ok)
        };
        assert_eq!(
            http_fields(&d, both(), NOW),
            "RateLimit-Policy: \"quota\";q=10000;w=86400, \"rate\";q=60;w=60\r\n\
             RateLimit: \"quota\";r=9999;t=43200, \"rate\";r=59;t=1\r\n"
        );
    }

    #[test]
    fn a_monthly_window_is_the_current_months_length() {
        let d = Decision { quota_limit: 10_000, quota_remaining: 5, quota_reset_ms: FEB_END, ..decision(Status::Ok) };
        let w = Windows { quota: Some(Period::Monthly), rate_window_ms: None };
        // February 2026 has 28 days; t counts from 12:00:00.250, rounded up.
        assert_eq!(
            http_fields(&d, w, NOW),
            "RateLimit-Policy: \"quota\";q=10000;w=2419200\r\nRateLimit: \"quota\";r=5;t=1252800\r\n"
        );
        // 2026-01-31T23:59:59.999Z: January has 31 days.
        let jan = 1_769_903_999_999;
        let d = Decision { quota_reset_ms: 1_769_904_000_000, ..d };
        assert_eq!(
            http_fields(&d, w, jan),
            "RateLimit-Policy: \"quota\";q=10000;w=2678400\r\nRateLimit: \"quota\";r=5;t=1\r\n"
        );
    }

    #[test]
    fn a_quota_refusal_retries_at_the_periods_end() {
        let d = Decision {
            retry_after_ms: DAY_END - NOW,
            quota_limit: 3,
            quota_remaining: 0,
            quota_reset_ms: DAY_END,
            rate_limit: 60,
            rate_remaining: 60,
            rate_reset_ms: NOW,
            ..decision(Status::ApiKeyQuotaExceeded)
        };
        assert_eq!(
            http_fields(&d, both(), NOW),
            "Retry-After: 43200\r\n\
             RateLimit-Policy: \"quota\";q=3;w=86400, \"rate\";q=60;w=60\r\n\
             RateLimit: \"quota\";r=0;t=43200, \"rate\";r=60;t=0\r\n"
        );
    }

    #[test]
    fn a_rate_refusal_has_t_to_the_buckets_reset_and_retry_after_to_one_request() {
        let d = Decision {
            retry_after_ms: 400,
            rate_limit: 2,
            rate_remaining: 0,
            rate_reset_ms: NOW + 30_400,
            ..decision(Status::RateLimitExceeded)
        };
        let w = Windows { quota: None, rate_window_ms: Some(60_000) };
        assert_eq!(
            http_fields(&d, w, NOW),
            "Retry-After: 1\r\nRateLimit-Policy: \"rate\";q=2;w=60\r\nRateLimit: \"rate\";r=0;t=31\r\n"
        );
    }

    #[test]
    fn a_window_of_a_fraction_of_seconds_is_not_rounded_into_another_rate() {
        let d = Decision { rate_limit: 5, rate_remaining: 4, rate_reset_ms: NOW + 300, ..decision(Status::Ok) };
        let w = Windows { quota: None, rate_window_ms: Some(1_500) };
        assert_eq!(http_fields(&d, w, NOW), "RateLimit-Policy: \"rate\";q=5\r\nRateLimit: \"rate\";r=4;t=1\r\n");
    }

    #[test]
    fn refusals_without_a_policy_in_force_and_keys_without_limits_give_no_ratelimit_fields() {
        for status in [Status::ApiKeyMissing, Status::ApiKeyInvalid, Status::ApiKeyExpired, Status::ApiKeyRevoked] {
            let d = Decision { quota_limit: 5, quota_remaining: 5, quota_reset_ms: DAY_END, ..decision(status) };
            assert_eq!(http_fields(&d, both(), NOW), "", "{status:?}");
        }
        assert_eq!(http_fields(&decision(Status::Ok), Windows::default(), NOW), "");
    }

    #[test]
    fn the_longest_answer_fits_the_documented_bound() {
        let d = Decision {
            status: Status::ApiKeyQuotaExceeded,
            retry_after_ms: i64::MAX,
            quota_limit: i64::MAX,
            quota_remaining: i64::MAX,
            quota_reset_ms: i64::MAX,
            rate_limit: i64::MAX,
            rate_remaining: i64::MAX,
            rate_reset_ms: i64::MAX,
        };
        let w = Windows { quota: Some(Period::Monthly), rate_window_ms: Some(366 * DAY_MS) };
        let longest = http_fields(&d, w, NOW);
        assert!(longest.len() < FIELDS_MAX, "{} bytes: {longest}", longest.len());
    }
}
