//! Checking and writing each kind of record a change carries (a key, a plan, the policies, an audit
//! event), through the same tables as a local admin change. `versions` decides whether a change is
//! applied at all; this says whether it can be, and writes it.

use rusqlite::{params, OptionalExtension};
use serde::Deserialize;
use serde_json::{json, Value};

use super::Change;
use crate::error::{Error, Result};
use crate::period::Period;
use crate::store::rows::{load_entries, Keys};

/// A key's whole state as the triggers write it (`fleet_key_insert`/`fleet_key_update`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyState {
    id: String,
    digest: String,
    prefix: String,
    env: String,
    name: Option<String>,
    plan: Option<String>,
    created_at_ms: i64,
    expires_at_ms: Option<i64>,
    revoked_at_ms: Option<i64>,
    revoked_reason: Option<String>,
    quota_limit: Option<i64>,
    quota_period: Option<String>,
    rate_limit: Option<i64>,
    rate_window_ms: Option<i64>,
    rate_burst: Option<i64>,
    meta: String,
    revoke_at_ms: Option<i64>,
    rotated_from: Option<String>,
    rotated_to: Option<String>,
    counts_with: Option<String>,
    quota_from_plan: i64,
    rate_from_plan: i64,
}

/// A plan's whole state (`fleet_plan_insert`/`fleet_plan_update`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanState {
    name: String,
    quota_limit: Option<i64>,
    quota_period: Option<String>,
    rate_limit: Option<i64>,
    rate_window_ms: Option<i64>,
    rate_burst: Option<i64>,
    lifetime_ms: Option<i64>,
    updated_at_ms: i64,
}

/// The policies as stored in `settings` (see `store::policies::load_policies`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PoliciesState {
    idle_ms: i64,
    abuse_limit: i64,
    abuse_window_ms: i64,
}

/// An audit event as fleet mode publishes it (`audit_state!` in `store/schema.rs`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditState {
    at_ms: i64,
    actor: String,
    action: String,
    key_id: Option<String>,
    detail: String,
}

/// True unless the change is a key that counts with a key this store does not have (yet).
pub(super) fn counts_with_is_here(tx: &rusqlite::Transaction, change: &Change) -> bool {
    let Ok(k) = serde_json::from_str::<KeyState>(&change.body) else { return true };
    match k.counts_with {
        None => true,
        Some(id) => {
            tx.query_row("SELECT 1 FROM keys WHERE id = ?1", [id], |_| Ok(())).optional().ok().flatten().is_some()
        }
    }
}

fn parse<'a, T: Deserialize<'a>>(change: &'a Change) -> Result<T> {
    serde_json::from_str(&change.body).map_err(|e| Error::invalid(format!("malformed {} record: {e}", change.kind)))
}

pub(super) fn apply_key(tx: &rusqlite::Transaction, change: &Change) -> Result<Vec<i64>> {
    let k: KeyState = parse(change)?;
    if k.id != change.id {
        return Err(Error::invalid("the record's id is not the change's"));
    }
    let digest = crate::text::unhex(&k.digest)
        .filter(|d| d.len() == 32)
        .ok_or_else(|| Error::invalid("a key digest must be 64 hex digits"))?;
    crate::key::Env::parse(&k.env)?;
    if let Some(p) = &k.quota_period {
        Period::parse(p)?;
    }
    if let (Some(l), Some(w), Some(b)) = (k.rate_limit, k.rate_window_ms, k.rate_burst) {
        crate::gcra::checked_rate(l, w, b)?;
    }
    serde_json::from_str::<serde_json::Map<String, Value>>(&k.meta)
        .map_err(|_| Error::invalid("a key's meta must be a JSON object"))?;
    let counts_with: Option<i64> = match &k.counts_with {
        Some(id) => Some(
            tx.query_row("SELECT row FROM keys WHERE id = ?1", [id], |r| r.get(0))
                .optional()?
                .ok_or_else(|| Error::invalid(format!("the key it counts with ({id}) is not here yet")))?,
        ),
        None => None,
    };
    // Identity (digest, prefix, env, creation) never changes; a revocation is never undone.
    let written = tx.execute(
        "INSERT INTO keys (id, digest, prefix, env, name, plan, created_at_ms, expires_at_ms, revoked_at_ms,
                           revoked_reason, quota_limit, quota_period, rate_limit, rate_window_ms, rate_burst, meta,
                           revoke_at_ms, rotated_from, rotated_to, counts_with, quota_from_plan, rate_from_plan)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22)
         ON CONFLICT (id) DO UPDATE SET
            name = excluded.name, plan = excluded.plan, expires_at_ms = excluded.expires_at_ms,
            revoked_reason = CASE WHEN keys.revoked_at_ms IS NULL THEN excluded.revoked_reason ELSE keys.revoked_reason END,
            revoked_at_ms = COALESCE(keys.revoked_at_ms, excluded.revoked_at_ms),
            quota_limit = excluded.quota_limit, quota_period = excluded.quota_period,
            rate_limit = excluded.rate_limit, rate_window_ms = excluded.rate_window_ms, rate_burst = excluded.rate_burst,
            meta = excluded.meta, revoke_at_ms = excluded.revoke_at_ms, rotated_from = excluded.rotated_from,
            rotated_to = excluded.rotated_to, counts_with = excluded.counts_with,
            quota_from_plan = excluded.quota_from_plan, rate_from_plan = excluded.rate_from_plan
         WHERE keys.digest = excluded.digest",
        params![
            k.id,
            digest,
            k.prefix,
            k.env,
            k.name,
            k.plan,
            k.created_at_ms,
            k.expires_at_ms,
            k.revoked_at_ms,
            k.revoked_reason,
            k.quota_limit,
            k.quota_period,
            k.rate_limit,
            k.rate_window_ms,
            k.rate_burst,
            k.meta,
            k.revoke_at_ms,
            k.rotated_from,
            k.rotated_to,
            counts_with,
            k.quota_from_plan,
            k.rate_from_plan
        ],
    );
    match written {
        Err(rusqlite::Error::SqliteFailure(e, Some(msg)))
            if e.code == rusqlite::ErrorCode::ConstraintViolation && msg.contains("digest") =>
        {
            Err(Error::invalid("another key of this store has the same digest"))
        }
        Err(e) => Err(e.into()),
        Ok(0) => Err(Error::invalid("a key with this id and another digest is here already")),
        Ok(_) => Ok(vec![tx.query_row("SELECT row FROM keys WHERE id = ?1", [&k.id], |r| r.get(0))?]),
    }
}

pub(super) fn apply_plan(tx: &rusqlite::Transaction, change: &Change) -> Result<Vec<i64>> {
    let p: PlanState = parse(change)?;
    if p.name != change.id {
        return Err(Error::invalid("the record's name is not the change's"));
    }
    if let Some(period) = &p.quota_period {
        Period::parse(period)?;
    }
    if let (Some(l), Some(w), Some(b)) = (p.rate_limit, p.rate_window_ms, p.rate_burst) {
        crate::gcra::checked_rate(l, w, b)?;
    }
    tx.execute(
        "INSERT INTO plans (name, quota_limit, quota_period, rate_limit, rate_window_ms, rate_burst, lifetime_ms, updated_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (name) DO UPDATE SET quota_limit = ?2, quota_period = ?3, rate_limit = ?4,
            rate_window_ms = ?5, rate_burst = ?6, lifetime_ms = ?7, updated_at_ms = ?8",
        params![p.name, p.quota_limit, p.quota_period, p.rate_limit, p.rate_window_ms, p.rate_burst, p.lifetime_ms, p.updated_at_ms],
    )?;
    Ok(load_entries(tx, Keys::Plan(&p.name))?.iter().map(|e| e.row).collect())
}

pub(super) fn apply_policies(tx: &rusqlite::Transaction, change: &Change) -> Result<Vec<i64>> {
    let p: PoliciesState = parse(change)?;
    if p.idle_ms < 0 || p.abuse_limit < 0 || p.abuse_window_ms < 0 {
        return Err(Error::invalid("policies must not be negative"));
    }
    let stored = json!({"idle_ms": p.idle_ms, "abuse_limit": p.abuse_limit, "abuse_window_ms": p.abuse_window_ms});
    tx.execute(
        "INSERT INTO settings (name, value) VALUES ('policies', ?1) ON CONFLICT (name) DO UPDATE SET value = ?1",
        [stored.to_string()],
    )?;
    Ok(vec![])
}

/// Another host's audit event joins this host's log, once (its host's name and its sequence number there
/// name it); this host's own events (`here` is this host's identity) are in its log already.
pub(super) fn apply_audit(tx: &rusqlite::Transaction, change: &Change, here: Option<&str>) -> Result<Vec<i64>> {
    if here == Some(change.origin.as_str()) {
        return Ok(vec![]);
    }
    let a: AuditState = parse(change)?;
    let origin_seq: i64 =
        change.id.parse().map_err(|_| Error::invalid("an audit event's id must be its sequence number"))?;
    serde_json::from_str::<Value>(&a.detail).map_err(|_| Error::invalid("an audit event's detail must be JSON"))?;
    tx.execute(
        "INSERT OR IGNORE INTO audit (at_ms, actor, action, key_id, detail, host, origin_seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![a.at_ms, a.actor, a.action, a.key_id, a.detail, change.host, origin_seq],
    )?;
    Ok(vec![])
}
