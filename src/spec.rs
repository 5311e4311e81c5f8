//! Key specs, patches, filters and records: the JSON shapes of the C ABI v1, checked field by field so
//! that a typo or a wrong type is a clear `MS_ERR_INVALID_ARGUMENT` rather than a silent default.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::gcra::RateLimit;
use crate::key::Env;
use crate::period::Period;
use crate::policy::Quota;

/// Below this a time is almost surely in seconds, not milliseconds (before 1973).
pub const MIN_TIME_MS: i64 = 100_000_000_000;
/// 2200-01-01T00:00:00Z. Above this a time is almost surely in microseconds; the bound also keeps every
/// rate limiter's arrival time (nanoseconds, 64 bits, good until 2262) far from overflowing.
pub const MAX_TIME_MS: i64 = 7_258_118_400_000;
/// The longest time a rate limit's bucket may take to refill from empty (`burst` × `window_ms` / `limit`):
/// ten years, so that a time before 2200 plus a full bucket's tolerance stays within 64-bit nanoseconds.
pub const MAX_REFILL_MS: i64 = 3653 * 86_400_000;
pub const MAX_PLAN_LEN: usize = 63;
pub const MAX_NAME_LEN: usize = 256;
pub const MAX_QUOTA: i64 = (1 << 40) - 1;

/// A field that may be absent (keep the default or the current value), null, or set.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Field<T> {
    #[default]
    Absent,
    Null,
    Set(T),
}

/// Absent vs null in a serde type: with `#[serde(default)]`, an absent field stays `Absent` (the
/// default), `null` is `Null` and any other value `Set`.
impl<'de, T: Deserialize<'de>> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Field<T>, D::Error> {
        Ok(Option::<T>::deserialize(d)?.map_or(Field::Null, Field::Set))
    }
}

impl<T> Field<T> {
    /// `Absent` → `default`, `Null` → `None`, `Set(v)` → `Some(v)`.
    pub fn or(self, default: Option<T>) -> Option<T> {
        match self {
            Field::Absent => default,
            Field::Null => None,
            Field::Set(v) => Some(v),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeySpec {
    pub env: Option<Env>,
    pub name: Option<String>,
    pub plan: Option<String>,
    pub expires_at_ms: Field<i64>,
    pub quota: Option<Quota>,
    pub rate_limit: Field<RateLimit>,
    pub meta: Option<Map<String, Value>>,
    /// An existing plaintext key to import instead of generating one.
    pub key: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeyPatch {
    pub name: Field<String>,
    pub plan: Field<String>,
    pub expires_at_ms: Field<i64>,
    pub quota: Field<Quota>,
    pub rate_limit: Field<RateLimit>,
    pub meta: Field<Map<String, Value>>,
    /// `"quota": "plan"`: drop the key's own quota and follow its plan's.
    pub quota_follows_plan: bool,
    /// `"rate_limit": "plan"`: drop the key's own rate limit and follow its plan's.
    pub rate_follows_plan: bool,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeyFilter {
    pub plan: Option<String>,
    pub env: Option<Env>,
    /// Only active keys that expire at or before this instant (Unix ms).
    pub expiring_before_ms: Option<i64>,
}

impl KeySpec {
    pub fn from_json(text: &str) -> Result<KeySpec> {
        let mut obj = parse_object(text, "key spec")?;
        let spec = KeySpec {
            env: take_str(&mut obj, "env")?.map(|s| Env::parse(&s)).transpose()?,
            name: take_name(&mut obj)?.or(None),
            plan: take_plan(&mut obj)?.or(None),
            expires_at_ms: take_time(&mut obj, "expires_at_ms")?,
            quota: take_quota(&mut obj)?.or(None),
            rate_limit: take_rate(&mut obj)?,
            meta: take_meta(&mut obj)?.or(None),
            key: take_str(&mut obj, "key")?,
        };
        reject_leftovers(obj, "key spec")?;
        Ok(spec)
    }
}

impl KeyPatch {
    pub fn from_json(text: &str) -> Result<KeyPatch> {
        let mut obj = parse_object(text, "key patch")?;
        let follows = |obj: &mut Map<String, Value>, name: &str| {
            let yes = obj.get(name).is_some_and(|v| v == "plan");
            if yes {
                obj.remove(name);
            }
            yes
        };
        let quota_follows_plan = follows(&mut obj, "quota");
        let rate_follows_plan = follows(&mut obj, "rate_limit");
        let patch = KeyPatch {
            name: take_name(&mut obj)?,
            plan: take_plan(&mut obj)?,
            expires_at_ms: take_time(&mut obj, "expires_at_ms")?,
            quota: take_quota(&mut obj)?,
            rate_limit: take_rate(&mut obj)?,
            meta: take_meta(&mut obj)?,
            quota_follows_plan,
            rate_follows_plan,
        };
        reject_leftovers(obj, "key patch (a revoked key cannot be un-revoked; use ms_key_revoke to revoke)")?;
        Ok(patch)
    }
}

impl KeyPatch {
    /// The change as JSON, for the audit log.
    pub fn to_json(&self) -> Value {
        fn put<T: Serialize>(out: &mut Map<String, Value>, name: &str, field: &Field<T>) {
            match field {
                Field::Absent => {}
                Field::Null => {
                    out.insert(name.into(), Value::Null);
                }
                Field::Set(v) => {
                    out.insert(name.into(), serde_json::to_value(v).unwrap_or(Value::Null));
                }
            }
        }
        let mut out = Map::new();
        put(&mut out, "name", &self.name);
        put(&mut out, "plan", &self.plan);
        put(&mut out, "expires_at_ms", &self.expires_at_ms);
        put(&mut out, "quota", &map_field(&self.quota, |q| QuotaJson::from(*q)));
        put(&mut out, "rate_limit", &map_field(&self.rate_limit, |r| RateJson::from(*r)));
        put(&mut out, "meta", &self.meta);
        if self.quota_follows_plan {
            out.insert("quota".into(), "plan".into());
        }
        if self.rate_follows_plan {
            out.insert("rate_limit".into(), "plan".into());
        }
        Value::Object(out)
    }
}

fn map_field<T, U>(f: &Field<T>, map: impl Fn(&T) -> U) -> Field<U> {
    match f {
        Field::Absent => Field::Absent,
        Field::Null => Field::Null,
        Field::Set(v) => Field::Set(map(v)),
    }
}

impl KeyFilter {
    pub fn from_json(text: &str) -> Result<KeyFilter> {
        let mut obj = parse_object(text, "key filter")?;
        let filter = KeyFilter {
            plan: take_str(&mut obj, "plan")?,
            env: take_str(&mut obj, "env")?.map(|s| Env::parse(&s)).transpose()?,
            expiring_before_ms: match take_time(&mut obj, "expiring_before_ms")? {
                Field::Set(ms) => Some(ms),
                _ => None,
            },
        };
        reject_leftovers(obj, "key filter")?;
        Ok(filter)
    }
}

pub(crate) fn parse_object(text: &str, what: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(_) => Err(Error::invalid(format!("{what} must be a JSON object"))),
        Err(e) => Err(Error::invalid(format!("{what} is not valid JSON: {e}"))),
    }
}

fn reject_leftovers(obj: Map<String, Value>, what: &str) -> Result<()> {
    match obj.keys().next() {
        None => Ok(()),
        Some(k) => Err(Error::invalid(format!("unknown field {k:?} in {what}"))),
    }
}

pub(crate) fn take(obj: &mut Map<String, Value>, name: &str) -> Field<Value> {
    match obj.remove(name) {
        None => Field::Absent,
        Some(Value::Null) => Field::Null,
        Some(v) => Field::Set(v),
    }
}

fn take_str(obj: &mut Map<String, Value>, name: &str) -> Result<Option<String>> {
    match take(obj, name) {
        Field::Absent | Field::Null => Ok(None),
        Field::Set(Value::String(s)) => Ok(Some(s)),
        Field::Set(_) => Err(Error::invalid(format!("{name} must be a string"))),
    }
}

fn take_label(obj: &mut Map<String, Value>, name: &str, max: usize) -> Result<Field<String>> {
    match take(obj, name) {
        Field::Absent => Ok(Field::Absent),
        Field::Null => Ok(Field::Null),
        Field::Set(Value::String(s)) => {
            if s.len() > max {
                Err(Error::invalid(format!("{name} is longer than {max} bytes")))
            } else if s.chars().any(char::is_control) {
                Err(Error::invalid(format!("{name} must not contain control characters")))
            } else {
                Ok(Field::Set(s))
            }
        }
        Field::Set(_) => Err(Error::invalid(format!("{name} must be a string or null"))),
    }
}

fn take_name(obj: &mut Map<String, Value>) -> Result<Field<String>> {
    take_label(obj, "name", MAX_NAME_LEN)
}

fn take_plan(obj: &mut Map<String, Value>) -> Result<Field<String>> {
    take_label(obj, "plan", MAX_PLAN_LEN)
}

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

fn take_time(obj: &mut Map<String, Value>, name: &str) -> Result<Field<i64>> {
    match take(obj, name) {
        Field::Absent => Ok(Field::Absent),
        Field::Null => Ok(Field::Null),
        Field::Set(v) => match v.as_i64() {
            Some(ms) => Ok(Field::Set(check_time_ms(name, ms)?)),
            None => Err(Error::invalid(format!("{name} must be an integer (Unix ms) or null"))),
        },
    }
}

fn positive(obj: &mut Map<String, Value>, name: &str, context: &str) -> Result<Option<i64>> {
    match take(obj, name) {
        Field::Absent => Ok(None),
        Field::Set(v) => match v.as_i64() {
            Some(n) if n >= 1 => Ok(Some(n)),
            _ => Err(Error::invalid(format!("{context}.{name} must be a positive integer"))),
        },
        Field::Null => Err(Error::invalid(format!("{context}.{name} must be a positive integer"))),
    }
}

fn take_quota(obj: &mut Map<String, Value>) -> Result<Field<Quota>> {
    quota_field(take(obj, "quota"))
}

/// A `quota` field as key specs, patches and plans accept it.
pub(crate) fn quota_field(field: Field<Value>) -> Result<Field<Quota>> {
    match field {
        Field::Absent => Ok(Field::Absent),
        Field::Null => Ok(Field::Null),
        Field::Set(Value::Object(mut q)) => {
            let limit = positive(&mut q, "limit", "quota")?.ok_or_else(|| Error::invalid("quota.limit is required"))?;
            // The shared counters keep a period's count in 40 bits.
            if limit > MAX_QUOTA {
                return Err(Error::invalid(format!("quota.limit must be at most {MAX_QUOTA}")));
            }
            let period = match take_str(&mut q, "period")? {
                Some(p) => Period::parse(&p)?,
                None => return Err(Error::invalid("quota.period is required (\"daily\" or \"monthly\")")),
            };
            reject_leftovers(q, "quota")?;
            Ok(Field::Set(Quota { limit, period }))
        }
        Field::Set(_) => {
            Err(Error::invalid("quota must be an object {\"limit\": N, \"period\": \"daily\"|\"monthly\"} or null"))
        }
    }
}

fn take_rate(obj: &mut Map<String, Value>) -> Result<Field<RateLimit>> {
    rate_field(take(obj, "rate_limit"))
}

/// A `rate_limit` field as key specs, patches and plans accept it.
pub(crate) fn rate_field(field: Field<Value>) -> Result<Field<RateLimit>> {
    match field {
        Field::Absent => Ok(Field::Absent),
        Field::Null => Ok(Field::Null),
        Field::Set(Value::Object(mut r)) => {
            let limit = positive(&mut r, "limit", "rate_limit")?
                .ok_or_else(|| Error::invalid("rate_limit.limit is required"))?;
            let window_ms = positive(&mut r, "window_ms", "rate_limit")?.unwrap_or(60_000);
            let burst = positive(&mut r, "burst", "rate_limit")?.unwrap_or(limit);
            reject_leftovers(r, "rate_limit")?;
            Ok(Field::Set(checked_rate(limit, window_ms, burst)?))
        }
        Field::Set(_) => {
            Err(Error::invalid("rate_limit must be an object {\"limit\", \"window_ms\", \"burst\"} or null"))
        }
    }
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

fn take_meta(obj: &mut Map<String, Value>) -> Result<Field<Map<String, Value>>> {
    match take(obj, "meta") {
        Field::Absent => Ok(Field::Absent),
        Field::Null => Ok(Field::Null),
        Field::Set(Value::Object(m)) => Ok(Field::Set(m)),
        Field::Set(_) => Err(Error::invalid("meta must be a JSON object or null")),
    }
}

/// A key as every admin answer shows it (field order as in the contract).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KeyRecord {
    pub id: String,
    pub prefix: String,
    pub env: String,
    pub name: Option<String>,
    pub plan: Option<String>,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
    pub revoked_reason: Option<String>,
    pub quota: Option<QuotaJson>,
    pub rate_limit: Option<RateJson>,
    pub usage: UsageJson,
    pub meta: Map<String, Value>,
    /// Fields added after v1 (additions only): a scheduled revocation (a rotation's grace end), the
    /// rotation links, and which limits come from the key's plan.
    pub revoke_at_ms: Option<i64>,
    pub rotated_from: Option<String>,
    pub rotated_to: Option<String>,
    pub follows_plan: Vec<&'static str>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QuotaJson {
    pub limit: i64,
    pub period: &'static str,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RateJson {
    pub limit: i64,
    pub window_ms: i64,
    pub burst: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UsageJson {
    pub period_start_ms: i64,
    pub used: i64,
    pub total: i64,
    pub last_used_at_ms: Option<i64>,
}

impl From<Quota> for QuotaJson {
    fn from(q: Quota) -> QuotaJson {
        QuotaJson { limit: q.limit, period: q.period.as_str() }
    }
}

impl From<RateLimit> for RateJson {
    fn from(r: RateLimit) -> RateJson {
        RateJson { limit: r.limit, window_ms: r.window_ms, burst: r.burst }
    }
}

impl KeyRecord {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a record always serializes")
    }

    /// The create answer: the record with the plaintext key, shown this once.
    pub fn to_json_with_key(&self, key: &str) -> String {
        let mut value = serde_json::to_value(self).expect("a record always serializes");
        let obj = value.as_object_mut().expect("a record is an object");
        let mut with_key = Map::new();
        for (k, v) in std::mem::take(obj) {
            with_key.insert(k.clone(), v);
            if k == "id" {
                with_key.insert("key".to_string(), Value::String(key.to_string()));
            }
        }
        Value::Object(with_key).to_string()
    }
}

/// `{"keys": [record, ...]}`
pub fn list_json(records: &[KeyRecord]) -> String {
    #[derive(Serialize)]
    struct List<'a> {
        keys: &'a [KeyRecord],
    }
    serde_json::to_string(&List { keys: records }).expect("records always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_null_and_set_are_told_apart() {
        let s =
            KeySpec::from_json(r#"{"expires_at_ms": null, "rate_limit": {"limit": 10, "window_ms": 1000}}"#).unwrap();
        assert_eq!(s.expires_at_ms, Field::Null);
        assert_eq!(s.rate_limit, Field::Set(RateLimit { limit: 10, window_ms: 1000, burst: 10 }));
        let s = KeySpec::from_json("{}").unwrap();
        assert_eq!((s.expires_at_ms, s.rate_limit), (Field::Absent, Field::Absent));
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let err = |t: &str| KeySpec::from_json(t).unwrap_err().message;
        assert!(err("nope").contains("not valid JSON"));
        assert!(err("[1]").contains("must be a JSON object"));
        assert!(err(r#"{"plann": "x"}"#).contains("unknown field \"plann\""));
        assert!(err(r#"{"env": "prod"}"#).contains("env must be"));
        assert!(err(r#"{"quota": {"limit": 0, "period": "daily"}}"#).contains("quota.limit must be a positive integer"));
        assert!(err(r#"{"quota": {"limit": 5, "period": "weekly"}}"#).contains("weekly"));
        assert!(err(r#"{"quota": {"limit": 5}}"#).contains("quota.period is required"));
        assert!(err(r#"{"expires_at_ms": 1700000000}"#).contains("not seconds"));
        assert!(err(r#"{"expires_at_ms": "soon"}"#).contains("integer"));
        assert!(err(&format!(r#"{{"plan": "{}"}}"#, "p".repeat(64))).contains("longer than 63"));
        assert!(err(r#"{"meta": [1]}"#).contains("meta must be a JSON object"));
        assert!(err(r#"{"rate_limit": {"limit": 10, "burst": -1}}"#).contains("burst must be a positive"));
        assert!(err(r#"{"expires_at_ms": 1800000000000000}"#).contains("not microseconds"));
        assert!(KeyPatch::from_json(r#"{"revoked_at_ms": 1}"#).unwrap_err().message.contains("cannot be un-revoked"));
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

    #[test]
    fn create_answer_carries_the_key_after_the_id() {
        let r = KeyRecord {
            id: "key_x".into(),
            prefix: "ms_live_AbCd".into(),
            env: "live".into(),
            name: None,
            plan: Some("pro".into()),
            created_at_ms: 1,
            expires_at_ms: None,
            revoked_at_ms: None,
            revoked_reason: None,
            quota: Some(QuotaJson { limit: 10, period: "daily" }),
            rate_limit: None,
            usage: UsageJson { period_start_ms: 0, used: 0, total: 0, last_used_at_ms: None },
            meta: Map::new(),
            revoke_at_ms: None,
            rotated_from: None,
            rotated_to: None,
            follows_plan: vec![],
        };
        let json = r.to_json_with_key("ms_live_secret");
        assert!(
            json.starts_with(
                r#"{"id":"key_x","key":"ms_live_secret","prefix":"ms_live_AbCd","env":"live","name":null,"plan":"pro""#
            ),
            "{json}"
        );
        assert!(!r.to_json().contains("\"key\""));
    }
}
