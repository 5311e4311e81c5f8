//! Flushing: writing the counts of the shared counters file to the database (absolute counts, so a
//! flush repeated or done by two processes changes nothing), and making lasting the revocations that
//! checks already enforce (rotations past their grace, idle keys, abuse).

use std::sync::atomic::Ordering;

use rusqlite::{params, Connection, TransactionBehavior};

use super::policies::load_policies;
use super::sync::generation;
use super::{clock_ms, Store};
use crate::counters::{Dirty, SharedCounters};
use crate::error::{Error, Result};
use crate::period::CLOCK_TOLERANCE_MS;
use crate::status::Status;

const IDLE_SWEEP_MS: i64 = 60_000;

/// Cells a flush on the check path looks at, per flush interval: a store of up to this many keys is
/// covered by every interval's flush, a larger one in turns (a shared cursor).
const FLUSH_SLICE: u64 = 65_536;

/// Rows a flush on the check path writes at most: then it stops in the middle of its slice, and the next
/// turn comes as much sooner as the slice was left undone (after `interval x cells looked at / 65,536`).
/// Writing a row costs far more than looking at a cell, so this is what bounds the pause of the one check
/// that flushes when many keys are in use, while the database takes as many counts per interval as before,
/// in shorter pauses.
const FLUSH_ROWS: u64 = 4_096;

/// Cells read from the shared file at a time, and rows written per transaction (at least, but for the
/// last): SQLite's write lock is held for a chunk (an admin change waits for a chunk, not a whole
/// flush), what a flush holds in memory stays ~100 KB whatever the number of keys (a flush that
/// collected 65,536 rows at once left 13 MB to the allocator), and a chunk written stays written if a
/// later one fails.
const FLUSH_PIECE: u64 = 256;
const FLUSH_CHUNK_ROWS: usize = 256;

/// Which cells a flush writes.
#[derive(Clone, Copy)]
enum Scan {
    All,
    Next,
}

/// How a flush on the check path ended: every changed count it looked at written, or cut short at
/// [`FLUSH_ROWS`] after looking at this many cells of its slice.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Written {
    All,
    CutShort { looked: u64 },
}

impl Store {
    /// A check's flush turn: writes what it can without waiting and keeps any failure for metrics and
    /// [`Store::last_flush_error`]; the request is decided from the shared file whatever happens here.
    pub(super) fn flush_turn(&self, shared: &SharedCounters, now_ms: i64) {
        let done = match self.quick_db() {
            Ok(Some(mut db)) => self.flush_on(&mut db.conn, shared, now_ms, Scan::Next),
            Ok(None) => Ok(Written::All), // another thread of this process is flushing
            Err(e) => Err(e),
        };
        match done {
            Ok(Written::All) => {}
            Ok(Written::CutShort { looked }) => {
                let interval = self.options.flush_interval.as_nanos();
                shared.hasten_flush((interval * looked as u128 / FLUSH_SLICE as u128) as u64)
            }
            Err(e) => self.note_flush_failure(e),
        }
        if let Err(e) = self.verification_turn() {
            self.note_flush_failure(e);
        }
    }

    pub(super) fn note_flush_failure(&self, e: Error) {
        self.flush_failures.fetch_add(1, Ordering::Relaxed);
        *self.last_flush_error.lock() = Some(e.message);
    }

    /// Why this process's last flush turn (or abuse revocation) on the check path could not write, if one
    /// failed: checks never answer with it. The next turn tries again.
    pub fn last_flush_error(&self) -> Option<String> {
        self.last_flush_error.lock().clone()
    }

    /// How many flush turns of this process's checks could not write.
    pub fn flush_failures(&self) -> u64 {
        self.flush_failures.load(Ordering::Relaxed)
    }

    /// Writes every count not yet in the database (in transactions of a few hundred keys), and brings the
    /// counters file up to date with admin changes another process committed but did not finish applying.
    /// Waits for the write lock (up to the busy timeout) and returns any failure.
    pub fn flush(&self) -> Result<()> {
        let shared = self.counters()?;
        let mut db = self.db()?;
        self.flush_on(&mut db.conn, &shared, clock_ms(), Scan::All).map(|_| ())
    }

    /// Writes counts, then makes lasting the revocations that policies decided by `now_ms` (rotations
    /// past their grace, idle keys, abuse), which checks already enforce from the counters file.
    fn flush_on(&self, conn: &mut Connection, shared: &SharedCounters, now_ms: i64, scope: Scan) -> Result<Written> {
        let written = self.write_dirty(conn, shared, now_ms, scope)?;
        self.revoke_pending_abuse(conn)?;
        self.persist_policy_revocations(conn, now_ms)?;
        Ok(written)
    }

    fn write_dirty(&self, conn: &mut Connection, shared: &SharedCounters, now_ms: i64, scope: Scan) -> Result<Written> {
        let failed =
            |e: Error| Error::store(format!("cannot write usage counts to {}: {}", self.path.display(), e.message));
        let mut chunk = Vec::with_capacity(2 * FLUSH_CHUNK_ROWS);
        let mut written = Written::All;
        // Writes the chunk once it has `at_least` rows.
        let mut write = |chunk: &mut Vec<Dirty>, at_least: usize| -> Result<()> {
            if !chunk.is_empty() && chunk.len() >= at_least {
                write_counts(conn, chunk, now_ms).map_err(failed)?;
                shared.mark_flushed(chunk);
                chunk.clear();
            }
            Ok(())
        };
        match scope {
            Scan::All => {
                for start in (0..shared.blocks_used()).step_by(FLUSH_PIECE as usize) {
                    shared.dirty_among(start..start + FLUSH_PIECE, &mut chunk);
                    write(&mut chunk, FLUSH_CHUNK_ROWS)?;
                }
            }
            Scan::Next => {
                let slice = FLUSH_SLICE.min(shared.blocks_used());
                let (mut looked, mut rows) = (0, 0);
                while looked < slice && rows < FLUSH_ROWS {
                    let before = chunk.len();
                    let n = shared.dirty_next(FLUSH_PIECE.min(slice - looked), &mut chunk);
                    rows += (chunk.len() - before) as u64;
                    write(&mut chunk, FLUSH_CHUNK_ROWS)?;
                    if n == 0 {
                        break; // the file's header says it has no cells any more (damaged): nothing to write
                    }
                    looked += n;
                }
                if rows >= FLUSH_ROWS && looked < slice {
                    written = Written::CutShort { looked };
                }
            }
        }
        write(&mut chunk, 1)?;
        if generation(conn)? != shared.generation() {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current = generation(&tx)?;
            // Under the write lock, look again: an admin that was committing has published by now.
            if current != shared.generation() {
                let mut shared = self.shared.load_full();
                self.bring_in_line(&tx, &mut shared, current)?;
            }
            tx.commit()?;
        }
        if shared.is_replaced() {
            // Deleted or replaced under us: every process mapping this one moves to the file at the path
            // (rebuilt from the database, which now has these counts) on its next check.
            shared.supersede();
        }
        Ok(written)
    }

    /// Writes the revocations the abuse policy decided in this process's checks; those that fail stay
    /// pending for the next try.
    pub(super) fn revoke_pending_abuse(&self, conn: &mut Connection) -> Result<()> {
        let pending = std::mem::take(&mut *self.pending_abuse.lock());
        let mut result = Ok(());
        for (i, (id, at_ms)) in pending.iter().enumerate() {
            let revoked = self.revoke_as(conn, id, *at_ms, "abuse", "key.revoke.policy");
            if let Err(e) = revoked.or_else(|e| if e.status == Status::ErrNotFound { Ok(()) } else { Err(e) }) {
                self.pending_abuse.lock().extend(pending[i..].iter().cloned());
                result = Err(e);
                break;
            }
        }
        result
    }

    /// Makes lasting the revocations that checks already enforce: rotated keys past their grace, and
    /// keys idle for longer than the idle policy allows.
    fn persist_policy_revocations(&self, conn: &mut Connection, now_ms: i64) -> Result<()> {
        let mut due: Vec<(String, i64, &str)> = conn
            .prepare_cached(
                "SELECT id, revoke_at_ms FROM keys
                 WHERE revoke_at_ms IS NOT NULL AND revoked_at_ms IS NULL AND revoke_at_ms <= ?1",
            )?
            .query_map([now_ms], |r| Ok((r.get(0)?, r.get(1)?, "rotated")))?
            .collect::<rusqlite::Result<_>>()?;
        // Idle keys are refused by every check already; recording them takes a scan of every key, so
        // it runs at most once a minute (of the callers' clock) per process.
        let idle_ms = load_policies(conn)?.idle_ms;
        let last = self.last_idle_sweep_ms.load(Ordering::Relaxed);
        if idle_ms > 0 && (now_ms - last >= IDLE_SWEEP_MS || now_ms < last) {
            self.last_idle_sweep_ms.store(now_ms, Ordering::Relaxed);
            let idle = conn
                .prepare_cached(
                    "SELECT k.id, MAX(COALESCE(u.last_used_at_ms, 0), k.created_at_ms) + ?2 FROM keys k
                     LEFT JOIN usage u ON u.key_row = COALESCE(k.counts_with, k.row)
                     WHERE k.revoked_at_ms IS NULL AND MAX(COALESCE(u.last_used_at_ms, 0), k.created_at_ms) + ?2 <= ?1",
                )?
                .query_map(params![now_ms, idle_ms], |r| Ok((r.get(0)?, r.get(1)?, "idle")))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            due.extend(idle);
        }
        for (id, at_ms, reason) in due {
            self.revoke_as(conn, &id, at_ms, reason, "key.revoke.policy")?;
        }
        Ok(())
    }
}

/// Writes absolute counts (so writing the same counts twice, or from two processes, changes nothing),
/// never moving a count back to an older quota period, as the counter itself never moves back: except
/// from a period that begins more than the clocks' tolerance after `now_ms` (the writer's clock), which
/// a clock set wrong left there and the counter has already left (`Usage::counting_instant`); kept, it
/// would hold back every later count until the clock got there, and a file rebuilt from the database
/// would start the current period from zero.
pub(super) fn write_counts(conn: &mut Connection, counts: &[Dirty], now_ms: i64) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO usage (key_row, period_start_ms, used, total, last_used_at_ms, rate_tat_ns)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE EXISTS (SELECT 1 FROM keys WHERE row = ?1)
             ON CONFLICT (key_row) DO UPDATE SET
                used = CASE WHEN excluded.period_start_ms > period_start_ms OR period_start_ms - ?7 > ?8
                                THEN excluded.used
                            WHEN excluded.period_start_ms = period_start_ms THEN MAX(used, excluded.used)
                            ELSE used END,
                period_start_ms = CASE WHEN period_start_ms - ?7 > ?8 THEN excluded.period_start_ms
                                       ELSE MAX(period_start_ms, excluded.period_start_ms) END,
                total = MAX(total, excluded.total),
                last_used_at_ms = MAX(COALESCE(last_used_at_ms, 0), COALESCE(excluded.last_used_at_ms, 0)),
                rate_tat_ns = MAX(rate_tat_ns, excluded.rate_tat_ns)",
        )?;
        for d in counts {
            let t = &d.tally;
            stmt.execute(params![
                d.row,
                t.usage.period_start_ms,
                t.usage.used,
                t.total,
                t.last_used_at_ms,
                t.usage.tat_ns,
                now_ms,
                CLOCK_TOLERANCE_MS
            ])?;
        }
        let mut daily = tx.prepare_cached(
            "INSERT INTO usage_daily (key_row, day, admitted, expired, revoked, quota_exceeded, rate_limited)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 WHERE EXISTS (SELECT 1 FROM keys WHERE row = ?1)
             ON CONFLICT (key_row, day) DO UPDATE SET
                admitted = MAX(admitted, excluded.admitted), expired = MAX(expired, excluded.expired),
                revoked = MAX(revoked, excluded.revoked), quota_exceeded = MAX(quota_exceeded, excluded.quota_exceeded),
                rate_limited = MAX(rate_limited, excluded.rate_limited)",
        )?;
        for d in counts {
            for day in d.days.iter().flatten() {
                daily.execute(params![
                    d.row,
                    day.day,
                    day.admitted,
                    day.expired,
                    day.revoked,
                    day.quota_exceeded,
                    day.rate_limited
                ])?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}
