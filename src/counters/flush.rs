//! What reaches the database: which cells changed since they were last written (their day words differ
//! from what the database has seen), the bookkeeping once they are written, and which process writes
//! them when (a claim on the shared flush time, and a shared cursor so that processes take turns
//! around a large file).

use std::sync::atomic::Ordering;

use super::cell::{decode_day, tally_of, Cell};
use super::layout::SIZE_CHECK_NS;
use super::{monotonic_ns, Dirty, KeyRef, SharedCounters, Turn};

/// Never a real day word (its day field would be 2^20 - 1, past the year 4840).
pub(super) const STALE: u128 = u128::MAX;

impl SharedCounters {
    /// The keys whose counts changed since they were last written to the database.
    pub fn dirty(&self) -> Vec<Dirty> {
        (0..self.blocks_used()).filter_map(|c| self.dirty_cell(c)).collect()
    }

    fn dirty_cell(&self, c: u64) -> Option<Dirty> {
        let cell = self.cell(c);
        // Blocks of later record versions have no cell in use (row 0).
        let in_use = cell.row.load(Ordering::Relaxed) != 0;
        let changed =
            (0..2).any(|i| cell.days[i].load(Ordering::Acquire) != cell.flushed_days[i].load(Ordering::Acquire));
        (in_use && changed).then(|| dirty_of(cell, c))
    }

    /// Like [`SharedCounters::dirty`] for the next `limit` cells only, taking turns around the file with
    /// every other process (a shared cursor), so that one flush never scans a million cells.
    pub fn dirty_next(&self, limit: u64) -> Vec<Dirty> {
        let used = self.blocks_used();
        if used <= limit {
            return self.dirty();
        }
        let start = self.header().flush_cursor.fetch_add(limit, Ordering::AcqRel) % used;
        (0..limit).filter_map(|i| self.dirty_cell((start + i) % used)).collect()
    }

    /// The counts of the key a check just matched, to write them at once (strict durability).
    pub fn dirty_one(&self, key: &KeyRef) -> Dirty {
        let cell = self.cell(key.cell);
        dirty_of(cell, key.cell)
    }

    /// Records that these counts are in the database.
    pub fn mark_flushed(&self, written: &[Dirty]) {
        for d in written {
            let cell = self.cell(d.cell);
            for i in 0..2 {
                cell.flushed_days[i].store(d.day_words[i], Ordering::Release);
            }
        }
    }

    /// Claims the next flush for this process if it is due. A claimant that dies leaves the claim to
    /// expire after one interval. Also, at most every 100 ms per process, checks that nobody truncated the
    /// file: touching a page past its end would kill the process with SIGBUS.
    pub fn claim_flush(&self, interval_ns: u64) -> Turn {
        let now = monotonic_ns();
        if self.unusable.load(Ordering::Relaxed) {
            return Turn::Unusable;
        }
        if now >= self.next_size_check_ns.load(Ordering::Relaxed) {
            self.next_size_check_ns.store(now + SIZE_CHECK_NS, Ordering::Relaxed);
            if self.truncated() {
                return Turn::Unusable;
            }
        }
        let h = self.header();
        let due = h.next_flush_ns.load(Ordering::Relaxed);
        if now >= due
            && h.next_flush_ns.compare_exchange(due, now + interval_ns, Ordering::AcqRel, Ordering::Relaxed).is_ok()
        {
            Turn::Claimed
        } else {
            Turn::NotDue
        }
    }
}

fn dirty_of(cell: &Cell, c: u64) -> Dirty {
    let day_words = [0, 1].map(|i| cell.days[i].load(Ordering::Acquire));
    let days = day_words.map(|word| (word != 0).then(|| decode_day(word)));
    Dirty { row: cell.row.load(Ordering::Relaxed), tally: tally_of(cell), days, cell: c, day_words }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{built, entry};
    use super::super::{Found, KeyEntry};

    #[test]
    fn flushes_on_the_check_path_take_turns_over_a_large_file() {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<KeyEntry> = (0..10).map(|n| entry(n, None)).collect();
        let (_, c) = built(&dir, &entries);
        for e in &entries {
            assert!(matches!(c.admit(&e.digest, 1_800_000_000_000), Found::Key(_)));
        }
        let mut seen = std::collections::HashSet::new();
        for _ in 0..4 {
            let slice = c.dirty_next(3);
            assert!(slice.len() <= 3);
            c.mark_flushed(&slice);
            seen.extend(slice.iter().map(|d| d.row));
        }
        assert_eq!(seen.len(), 10, "every key written within ceil(10 / 3) flushes");
        assert!(c.dirty().is_empty());
    }
}
