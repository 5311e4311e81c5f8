//! Applying the fleet's log and state. A change of a record is applied only when its `(version,
//! origin)` is at least the one this store holds for the record (`fleet_versions`, with the signed change,
//! so the agent can put it back into the fleet's state): a replayed, reordered or re-sent change is
//! skipped and counted as stale, and every host ends with the same newest change. A revocation is never
//! undone even by a newer change (`apply::apply_key` keeps the first). Per origin, the seqs applied
//! (`fleet_origins`, `fleet_seen`) say which entries this host misses: a gap, which `fleet status` and
//! the metrics show until the origin has sent them again. Applying goes through the same admin path as a
//! local change, so it is in force on every process's next check; it never re-publishes what it applies.

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::apply::{apply_audit, apply_key, apply_plan, apply_policies, counts_with_is_here};
use super::journal::signed_from_row;
use super::{Change, Signed};
use crate::error::{Error, Result};
use crate::store::{clock_ms, Store};

/// A change from the log that could not be applied (malformed, or a key whose digest another key
/// already has), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub kind: String,
    pub id: String,
    pub why: String,
}

/// A change not applied because this host held the record at its version or newer, or had the entry
/// already (a replay or a re-send): what it was, and what this host holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stale {
    pub change: Change,
    /// The entry's seq was applied already.
    pub duplicate: bool,
    /// The version held, and the name of the host it came from.
    pub held: Option<(i64, String)>,
}

/// What applying a batch did.
#[derive(Debug, Default)]
pub struct Applied {
    pub applied: usize,
    pub refused: Vec<Refused>,
    pub stale: Vec<Stale>,
}

/// An origin's announcement of its newest entry (checked by the agent before it gets here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub origin: String,
    pub host: String,
    /// Its highest seq sent.
    pub seq: i64,
    /// The seq from which it published every record again (0 if never): entries below it are not needed.
    pub floor: i64,
}

/// Entries of one origin this host misses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub origin: String,
    pub host: String,
    /// The lowest seq missing.
    pub from: i64,
    /// How many are missing.
    pub missing: i64,
    /// The highest seq of the origin this host knows of.
    pub head: i64,
    pub since_ms: Option<i64>,
}

/// The change log as this host holds it: the gaps, and how many entries were skipped as stale.
#[derive(Debug, Clone, Default)]
pub struct LogHealth {
    pub gaps: Vec<Gap>,
    pub stale: i64,
    pub origins: i64,
}

impl Store {
    /// Applies entries of the fleet's log, in log order, in one admin transaction, and records
    /// `position`. Stale entries are skipped (and counted when `count_stale`: not while catching up from
    /// the whole log, whose older entries are stale by nature); refused ones are skipped and returned.
    pub fn fleet_apply(&self, entries: &[Signed], position: &str, count_stale: bool) -> Result<Applied> {
        let mut out = Applied::default();
        self.admin(|tx| {
            let rows = apply_entries(tx, entries, true, &mut out)?;
            if count_stale {
                for s in &out.stale {
                    tx.execute("UPDATE fleet_origins SET stale = stale + 1 WHERE origin = ?1", [&s.change.origin])?;
                }
            }
            tx.execute(
                "INSERT INTO settings (name, value) VALUES ('fleet_position', ?1)
                 ON CONFLICT (name) DO UPDATE SET value = ?1",
                [position],
            )?;
            Ok(rows)
        })?;
        Ok(out)
    }

    /// Applies signed states of records (the fleet's state hash), each only if strictly newer than the
    /// one held (audit events are not records: skipped). Nothing is written when none is.
    pub fn fleet_apply_state(&self, entries: &[Signed]) -> Result<Applied> {
        let newer: Vec<Signed> = {
            let db = self.db()?;
            let mut out = Vec::new();
            for s in entries.iter().filter(|s| s.change.kind != "audit") {
                match held(&db.conn, &s.change)? {
                    Some((v, o, _)) if (v, o.as_str()) >= s.change.order() => {}
                    _ => out.push(s.clone()),
                }
            }
            out
        };
        let mut out = Applied::default();
        if newer.is_empty() {
            return Ok(out);
        }
        self.admin(|tx| apply_entries(tx, &newer, false, &mut out))?;
        Ok(out)
    }

    /// Where origins stand while this host catches up from the fleet's state and its whole log: for an
    /// origin in the log (`firsts`: its lowest seq there), every entry before that one is covered by the
    /// state (it was trimmed); for one that has no entry left in the log (`covered`), every entry up to
    /// its announced head is. What this store knew beyond is kept.
    pub fn fleet_start_from(&self, firsts: &[(String, String, i64)], covered: &[Head]) -> Result<()> {
        let mut db = self.db()?;
        let tx = db.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let covered = covered.iter().map(|h| (&h.origin, &h.host, h.seq));
        for (origin, host, upto) in firsts.iter().map(|(o, h, first)| (o, h, first - 1)).chain(covered) {
            known_origin(&tx, origin, host)?;
            tx.execute("UPDATE fleet_origins SET applied = MAX(applied, ?2) WHERE origin = ?1", params![origin, upto])?;
            advance(&tx, origin)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Records origins' announcements of their newest entry, once the agent has read the log past them:
    /// an entry announced and not applied is missing (deleted from the log, or lost by Redis).
    pub fn fleet_note_heads(&self, heads: &[Head]) -> Result<()> {
        let news: Vec<&Head> = {
            let db = self.db()?;
            let mut out = Vec::new();
            for h in heads {
                let known: Option<(i64, i64)> = db
                    .conn
                    .query_row("SELECT head, floor FROM fleet_origins WHERE origin = ?1", [&h.origin], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()?;
                if known.is_none_or(|(head, floor)| h.seq > head || h.floor > floor) {
                    out.push(h);
                }
            }
            out
        };
        if news.is_empty() {
            return Ok(());
        }
        let mut db = self.db()?;
        let tx = db.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for h in news {
            known_origin(&tx, &h.origin, &h.host)?;
            tx.execute(
                "UPDATE fleet_origins SET head = MAX(head, ?2), floor = MAX(floor, ?3) WHERE origin = ?1",
                params![h.origin, h.seq, h.floor],
            )?;
            advance(&tx, &h.origin)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The gaps this host has, and how many entries it skipped as stale.
    pub fn fleet_log_health(&self) -> Result<LogHealth> {
        log_health(&self.db()?.conn)
    }

    /// The newest signed change of a record this store holds, if any.
    pub fn fleet_held(&self, kind: &str, id: &str) -> Result<Option<Signed>> {
        let db = self.db()?;
        let mut stmt = db.conn.prepare_cached(&format!("{VERSIONS_SELECT} WHERE kind = ?1 AND id = ?2"))?;
        Ok(stmt.query_row([kind, id], signed_from_row).optional()?)
    }

    /// The newest signed change of records this store holds, by (kind, id) after `after` (at most
    /// `limit`): what the agent compares with the fleet's state.
    pub fn fleet_versions_page(&self, after: Option<&(String, String)>, limit: usize) -> Result<Vec<Signed>> {
        let db = self.db()?;
        let mut stmt = db.conn.prepare_cached(&format!(
            "{VERSIONS_SELECT} WHERE ?1 IS NULL OR (kind, id) > (?1, ?2) ORDER BY kind, id LIMIT ?3"
        ))?;
        let (kind, id) = after.map_or((None, None), |(k, i)| (Some(k.as_str()), Some(i.as_str())));
        let rows = stmt.query_map(params![kind, id, limit as i64], signed_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

const VERSIONS_SELECT: &str = "SELECT kind, id, body, origin, host, seq, version, sig FROM fleet_versions";

/// Applies what is new in `entries` (from the log: also accounts their seqs, and an entry equal to the
/// one held is written again, so this host's own change coming back overwrites a local write made
/// meanwhile that lost to a newer change; from the state: strictly newer only). The rows changed.
fn apply_entries(tx: &Transaction, entries: &[Signed], from_log: bool, out: &mut Applied) -> Result<Vec<i64>> {
    let before: i64 = tx.query_row("SELECT COALESCE(MAX(seq), 0) FROM fleet_outbox", [], |r| r.get(0))?;
    let here: Option<String> = tx
        .query_row("SELECT json_extract(value, '$.host_id') FROM settings WHERE name = 'fleet'", [], |r| r.get(0))
        .optional()?
        .flatten();
    let mut rows = Vec::new();
    let mut revocations: Vec<(String, i64, Option<String>)> = Vec::new();
    // A key that counts with one not applied yet waits for the end of the batch, once.
    let (first, waiting): (Vec<&Signed>, Vec<&Signed>) =
        entries.iter().partition(|s| s.change.kind != "key" || counts_with_is_here(tx, &s.change));
    for s in first.into_iter().chain(waiting) {
        let change = &s.change;
        if from_log && !account(tx, change)? {
            out.stale.push(Stale { change: change.clone(), duplicate: true, held: None });
            continue;
        }
        if change.kind != "audit" {
            if let Some((v, o, host)) = held(tx, change)? {
                let held_order = (v, o.as_str());
                let newer = if from_log { change.order() >= held_order } else { change.order() > held_order };
                if !newer {
                    if change.kind == "key" {
                        revocations.extend(revocation_in(change));
                    }
                    out.stale.push(Stale { change: change.clone(), duplicate: false, held: Some((v, host)) });
                    continue;
                }
            }
        }
        tx.execute_batch("SAVEPOINT change")?;
        let applied = match change.kind.as_str() {
            "key" => apply_key(tx, change),
            "plan" => apply_plan(tx, change),
            "policies" => apply_policies(tx, change),
            "audit" => apply_audit(tx, change, here.as_deref()),
            other => Err(Error::invalid(format!("unknown kind {other:?}"))),
        };
        let applied = applied.and_then(|changed| {
            if change.kind != "audit" {
                record_version(tx, s)?;
            }
            Ok(changed)
        });
        match applied {
            Ok(changed) => {
                tx.execute_batch("RELEASE change")?;
                rows.extend(changed);
                out.applied += 1;
            }
            Err(e) => {
                tx.execute_batch("ROLLBACK TO change; RELEASE change")?;
                out.refused.push(Refused { kind: change.kind.clone(), id: change.id.clone(), why: e.message });
            }
        }
    }
    // The triggers saw these writes as changes of this host: they are the log's, not ours.
    tx.execute("DELETE FROM fleet_outbox WHERE seq > ?1", [before])?;
    // A revocation is never undone, not even by a change that wins the order: one that lost to a change
    // made meanwhile on another host (both of one version, or the other newer) still revokes the key here,
    // and this host sends the merged record as a new version (its triggers put it in the outbox), so that
    // the fleet's newest state, the state hash included, holds it too.
    for (id, at, reason) in revocations {
        let revoked = tx.execute(
            "UPDATE keys SET revoked_at_ms = ?2, revoked_reason = ?3 WHERE id = ?1 AND revoked_at_ms IS NULL",
            params![id, at, reason],
        )?;
        if revoked > 0 {
            rows.push(tx.query_row("SELECT row FROM keys WHERE id = ?1", [&id], |r| r.get(0))?);
        }
    }
    rows.sort_unstable();
    rows.dedup();
    Ok(rows)
}

/// The revocation a key's change carries: (key id, when, why).
fn revocation_in(change: &Change) -> Option<(String, i64, Option<String>)> {
    let body: serde_json::Value = serde_json::from_str(&change.body).ok()?;
    let at = body["revoked_at_ms"].as_i64()?;
    Some((change.id.clone(), at, body["revoked_reason"].as_str().map(str::to_string)))
}

/// The version held of the change's record, its origin, and the name of the host it came from.
fn held(conn: &Connection, change: &Change) -> Result<Option<(i64, String, String)>> {
    Ok(conn
        .prepare_cached("SELECT version, origin, host FROM fleet_versions WHERE kind = ?1 AND id = ?2")?
        .query_row([&change.kind, &change.id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?)
}

/// Makes `s` the newest change held of its record.
pub(super) fn record_version(tx: &Transaction, s: &Signed) -> Result<()> {
    let c = &s.change;
    tx.prepare_cached(
        "INSERT INTO fleet_versions (kind, id, version, origin, host, seq, body, sig) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (kind, id) DO UPDATE SET version = ?3, origin = ?4, host = ?5, seq = ?6, body = ?7, sig = ?8",
    )?
    .execute(params![c.kind, c.id, c.version, c.origin, c.host, c.seq, c.body, s.sig])?;
    Ok(())
}

fn known_origin(conn: &Connection, origin: &str, host: &str) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO fleet_origins (origin, host) VALUES (?1, ?2) ON CONFLICT (origin) DO UPDATE SET host = ?2",
    )?
    .execute([origin, host])?;
    Ok(())
}

/// Records an entry's seq as applied; false when it was already (a replay, or a re-send).
fn account(tx: &Transaction, change: &Change) -> Result<bool> {
    known_origin(tx, &change.origin, &change.host)?;
    let applied: i64 = tx
        .prepare_cached("SELECT applied FROM fleet_origins WHERE origin = ?1")?
        .query_row([&change.origin], |r| r.get(0))?;
    if change.seq <= applied {
        return Ok(false);
    }
    let mut seen = tx.prepare_cached("INSERT OR IGNORE INTO fleet_seen (origin, seq) VALUES (?1, ?2)")?;
    if seen.execute(params![change.origin, change.seq])? == 0 {
        return Ok(false);
    }
    tx.prepare_cached("UPDATE fleet_origins SET head = MAX(head, ?2) WHERE origin = ?1")?
        .execute(params![change.origin, change.seq])?;
    advance(tx, &change.origin)?;
    Ok(true)
}

/// Moves an origin's `applied` up over the seqs seen above it (and to its floor, once the entries from
/// the floor on arrive), and records when a gap opened or that it closed.
fn advance(conn: &Connection, origin: &str) -> Result<()> {
    let (mut applied, head, floor): (i64, i64, i64) = conn
        .prepare_cached("SELECT applied, head, floor FROM fleet_origins WHERE origin = ?1")?
        .query_row([origin], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    let seen = |seq: i64| -> Result<bool> {
        Ok(conn
            .prepare_cached("SELECT 1 FROM fleet_seen WHERE origin = ?1 AND seq = ?2")?
            .query_row(params![origin, seq], |_| Ok(()))
            .optional()?
            .is_some())
    };
    if floor - 1 > applied && seen(floor)? {
        applied = floor - 1;
    }
    while seen(applied + 1)? {
        applied += 1;
    }
    conn.prepare_cached("DELETE FROM fleet_seen WHERE origin = ?1 AND seq <= ?2")?.execute(params![origin, applied])?;
    let gap = head > applied.max(floor - 1);
    conn.prepare_cached(
        "UPDATE fleet_origins SET applied = ?2,
            gap_since_ms = CASE WHEN ?3 THEN COALESCE(gap_since_ms, ?4) ELSE NULL END WHERE origin = ?1",
    )?
    .execute(params![origin, applied, gap, clock_ms()])?;
    Ok(())
}

/// The gaps of a store (see [`Store::fleet_log_health`]).
pub(crate) fn log_health(conn: &Connection) -> Result<LogHealth> {
    let mut stmt = conn.prepare_cached(
        "SELECT o.origin, o.host, MAX(o.applied, o.floor - 1) AS done, o.head, o.stale, o.gap_since_ms,
                (SELECT COUNT(*) FROM fleet_seen s WHERE s.origin = o.origin AND s.seq > MAX(o.applied, o.floor - 1))
         FROM fleet_origins o ORDER BY o.host, o.origin",
    )?;
    let mut rows = stmt.query([])?;
    let mut out = LogHealth::default();
    while let Some(r) = rows.next()? {
        let (done, head, seen): (i64, i64, i64) = (r.get(2)?, r.get(3)?, r.get(6)?);
        out.origins += 1;
        out.stale += r.get::<_, i64>(4)?;
        if head > done {
            out.gaps.push(Gap {
                origin: r.get(0)?,
                host: r.get(1)?,
                from: done + 1,
                missing: head - done - seen,
                head,
                since_ms: r.get(5)?,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{KeyPatch, KeySpec};

    fn member(dir: &tempfile::TempDir, name: &str) -> Store {
        let store = Store::open(dir.path().join(format!("{name}.db"))).unwrap();
        store.fleet_join("f", name).unwrap();
        store
    }

    /// What the store's agent would send now (a signature that tells seqs apart is enough here).
    fn sent(store: &Store) -> Vec<Signed> {
        let origin = store.fleet_host_id().unwrap().unwrap();
        store.fleet_claim(&origin, "a", 100, &|c| format!("sig-{}", c.seq)).unwrap();
        let out = store.fleet_unsent(100).unwrap();
        if let Some(last) = out.last() {
            store.fleet_mark_published(&last.change, 100).unwrap();
        }
        out
    }

    fn audit(origin: &str, seq: i64) -> Signed {
        let body = r#"{"at_ms": 1, "actor": "x", "action": "key.create", "key_id": null, "detail": "{}"}"#;
        let change = Change {
            kind: "audit".into(),
            id: seq.to_string(),
            body: body.into(),
            origin: origin.into(),
            host: "h".into(),
            seq,
            version: 0,
        };
        Signed { change, sig: String::new() }
    }

    #[test]
    fn only_newer_changes_apply_whatever_the_order_and_a_gap_shows_until_filled() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (member(&dir, "a"), member(&dir, "b"));
        sent(&a);
        let spec = KeySpec::from_json(r#"{"quota": {"limit": 1000, "period": "daily"}, "rate_limit": null}"#).unwrap();
        let k = a.create_key(&spec, 1_800_000_000_000).unwrap();
        let created = sent(&a);
        a.update_key(&k.record.id, &KeyPatch::from_json(r#"{"quota": {"limit": 5, "period": "daily"}}"#).unwrap())
            .unwrap();
        let lowered = sent(&a);
        a.revoke_key(&k.record.id, 1_800_000_000_000, None).unwrap();
        let revoked = sent(&a);
        let versions: Vec<i64> = [&created, &lowered, &revoked]
            .iter()
            .map(|batch| batch.iter().find(|s| s.change.kind == "key").unwrap().change.version)
            .collect();
        assert_eq!(versions, [1, 2, 3]);

        // The newest first: applied; A's earlier entries are missing.
        let done = b.fleet_apply(&revoked, "3-0", true).unwrap();
        assert_eq!((done.applied, done.stale.len()), (2, 0));
        let gaps = b.fleet_log_health().unwrap().gaps;
        assert_eq!((gaps.len(), gaps[0].from), (1, 1), "{gaps:?}");
        // The older ones fill the gap and change nothing: stale.
        let older: Vec<Signed> = created.iter().chain(&lowered).cloned().collect();
        let done = b.fleet_apply(&older, "4-0", true).unwrap();
        assert_eq!(done.stale.iter().map(|s| s.change.version).collect::<Vec<_>>(), [1, 2]);
        let key = b.get_key(&k.record.id).unwrap();
        assert!(key.revoked_at_ms.is_some());
        assert_eq!(key.quota.map(|q| q.limit), Some(5));
        let health = b.fleet_log_health().unwrap();
        assert!(health.gaps.is_empty(), "{:?}", health.gaps);
        assert_eq!(health.stale, 2);
        // Again, whole: every entry is one B had.
        let done = b.fleet_apply(&revoked, "5-0", true).unwrap();
        assert!(done.stale.iter().all(|s| s.duplicate) && done.stale.len() == revoked.len());

        // A newer version that says "not revoked" does not lift a revocation.
        let mut lifted = revoked.iter().find(|s| s.change.kind == "key").unwrap().clone();
        let mut body: serde_json::Value = serde_json::from_str(&lifted.change.body).unwrap();
        body["revoked_at_ms"] = serde_json::Value::Null;
        lifted.change.body = body.to_string();
        (lifted.change.version, lifted.change.seq) = (9, 99);
        assert_eq!(b.fleet_apply(&[lifted.clone()], "6-0", true).unwrap().applied, 1);
        assert!(b.get_key(&k.record.id).unwrap().revoked_at_ms.is_some());
        // From the state, only what is strictly newer applies.
        assert_eq!(b.fleet_apply_state(&[lifted]).unwrap().applied, 0);
        assert_eq!(b.fleet_apply_state(&lowered).unwrap().applied, 0);
    }

    #[test]
    fn an_announced_head_opens_a_gap_and_a_floor_forgives_what_lies_below_it() {
        let dir = tempfile::tempdir().unwrap();
        let b = member(&dir, "b");
        b.fleet_apply(&[audit("o", 1)], "1-0", true).unwrap();
        let head = |seq, floor| Head { origin: "o".into(), host: "h".into(), seq, floor };
        b.fleet_note_heads(&[head(5, 0)]).unwrap();
        let gaps = b.fleet_log_health().unwrap().gaps;
        assert_eq!((gaps[0].from, gaps[0].missing, gaps[0].head), (2, 4, 5), "{gaps:?}");
        assert!(gaps[0].since_ms.is_some());
        // The origin published everything again from seq 6: seqs 2 to 5 are not needed any more.
        b.fleet_note_heads(&[head(8, 6)]).unwrap();
        let gaps = b.fleet_log_health().unwrap().gaps;
        assert_eq!((gaps[0].from, gaps[0].missing), (6, 3), "{gaps:?}");
        b.fleet_apply(&[audit("o", 7), audit("o", 8)], "2-0", true).unwrap();
        assert_eq!(b.fleet_log_health().unwrap().gaps[0].missing, 1);
        b.fleet_apply(&[audit("o", 6)], "3-0", true).unwrap();
        assert!(b.fleet_log_health().unwrap().gaps.is_empty());
        // An entry from below the floor arriving late is one this host no longer needs.
        let done = b.fleet_apply(&[audit("o", 3)], "4-0", true).unwrap();
        assert!(done.stale[0].duplicate);
        // Catching up from the state: an origin's entries before its first in the log are covered.
        b.fleet_start_from(&[("p".into(), "h".into(), 40)], &[head(8, 6)]).unwrap();
        b.fleet_apply(&[audit("p", 40), audit("p", 42)], "5-0", true).unwrap();
        let gaps = b.fleet_log_health().unwrap().gaps;
        assert_eq!(gaps.iter().map(|g| (g.origin.as_str(), g.from, g.missing)).collect::<Vec<_>>(), [("p", 41, 1)]);
    }
}
