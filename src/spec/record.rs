//! The output record: a key as every admin answer shows it (`KeyRecord`), and the list of keys.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::gcra::RateLimit;
use crate::key_state::StateAt;
use crate::policy::Quota;

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
    /// Computed when the record is read, never stored (added after v1): `state`, `state_reason` and
    /// `grace_ends_at_ms`, from [`crate::key_state::state_at`], the function every view uses.
    #[serde(flatten)]
    pub state: StateAt,
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
            state: StateAt { state: crate::key_state::KeyState::Active, state_reason: None, grace_ends_at_ms: None },
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
