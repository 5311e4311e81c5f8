//! Keeping the shared counters file in line with the database: admin changes (one write transaction
//! that also applies the change to the file before committing), the database generation the file
//! carries, and mapping, resynchronising or rebuilding the file.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, Transaction, TransactionBehavior};

use super::policies::load_policies;
use super::rows::{load_entries, Keys};
use super::Store;
use crate::counters::{Build, Content, KeyEntry, Opened, SharedCounters};
use crate::error::{Error, Result};
use crate::key::KeyDigest;

impl Store {
    /// With the write lock held: makes the counters file hold exactly the database's keys and policies,
    /// marked with `generation`; rebuilds it larger (or undamaged) if that cannot be done in place.
    pub(super) fn bring_in_line(
        &self,
        tx: &Transaction,
        shared: &mut Arc<SharedCounters>,
        generation: i64,
    ) -> Result<()> {
        // A file behind the database is verified before it is changed in place (under the write lock, so
        // conclusively): a damaged one is rebuilt instead.
        if shared.is_superseded() || shared.is_replaced() || !verified_locked(shared) {
            *shared = Arc::new(map_counters_locked(tx, &self.path, &self.counters_path, None)?);
            self.shared.store(shared.clone());
        }
        shared.set_policies(&load_policies(tx)?);
        if !resync_entries(&load_entries(tx, Keys::All)?, shared, generation)? {
            *shared = Arc::new(map_counters_locked(tx, &self.path, &self.counters_path, Some(shared))?);
            self.shared.store(shared.clone());
        }
        Ok(())
    }

    /// Runs an admin change in one write transaction (on this process's admin connection).
    pub(super) fn admin(&self, change: impl FnOnce(&Transaction) -> Result<Vec<i64>>) -> Result<()> {
        let mut db = self.db()?;
        self.admin_on(&mut db.conn, change)
    }

    /// Runs an admin change in one write transaction that also gives the database a new generation (a
    /// random number, never reused), and applies it to the counters file before committing, so every
    /// process sees it from its next check on. `change` returns the rows it changed.
    ///
    /// The file carries the generation of the database it reflects. While a change is applied it carries
    /// none (-1); a file whose generation is not the committed one (an admin died between publishing and
    /// committing) is first brought in line with the database, so a later commit can never make a change
    /// that was not committed look current. If the commit fails, keys it added are tombstoned while the
    /// write lock is still held, or, if SQLite already released it, under a new one.
    pub(super) fn admin_on(
        &self,
        conn: &mut Connection,
        change: impl FnOnce(&Transaction) -> Result<Vec<i64>>,
    ) -> Result<()> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let committed = generation(&tx)?;
        let rows = change(&tx)?;
        let policies = load_policies(&tx)?;
        let generation = new_generation(committed)?;
        tx.execute("UPDATE meta SET value = ?1 WHERE name = 'generation'", [generation])?;
        let mut shared = self.shared.load_full();
        let mut added = Vec::new();
        let applied = (|| -> Result<()> {
            if shared.is_superseded() || shared.is_replaced() || shared.generation() != committed {
                self.bring_in_line(&tx, &mut shared, generation)?;
            }
            shared.set_generation(-1);
            for row in rows {
                let entry = load_entries(&tx, Keys::Row(row))?
                    .pop()
                    .ok_or_else(|| Error::internal("a changed key vanished"))?;
                if shared.tally(&entry.digest).is_none() {
                    added.push(entry.digest);
                }
                if shared.upsert(&entry).is_err() {
                    shared = Arc::new(map_counters_locked(&tx, &self.path, &self.counters_path, Some(&shared))?);
                    self.shared.store(shared.clone());
                    shared.upsert(&entry).map_err(|_| Error::internal("a rebuilt counters file is full"))?;
                }
            }
            // Published while the write lock is held, so no other admin can interleave.
            shared.set_policies(&policies);
            shared.set_generation(generation);
            tx.execute_batch("COMMIT")?;
            Ok(())
        })();
        let Err(e) = applied else { return Ok(()) };
        shared.set_generation(-1);
        if !tx.is_autocommit() {
            // Still in the transaction, so still the only writer: nobody can take these blocks meanwhile.
            for digest in &added {
                let _ = shared.tombstone(digest);
            }
            drop(tx); // rolls back
        } else {
            drop(tx);
            // SQLite rolled back and released the lock: bring the file in line under a new one. If that
            // fails too, the next flush in any process does it (the file's generation is -1).
            let _ = self.resync_locked(conn);
        }
        Err(e)
    }

    /// A check's verification turn, after its flush turn: when the counters file's generation changed
    /// since it was last verified (by any process), or it was last verified [`VERIFY_EVERY_FLUSHES`] flush
    /// intervals ago (at least a second), verifies its index and records under the write lock if that is
    /// free at once (else a later turn does), and rebuilds it from the database if it is damaged. One
    /// process verifies per change or period, not each.
    pub(super) fn verification_turn(&self) -> Result<()> {
        let every = (self.options.flush_interval * VERIFY_EVERY_FLUSHES).max(MIN_VERIFY_EVERY).as_nanos() as u64;
        if !self.shared.load().verification_due(every) {
            return Ok(());
        }
        let Some(mut db) = self.quick_db()? else { return Ok(()) };
        let Some(tx) = immediate_if_free(&mut db.conn)? else { return Ok(()) };
        let shared = self.shared.load_full();
        // Looked at again under the lock: another process may have verified it, or replaced it, meanwhile.
        let due = shared.verification_due(every) && !shared.is_superseded() && !shared.is_replaced();
        if due && !verified_locked(&shared) {
            let rebuilt = map_counters_locked(&tx, &self.path, &self.counters_path, None)?;
            self.shared.store(Arc::new(rebuilt));
        }
        tx.commit()?;
        Ok(())
    }

    /// Takes the write lock and brings the counters file in line with the committed database.
    fn resync_locked(&self, conn: &mut Connection) -> Result<()> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let committed = generation(&tx)?;
        let mut shared = self.shared.load_full();
        self.bring_in_line(&tx, &mut shared, committed)?;
        tx.commit()?;
        Ok(())
    }
}

/// The counters file is verified at least every this many flush intervals ...
const VERIFY_EVERY_FLUSHES: u32 = 60;
/// ... and at most once a second, however short the flush interval.
const MIN_VERIFY_EVERY: Duration = Duration::from_secs(1);

/// With the write lock held: true when the mapped file can be decided from as it is (its index and records
/// match their checksum). A damaged one is marked superseded, so every process moves off it at its next
/// check; one built before content checksums existed is left for the caller to rebuild.
fn verified_locked(shared: &SharedCounters) -> bool {
    match shared.content() {
        Content::Sound => {
            shared.mark_verified();
            true
        }
        Content::Unsealed => false,
        Content::Damaged(_) => {
            shared.supersede();
            false
        }
    }
}

/// A write transaction if the write lock is free at once; `None` when another caller holds it.
pub(super) fn immediate_if_free(conn: &mut Connection) -> Result<Option<Transaction<'_>>> {
    match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => Ok(Some(tx)),
        Err(rusqlite::Error::SqliteFailure(f, _)) if f.code == rusqlite::ErrorCode::DatabaseBusy => Ok(None),
        Err(other) => Err(other.into()),
    }
}

pub(super) fn generation(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("SELECT value FROM meta WHERE name = 'generation'", [], |r| r.get(0))?)
}

/// A generation for one admin attempt: random, so an attempt that died before committing can never share
/// its number with a later committed one (the counters file would then look current with its change).
fn new_generation(committed: i64) -> Result<i64> {
    loop {
        let mut bytes = [0u8; 8];
        getrandom::getrandom(&mut bytes).map_err(|e| Error::internal(format!("no randomness: {e}")))?;
        let g = i64::from_le_bytes(bytes) & i64::MAX;
        if g != committed && g > 0 {
            return Ok(g);
        }
    }
}

/// Maps the counters file, building it under the database's write lock when it is missing or unusable.
pub(super) fn map_counters(conn: &mut Connection, db_path: &Path, path: &Path) -> Result<SharedCounters> {
    if let Some(existing) = SharedCounters::open_existing(path)? {
        if existing.generation() == generation(conn)? {
            return Ok(existing);
        }
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mapped = map_counters_locked(&tx, db_path, path, None)?;
    tx.commit()?;
    Ok(mapped)
}

/// With the write lock held: maps the counters file if it is usable (bringing its keys up to date), or
/// builds a new one from the database. With `grow_from`, always builds a larger one, carrying over the
/// counts of the file it replaces, including those charged while the new one was being built. A file
/// whose index or records do not match their checksum is never used nor carried from: it is marked
/// superseded (every process moves off it at its next check) and the new one is built from the database
/// alone, which lacks the counts of the last flush interval at most.
pub(super) fn map_counters_locked(
    tx: &Transaction,
    db_path: &Path,
    path: &Path,
    grow_from: Option<&SharedCounters>,
) -> Result<SharedCounters> {
    let generation = generation(tx)?;
    // Sound and in use: brought up to date in place if it has room. Built before checksums: carried.
    let (mut existing, mut unsealed, mut damaged) = (None, None, false);
    let grow_from = match grow_from {
        Some(old) => match old.content() {
            Content::Damaged(_) => {
                old.supersede();
                damaged = true;
                None
            }
            Content::Sound | Content::Unsealed => Some(old),
        },
        None => {
            match SharedCounters::open_checked(path)? {
                Opened::Sound(e) if e.generation() == generation => return Ok(e),
                Opened::Sound(e) => existing = Some(e),
                Opened::Unsealed(e) => unsealed = Some(e),
                Opened::Damaged(e, _) => {
                    e.supersede();
                    damaged = true;
                }
                Opened::Absent(_) | Opened::Unusable(_) => {}
            }
            None
        }
    };
    let entries = load_entries(tx, Keys::All)?;
    if let Some(e) = &existing {
        // An existing file that still has room is brought up to date in place.
        e.set_policies(&load_policies(tx)?);
        if e.has_room_for(entries.len() as u64) && resync_entries(&entries, e, generation)? {
            e.mark_verified();
            return Ok(existing.expect("checked above"));
        }
    }
    // A frozen file left at the path by a growth that died midway holds the final counts: carry them.
    let abandoned = match grow_from.or(existing.as_ref()).or(unsealed.as_ref()) {
        None if !damaged => SharedCounters::open_superseded(path)?,
        _ => None,
    };
    let policies = load_policies(tx)?;
    let plan =
        Build { path, entries: &entries, room: entries.len(), generation, policies: &policies, owner_of: db_path };
    match grow_from.or(existing.as_ref()).or(unsealed.as_ref()).or(abandoned.as_ref()) {
        // Each cell's whole state is carried, under every key that counts in it (a rotated key and its
        // successor share one): the database may lack what the file counted since its last flush. More
        // room than the keys need now, so that growing is rare.
        Some(old) => SharedCounters::grow(old, &Build { room: entries.len() * 2, ..plan }),
        None => SharedCounters::build(&plan),
    }
}

/// Brings the file's keys in line with the database: keys whose policy differs are rewritten, keys the
/// database does not have are tombstoned. `false`: the file is full, or so damaged that some key of the
/// database would not be decidable after all (the caller builds a new one).
fn resync_entries(entries: &[KeyEntry], shared: &SharedCounters, generation: i64) -> Result<bool> {
    shared.set_generation(-1);
    for entry in entries {
        if !shared.holds(entry) && (shared.upsert(entry).is_err() || !shared.holds(entry)) {
            return Ok(false);
        }
    }
    let known: std::collections::HashSet<KeyDigest> = entries.iter().map(|e| e.digest).collect();
    for digest in shared.digests() {
        if !known.contains(&digest) && shared.tombstone(&digest).is_err() {
            return Ok(false);
        }
    }
    shared.set_generation(generation);
    Ok(true)
}
