//! The store's side of the fleet's change log (the agent's side is `fleet::changelog`): membership, the outbox of changes this host made
//! (filled by triggers of migration 5, in each change's own transaction), and applying changes from the
//! fleet's log. Applying goes through the same admin path as a local change, so it is in force on every
//! process's next check; it never re-publishes what it applies.

use rusqlite::{params, OptionalExtension, TransactionBehavior};
use serde::Deserialize;
use serde_json::{json, Value};

use super::Change;
use crate::counters::QuotaCell;
use crate::error::{Error, Result};
use crate::key::KeyDigest;
use crate::period::Period;
use crate::store::rows::{load_entries, Keys};
use crate::store::Store;

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

/// One key quota as this host counts it, for the fleet agent.
#[derive(Clone, Debug)]
pub struct FleetQuota {
    /// The id of the key that owns the counter cell: the quota's name in the fleet.
    pub owner: String,
    /// A digest of a key counting in the cell, to address it.
    pub digest: KeyDigest,
    pub quota: QuotaCell,
}

/// A change from the log that was not applied, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub kind: String,
    pub id: String,
    pub why: String,
}

impl Store {
    /// Makes this store a member of `fleet`, as `host`. On first joining, the whole state of every plan,
    /// key and the policies is put in the outbox, so the fleet gets what this host held before. Returns
    /// true when it joined now. A store already in another fleet is refused.
    pub fn fleet_join(&self, fleet: &str, host: &str) -> Result<bool> {
        if fleet.is_empty() || host.is_empty() || fleet.len() > 64 || host.len() > 64 {
            return Err(Error::invalid("the fleet and host names must be 1 to 64 bytes"));
        }
        let mut db = self.db()?;
        let tx = db.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current: Option<String> =
            tx.query_row("SELECT value FROM settings WHERE name = 'fleet'", [], |r| r.get(0)).optional()?;
        if let Some(current) = &current {
            let member: Value = serde_json::from_str(current).map_err(|_| Error::store("corrupt fleet setting"))?;
            if member["fleet"] != fleet {
                return Err(Error::invalid(format!(
                    "this store is a member of fleet {}; a store belongs to one fleet",
                    member["fleet"]
                )));
            }
        }
        // The host's identity in the fleet is a random id made at the first join and kept in the store; the
        // name is only a label (two hosts cloned from one image share a name, never an id they made).
        let host_id = match current.as_deref().map(serde_json::from_str::<Value>) {
            Some(Ok(member)) if member["host_id"].is_string() => {
                member["host_id"].as_str().unwrap_or_default().to_string()
            }
            _ => new_host_id()?,
        };
        let wanted = json!({"fleet": fleet, "host": host, "host_id": host_id}).to_string();
        tx.execute(
            "INSERT INTO settings (name, value) VALUES ('fleet', ?1) ON CONFLICT (name) DO UPDATE SET value = ?1",
            [&wanted],
        )?;
        if current.is_none() {
            // The audit trail of what this store did before it joined becomes the fleet's too (once: it
            // is history, not state, so it is not published again when Redis loses its data).
            tx.execute(
                concat!(
                    "INSERT INTO fleet_outbox (kind, id, body) SELECT 'audit', CAST(seq AS TEXT), ",
                    audit_state!(""),
                    " FROM audit WHERE host IS NULL ORDER BY seq"
                ),
                [],
            )?;
        }
        tx.commit()?;
        drop(db);
        if current.is_none() {
            self.fleet_republish()?;
        }
        // Every process learns fleet mode (quotas within leases) from its next check.
        self.admin(|_| Ok(vec![]))?;
        Ok(current.is_none())
    }

    /// Puts the whole state of every record in the outbox again (after Redis lost the fleet's state).
    pub fn fleet_republish(&self) -> Result<()> {
        let mut db = self.db()?;
        let tx = db.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // A no-op update fires each record's trigger: plans first, then keys oldest first, so that a key
        // is published after the plan it names and a rotated key after the one it counts with.
        tx.execute_batch(
            "UPDATE plans SET name = name;
             UPDATE keys SET id = id;
             UPDATE settings SET value = value WHERE name = 'policies';",
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The fleet and host this store is a member of, if any.
    pub fn fleet_membership(&self) -> Result<Option<(String, String)>> {
        let db = self.db()?;
        let value: Option<String> =
            db.conn.query_row("SELECT value FROM settings WHERE name = 'fleet'", [], |r| r.get(0)).optional()?;
        let Some(value) = value else { return Ok(None) };
        let member: Value = serde_json::from_str(&value).map_err(|_| Error::store("corrupt fleet setting"))?;
        match (member["fleet"].as_str(), member["host"].as_str()) {
            (Some(f), Some(h)) => Ok(Some((f.to_string(), h.to_string()))),
            _ => Err(Error::store("corrupt fleet setting")),
        }
    }

    /// This host's identity in its fleet (a random id made when it joined), if it is a member.
    pub fn fleet_host_id(&self) -> Result<Option<String>> {
        let db = self.db()?;
        let id: Option<Option<String>> = db
            .conn
            .query_row("SELECT json_extract(value, '$.host_id') FROM settings WHERE name = 'fleet'", [], |r| r.get(0))
            .optional()?;
        Ok(id.flatten())
    }

    /// Changes this host made that are not published yet, oldest first, the newest state of each record
    /// once; with the sequence number up to which they cover the outbox.
    pub fn fleet_outbox(&self, origin: &str, limit: usize) -> Result<(Vec<Change>, i64)> {
        let db = self.db()?;
        let mut stmt = db.conn.prepare_cached("SELECT seq, kind, id, body FROM fleet_outbox ORDER BY seq LIMIT ?1")?;
        let rows: Vec<(i64, String, String, String)> = stmt
            .query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let upto = rows.last().map_or(0, |r| r.0);
        // An admin change may update one record several times: its newest state is enough, published
        // where the record first appears, so that a key is never published after a key that counts with
        // it (a rotation inserts the successor, then updates the key it replaces).
        let mut changes: Vec<Change> = Vec::new();
        for (_, kind, id, body) in rows {
            match changes.iter_mut().find(|c| c.kind == kind && c.id == id) {
                Some(seen) => seen.body = body,
                None => changes.push(Change { kind, id, body, origin: origin.to_string() }),
            }
        }
        Ok((changes, upto))
    }

    /// Forgets the outbox up to `upto` (they are in the fleet's log).
    pub fn fleet_published(&self, upto: i64) -> Result<()> {
        let db = self.db()?;
        db.conn.execute("DELETE FROM fleet_outbox WHERE seq <= ?1", [upto])?;
        Ok(())
    }

    /// The position in the fleet's log up to which this store has applied it.
    pub fn fleet_position(&self) -> Result<Option<String>> {
        let db = self.db()?;
        Ok(db
            .conn
            .query_row("SELECT value FROM settings WHERE name = 'fleet_position'", [], |r| r.get(0))
            .optional()?)
    }

    /// Applies changes from the fleet's log in order, in one admin transaction, and records `position`.
    /// A change that cannot be applied (malformed, or a key whose digest another key already has) is
    /// skipped and returned; the rest apply. What this writes is not put in the outbox.
    pub fn fleet_apply(&self, changes: &[Change], position: &str) -> Result<Vec<Refused>> {
        let mut refused = Vec::new();
        self.admin(|tx| {
            let before: i64 = tx.query_row("SELECT COALESCE(MAX(seq), 0) FROM fleet_outbox", [], |r| r.get(0))?;
            let here: Option<String> = tx
                .query_row("SELECT json_extract(value, '$.host') FROM settings WHERE name = 'fleet'", [], |r| r.get(0))
                .optional()?
                .flatten();
            let mut rows = Vec::new();
            // A key that counts with one not applied yet waits for the end of the batch, once.
            let (first, waiting): (Vec<&Change>, Vec<&Change>) =
                changes.iter().partition(|c| c.kind != "key" || counts_with_is_here(tx, c));
            for change in first.into_iter().chain(waiting) {
                tx.execute_batch("SAVEPOINT change")?;
                let applied = match change.kind.as_str() {
                    "key" => apply_key(tx, change),
                    "plan" => apply_plan(tx, change),
                    "policies" => apply_policies(tx, change),
                    "audit" => apply_audit(tx, change, here.as_deref()),
                    other => Err(Error::invalid(format!("unknown kind {other:?}"))),
                };
                match applied {
                    Ok(changed) => {
                        tx.execute_batch("RELEASE change")?;
                        rows.extend(changed);
                    }
                    Err(e) => {
                        tx.execute_batch("ROLLBACK TO change; RELEASE change")?;
                        refused.push(Refused { kind: change.kind.clone(), id: change.id.clone(), why: e.message });
                    }
                }
            }
            // The triggers saw these writes as changes of this host: they are the log's, not ours.
            tx.execute("DELETE FROM fleet_outbox WHERE seq > ?1", [before])?;
            tx.execute(
                "INSERT INTO settings (name, value) VALUES ('fleet_position', ?1)
                 ON CONFLICT (name) DO UPDATE SET value = ?1",
                [position],
            )?;
            rows.sort_unstable();
            rows.dedup();
            Ok(rows)
        })?;
        Ok(refused)
    }

    /// Every key quota this host counts, once per counter cell (a rotated key and its successor share
    /// one), named by the key that owns the cell (the one the others count with): for the fleet agent.
    pub fn fleet_quota_view(&self, now_ms: i64) -> Result<Vec<FleetQuota>> {
        self.fleet_quota_cells(&self.fleet_quota_owners()?, now_ms)
    }

    /// The keys with a quota, one per counter cell: (owner id, digest of a key counting in the cell). A
    /// database query: the agent keeps it until [`Store::admin_generation`] changes.
    pub fn fleet_quota_owners(&self) -> Result<Vec<(String, KeyDigest)>> {
        let db = self.db()?;
        let mut stmt = db.conn.prepare_cached(
            "SELECT COALESCE(o.id, k.id), MIN(k.digest) FROM keys k JOIN key_policy e ON e.row = k.row
             LEFT JOIN keys o ON o.row = k.counts_with
             WHERE e.quota_limit IS NOT NULL AND k.revoked_at_ms IS NULL
             GROUP BY COALESCE(o.id, k.id)",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (owner, digest) = row?;
            if let Ok(digest) = <[u8; 32]>::try_from(digest) {
                out.push((owner, digest));
            }
        }
        Ok(out)
    }

    /// These quotas as this host counts them at `now_ms`, from the shared counters (no query).
    pub fn fleet_quota_cells(&self, owners: &[(String, KeyDigest)], now_ms: i64) -> Result<Vec<FleetQuota>> {
        let shared = self.counters()?;
        Ok(owners
            .iter()
            .filter_map(|(owner, digest)| {
                let q = shared.quota_cell(digest, now_ms)?;
                Some(FleetQuota { owner: owner.clone(), digest: *digest, quota: q })
            })
            .collect())
    }

    /// A number that changes with every admin change (in any process): the counters file's generation.
    pub fn admin_generation(&self) -> Result<i64> {
        Ok(self.counters()?.generation())
    }

    /// Records this host's lease of a key's quota (see `SharedCounters::set_lease`).
    pub fn fleet_set_lease(
        &self,
        digest: &KeyDigest,
        period_start_ms: i64,
        up_to: i64,
        spent: bool,
        lower: bool,
    ) -> Result<()> {
        self.counters()?.set_lease(digest, period_start_ms, up_to, spent, lower);
        Ok(())
    }

    /// Fleet mode: how many live hosts share each key's rate limit, from this host's next check on.
    pub fn fleet_set_rate_sharers(&self, hosts: u32) -> Result<()> {
        self.counters()?.set_rate_sharers(hosts);
        Ok(())
    }

    /// What the agent last reported (for `ms-auth fleet status`).
    pub fn fleet_status(&self) -> Result<Option<Value>> {
        let db = self.db()?;
        let value: Option<String> =
            db.conn.query_row("SELECT value FROM settings WHERE name = 'fleet_status'", [], |r| r.get(0)).optional()?;
        value.map(|v| serde_json::from_str(&v).map_err(|_| Error::store("corrupt fleet status"))).transpose()
    }

    /// Records the agent's report.
    pub fn fleet_set_status(&self, status: &Value) -> Result<()> {
        let db = self.db()?;
        db.conn.execute(
            "INSERT INTO settings (name, value) VALUES ('fleet_status', ?1) ON CONFLICT (name) DO UPDATE SET value = ?1",
            [status.to_string()],
        )?;
        Ok(())
    }
}

/// A new host id: 16 random bytes, hex.
pub(super) fn new_host_id() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).map_err(|e| Error::internal(format!("no randomness: {e}")))?;
    Ok(crate::text::hex(&bytes))
}

/// True unless the change is a key that counts with a key this store does not have (yet).
fn counts_with_is_here(tx: &rusqlite::Transaction, change: &Change) -> bool {
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

fn apply_key(tx: &rusqlite::Transaction, change: &Change) -> Result<Vec<i64>> {
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

fn apply_plan(tx: &rusqlite::Transaction, change: &Change) -> Result<Vec<i64>> {
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

fn apply_policies(tx: &rusqlite::Transaction, change: &Change) -> Result<Vec<i64>> {
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

/// Another host's audit event joins this host's log, once (its host and its sequence number there name
/// it); this host's own events are in its log already.
fn apply_audit(tx: &rusqlite::Transaction, change: &Change, here: Option<&str>) -> Result<Vec<i64>> {
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
        params![a.at_ms, a.actor, a.action, a.key_id, a.detail, change.origin, origin_seq],
    )?;
    Ok(vec![])
}
