//! Calendar quota periods in UTC: `daily` resets at 00:00 UTC, `monthly` at 00:00 UTC on the 1st.

use chrono::{Datelike, NaiveDate};

use crate::error::{Error, Result};

pub const DAY_MS: i64 = 86_400_000;

/// Below this a time is almost surely in seconds, not milliseconds (before 1973).
pub const MIN_TIME_MS: i64 = 100_000_000_000;
/// 2200-01-01T00:00:00Z. Above this a time is almost surely in microseconds; the bound also keeps every
/// rate limiter's arrival time (nanoseconds, 64 bits, good until 2262) far from overflowing.
pub const MAX_TIME_MS: i64 = 7_258_118_400_000;

/// How far apart the clocks stamping one key's checks may be while its quota counter never moves back to
/// an older period and its rate limiter never backwards (see `policy::Usage::counting_instant`): state
/// further ahead of a check than that was left by a clock set wrong, and is not held against it.
pub const CLOCK_TOLERANCE_MS: i64 = DAY_MS;

/// Checks a Unix time in milliseconds: a value in seconds or in microseconds is a likely mistake, so
/// anything before 1973 or from 2200 on is refused.
pub fn check_time_ms(name: &str, value: i64) -> Result<i64> {
    if value < MIN_TIME_MS {
        return Err(Error::invalid(format!(
            "{name} = {value} is before 1973: times are Unix milliseconds, not seconds"
        )));
    }
    if value >= MAX_TIME_MS {
        return Err(Error::invalid(format!(
            "{name} = {value} is after the year 2200: times are Unix milliseconds, not microseconds"
        )));
    }
    Ok(value)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Daily,
    Monthly,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Daily => "daily",
            Period::Monthly => "monthly",
        }
    }

    pub fn parse(s: &str) -> Result<Period> {
        match s {
            "daily" => Ok(Period::Daily),
            "monthly" => Ok(Period::Monthly),
            _ => Err(Error::invalid(format!("quota period must be \"daily\" or \"monthly\", not {s:?}"))),
        }
    }

    /// The period containing `now_ms`, as `[start_ms, end_ms)`.
    #[inline]
    pub fn bounds(self, now_ms: i64) -> (i64, i64) {
        let day_start = now_ms.div_euclid(DAY_MS) * DAY_MS;
        match self {
            Period::Daily => (day_start, day_start + DAY_MS),
            Period::Monthly => month_bounds(day_start),
        }
    }
}

/// The calendar month containing the day that starts at `day_start_ms`.
fn month_bounds(day_start_ms: i64) -> (i64, i64) {
    let date = date_of(day_start_ms);
    let first = NaiveDate::from_ymd_opt(date.year(), date.month(), 1).expect("valid month");
    let next = if date.month() == 12 {
        NaiveDate::from_ymd_opt(date.year() + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(date.year(), date.month() + 1, 1)
    }
    .expect("valid month");
    (ms_of(first), ms_of(next))
}

fn date_of(day_start_ms: i64) -> NaiveDate {
    let days = day_start_ms.div_euclid(DAY_MS);
    NaiveDate::from_num_days_from_ce_opt((days + 719_163) as i32).expect("date in range")
}

fn ms_of(date: NaiveDate) -> i64 {
    (date.num_days_from_ce() as i64 - 719_163) * DAY_MS
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn ms(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32, milli: i64) -> i64 {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap().timestamp_millis() + milli
    }

    #[test]
    fn last_millisecond_of_a_day_belongs_to_it() {
        let last = ms(2026, 3, 14, 23, 59, 59, 999);
        assert_eq!(Period::Daily.bounds(last), (ms(2026, 3, 14, 0, 0, 0, 0), ms(2026, 3, 15, 0, 0, 0, 0)));
        assert_eq!(Period::Daily.bounds(last + 1).0, ms(2026, 3, 15, 0, 0, 0, 0));
    }

    #[test]
    fn month_ends() {
        let cases = [
            ((2026, 1, 31), (2026, 1, 1), (2026, 2, 1)),
            ((2026, 2, 28), (2026, 2, 1), (2026, 3, 1)),
            ((2028, 2, 29), (2028, 2, 1), (2028, 3, 1)),
            ((2100, 2, 28), (2100, 2, 1), (2100, 3, 1)),
            ((2026, 12, 31), (2026, 12, 1), (2027, 1, 1)),
        ];
        for ((y, m, d), (sy, sm, sd), (ey, em, ed)) in cases {
            let last = ms(y, m, d, 23, 59, 59, 999);
            let (start, end) = Period::Monthly.bounds(last);
            assert_eq!(start, ms(sy, sm, sd, 0, 0, 0, 0), "{y}-{m}-{d}");
            assert_eq!(end, ms(ey, em, ed, 0, 0, 0, 0), "{y}-{m}-{d}");
            assert_eq!(end, last + 1);
            assert_eq!(Period::Monthly.bounds(last + 1).0, end);
        }
        // 2028 is a leap year: Feb 28 is not the last day.
        assert_eq!(Period::Monthly.bounds(ms(2028, 2, 28, 23, 59, 59, 999)).1, ms(2028, 3, 1, 0, 0, 0, 0));
        assert_eq!(Period::Daily.bounds(ms(2026, 12, 31, 23, 59, 59, 999)).1, ms(2027, 1, 1, 0, 0, 0, 0));
    }
}
