//! The values people type on the CLI's command line (`10000/day`, `60/min`, `30d`, RFC 3339 times):
//! pure parsers, no I/O. They live in the library, not in the binary, so that the fuzz target `cli_values`
//! and its stable replay (`tests/fuzz_regressions.rs`) run the very code the CLI runs.

use chrono::DateTime;

use crate::error::{Error, Result};
use crate::period::Period;
use crate::policy::Quota;

/// `N/unit` with N ≥ 1: the count and the unit's text, trimmed. `flag` names the option in errors.
pub fn split_rate<'a>(text: &'a str, flag: &str) -> Result<(i64, &'a str)> {
    let bad = || Error::invalid(format!("{flag} {text}: expected N/unit, like 60/min"));
    let (n, unit) = text.split_once('/').ok_or_else(bad)?;
    let n: i64 = n.trim().parse().map_err(|_| bad())?;
    if n < 1 {
        return Err(Error::invalid(format!("{flag} {text}: N must be at least 1")));
    }
    Ok((n, unit.trim()))
}

/// A quota such as `10000/day` or `500/month`.
pub fn quota(text: &str) -> Result<Quota> {
    let (n, unit) = split_rate(text, "--quota")?;
    let period = match unit {
        "day" | "daily" => Period::Daily,
        "month" | "monthly" => Period::Monthly,
        _ => return Err(Error::invalid(format!("--quota {text}: the period must be day or month"))),
    };
    Ok(Quota { limit: n, period })
}

/// A rate such as `60/min`: `(limit, window_ms)`. The burst and the limit's bounds are the caller's
/// (`gcra::checked_rate`).
pub fn rate(text: &str) -> Result<(i64, i64)> {
    let (n, unit) = split_rate(text, "--rate")?;
    let window_ms = match unit {
        "s" | "sec" | "second" => 1_000,
        "m" | "min" | "minute" => 60_000,
        "h" | "hour" => 3_600_000,
        _ => return Err(Error::invalid(format!("--rate {text}: the window must be s, min or hour"))),
    };
    Ok((n, window_ms))
}

/// A duration such as `30d`, `12h`, `90m` or `45s`, in ms (never negative).
pub fn duration_ms(text: &str) -> Result<i64> {
    let bad = || Error::invalid(format!("duration {text:?}: expected a number and a unit, like 30d, 12h, 90m or 45s"));
    let unit_at = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let n: i64 = text[..unit_at].parse().map_err(|_| bad())?;
    let unit_ms = match &text[unit_at..] {
        "d" => 86_400_000,
        "h" => 3_600_000,
        "m" => 60_000,
        "s" => 1_000,
        _ => return Err(bad()),
    };
    n.checked_mul(unit_ms).ok_or_else(bad)
}

/// `now` plus the duration `text` (an expiry, a grace end): an error, not a wrapped time, when the sum
/// leaves 64 bits (`--expires-in 106751991000d` used to overflow).
pub fn after(now: i64, text: &str) -> Result<i64> {
    let d = duration_ms(text)?;
    now.checked_add(d).ok_or_else(|| Error::invalid(format!("duration {text:?} is too long")))
}

/// `now` minus the duration `text` (how far back an audit listing starts).
pub fn before(now: i64, text: &str) -> Result<i64> {
    let d = duration_ms(text)?;
    now.checked_sub(d).ok_or_else(|| Error::invalid(format!("duration {text:?} is too long")))
}

/// An RFC 3339 time such as `2027-01-01T00:00:00Z`, in Unix ms.
pub fn time_ms(text: &str) -> Result<i64> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|e| Error::invalid(format!("time {text:?} is not RFC 3339 (like 2027-01-01T00:00:00Z): {e}")))
}

/// The audit listing's `--since`: an RFC 3339 time, or a duration back from `now`.
pub fn since(now: i64, text: &str) -> Result<i64> {
    if text.contains('T') {
        time_ms(text)
    } else {
        before(now, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_as_people_type_them() {
        assert_eq!(quota("10000/day").unwrap(), Quota { limit: 10_000, period: Period::Daily });
        assert_eq!(quota(" 5 / monthly").unwrap(), Quota { limit: 5, period: Period::Monthly });
        assert_eq!(rate("60/min").unwrap(), (60, 60_000));
        assert_eq!(duration_ms("30d").unwrap(), 30 * 86_400_000);
        assert_eq!(time_ms("2027-01-15T08:00:00Z").unwrap(), 1_800_000_000_000);
        assert_eq!(since(1_800_000_000_000, "1h").unwrap(), 1_800_000_000_000 - 3_600_000);
        for bad in ["0/day", "-1/day", "10/week", "/day", "10", "9223372036854775808/day"] {
            assert!(quota(bad).is_err(), "{bad}");
        }
        for bad in ["", "d", "30", "30x", "-5d", "+5d", "1.5h", "106751991168d"] {
            assert!(duration_ms(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_time_past_64_bits_is_an_error_not_a_wrap() {
        // 106751991000 days fit in 64-bit ms, but not added to a 2027 now.
        assert!(after(1_800_000_000_000, "106751991000d").is_err());
        assert!(before(-1_800_000_000_000, "106751991000d").is_err());
        assert!(since(i64::MIN + 1, "1s").is_err());
    }
}
