//! What this host sends to the fleet's change log. Changes leave the outbox (filled by triggers) for the
//! journal, `fleet_sent`, in one transaction that gives each its seq and its record's next version and
//! signs it (`fleet_claim`), before anything is sent: the agent then sends the journal's unpublished
//! rows and marks them published. An agent that dies in between sends them again after its restart with
//! their original seq and version, so a change published again after newer changes of other hosts is
//! older than what they hold, and changes nothing. A host that missed entries gets them again from here
//! (the journal keeps the last `keep` rows).

use rusqlite::{params, OptionalExtension, Transaction, TransactionBehavior};

use super::versions::record_version;
use super::{Change, Signed};
use crate::error::Result;
use crate::store::Store;

impl Store {
    /// Changes made here and not yet taken into the journal, oldest first, the newest state of each
    /// record once (as [`Store::fleet_claim`] takes them, without seq or version yet); with the outbox's
    /// sequence number they cover up to.
    pub fn fleet_outbox(&self, origin: &str, limit: usize) -> Result<(Vec<Change>, i64)> {
        let mut db = self.db()?;
        let tx = db.conn.transaction()?;
        outbox(&tx, origin, "", limit)
    }

    /// Takes up to `limit` outbox rows into the journal, in one write transaction: each change gets the
    /// next seq of `origin` and its record's next version (one more than the newest this store holds,
    /// which it becomes), and is signed with `sign`. Returns how many changes were taken.
    pub fn fleet_claim(
        &self,
        origin: &str,
        host: &str,
        limit: usize,
        sign: &dyn Fn(&Change) -> String,
    ) -> Result<usize> {
        let mut db = self.db()?;
        let tx = db.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (changes, upto) = outbox(&tx, origin, host, limit)?;
        if changes.is_empty() {
            return Ok(0);
        }
        let mut seq = last_seq(&tx, origin)?;
        let taken = changes.len();
        for mut change in changes {
            seq += 1;
            change.seq = seq;
            change.version = if change.kind == "audit" {
                0
            } else {
                let held: i64 = tx.query_row(
                    "SELECT COALESCE(MAX(version), 0) FROM fleet_versions WHERE kind = ?1 AND id = ?2",
                    [&change.kind, &change.id],
                    |r| r.get(0),
                )?;
                held + 1
            };
            let sig = sign(&change);
            tx.execute(
                "INSERT INTO fleet_sent (origin, seq, kind, id, body, host, version, sig) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![change.origin, change.seq, change.kind, change.id, change.body, change.host, change.version, sig],
            )?;
            if change.kind != "audit" {
                record_version(&tx, &Signed { change, sig })?;
            }
        }
        tx.execute("DELETE FROM fleet_outbox WHERE seq <= ?1", [upto])?;
        tx.commit()?;
        Ok(taken)
    }

    /// The journal's rows not yet published, in the order they were taken (at most `limit`).
    pub fn fleet_unsent(&self, limit: usize) -> Result<Vec<Signed>> {
        let db = self.db()?;
        let mut stmt = db.conn.prepare_cached(&format!("{SENT_SELECT} WHERE published = 0 ORDER BY n LIMIT ?1"))?;
        let rows = stmt.query_map([limit as i64], signed_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Marks the journal published up to `last` (in the log, and on a replica when there is one), and
    /// forgets published rows beyond the newest `keep`.
    pub fn fleet_mark_published(&self, last: &Change, keep: usize) -> Result<()> {
        let db = self.db()?;
        db.conn.execute(
            "UPDATE fleet_sent SET published = 1
             WHERE published = 0 AND n <= (SELECT n FROM fleet_sent WHERE origin = ?1 AND seq = ?2)",
            params![last.origin, last.seq],
        )?;
        db.conn.execute(
            "DELETE FROM fleet_sent WHERE published = 1 AND n <= (SELECT MAX(n) FROM fleet_sent) - ?1",
            [keep.max(1) as i64],
        )?;
        Ok(())
    }

    /// The journal's entries of `origin` from `seq` on (at most `limit`), as they were sent; `None` when
    /// the journal no longer holds `seq`.
    pub fn fleet_journal_from(&self, origin: &str, seq: i64, limit: usize) -> Result<Option<Vec<Signed>>> {
        let db = self.db()?;
        let held: Option<i64> = db
            .conn
            .query_row("SELECT n FROM fleet_sent WHERE origin = ?1 AND seq = ?2", params![origin, seq], |r| r.get(0))
            .optional()?;
        if held.is_none() {
            return Ok(None);
        }
        let mut stmt =
            db.conn.prepare_cached(&format!("{SENT_SELECT} WHERE origin = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3"))?;
        let rows = stmt.query_map(params![origin, seq, limit as i64], signed_from_row)?;
        Ok(Some(rows.collect::<rusqlite::Result<_>>()?))
    }

    /// The highest seq of `origin` published (0 if none).
    pub fn fleet_published_head(&self, origin: &str) -> Result<i64> {
        let db = self.db()?;
        Ok(db.conn.query_row(
            "SELECT COALESCE(MAX(seq), 0) FROM fleet_sent WHERE origin = ?1 AND published = 1",
            [origin],
            |r| r.get(0),
        )?)
    }

    /// The seq the next change of `origin` will get.
    pub fn fleet_next_seq(&self, origin: &str) -> Result<i64> {
        let mut db = self.db()?;
        let tx = db.conn.transaction()?;
        Ok(last_seq(&tx, origin)? + 1)
    }

    /// The seq from which this host published every record again (0 if it never did): the others need
    /// none of its entries below it once they have those from it on.
    pub fn fleet_floor(&self) -> Result<i64> {
        let db = self.db()?;
        let floor: Option<String> =
            db.conn.query_row("SELECT value FROM settings WHERE name = 'fleet_floor'", [], |r| r.get(0)).optional()?;
        Ok(floor.and_then(|f| f.parse().ok()).unwrap_or(0))
    }

    /// Publishes every record again as new versions, from the next seq on (a host asked for entries
    /// the journal no longer holds), and records that seq as the floor.
    pub fn fleet_republish_from_floor(&self, origin: &str) -> Result<i64> {
        let floor = self.fleet_next_seq(origin)?;
        {
            let db = self.db()?;
            db.conn.execute(
                "INSERT INTO settings (name, value) VALUES ('fleet_floor', ?1) ON CONFLICT (name) DO UPDATE SET value = ?1",
                [floor.to_string()],
            )?;
        }
        self.fleet_republish()?;
        Ok(floor)
    }

    /// Puts in the outbox the records this store holds in no version of the fleet's log (it joined, or
    /// upgraded from a version without versions, and the fleet's state lacks them). How many.
    pub fn fleet_republish_unversioned(&self) -> Result<usize> {
        let mut db = self.db()?;
        let tx = db.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // A no-op update fires each record's trigger: plans first, then keys oldest first (see
        // `fleet_republish`).
        // (Records waiting in the outbox will be published anyway.)
        let n = tx.execute(
            "UPDATE plans SET name = name WHERE name NOT IN (SELECT id FROM fleet_versions WHERE kind = 'plan')
             AND name NOT IN (SELECT id FROM fleet_outbox WHERE kind = 'plan')",
            [],
        )? + tx.execute(
            "UPDATE keys SET id = id WHERE id NOT IN (SELECT id FROM fleet_versions WHERE kind = 'key')
             AND id NOT IN (SELECT id FROM fleet_outbox WHERE kind = 'key')",
            [],
        )? + tx.execute(
            "UPDATE settings SET value = value WHERE name = 'policies'
             AND NOT EXISTS (SELECT 1 FROM fleet_versions WHERE kind = 'policies')
             AND NOT EXISTS (SELECT 1 FROM fleet_outbox WHERE kind = 'policies')",
            [],
        )?;
        tx.commit()?;
        Ok(n)
    }
}

const SENT_SELECT: &str = "SELECT kind, id, body, origin, host, seq, version, sig FROM fleet_sent";

pub(super) fn signed_from_row(r: &rusqlite::Row) -> rusqlite::Result<Signed> {
    Ok(Signed {
        change: Change {
            kind: r.get(0)?,
            id: r.get(1)?,
            body: r.get(2)?,
            origin: r.get(3)?,
            host: r.get(4)?,
            seq: r.get(5)?,
            version: r.get(6)?,
        },
        sig: r.get(7)?,
    })
}

/// The highest seq `origin` has used: in the journal, or seen in the log (a store restored from an older
/// copy must not use a seq again).
fn last_seq(tx: &Transaction, origin: &str) -> Result<i64> {
    Ok(tx.query_row(
        "SELECT MAX(COALESCE((SELECT MAX(seq) FROM fleet_sent WHERE origin = ?1), 0),
                    COALESCE((SELECT head FROM fleet_origins WHERE origin = ?1), 0))",
        [origin],
        |r| r.get(0),
    )?)
}

/// Up to `limit` outbox rows, oldest first, the newest state of each record once; with the outbox's
/// sequence number they cover up to.
fn outbox(tx: &Transaction, origin: &str, host: &str, limit: usize) -> Result<(Vec<Change>, i64)> {
    let mut stmt = tx.prepare_cached("SELECT seq, kind, id, body FROM fleet_outbox ORDER BY seq LIMIT ?1")?;
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
            None => changes.push(Change {
                kind,
                id,
                body,
                origin: origin.to_string(),
                host: host.to_string(),
                seq: 0,
                version: 0,
            }),
        }
    }
    Ok((changes, upto))
}
