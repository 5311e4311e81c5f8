//! What reaches the database: which cells changed since they were last written (their day words differ
//! from what the database has seen), the bookkeeping once they are written, and which process writes
//! them when (a claim on the shared flush time, and a shared cursor so that processes take turns
//! around a large file).

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use super::cell::{decode_day, tally_of, Cell};
use super::layout::SIZE_CHECK_NS;
use super::{monotonic_ns, Dirty, KeyView, SharedCounters, Turn};

/// How long the time-stamp counter is watched against the clock before its rate is trusted.
const CALIBRATION_NS: u64 = 200_000_000;

/// Never a real day word (its day field would be 2^20 - 1, past the year 4840).
pub(super) const STALE: u128 = u128::MAX;

/// The longest flush interval a store is opened with through the C ABI (`flush_interval_ms`).
pub(crate) const MAX_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

impl SharedCounters {
    /// The keys whose counts changed since they were last written to the database.
    #[cfg(test)]
    pub fn dirty(&self) -> Vec<Dirty> {
        let mut out = Vec::new();
        self.dirty_among(0..self.blocks_used(), &mut out);
        out
    }

    /// Appends to `out` the keys among these cells whose counts changed since they were last written.
    pub fn dirty_among(&self, cells: Range<u64>, out: &mut Vec<Dirty>) {
        let used = self.blocks_used();
        out.extend((cells.start..cells.end.min(used)).filter_map(|c| self.dirty_cell(c)));
    }

    fn dirty_cell(&self, c: u64) -> Option<Dirty> {
        let cell = self.cell(c);
        // Blocks of later record versions have no cell in use (row 0).
        if cell.row.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let (days, flushed) = day_words(cell);
        (days != flushed).then(|| dirty_of(cell, c, days, flushed))
    }

    /// Like [`SharedCounters::dirty_among`] for the next `count` cells (at most the whole file) in the
    /// order every process takes turns over (a shared cursor), so that flushes on the check path cover a
    /// large file between them, a little at a time. Returns how many cells it looked at.
    pub fn dirty_next(&self, count: u64, out: &mut Vec<Dirty>) -> u64 {
        let used = self.blocks_used();
        let count = count.min(used);
        if count > 0 {
            let start = self.header().flush_cursor.fetch_add(count, Ordering::AcqRel) % used;
            out.extend((0..count).filter_map(|i| self.dirty_cell((start + i) % used)));
        }
        count
    }

    /// The counts of the key a check just matched, to write them at once (strict durability).
    pub fn dirty_one(&self, key: &KeyView) -> Dirty {
        let cell = self.cell(key.cell());
        let (days, flushed) = day_words(cell);
        dirty_of(cell, key.cell(), days, flushed)
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

    /// Brings the next flush turn forward to at most `after_ns` from now, for any process: the last turn
    /// left counts to write.
    pub fn hasten_flush(&self, after_ns: u64) {
        self.header().next_flush_ns.fetch_min(monotonic_ns().saturating_add(after_ns), Ordering::AcqRel);
        // This process reads the clock at its next check; the others within half their gate's wait.
        self.clock_gate.open_at.store(0, Ordering::Relaxed);
    }

    /// Claims the next flush for this process if it is due. A claimant that dies leaves the claim to
    /// expire after one interval. Also, at most every 100 ms per process, checks that nobody truncated the
    /// file (touching a page past its end would kill the process with SIGBUS) and that it is still the
    /// file at the path (see `abandoned`).
    ///
    /// Reading CLOCK_MONOTONIC costs more than the rest of a check's bookkeeping, and on most checks
    /// neither of the two is due: after each read, the process knows how long until the earlier of them
    /// (the shared flush time only moves later), and until half that time has passed by the CPU's
    /// time-stamp counter a check answers NotDue without reading the clock (see [`ClockGate`]).
    pub fn claim_flush(&self, interval_ns: u64) -> Turn {
        if self.unusable.load(Ordering::Relaxed) {
            return Turn::Unusable;
        }
        let tsc = self.clock_gate.ticks();
        if interval_ns > 0 && self.clock_gate.shut(tsc) {
            return Turn::NotDue;
        }
        let now = monotonic_ns();
        self.clock_gate.reads.fetch_add(1, Ordering::Relaxed);
        let mut next_size_check = self.next_size_check_ns.load(Ordering::Relaxed);
        if now >= next_size_check {
            next_size_check = now + SIZE_CHECK_NS;
            self.next_size_check_ns.store(next_size_check, Ordering::Relaxed);
            if self.truncated() || self.abandoned() {
                return Turn::Unusable;
            }
        }
        let h = self.header();
        let due = h.next_flush_ns.load(Ordering::Relaxed);
        // No process sets a flush time further ahead than its interval, at most MAX_FLUSH_INTERVAL: one
        // that is was damaged (the schedule is in no checksum), and would stop every process's flush and
        // verification turns for good. Taken as due (an early flush changes nothing).
        let damaged = due.saturating_sub(now) > interval_ns.max(MAX_FLUSH_INTERVAL.as_nanos() as u64);
        let turn = if (now >= due || damaged)
            && h.next_flush_ns.compare_exchange(due, now + interval_ns, Ordering::AcqRel, Ordering::Relaxed).is_ok()
        {
            Turn::Claimed
        } else {
            Turn::NotDue
        };
        let next_due = h.next_flush_ns.load(Ordering::Relaxed).min(next_size_check);
        self.clock_gate.reopen(tsc, now, next_due.saturating_sub(now));
        turn
    }

    /// How many times this process read the clock for [`SharedCounters::claim_flush`].
    #[cfg(test)]
    pub(crate) fn clock_reads(&self) -> u64 {
        self.clock_gate.reads.load(Ordering::Relaxed)
    }
}

/// The time-stamp counter (TSC) as a cheap "has enough time passed" test in front of CLOCK_MONOTONIC,
/// per process and per mapping. The counter's rate is learned from the clock reads themselves (two
/// reads at least 200 ms apart), and the gate is shut for half of the time until the next thing is due at
/// that rate: it opens early if the rate was overestimated by up to 2x, never late. A counter that went
/// backwards (another CPU, a migrated VM) opens it. Where there is no TSC (not x86-64), or before the rate
/// is known, every check reads the clock as before.
#[derive(Default)]
pub(super) struct ClockGate {
    /// The counter at the last clock read.
    last_ticks: AtomicU64,
    /// The counter value from which the clock must be read again.
    open_at: AtomicU64,
    /// The first clock read of this mapping (counter, ns), the base of the rate.
    base_ticks: AtomicU64,
    base_ns: AtomicU64,
    /// Counter ticks per 1024 ns, once known (0 until then).
    ticks_per_kns: AtomicU64,
    /// Clock reads (for the tests; one relaxed add on the path that reads the clock anyway).
    reads: AtomicU64,
}

impl ClockGate {
    #[inline]
    fn ticks(&self) -> u64 {
        #[cfg(target_arch = "x86_64")]
        #[allow(unused_unsafe)]
        // SAFETY: RDTSC exists on every x86-64 CPU and has no memory effects.
        return unsafe { std::arch::x86_64::_rdtsc() };
        #[cfg(not(target_arch = "x86_64"))]
        return 0;
    }

    /// True while nothing can be due yet.
    #[inline]
    fn shut(&self, ticks: u64) -> bool {
        ticks >= self.last_ticks.load(Ordering::Relaxed) && ticks < self.open_at.load(Ordering::Relaxed)
    }

    /// After a clock read at counter `ticks` and `now_ns`: the next thing is due in `slack_ns`.
    fn reopen(&self, ticks: u64, now_ns: u64, slack_ns: u64) {
        if ticks == 0 {
            return;
        }
        let mut rate = self.ticks_per_kns.load(Ordering::Relaxed);
        if rate == 0 {
            let base = self.base_ticks.load(Ordering::Relaxed);
            if base == 0 {
                self.base_ns.store(now_ns, Ordering::Relaxed);
                self.base_ticks.store(ticks, Ordering::Relaxed);
            } else {
                let (dt, dn) = (ticks.wrapping_sub(base), now_ns.saturating_sub(self.base_ns.load(Ordering::Relaxed)));
                // Over at least 200 ms, a check preempted between reading the counter and the clock
                // moves the estimate by a few percent, well within the factor of 2. 0.1 to 10 GHz only.
                if dn >= CALIBRATION_NS && dt < 1 << 50 {
                    let estimate = ((dt as u128 * 1024) / dn as u128) as u64;
                    if (102..=10_240).contains(&estimate) {
                        rate = estimate;
                        self.ticks_per_kns.store(rate, Ordering::Relaxed);
                    }
                }
            }
        }
        // Half the slack, at most 50 ms (the size check is due every 100 ms anyway).
        let wait_ns = (slack_ns / 2).min(SIZE_CHECK_NS / 2);
        let wait_ticks = ((wait_ns as u128 * rate as u128) >> 10) as u64;
        self.open_at.store(ticks.saturating_add(wait_ticks), Ordering::Relaxed);
        self.last_ticks.store(ticks, Ordering::Relaxed);
    }
}

/// A cell's day words and the ones the database has seen, each read once.
fn day_words(cell: &Cell) -> ([u128; 2], [u128; 2]) {
    ([0, 1].map(|i| cell.days[i].load(Ordering::Acquire)), [0, 1].map(|i| cell.flushed_days[i].load(Ordering::Acquire)))
}

fn dirty_of(cell: &Cell, c: u64, day_words: [u128; 2], flushed: [u128; 2]) -> Dirty {
    // A day the database already has as it is (yesterday's, nearly always) is not written again: it
    // would be one more upsert for each key in every flush.
    let days = [0, 1].map(|i| (day_words[i] != 0 && day_words[i] != flushed[i]).then(|| decode_day(day_words[i])));
    Dirty { row: cell.row.load(Ordering::Relaxed), tally: tally_of(cell), days, cell: c, day_words }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{built, entry};
    use super::super::{Found, KeyEntry, Turn};
    use std::sync::atomic::Ordering;

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
            let mut slice = Vec::new();
            assert_eq!(c.dirty_next(3, &mut slice), 3);
            assert!(slice.len() <= 3);
            c.mark_flushed(&slice);
            seen.extend(slice.iter().map(|d| d.row));
        }
        assert_eq!(seen.len(), 10, "every key written within ceil(10 / 3) flushes");
        assert!(c.dirty().is_empty());
    }

    #[test]
    fn checks_between_due_times_do_not_read_the_clock() {
        use super::super::Turn;
        let dir = tempfile::tempdir().unwrap();
        let (_, c) = built(&dir, &[entry(0, None)]);
        let hour = 3_600_000_000_000;
        assert_eq!(c.claim_flush(hour), Turn::Claimed);
        // Before the counter's rate is known, every check reads the clock, as it always did.
        assert_eq!(c.claim_flush(hour), Turn::NotDue);
        assert_eq!(c.clock_reads(), 2);
        std::thread::sleep(std::time::Duration::from_millis(210));
        assert_eq!(c.claim_flush(hour), Turn::NotDue);
        let before = c.clock_reads();
        let start = std::time::Instant::now();
        for _ in 0..100_000 {
            assert_eq!(c.claim_flush(hour), Turn::NotDue);
        }
        let reads = c.clock_reads() - before;
        if cfg!(target_arch = "x86_64") {
            // At most one read per 50 ms (half the size-check period), plus the first.
            let bound = 2 + start.elapsed().as_millis() as u64 / 50;
            assert!(reads <= bound, "{reads} clock reads in {:?}", start.elapsed());
        }
        // An interval of 0 (flush at every check) still reads the clock, and claims, every time.
        let other = tempfile::tempdir().unwrap();
        let (_, c) = built(&other, &[entry(0, None)]);
        c.claim_flush(0);
        std::thread::sleep(std::time::Duration::from_millis(210));
        let before = c.clock_reads();
        for _ in 0..10 {
            assert_eq!(c.claim_flush(0), Turn::Claimed);
        }
        assert_eq!(c.clock_reads() - before, 10);
    }

    #[test]
    fn the_clock_gate_never_delays_a_due_flush_or_size_check() {
        use super::super::Turn;
        let dir = tempfile::tempdir().unwrap();
        let (path, c) = built(&dir, &[entry(0, None)]);
        let interval = 30_000_000;
        c.claim_flush(interval);
        std::thread::sleep(std::time::Duration::from_millis(210));
        for _ in 0..3 {
            // Claimed now, then shut (no clock read) for a while; the first check once the interval has
            // passed claims the next turn.
            while c.claim_flush(interval) != Turn::Claimed {}
            for _ in 0..1000 {
                c.claim_flush(interval);
            }
            std::thread::sleep(std::time::Duration::from_millis(31));
            assert_eq!(c.claim_flush(interval), Turn::Claimed);
        }
        // A file truncated under the mapping is noticed by the first check 100 ms after the last size check.
        for _ in 0..1000 {
            assert_ne!(c.claim_flush(3_600_000_000_000), Turn::Unusable);
        }
        std::thread::sleep(std::time::Duration::from_millis(101));
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(0).unwrap();
        assert_eq!(c.claim_flush(3_600_000_000_000), Turn::Unusable);
    }

    /// A process that put a larger file in place and died before superseding the old one (a kill -9
    /// mid-growth) left the old file looking current: every other process notices within one size check
    /// that the path names another file, and gives the old mapping up; so does a deleted file.
    /// Review of issue 21, item 2: the shared flush time is in no checksum, and one flipped high bit put
    /// it centuries ahead: no process ever took a flush turn again (counts reached the database only at
    /// close), nor the verification turn that follows it.
    #[test]
    fn a_flush_time_further_ahead_than_any_interval_is_taken_as_due() {
        use super::super::Turn;
        let dir = tempfile::tempdir().unwrap();
        let (_, c) = built(&dir, &[entry(0, None)]);
        let second = 1_000_000_000;
        assert_eq!(c.claim_flush(second), Turn::Claimed);
        let h = c.header();
        h.next_flush_ns.store(h.next_flush_ns.load(Ordering::Relaxed) | 1 << 62, Ordering::Relaxed);
        c.clock_gate.open_at.store(0, Ordering::Relaxed);
        assert_eq!(
            c.claim_flush(second),
            Turn::Claimed,
            "no process sets a flush time more than the longest interval ahead"
        );
        assert_eq!(c.claim_flush(second), Turn::NotDue, "and the next one is an interval away again");
    }

    #[test]
    fn a_file_no_longer_at_its_path_is_given_up_at_the_next_size_check() {
        let dir = tempfile::tempdir().unwrap();
        let e = entry(1, None);
        let (path, old) = built(&dir, std::slice::from_ref(&e));
        assert_eq!(old.claim_flush(1_000_000_000), Turn::Claimed);
        let (_, replacement) = built(&dir, std::slice::from_ref(&e));
        assert!(!old.is_superseded(), "nobody superseded it");
        old.next_size_check_ns.store(0, Ordering::Relaxed);
        old.clock_gate.open_at.store(0, Ordering::Relaxed);
        assert_eq!(old.claim_flush(1_000_000_000), Turn::Unusable);
        assert!(old.is_superseded(), "given up for good in this process");
        assert_eq!(replacement.claim_flush(1_000_000_000), Turn::Claimed, "the file in place is used");

        std::fs::remove_file(&path).unwrap();
        replacement.next_size_check_ns.store(0, Ordering::Relaxed);
        replacement.clock_gate.open_at.store(0, Ordering::Relaxed);
        assert_eq!(replacement.claim_flush(1_000_000_000), Turn::Unusable, "deleted: given up too");
    }
}
