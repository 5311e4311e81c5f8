//! `check`: where a request is decided, from the shared counters file alone (the decision itself is
//! [`crate::policy`]'s; the file is [`crate::counters`]). It touches the database only for its flush
//! turn, strict durability, or an abuse revocation, and never waits for it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::flush::write_counts;
use super::options::Durability;
use super::sync::{immediate_if_free, map_counters, map_counters_locked};
use super::{Checked, Store};
use crate::counters::{Found, KeyView, SharedCounters, Turn};
use crate::error::{Error, Result};
use crate::key::{self, Presented};
use crate::period::check_time_ms;
use crate::policy::Decision;
use crate::status::Status;

impl Store {
    /// Decides one request. `key` is the raw header value (`None` when absent); `now_ms` is Unix ms.
    /// Touches no database and makes no system call unless a flush is due, and never waits for SQLite: a
    /// flush turn that cannot have the write lock at once is left to the next turn.
    pub fn check(&self, key: Option<&[u8]>, now_ms: i64) -> Result<Checked> {
        self.check_with(key, now_ms, |decision, key| Checked { decision: *decision, key: key.map(|k| k.to_key_ref()) })
    }

    /// [`Store::check`], handing the decision and the matched key (read in place from the counters file)
    /// to `answer` instead of copying them out: how the C ABI fills its result. `answer` runs only when
    /// the check succeeds, once.
    pub fn check_with<R>(
        &self,
        key: Option<&[u8]>,
        now_ms: i64,
        answer: impl FnOnce(&Decision, Option<KeyView<'_>>) -> R,
    ) -> Result<R> {
        check_time_ms("now_ms", now_ms)?;
        let candidate = match key::classify(key) {
            Presented::Missing => {
                self.unmatched[0].fetch_add(1, Ordering::Relaxed);
                return Ok(answer(&Decision::without_key(Status::ApiKeyMissing), None));
            }
            Presented::Malformed => {
                self.unmatched[1].fetch_add(1, Ordering::Relaxed);
                return Ok(answer(&Decision::without_key(Status::ApiKeyInvalid), None));
            }
            Presented::Candidate(c) => c,
        };
        let digest = key::digest(candidate);
        // The flush turn comes first: it is also where a truncated file is noticed, before any other
        // read of the mapping.
        let mut shared = self.shared.load();
        let turn = shared.claim_flush(self.options.flush_interval.as_nanos() as u64);
        if turn == Turn::Claimed {
            self.flush_turn(&shared, now_ms);
        }
        if turn == Turn::Unusable || shared.is_superseded() {
            drop(shared);
            shared = self.remap_for_check()?;
        }
        // A file superseded by a larger one mid-check answers Moved: map the new one and ask again.
        let mut attempts = 0;
        let admission = loop {
            match shared.admit_waiting(&digest, now_ms, self.options.lease_wait) {
                Found::Key(admission) => break admission,
                Found::Unknown => {
                    self.unmatched[1].fetch_add(1, Ordering::Relaxed);
                    return Ok(answer(&Decision::without_key(Status::ApiKeyInvalid), None));
                }
                // A damaged file was marked superseded by the check that found it: the file mapped next is
                // rebuilt from the database, and the question asked again.
                Found::Moved | Found::Damaged(_) if attempts < 8 => {
                    attempts += 1;
                    drop(shared);
                    shared = self.remap_for_check()?;
                }
                Found::Moved => return Err(Error::store("the counters file keeps being replaced; try again")),
                Found::Damaged(why) => {
                    return Err(Error::store(format!(
                        "the counters file {} keeps being found damaged ({why}); it is rebuilt from the database on the next check",
                        self.counters_path.display()
                    )))
                }
            }
        };
        let decision = &admission.decision;
        let key = shared.key_view(&admission);
        if self.options.durability == Durability::Strict && decision.status == Status::Ok {
            // Strict durability is the caller's choice to wait for the database on every admitted check.
            let mut db = self.db()?;
            write_counts(&mut db.conn, &[shared.dirty_one(&key)], now_ms).map_err(|e| {
                Error::store(format!("cannot write the count to {}: {}", self.path.display(), e.message))
            })?;
        }
        let answered = answer(decision, Some(key));
        if admission.abusive {
            // This refusal went over the abuse policy's limit. The key is being refused by its rate limit
            // anyway; its revocation is written now if the write lock is free, else at a later flush.
            let id = key.id().to_string();
            drop(shared);
            self.pending_abuse.lock().push((id, now_ms));
            match self.quick_db() {
                Ok(Some(mut db)) => {
                    if let Err(e) = self.revoke_pending_abuse(&mut db.conn) {
                        self.note_flush_failure(e);
                    }
                }
                Ok(None) => {}
                Err(e) => self.note_flush_failure(e),
            }
        }
        Ok(answered)
    }

    /// For a check whose counters file was replaced (or found unusable): maps the one at the path. A
    /// complete file is used as it is (a flush brings it in line with the database if it is behind); only
    /// building a new one needs the write lock. While another process holds it, that process is growing
    /// or rebuilding the file (the old one frozen, the new one not yet in place): the check waits for the
    /// new file, up to the busy timeout, rather than decide on counts that are not final. This is the one
    /// wait on the check path, and it lasts one pass over the cells of a growing file.
    fn remap_for_check(&self) -> Result<arc_swap::Guard<Arc<SharedCounters>>> {
        // This handle may have mapped the new file already (its verification turn rebuilt a damaged one).
        let current = self.shared.load();
        if !current.is_superseded() {
            return Ok(current);
        }
        drop(current);
        let deadline = Instant::now() + self.options.busy_timeout;
        let fresh = loop {
            if let Some(existing) = SharedCounters::open_existing(&self.counters_path)? {
                break existing;
            }
            match self.rebuild_for_check()? {
                Some(built) => break built,
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_micros(200)),
                None => return Err(Error::store("the counters file is being rebuilt by another caller; try again")),
            }
        };
        self.shared.store(Arc::new(fresh));
        Ok(self.shared.load())
    }

    /// Builds the counters file if the write lock is free at once; `None` when another caller holds it.
    fn rebuild_for_check(&self) -> Result<Option<SharedCounters>> {
        let Some(mut db) = self.quick_db()? else { return Ok(None) };
        let Some(tx) = immediate_if_free(&mut db.conn)? else { return Ok(None) };
        let mapped = map_counters_locked(&tx, &self.path, &self.counters_path, None)?;
        tx.commit()?;
        Ok(Some(mapped))
    }

    /// The current counters file, for admin calls and explicit flushes (which may wait for the lock).
    pub(super) fn counters(&self) -> Result<arc_swap::Guard<Arc<SharedCounters>>> {
        let shared = self.shared.load();
        if !shared.is_superseded() {
            return Ok(shared);
        }
        drop(shared);
        let mut db = self.db()?;
        let fresh = map_counters(&mut db.conn, &self.path, &self.counters_path)?;
        self.shared.store(Arc::new(fresh));
        Ok(self.shared.load())
    }
}
