//! The audit log: who changed what, written in each admin change's own transaction.

use std::sync::Arc;

use rusqlite::{params, Transaction};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Store;
use crate::error::{Error, Result};
use crate::spec;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditEvent {
    pub seq: i64,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub key_id: Option<String>,
    pub detail: Value,
    /// In a fleet: the host where the change was made (events of every member are in every host's log).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuditFilter {
    pub key_id: Option<String>,
    pub since_ms: Option<i64>,
    pub limit: Option<i64>,
}

/// The audit filter JSON of `ms_audit`: `{"key_id": "...", "since_ms": N, "limit": N}`, each
/// optional (`null` is refused).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditFilterJson {
    pub key_id: spec::Field<Value>,
    pub since_ms: spec::Field<Value>,
    pub limit: spec::Field<Value>,
}

fn bad_field(name: &str) -> Error {
    Error::invalid(format!("bad or unknown field {name:?} in audit filter"))
}

/// Fields are checked in declaration order; the first wrong one is reported.
impl TryFrom<AuditFilterJson> for AuditFilter {
    type Error = Error;

    fn try_from(json: AuditFilterJson) -> Result<AuditFilter> {
        let key_id = match json.key_id.given() {
            None => None,
            Some(Value::String(s)) => Some(s),
            Some(_) => return Err(bad_field("key_id")),
        };
        let since_ms = match json.since_ms.given() {
            None => None,
            Some(v) => Some(v.as_i64().ok_or_else(|| bad_field("since_ms"))?),
        };
        let limit = match json.limit.given() {
            None => None,
            Some(v) => Some(v.as_i64().filter(|&n| n > 0).ok_or_else(|| bad_field("limit"))?),
        };
        Ok(AuditFilter { key_id, since_ms, limit })
    }
}

impl AuditFilter {
    pub fn from_json(text: &str) -> Result<AuditFilter> {
        let obj = spec::parse_object(text, "audit filter")?;
        spec::object_shape::<AuditFilterJson>(obj, bad_field)?.try_into()
    }
}

impl Store {
    /// Adds an entry to the audit log, in the admin change's own transaction.
    pub(super) fn audit(
        &self,
        tx: &Transaction,
        at_ms: i64,
        action: &str,
        key_id: Option<&str>,
        detail: Value,
    ) -> Result<()> {
        let actor = self.actor.load_full();
        tx.execute(
            "INSERT INTO audit (at_ms, actor, action, key_id, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![at_ms, actor, action, key_id, detail.to_string()],
        )?;
        Ok(())
    }

    /// Names the actor the audit log records for this handle's admin calls (default: process and user): at
    /// most 200 bytes, nothing that changes how it reads ([`crate::text::check`]).
    pub fn set_actor(&self, actor: &str) -> Result<()> {
        if actor.len() > spec::MAX_ACTOR_LEN {
            return Err(Error::invalid(format!("actor is longer than {} bytes", spec::MAX_ACTOR_LEN)));
        }
        crate::text::check("actor", actor)?;
        self.actor.store(Arc::new(actor.to_string()));
        Ok(())
    }

    /// The audit log, oldest first.
    pub fn audit_events(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>> {
        let db = self.db()?;
        let mut stmt = db.conn.prepare_cached(
            "SELECT seq, at_ms, actor, action, key_id, detail,
                    COALESCE(host, (SELECT json_extract(value, '$.host') FROM settings WHERE name = 'fleet'))
             FROM audit WHERE (?1 IS NULL OR key_id = ?1) AND (?2 IS NULL OR at_ms >= ?2)
             ORDER BY seq DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![filter.key_id, filter.since_ms, filter.limit.unwrap_or(1000)], |r| {
            Ok(AuditEvent {
                seq: r.get(0)?,
                at_ms: r.get(1)?,
                actor: r.get(2)?,
                action: r.get(3)?,
                key_id: r.get(4)?,
                detail: serde_json::from_str(&r.get::<_, String>(5)?).unwrap_or(Value::Null),
                host: r.get(6)?,
            })
        })?;
        let mut events: Vec<AuditEvent> = rows.collect::<rusqlite::Result<_>>()?;
        events.reverse();
        Ok(events)
    }
}
