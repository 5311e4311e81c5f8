//! Fleet mode: a check's cue to the agent's lease thread, and the check's bounded wait for the answer.
//!
//! A check that finds this host's lease of a quota short while the fleet has room (no lease yet in the
//! period, or the lease used up), or that takes its last unit, bumps `lease_cue` in the header and, when
//! the lease thread is waiting on it, wakes it: FUTEX_WAKE on the shared mapping, so across processes
//! (never FUTEX_PRIVATE: the kernel keys a shared futex on the file's page). The thread leases at once,
//! one Redis round trip, then stores the last cue its round served in `lease_answered` and wakes the
//! checks waiting for it. A check waits at most the store's `lease_wait` in all, and only while the
//! thread is responsive: it looked within the last second while it could reach Redis, and no wait timed
//! out within the last second (so a hung or killed agent costs the checks waiting at that moment one
//! timed-out wait each, then none for a second; a host without its agent costs nothing). A check whose
//! answer brought a lease that other checks used up before it waits again, within the same bound; one
//! whose answer brought nothing (the fleet's quota spent meanwhile, Redis slow to answer the agent)
//! is refused then.

use std::sync::atomic::{AtomicU32, Ordering::*};
use std::time::Duration;

use super::{monotonic_ns, SharedCounters};

/// The lease thread is responsive when it looked this recently (it looks at least every 100 ms).
const AGENT_FRESH_NS: u64 = 1_000_000_000;

/// After a wait timed out, no check of this host waits for this long.
const WAIT_OFF_AFTER_TIMEOUT_NS: u64 = 1_000_000_000;

fn futex_wait(word: &AtomicU32, expected: u32, timeout_ns: u64) {
    let t = libc::timespec {
        tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: the word is in the mapping for as long as `self` lives; a wait only reads it. EAGAIN (the
    // word changed), EINTR and ETIMEDOUT all mean: look again.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT, expected, &t as *const libc::timespec, 0, 0)
    };
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: as above; a wake does not touch the word.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX, 0, 0, 0) };
}

/// How many cued cells the header's ring holds between two rounds of the lease thread; more, and the
/// round serves every key.
pub const CUE_RING: usize = 64;

/// Where the lease thread is in the header's ring of cued cells.
#[derive(Default, Debug)]
pub struct CueReader {
    tail: u32,
    /// The largest lead of the cues over the ring's positions seen (`None`: never looked).
    lead: Option<u32>,
}

/// What the lease thread found in the ring.
#[derive(Debug, PartialEq, Eq)]
pub enum CuedCells {
    /// The cells cued (perhaps some twice, or some of later cues).
    Cells(Vec<u64>),
    /// The ring cannot say which: serve every key.
    Lost,
}

impl SharedCounters {
    /// A check's cue to the lease thread for cell `cell` (see the module); returns its number, whose answer
    /// it may wait for.
    pub(super) fn cue_lease_agent(&self, cell: u64) -> u32 {
        let h = self.header();
        // The cell first, then the cue: a round that read the cue finds the cells of every cue up to it.
        let at = h.cue_ring_head.fetch_add(1, SeqCst);
        h.cue_ring[at as usize % CUE_RING].store(u64::from(at) << 32 | (cell.wrapping_add(1) & 0xFFFF_FFFF), SeqCst);
        let cue = h.lease_cue.fetch_add(1, SeqCst).wrapping_add(1);
        // Ordered with the thread's store of `lease_cue_waiting` before its read of the cue: one of the two
        // sees the other, so a cue is never missed for a whole timeout; a wake costs a system call only
        // while the thread sleeps.
        if h.lease_cue_waiting.load(SeqCst) != 0 {
            futex_wake(&h.lease_cue);
        }
        cue
    }

    /// True when a check may wait for the lease thread now (see the module). Values from the future (a
    /// damaged header) count as none, so that no damage stops or starts waiting for good.
    pub(super) fn lease_agent_responsive(&self) -> bool {
        let h = self.header();
        let (now, seen) = (monotonic_ns(), h.lease_agent_seen_ns.load(Acquire));
        let off_until = h.lease_wait_off_until_ns.load(Acquire);
        let waiting_off = off_until > now && off_until - now <= WAIT_OFF_AFTER_TIMEOUT_NS;
        seen != 0 && seen <= now && now - seen < AGENT_FRESH_NS && !waiting_off
    }

    /// Waits until the lease thread answered cue `cue`, at most until `deadline_ns` (CLOCK_MONOTONIC):
    /// true if it did.
    pub(super) fn await_lease_answer(&self, cue: u32, deadline_ns: u64) -> bool {
        let h = self.header();
        h.lease_waiters.fetch_add(1, SeqCst);
        let answered = loop {
            let seen = h.lease_answered.load(SeqCst);
            if seen.wrapping_sub(cue) as i32 >= 0 {
                break true;
            }
            let now = monotonic_ns();
            if now >= deadline_ns {
                break false;
            }
            futex_wait(&h.lease_answered, seen, deadline_ns - now);
        };
        h.lease_waiters.fetch_sub(1, SeqCst);
        answered
    }

    /// A check waited its whole bound and the lease thread never answered: no check of this host waits
    /// for a second.
    pub(super) fn suspend_lease_waits(&self) {
        self.header().lease_wait_off_until_ns.store(monotonic_ns() + WAIT_OFF_AFTER_TIMEOUT_NS, Release);
    }

    /// The lease thread: the latest cue.
    pub fn lease_cue(&self) -> u32 {
        self.header().lease_cue.load(SeqCst)
    }

    /// The lease thread: waits until a check cues past `served` (or `timeout`); returns the latest cue.
    pub fn wait_for_lease_cue(&self, served: u32, timeout: Duration) -> u32 {
        let h = self.header();
        h.lease_cue_waiting.store(1, SeqCst);
        if h.lease_cue.load(SeqCst) == served {
            futex_wait(&h.lease_cue, served, timeout.as_nanos() as u64);
        }
        h.lease_cue_waiting.store(0, SeqCst);
        h.lease_cue.load(SeqCst)
    }

    /// The lease thread: the cells cued since `reader` last looked, for the cues up to `cue` (read before);
    /// [`CuedCells::Lost`] when the ring cannot say (it overflowed, a cue came without a cell, the file is
    /// new to the reader): the round then serves every key.
    pub fn take_cued_cells(&self, reader: &mut CueReader, cue: u32) -> CuedCells {
        let h = self.header();
        let head = h.cue_ring_head.load(SeqCst);
        // Each cue of this library adds a cell before it counts: the cues' lead over the cells grows only
        // by cues without one (an older library sharing the file). In-flight cues shrink it for a moment,
        // so the largest lead seen is the reference.
        let lead = cue.wrapping_sub(head);
        let cues_without_cells = reader.lead.is_none_or(|seen| lead.wrapping_sub(seen) as i32 > 0);
        if cues_without_cells {
            reader.lead = Some(lead);
        }
        let pending = head.wrapping_sub(reader.tail);
        if cues_without_cells || pending as usize > CUE_RING {
            reader.tail = head;
            return CuedCells::Lost;
        }
        let (mut cells, mut tail) = (Vec::new(), head);
        for at in (0..pending).map(|i| reader.tail.wrapping_add(i)) {
            let slot = h.cue_ring[at as usize % CUE_RING].load(SeqCst);
            let (stamp, cell) = ((slot >> 32) as u32, slot & 0xFFFF_FFFF);
            if stamp == at && cell != 0 {
                cells.push(cell - 1);
            } else if stamp.wrapping_sub(at) as i32 > 0 {
                // Written over by a later lap: cells were lost.
                reader.tail = head;
                return CuedCells::Lost;
            } else if tail == head {
                // Not written yet: a cue after `cue`, looked at again next time (if its check died in
                // between, the ring overflows past it in time).
                tail = at;
            }
        }
        reader.tail = tail;
        CuedCells::Cells(cells)
    }

    /// The lease thread: every cue up to `cue` is answered (a round that started after them is done).
    pub fn answer_lease_cue(&self, cue: u32) {
        let h = self.header();
        h.lease_answered.store(cue, SeqCst);
        if h.lease_waiters.load(SeqCst) != 0 {
            futex_wake(&h.lease_answered);
        }
    }

    /// The lease thread, each time it looks: whether it can reach Redis (checks wait for it only then).
    /// When it cannot, the checks waiting now are answered at once.
    pub fn set_lease_agent_reachable(&self, reachable: bool) {
        let h = self.header();
        h.lease_agent_seen_ns.store(if reachable { monotonic_ns() } else { 0 }, Release);
        if !reachable {
            self.answer_lease_cue(self.lease_cue());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{built, entry};
    use super::*;

    #[test]
    fn a_check_waits_for_the_answer_to_its_cue_and_no_longer_than_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let (_, c) = built(&dir, &[entry(1, None)]);
        assert!(!c.lease_agent_responsive(), "no agent has looked: nobody waits");
        c.set_lease_agent_reachable(true);
        assert!(c.lease_agent_responsive());
        let served = c.lease_cue();
        std::thread::scope(|s| {
            let agent = s.spawn(|| {
                let cue = c.wait_for_lease_cue(served, Duration::from_secs(5));
                assert_ne!(cue, served, "woken by the cue, not the timeout");
                c.answer_lease_cue(cue);
            });
            let started = std::time::Instant::now();
            let cue = c.cue_lease_agent(0);
            assert!(c.await_lease_answer(cue, monotonic_ns() + 5_000_000_000));
            assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
            agent.join().unwrap();
        });
        // Nobody answers: the wait ends at its bound.
        let started = std::time::Instant::now();
        assert!(!c.await_lease_answer(c.cue_lease_agent(0), monotonic_ns() + 30_000_000));
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(30) && waited < Duration::from_millis(500), "{waited:?}");
        c.suspend_lease_waits();
        assert!(!c.lease_agent_responsive(), "a wait timed out: waiting is off for a second");
        // An agent that lost Redis says so, and answers the checks waiting now.
        c.header().lease_wait_off_until_ns.store(0, SeqCst);
        c.set_lease_agent_reachable(false);
        assert!(!c.lease_agent_responsive());
        assert!(c.await_lease_answer(c.lease_cue(), 0), "answered up to the latest cue");
    }

    #[test]
    fn the_ring_names_the_cells_cued_and_says_when_it_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let (_, c) = built(&dir, &[entry(1, None)]);
        let mut reader = CueReader::default();
        assert_eq!(c.take_cued_cells(&mut reader, c.lease_cue()), CuedCells::Lost, "never looked: every key");
        assert_eq!(c.take_cued_cells(&mut reader, c.lease_cue()), CuedCells::Cells(vec![]));
        c.cue_lease_agent(7);
        c.cue_lease_agent(0);
        assert_eq!(c.take_cued_cells(&mut reader, c.lease_cue()), CuedCells::Cells(vec![7, 0]));
        assert_eq!(c.take_cued_cells(&mut reader, c.lease_cue()), CuedCells::Cells(vec![]), "each once");
        // A check between taking its position and writing its cell: looked at again next time.
        let h = c.header();
        let at = h.cue_ring_head.fetch_add(1, SeqCst);
        c.cue_lease_agent(9);
        assert_eq!(c.take_cued_cells(&mut reader, c.lease_cue()), CuedCells::Cells(vec![9]));
        h.cue_ring[at as usize % CUE_RING].store(u64::from(at) << 32 | 4, SeqCst);
        h.lease_cue.fetch_add(1, SeqCst);
        assert_eq!(c.take_cued_cells(&mut reader, c.lease_cue()), CuedCells::Cells(vec![3, 9]));
        // More cues than slots between two looks.
        for cell in 0..CUE_RING as u64 + 1 {
            c.cue_lease_agent(cell);
        }
        assert_eq!(c.take_cued_cells(&mut reader, c.lease_cue()), CuedCells::Lost);
        c.cue_lease_agent(5);
        assert_eq!(c.take_cued_cells(&mut reader, c.lease_cue()), CuedCells::Cells(vec![5]));
        // A cue without a cell (an older library sharing the file).
        h.lease_cue.fetch_add(1, SeqCst);
        assert_eq!(c.take_cued_cells(&mut reader, c.lease_cue()), CuedCells::Lost);
        assert_eq!(c.take_cued_cells(&mut reader, c.lease_cue()), CuedCells::Cells(vec![]));
    }
}
