//! The input shapes: key specs and patches as the C ABI v1 takes them in JSON (the key list's filter is
//! in `list`). Each shape is one serde type (`KeySpecJson`, ...) that refuses unknown fields, and one
//! `TryFrom` that checks its fields, so that a typo or a wrong type is a clear `MS_ERR_INVALID_ARGUMENT`
//! naming the field rather than a silent default. `parse_shape` is the first step of every JSON shape of
//! the ABI, here and in `store`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::record::{QuotaJson, RateJson};
use crate::error::{Error, Result};
use crate::gcra::checked_rate;
use crate::gcra::RateLimit;
use crate::key::Env;
use crate::period::{check_time_ms, Period};
use crate::policy::Quota;
use crate::text;

pub const MAX_PLAN_LEN: usize = 63;
pub const MAX_NAME_LEN: usize = 256;
/// The longest reason a revocation records, and the longest audit actor.
pub const MAX_REASON_LEN: usize = 256;
pub const MAX_ACTOR_LEN: usize = 200;
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
    /// `plan` may name no defined plan: a new label, followed once a plan of that name is put. Without it,
    /// such a name is refused while any plan is defined (a typo would leave the key without its quota).
    pub new_plan: bool,
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
    /// As [`KeySpec::new_plan`].
    pub new_plan: bool,
    pub expires_at_ms: Field<i64>,
    pub quota: Field<Quota>,
    pub rate_limit: Field<RateLimit>,
    pub meta: Field<Map<String, Value>>,
    /// `"quota": "plan"`: drop the key's own quota and follow its plan's.
    pub quota_follows_plan: bool,
    /// `"rate_limit": "plan"`: drop the key's own rate limit and follow its plan's.
    pub rate_follows_plan: bool,
}

/// A key spec as `ms_key_create` reads it: every field optional, any other field refused. Each field
/// takes any JSON value here so that [`KeySpec::try_from`] can say which field is wrong and why.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeySpecJson {
    pub env: Field<Value>,
    pub name: Field<Value>,
    pub plan: Field<Value>,
    pub new_plan: Field<Value>,
    pub expires_at_ms: Field<Value>,
    pub quota: Field<Value>,
    pub rate_limit: Field<Value>,
    pub meta: Field<Value>,
    pub key: Field<Value>,
}

/// Fields are checked in declaration order; the first wrong one is reported.
impl TryFrom<KeySpecJson> for KeySpec {
    type Error = Error;

    fn try_from(json: KeySpecJson) -> Result<KeySpec> {
        Ok(KeySpec {
            env: string("env", json.env)?.map(|s| Env::parse(&s)).transpose()?,
            name: label("name", json.name, MAX_NAME_LEN)?.or(None),
            plan: label("plan", json.plan, MAX_PLAN_LEN)?.or(None),
            new_plan: flag("new_plan", json.new_plan)?,
            expires_at_ms: time("expires_at_ms", json.expires_at_ms)?,
            quota: quota_field(json.quota)?.or(None),
            rate_limit: rate_field(json.rate_limit)?,
            meta: meta_field(json.meta)?.or(None),
            key: string("key", json.key)?,
        })
    }
}

impl KeySpec {
    pub fn from_json(text: &str) -> Result<KeySpec> {
        parse_shape::<KeySpecJson>(text, "key spec", "key spec")?.try_into()
    }

    /// What the store checks of every spec, however it was made (JSON checks it field by field first):
    /// names, plans and meta field names people will read.
    pub fn check_text(&self) -> Result<()> {
        self.name.as_deref().map_or(Ok(()), |n| check_label("name", n, MAX_NAME_LEN))?;
        self.plan.as_deref().map_or(Ok(()), |p| check_label("plan", p, MAX_PLAN_LEN))?;
        self.meta.as_ref().map_or(Ok(()), check_meta_names)
    }
}

/// A key patch as `ms_key_update` reads it: absent fields are left as they are, `null` clears, and
/// `"quota": "plan"` / `"rate_limit": "plan"` make the key follow its plan's.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyPatchJson {
    pub name: Field<Value>,
    pub plan: Field<Value>,
    pub new_plan: Field<Value>,
    pub expires_at_ms: Field<Value>,
    pub quota: Field<Value>,
    pub rate_limit: Field<Value>,
    pub meta: Field<Value>,
}

/// Fields are checked in declaration order; the first wrong one is reported.
impl TryFrom<KeyPatchJson> for KeyPatch {
    type Error = Error;

    fn try_from(json: KeyPatchJson) -> Result<KeyPatch> {
        let follows = |field: Field<Value>| match field {
            Field::Set(Value::String(s)) if s == "plan" => (Field::Absent, true),
            other => (other, false),
        };
        let (quota, quota_follows_plan) = follows(json.quota);
        let (rate_limit, rate_follows_plan) = follows(json.rate_limit);
        Ok(KeyPatch {
            name: label("name", json.name, MAX_NAME_LEN)?,
            plan: label("plan", json.plan, MAX_PLAN_LEN)?,
            new_plan: flag("new_plan", json.new_plan)?,
            expires_at_ms: time("expires_at_ms", json.expires_at_ms)?,
            quota: quota_field(quota)?,
            rate_limit: rate_field(rate_limit)?,
            meta: meta_field(json.meta)?,
            quota_follows_plan,
            rate_follows_plan,
        })
    }
}

impl KeyPatch {
    /// As [`KeySpec::check_text`].
    pub fn check_text(&self) -> Result<()> {
        if let Field::Set(n) = &self.name {
            check_label("name", n, MAX_NAME_LEN)?;
        }
        if let Field::Set(p) = &self.plan {
            check_label("plan", p, MAX_PLAN_LEN)?;
        }
        if let Field::Set(m) = &self.meta {
            check_meta_names(m)?;
        }
        Ok(())
    }

    pub fn from_json(text: &str) -> Result<KeyPatch> {
        let unknown_in = "key patch (a revoked key cannot be un-revoked; use ms_key_revoke to revoke)";
        parse_shape::<KeyPatchJson>(text, "key patch", unknown_in)?.try_into()
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
        if self.new_plan {
            out.insert("new_plan".into(), Value::Bool(true));
        }
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

impl Field<Value> {
    /// The value as given: `None` when absent, `Some(Value::Null)` when null (for fields where null
    /// is as wrong as any other bad value).
    pub fn given(self) -> Option<Value> {
        match self {
            Field::Absent => None,
            Field::Null => Some(Value::Null),
            Field::Set(v) => Some(v),
        }
    }
}

/// Reads `text` as the JSON object shape `T`, one of the `*Json` types of the ABI: `deny_unknown_fields`
/// serde types whose fields take any JSON value, so that the only thing serde refuses is a field the
/// shape does not have, reported as `unknown field "x" in {unknown_in}`. The shape's `TryFrom` then
/// checks each field and names it and the reason when it is wrong.
pub(crate) fn parse_shape<T: DeserializeOwned>(text: &str, what: &str, unknown_in: &str) -> Result<T> {
    object_shape(parse_object(text, what)?, |k| Error::invalid(format!("unknown field {k:?} in {unknown_in}")))
}

/// [`parse_shape`] for an object already parsed (a nested one, or a shape whose unknown fields are
/// reported otherwise).
pub(crate) fn object_shape<T: DeserializeOwned>(
    obj: Map<String, Value>,
    unknown: impl FnOnce(&str) -> Error,
) -> Result<T> {
    let value = Value::Object(obj);
    T::deserialize(&value).map_err(|e| {
        // serde says "unknown field `x`, expected ..."; the name is taken from the object's own keys
        // (the longest that fits), not cut out of the message, so a name with a backquote stays whole.
        let message = e.to_string();
        let keys = value.as_object().into_iter().flat_map(|o| o.keys());
        match keys.filter(|k| message.starts_with(&format!("unknown field `{k}`,"))).max_by_key(|k| k.len()) {
            Some(k) => unknown(k),
            None => Error::invalid(message),
        }
    })
}

pub(crate) fn parse_object(text: &str, what: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(_) => Err(Error::invalid(format!("{what} must be a JSON object"))),
        Err(e) => Err(Error::invalid(format!("{what} is not valid JSON: {e}"))),
    }
}

/// A string field where null is the same as absent.
pub(super) fn string(name: &str, field: Field<Value>) -> Result<Option<String>> {
    match field {
        Field::Absent | Field::Null => Ok(None),
        Field::Set(Value::String(s)) => Ok(Some(s)),
        Field::Set(_) => Err(Error::invalid(format!("{name} must be a string"))),
    }
}

/// An optional boolean: absent is false.
fn flag(name: &str, field: Field<Value>) -> Result<bool> {
    match field {
        Field::Absent => Ok(false),
        Field::Set(Value::Bool(b)) => Ok(b),
        _ => Err(Error::invalid(format!("{name} must be true or false"))),
    }
}

/// A name or a plan: at most `max` bytes, nothing that changes how it reads ([`text::check`]).
fn check_label(name: &str, value: &str, max: usize) -> Result<()> {
    if value.len() > max {
        return Err(Error::invalid(format!("{name} is longer than {max} bytes")));
    }
    text::check(name, value)
}

fn label(name: &str, field: Field<Value>, max: usize) -> Result<Field<String>> {
    match field {
        Field::Absent => Ok(Field::Absent),
        Field::Null => Ok(Field::Null),
        Field::Set(Value::String(s)) => {
            check_label(name, &s, max)?;
            Ok(Field::Set(s))
        }
        Field::Set(_) => Err(Error::invalid(format!("{name} must be a string or null"))),
    }
}

pub(super) fn time(name: &str, field: Field<Value>) -> Result<Field<i64>> {
    match field {
        Field::Absent => Ok(Field::Absent),
        Field::Null => Ok(Field::Null),
        Field::Set(v) => match v.as_i64() {
            Some(ms) => Ok(Field::Set(check_time_ms(name, ms)?)),
            None => Err(Error::invalid(format!("{name} must be an integer (Unix ms) or null"))),
        },
    }
}

/// An optional positive integer inside `context` (`quota`, `rate_limit`); null is refused.
fn positive(field: Field<Value>, name: &str, context: &str) -> Result<Option<i64>> {
    match field.given() {
        None => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if n >= 1 => Ok(Some(n)),
            _ => Err(Error::invalid(format!("{context}.{name} must be a positive integer"))),
        },
    }
}

/// The fields of a `quota` object.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct QuotaFields {
    limit: Field<Value>,
    period: Field<Value>,
}

/// A `quota` field as key specs, patches and plans accept it.
pub(crate) fn quota_field(field: Field<Value>) -> Result<Field<Quota>> {
    match field {
        Field::Absent => Ok(Field::Absent),
        Field::Null => Ok(Field::Null),
        Field::Set(Value::Object(q)) => {
            let q: QuotaFields = object_shape(q, |k| Error::invalid(format!("unknown field {k:?} in quota")))?;
            let limit =
                positive(q.limit, "limit", "quota")?.ok_or_else(|| Error::invalid("quota.limit is required"))?;
            // The shared counters keep a period's count in 40 bits.
            if limit > MAX_QUOTA {
                return Err(Error::invalid(format!("quota.limit must be at most {MAX_QUOTA}")));
            }
            let period = match string("period", q.period)? {
                Some(p) => Period::parse(&p)?,
                None => return Err(Error::invalid("quota.period is required (\"daily\" or \"monthly\")")),
            };
            Ok(Field::Set(Quota { limit, period }))
        }
        Field::Set(_) => {
            Err(Error::invalid("quota must be an object {\"limit\": N, \"period\": \"daily\"|\"monthly\"} or null"))
        }
    }
}

/// The fields of a `rate_limit` object.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RateFields {
    limit: Field<Value>,
    window_ms: Field<Value>,
    burst: Field<Value>,
}

/// A `rate_limit` field as key specs, patches and plans accept it.
pub(crate) fn rate_field(field: Field<Value>) -> Result<Field<RateLimit>> {
    match field {
        Field::Absent => Ok(Field::Absent),
        Field::Null => Ok(Field::Null),
        Field::Set(Value::Object(r)) => {
            let r: RateFields = object_shape(r, |k| Error::invalid(format!("unknown field {k:?} in rate_limit")))?;
            let limit = positive(r.limit, "limit", "rate_limit")?
                .ok_or_else(|| Error::invalid("rate_limit.limit is required"))?;
            let window_ms = positive(r.window_ms, "window_ms", "rate_limit")?.unwrap_or(60_000);
            let burst = positive(r.burst, "burst", "rate_limit")?.unwrap_or(limit);
            Ok(Field::Set(checked_rate(limit, window_ms, burst)?))
        }
        Field::Set(_) => {
            Err(Error::invalid("rate_limit must be an object {\"limit\", \"window_ms\", \"burst\"} or null"))
        }
    }
}

/// The field names in meta, at any depth, are checked as names are: the CLI and the console show them.
/// Its values are the application's data, shown escaped where they hold such characters.
fn check_meta_names(meta: &Map<String, Value>) -> Result<()> {
    fn names_in(v: &Value) -> Result<()> {
        match v {
            Value::Object(m) => check_meta_names(m),
            Value::Array(a) => a.iter().try_for_each(names_in),
            _ => Ok(()),
        }
    }
    meta.iter().try_for_each(|(k, v)| text::check("a meta field name", k).and_then(|()| names_in(v)))
}

fn meta_field(field: Field<Value>) -> Result<Field<Map<String, Value>>> {
    match field {
        Field::Absent => Ok(Field::Absent),
        Field::Null => Ok(Field::Null),
        Field::Set(Value::Object(m)) => {
            check_meta_names(&m)?;
            Ok(Field::Set(m))
        }
        Field::Set(_) => Err(Error::invalid("meta must be a JSON object or null")),
    }
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
    fn unknown_fields_are_named_whole_and_come_first() {
        let err = |t: &str| KeySpec::from_json(t).unwrap_err().message;
        // The name comes from the object's keys, not from serde's message, so a backquote cannot cut it.
        assert_eq!(err(r#"{"a`, expected b": 1}"#), r#"unknown field "a`, expected b" in key spec"#);
        // A misspelt field is the cause, not the field it leaves missing.
        assert_eq!(err(r#"{"quota": {"limit": 5, "perod": "daily"}}"#), r#"unknown field "perod" in quota"#);
        assert_eq!(err(r#"{"rate_limit": {"limit": 5, "windw_ms": 1}}"#), r#"unknown field "windw_ms" in rate_limit"#);
        // Then the fields in declaration order.
        assert_eq!(err(r#"{"meta": 1, "env": "prod", "plann": 1}"#), r#"unknown field "plann" in key spec"#);
        assert!(err(r#"{"meta": 1, "env": "prod"}"#).contains("env must be"));
        let patch = KeyPatch::from_json(r#"{"quota": "plan", "rate_limit": "plan"}"#).unwrap();
        assert!(patch.quota_follows_plan && patch.rate_follows_plan && patch.quota == Field::Absent);
    }

    #[test]
    fn new_plan_is_a_flag_and_names_are_text_people_read() {
        assert!(KeySpec::from_json(r#"{"plan": "p", "new_plan": true}"#).unwrap().new_plan);
        assert!(!KeySpec::from_json(r#"{"plan": "p"}"#).unwrap().new_plan);
        assert!(KeyPatch::from_json(r#"{"new_plan": true}"#).unwrap().new_plan);
        for bad in [r#"{"new_plan": null}"#, r#"{"new_plan": 1}"#] {
            assert_eq!(KeySpec::from_json(bad).unwrap_err().message, "new_plan must be true or false");
        }
        let err = |t: &str| KeySpec::from_json(t).unwrap_err().message;
        assert!(err(r#"{"name": "a\u202eb"}"#).starts_with("name contains U+202E"));
        assert!(err(r#"{"name": "a\nb"}"#).starts_with("name contains U+000A (a control character)"));
        assert!(err(r#"{"meta": {"ok": [{"x\u2067": 1}]}}"#).starts_with("a meta field name contains U+2067"));
        assert!(KeySpec::from_json(r#"{"meta": {"ok": "values are the application's: \u202e"}}"#).is_ok());
        // Specs made in Rust (the CLI) are checked by the store with the same rules.
        let spec = KeySpec { plan: Some("p\u{2069}".into()), ..KeySpec::default() };
        assert!(spec.check_text().unwrap_err().message.starts_with("plan contains U+2069"));
        let patch = KeyPatch { name: Field::Set("n".repeat(MAX_NAME_LEN + 1)), ..KeyPatch::default() };
        assert!(patch.check_text().unwrap_err().message.contains("longer than 256"));
    }
}
