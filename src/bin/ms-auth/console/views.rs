//! What the pages show of a key beyond its record, computed from the record alone: its quota use in the
//! current period, and the lists of the overview. Pure functions, no store.

use serde_json::{json, Value};

use ms_auth::key_state::KeyState;
use ms_auth::period::{Period, DAY_MS};
use ms_auth::KeyRecord;

/// An answer as the pages show it: every text (names, plans, reasons, actors, meta) with the characters
/// that would change how it reads, which older versions stored, written as `\u{202E}` (see
/// `ms_auth::text`). The browser shows what it is sent; the C ABI and the CLI's JSON give them as stored.
pub fn visible_json(v: Value) -> Value {
    let text = |s: String| match ms_auth::text::visible(&s) {
        std::borrow::Cow::Borrowed(_) => s,
        std::borrow::Cow::Owned(shown) => shown,
    };
    match v {
        Value::String(s) => Value::String(text(s)),
        Value::Array(a) => Value::Array(a.into_iter().map(visible_json).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (text(k), visible_json(v))).collect()),
        other => other,
    }
}

/// Requests counted against the quota in the period that contains `now` (the stored count belongs to
/// an earlier period once that period is over).
pub fn quota_used(r: &KeyRecord, now: i64) -> Option<i64> {
    let q = r.quota.as_ref()?;
    let start = Period::parse(q.period).ok()?.bounds(now).0;
    Some(if r.usage.period_start_ms == start { r.usage.used } else { 0 })
}

/// The record as the API gives it (with its `state`, as every view has it), plus `quota_used`.
pub fn key_json(r: &KeyRecord, now: i64) -> Value {
    let mut v = serde_json::to_value(r).expect("a record always serializes");
    let o = v.as_object_mut().expect("a record is an object");
    o.insert("quota_used".into(), quota_used(r, now).into());
    v
}

/// What the key list filters beyond the store's [`ms_auth::KeyFilter`] (plan, state, page): free text
/// (id, prefix, name, plan), and keys still admitted that expire within N days.
#[derive(Default)]
pub struct ListFilter {
    pub q: Option<String>,
    pub expiring_days: Option<i64>,
}

impl ListFilter {
    pub fn admits(&self, r: &KeyRecord, now: i64) -> bool {
        let text = |s: &str, q: &str| s.to_lowercase().contains(&q.to_lowercase());
        self.q.as_deref().is_none_or(|q| {
            text(&r.id, q)
                || text(&r.prefix, q)
                || r.name.as_deref().is_some_and(|n| text(n, q))
                || r.plan.as_deref().is_some_and(|p| text(p, q))
        }) && self
            .expiring_days
            .is_none_or(|d| r.state.state.admits() && r.expires_at_ms.is_some_and(|t| t <= now + d * DAY_MS))
    }
}

/// Keys by state, the keys most used, those at 80 % or more of their quota, and those expiring within
/// 30 days (the overview's tables; its chart comes from the store's daily totals).
pub fn overview(records: &[KeyRecord], now: i64) -> Value {
    let mut states = serde_json::Map::new();
    for s in KeyState::ALL.iter().filter(|s| **s != KeyState::Suspended) {
        states.insert(s.as_str().into(), 0.into()); // no version has customers yet: none is suspended
    }
    for r in records {
        let n = states.entry(r.state.state.as_str()).or_insert(0.into());
        *n = (n.as_i64().unwrap_or(0) + 1).into();
    }
    let brief = |r: &KeyRecord| {
        json!({"id": r.id, "prefix": r.prefix, "name": r.name, "plan": r.plan, "total": r.usage.total,
               "quota_used": quota_used(r, now), "quota": r.quota, "expires_at_ms": r.expires_at_ms})
    };
    let live = |r: &&KeyRecord| r.state.state.admits();
    let mut top: Vec<&KeyRecord> = records.iter().filter(|r| r.usage.total > 0).collect();
    top.sort_by_key(|r| std::cmp::Reverse(r.usage.total));
    let mut near: Vec<(f64, &KeyRecord)> = records
        .iter()
        .filter(live)
        .filter_map(|r| {
            let limit = r.quota.as_ref()?.limit;
            let share = quota_used(r, now)? as f64 / limit.max(1) as f64;
            (share >= 0.8).then_some((share, r))
        })
        .collect();
    near.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut expiring: Vec<&KeyRecord> =
        records.iter().filter(live).filter(|r| r.expires_at_ms.is_some_and(|t| t <= now + 30 * DAY_MS)).collect();
    expiring.sort_by_key(|r| r.expires_at_ms);
    json!({
        "keys_by_state": states,
        "top_keys": top.iter().take(10).map(|r| brief(r)).collect::<Vec<_>>(),
        "near_quota": near.iter().take(20).map(|(_, r)| brief(r)).collect::<Vec<_>>(),
        "expiring_soon": expiring.iter().take(20).map(|r| brief(r)).collect::<Vec<_>>(),
    })
}
