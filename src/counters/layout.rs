//! The counters file's format and its life: the header page, the geometry of the index and blocks, and
//! how a file is built (in a temporary file, put in place with one rename), opened (every field of a
//! possibly hostile header checked), superseded by a larger one, and given up when found truncated.
//! Everything else reaches the mapping through the accessors here, within the validated `Layout`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};

use super::cell::Cell;
use super::index::{Record, RECORD_MASK};
use super::seal::{Content, SEAL_VERSION};
use super::{Full, KeyEntry, Opened, Policies, SharedCounters};
use crate::error::{Error, Result};

const MAGIC: u64 = u64::from_le_bytes(*b"MSAUTHC1");
/// 2: the header's incarnation id (issue 22); a file of version 1 is rebuilt from the database.
const LAYOUT_VERSION: u32 = 2;
const READY: u32 = 1;
const SUPERSEDED: u32 = 2;
const HEADER_LEN: u64 = 4096;

/// After the blocks of a new counters file could not be allocated (a full disk), no file is built at that
/// path in this process for this long: the flush turn that needs the larger file comes up to ten times a
/// second in every process, and each try would create a file, fill the disk's last free blocks and delete
/// it again.
const ALLOCATION_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// The path, instant and message of this process's last failed allocation.
static ALLOCATION_FAILED: std::sync::Mutex<Option<(PathBuf, std::time::Instant, String)>> = std::sync::Mutex::new(None);

#[repr(C)]
pub(super) struct Header {
    magic: u64,
    layout_version: u32,
    /// Which content checksum `content_sum` holds (see `seal.rs`); 0 in files built before it existed.
    pub(super) seal_version: u32,
    boot_id: [u8; 48],
    pub(super) index_slots: u64,
    max_cells: u64,
    max_blocks: u64,
    pub(super) index_off: u64,
    pub(super) blocks_off: u64,
    file_len: u64,
    checksum: u64,
    /// The checksum of the index, the records and the header's counts and policies (see `seal.rs`): changed
    /// only under the database's write lock, with what it covers.
    pub(super) content_sum: AtomicU64,
    /// Random, made when the file is built from the database and carried when it grows: a fleet agent
    /// passes it with every lease grant, so that the fleet tells a file that lost counts (rebuilt after
    /// a reboot or damage) from the one that counted them (see `crate::fleet::lease_state`).
    incarnation: u64,
    _pad0: [u8; 96],
    // Mutable fields, on their own cache lines away from what every check reads.
    state: AtomicU32,
    _pad1: [u8; 60],
    pub(super) generation: AtomicI64,
    pub(super) cells_used: AtomicU64,
    pub(super) blocks_used: AtomicU64,
    pub(super) next_flush_ns: AtomicU64,
    pub(super) idle_ms: AtomicI64,
    pub(super) abuse_limit: AtomicI64,
    pub(super) abuse_window_ms: AtomicI64,
    pub(super) flush_cursor: AtomicU64,
    /// 1 in fleet mode: keys with a quota count only within this host's leases (added in 1.1; zero, off,
    /// in files built before).
    pub(super) fleet_leases: AtomicU32,
    /// In fleet mode, how many live hosts share each key's rate limit (0 or 1: this host has all of it).
    pub(super) rate_sharers: AtomicU32,
    /// The generation at which the content checksum was last verified under the write lock, and when
    /// (CLOCK_MONOTONIC ns): one process verifies per generation change or period, not every process.
    pub(super) verified_generation: AtomicI64,
    pub(super) verified_at_ns: AtomicU64,
    /// In fleet mode, until when (this boot's monotonic clock, ms) this host may use its share of rates (see
    /// `share.rs`; added in 1.2: zero, no end, in files built before).
    pub(super) rate_share_until_ms: AtomicI64,
    _pad2: [u8; 56],
    /// Fleet mode, a check's cue to the agent's lease thread and its answer (see `cue.rs`), on a cache
    /// line of their own (added in issue 22 in space that was zero, and zero means what it meant before:
    /// no agent to wait for, so an older library sharing the file is unaffected, and this one waits for
    /// no agent in an older file).
    pub(super) lease_cue: AtomicU32,
    pub(super) lease_cue_waiting: AtomicU32,
    pub(super) lease_answered: AtomicU32,
    pub(super) lease_waiters: AtomicU32,
    pub(super) lease_agent_seen_ns: AtomicU64,
    pub(super) lease_wait_off_until_ns: AtomicU64,
    /// Fleet mode, which cells the checks cued the lease thread for, so that a cued round serves those
    /// and not every key with a quota (see `cue.rs`): the next position, and a ring of
    /// [`super::cue::CUE_RING`] slots, each `position << 32 | cell + 1`. Added in issue 22 at the header's
    /// end, in space that was zero: an older library never fills it, and the lease thread then sees cues
    /// without cells and serves every key, as before.
    pub(super) cue_ring_head: AtomicU32,
    _pad3: [u8; 4],
    pub(super) cue_ring: [AtomicU64; super::cue::CUE_RING],
}

const _: () = assert!(std::mem::size_of::<Header>() <= HEADER_LEN as usize);
const _: () = assert!(std::mem::offset_of!(Header, lease_cue) % 64 == 0);

/// A key's cell and first record together (later versions of the record use only the record part).
#[repr(C, align(64))]
pub(super) struct Block {
    pub(super) cell: Cell,
    pub(super) record: Record,
}

const BLOCK_LEN: u64 = std::mem::size_of::<Block>() as u64;
const _: () = assert!(BLOCK_LEN == 384);

/// The geometry of a counters file: computed for a new one, or validated and copied out of an existing
/// one's header.
#[derive(Clone, Copy, Debug)]
pub(super) struct Layout {
    pub(super) index_slots: u64,
    pub(super) max_cells: u64,
    pub(super) max_blocks: u64,
    pub(super) index_off: u64,
    blocks_off: u64,
    file_len: u64,
}

/// What a new counters file holds: its keys (with room for `room`, at least the entries), the database
/// generation it reflects, the store-wide policies; `owner_of` is the database file, whose owner and group
/// the new file takes (so workers that dropped root can open what root built).
#[derive(Clone, Copy)]
pub struct Build<'a> {
    pub path: &'a Path,
    pub entries: &'a [KeyEntry],
    pub room: usize,
    pub generation: i64,
    pub policies: &'a Policies,
    pub owner_of: &'a Path,
}

/// How often each process checks that the counters file was not truncated under its mapping.
pub(super) const SIZE_CHECK_NS: u64 = 100_000_000;

const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// This boot's id (zeros where the kernel has none). Read once per process, and a failed read is an
/// error, never zeros: a transient read error used to make a valid file look like another boot's, and
/// its rebuild from the database dropped every process's counts not yet flushed (found by
/// tests/fault/run.sh with libfiu failing read(2)).
fn boot_id() -> Result<[u8; 48]> {
    static ID: std::sync::OnceLock<[u8; 48]> = std::sync::OnceLock::new();
    if let Some(id) = ID.get() {
        return Ok(*id);
    }
    let mut id = [0u8; 48];
    match std::fs::read_to_string(BOOT_ID) {
        Ok(text) => {
            let text = text.trim().as_bytes();
            let n = text.len().min(48);
            id[..n].copy_from_slice(&text[..n]);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("cannot read the boot id", Path::new(BOOT_ID), e)),
    }
    Ok(*ID.get_or_init(|| id))
}

impl Layout {
    /// Room for `keys` keys with half as many again to grow, and two policy versions per key.
    fn for_keys(keys: u64) -> Layout {
        let max_cells = (keys + keys / 2).max(4096);
        let index_slots = (max_cells * 2).next_power_of_two();
        let max_blocks = max_cells * 2;
        let index_off = HEADER_LEN;
        let blocks_off = align(index_off + index_slots * 8, 64);
        let file_len = align(blocks_off + max_blocks * BLOCK_LEN, 4096);
        Layout { index_slots, max_cells, max_blocks, index_off, blocks_off, file_len }
    }
}

fn align(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

fn checksum(h: &Header) -> u64 {
    // FNV-1a over the immutable fields: a torn or foreign header does not pass.
    let fields = [
        h.magic,
        h.layout_version as u64,
        h.index_slots,
        h.max_cells,
        h.max_blocks,
        h.index_off,
        h.blocks_off,
        h.file_len,
        h.incarnation,
    ];
    let mut hash: u64 = 0xcbf29ce484222325;
    for byte in fields.iter().flat_map(|f| f.to_le_bytes()).chain(h.boot_id) {
        hash = (hash ^ byte as u64).wrapping_mul(0x100000001b3);
    }
    hash
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::store(format!("{what} {}: {e}", path.display()))
}

impl SharedCounters {
    /// Maps the file at `path` if it is a complete counters file of this boot whose index and records
    /// match their checksum; `None` when it is missing, damaged, from an older boot or layout, or
    /// superseded (the caller then rebuilds it). Without the database's write lock, an admin change in
    /// progress can make a sound file look damaged: the caller then looks again under the lock.
    pub fn open_existing(path: &Path) -> Result<Option<SharedCounters>> {
        Ok(match Self::open_in_state(path, READY)? {
            Opened::Sound(c) => Some(c),
            _ => None,
        })
    }

    /// The file at `path` and what it was found to be (see [`Opened`]), for the store's rebuilds under the
    /// write lock and for `ms-auth doctor`.
    pub fn open_checked(path: &Path) -> Result<Opened> {
        Self::open_in_state(path, READY)
    }

    /// A file at the path that was superseded but never replaced: a process growing it died between
    /// freezing it and putting the larger one in place. Its counters are frozen, so its counts are final
    /// and a rebuild carries them (see [`SharedCounters::grow`]). Same checks as `open_existing`, but a file
    /// built before content checksums existed is carried too (its counts are as good as before).
    pub fn open_superseded(path: &Path) -> Result<Option<SharedCounters>> {
        Ok(match Self::open_in_state(path, SUPERSEDED)? {
            Opened::Sound(c) | Opened::Unsealed(c) => Some(c),
            _ => None,
        })
    }

    fn open_in_state(path: &Path, state: u32) -> Result<Opened> {
        // Never through a symbolic link (as SQLite opens its files): a planted link is replaced by a rebuild.
        let file = match OpenOptions::new().read(true).write(true).custom_flags(libc::O_NOFOLLOW).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Opened::Absent("there is none")),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(Opened::Unusable("it is a symbolic link")),
            Err(e) => return Err(io_error("cannot open counters file", path, e)),
        };
        let meta = file.metadata().map_err(|e| io_error("cannot stat counters file", path, e))?;
        let boot = boot_id()?;
        if meta.len() < HEADER_LEN {
            return Ok(Opened::Unusable("it is shorter than its header"));
        }
        let map = MmapOptions::new()
            .len(meta.len() as usize)
            .map_raw(&file)
            .map_err(|e| io_error("cannot map counters file", path, e))?;
        // Every offset is checked with checked arithmetic: the file is shared, so it may be hostile.
        let h = unsafe { &*(map.as_ptr() as *const Header) };
        let fits = || -> Option<bool> {
            let index_end = h.index_off.checked_add(h.index_slots.checked_mul(8)?)?;
            let blocks_end = h.blocks_off.checked_add(h.max_blocks.checked_mul(BLOCK_LEN)?)?;
            Some(
                h.index_off == HEADER_LEN
                    && h.index_slots.is_power_of_two()
                    && h.index_slots >= h.max_cells.checked_mul(2)?
                    && h.blocks_off >= index_end
                    && h.blocks_off % 64 == 0
                    && h.max_cells <= h.max_blocks
                    && h.max_blocks < RECORD_MASK
                    && blocks_end <= h.file_len,
            )
        };
        let found = h.state.load(Ordering::Acquire);
        let refused = match () {
            _ if h.magic != MAGIC => Some(Opened::Unusable("it is not a counters file (bad magic)")),
            _ if h.layout_version != LAYOUT_VERSION => Some(Opened::Absent("it has another layout version")),
            _ if h.checksum != checksum(h) => Some(Opened::Unusable("its header does not match its checksum")),
            _ if h.boot_id != boot => Some(Opened::Absent("it is from an earlier boot")),
            _ if h.file_len != meta.len() => Some(Opened::Unusable("its size is not the one its header gives")),
            _ if found != READY && found != SUPERSEDED => Some(Opened::Unusable("its header has an impossible state")),
            _ if found != state => {
                Some(Opened::Absent(if found == SUPERSEDED { "it was superseded" } else { "it is in use" }))
            }
            _ if fits() != Some(true) => Some(Opened::Unusable("its header has an impossible geometry")),
            _ if h.cells_used.load(Ordering::Acquire) > h.max_cells
                || h.blocks_used.load(Ordering::Acquire) > h.max_blocks =>
            {
                Some(Opened::Unusable("its header counts more cells or blocks than it holds"))
            }
            _ => None,
        };
        if let Some(refused) = refused {
            return Ok(refused);
        }
        let layout = Layout {
            index_slots: h.index_slots,
            max_cells: h.max_cells,
            max_blocks: h.max_blocks,
            index_off: h.index_off,
            blocks_off: h.blocks_off,
            file_len: h.file_len,
        };
        let counters = SharedCounters::new(map, layout, path, meta.ino(), file);
        Ok(match counters.content() {
            Content::Sound => Opened::Sound(counters),
            Content::Unsealed => Opened::Unsealed(counters),
            Content::Damaged(why) => Opened::Damaged(counters, why),
        })
    }

    /// Builds a new file as `plan` says, then puts it in place of `plan.path` in one rename, so other
    /// processes see either the old file or the complete new one.
    pub fn build(plan: &Build) -> Result<SharedCounters> {
        Self::build_with(plan, |_| {})
    }

    /// [`SharedCounters::build`], calling `fill` on the complete file just before it is put in place (when
    /// no other process can see it yet).
    pub(super) fn build_with(plan: &Build, fill: impl FnOnce(&SharedCounters)) -> Result<SharedCounters> {
        let Build { path, entries, room, generation, policies, owner_of } = *plan;
        let g = Layout::for_keys(room.max(entries.len()) as u64);
        if let Some((failed, at, why)) = &*ALLOCATION_FAILED.lock().unwrap_or_else(|e| e.into_inner()) {
            if failed == path && at.elapsed() < ALLOCATION_RETRY {
                return Err(Error::store(format!("{why} (tried again at most once a second)")));
            }
        }
        let boot = boot_id()?;
        remove_stale_builds(path);
        let tmp = PathBuf::from(format!("{}.{}.tmp", path.display(), std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io_error("cannot create counters file", &tmp, e))?;
        let built = (|| {
            if let Ok(db) = std::fs::metadata(owner_of) {
                if db.uid() != unsafe { libc::geteuid() } {
                    std::os::unix::fs::fchown(&file, Some(db.uid()), Some(db.gid()))
                        .map_err(|e| io_error("cannot give the counters file the database's owner", &tmp, e))?;
                }
            }
            // Allocate every block now: a page first written through the mapping on a full disk would
            // kill the process with SIGBUS instead of failing here with an error.
            use std::os::fd::AsRawFd;
            let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, g.file_len as libc::off_t) };
            if rc != 0 {
                let e = io_error("cannot allocate counters file", &tmp, std::io::Error::from_raw_os_error(rc));
                let when = (path.to_path_buf(), std::time::Instant::now(), e.message.clone());
                *ALLOCATION_FAILED.lock().unwrap_or_else(|e| e.into_inner()) = Some(when);
                return Err(e);
            }
            let map = MmapOptions::new()
                .len(g.file_len as usize)
                .map_raw(&file)
                .map_err(|e| io_error("cannot map counters file", &tmp, e))?;
            let inode = file.metadata().map_err(|e| io_error("cannot stat counters file", &tmp, e))?.ino();
            let counters = SharedCounters::new(map, g, path, inode, file);
            {
                let h = counters.header_mut();
                h.magic = MAGIC;
                h.layout_version = LAYOUT_VERSION;
                h.boot_id = boot;
                h.index_slots = g.index_slots;
                h.max_cells = g.max_cells;
                h.max_blocks = g.max_blocks;
                h.index_off = g.index_off;
                h.blocks_off = g.blocks_off;
                h.file_len = g.file_len;
                h.seal_version = SEAL_VERSION;
                h.incarnation = new_incarnation()?;
                h.checksum = checksum(h);
                h.generation.store(generation, Ordering::Relaxed);
            }
            // Built from the database just now: sound, and verified as of this generation.
            counters.header().content_sum.store(counters.header_part(), Ordering::Relaxed);
            counters.mark_verified();
            for entry in entries {
                counters.upsert(entry).map_err(|Full| Error::internal("a new counters file is too small"))?;
            }
            counters.set_policies(policies);
            if policies.fleet_leases {
                // Rebuilt from the database: no share of rates until the agent renews it (a grown file
                // carries the old one's).
                counters.withhold_rate_share_until_renewed();
            }
            fill(&counters);
            counters.header().state.store(READY, Ordering::Release);
            std::fs::rename(&tmp, path).map_err(|e| io_error("cannot put counters file in place", path, e))?;
            Ok(counters)
        })();
        if built.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        built
    }

    fn new(map: MmapRaw, layout: Layout, path: &Path, inode: u64, file: File) -> SharedCounters {
        SharedCounters {
            map,
            layout,
            path: path.to_path_buf(),
            inode,
            file,
            unusable: AtomicBool::new(false),
            next_size_check_ns: AtomicU64::new(0),
            clock_gate: Default::default(),
        }
    }
}

// Reaching the mapping within the validated layout, and the header's shared state.
impl SharedCounters {
    pub(super) fn header(&self) -> &Header {
        unsafe { &*(self.map.as_ptr() as *const Header) }
    }

    #[allow(clippy::mut_from_ref)]
    fn header_mut(&self) -> &mut Header {
        // Only while building, before any other process can see the file.
        unsafe { &mut *(self.map.as_mut_ptr() as *mut Header) }
    }

    /// Callers check `i < max_blocks` for numbers read from the file (see `find` and `valid_record`).
    pub(super) fn block(&self, i: u64) -> *mut Block {
        let l = &self.layout;
        assert!(i < l.max_blocks, "block number out of range");
        unsafe { self.map.as_mut_ptr().add((l.blocks_off + i * BLOCK_LEN) as usize) as *mut Block }
    }

    /// Asks the CPU to start loading all of block `i` (its cell and record) at once: in a file far larger
    /// than the caches, a check would otherwise meet the record's and the cell's misses one after the
    /// other. `i < max_blocks`.
    #[inline]
    pub(super) fn prefetch_block(&self, i: u64) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let block = self.block(i) as *const i8;
            for line in 0..BLOCK_LEN as usize / 64 {
                // SAFETY: a prefetch has no effect on memory and never faults; the block is in the mapping.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(block.add(line * 64)) };
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = i;
    }

    /// Blocks in use, never more than the layout holds whatever the shared header says.
    pub fn blocks_used(&self) -> u64 {
        self.header().blocks_used.load(Ordering::Acquire).min(self.layout.max_blocks)
    }

    /// True once another process has put a newer file in place (or this one found the file truncated):
    /// the caller maps the new one.
    pub fn is_superseded(&self) -> bool {
        self.unusable.load(Ordering::Relaxed) || self.header().state.load(Ordering::Acquire) != READY
    }

    pub fn supersede(&self) {
        if !self.unusable.load(Ordering::Relaxed) {
            self.header().state.store(SUPERSEDED, Ordering::Release);
        }
    }

    /// True when the file is shorter than its layout; the mapping is then never touched again.
    pub(super) fn truncated(&self) -> bool {
        let short = self.file.metadata().map_or(true, |m| m.len() < self.layout.file_len);
        if short {
            self.unusable.store(true, Ordering::Relaxed);
        }
        short
    }

    /// True (and this mapping given up) when the path names another file, or none, although this one
    /// was never superseded: the process that put a larger file in its place died before superseding it
    /// (or someone deleted it). Without this, processes would keep charging a file no one else sees, and
    /// a quota would be counted in two places.
    pub(super) fn abandoned(&self) -> bool {
        let gone = self.is_replaced();
        if gone && !self.is_superseded() {
            self.unusable.store(true, Ordering::Relaxed);
        }
        gone
    }

    /// True when the file at the path is no longer the one mapped (deleted or replaced). A path that
    /// cannot be looked at (EACCES) proves nothing.
    pub fn is_replaced(&self) -> bool {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) => m.ino() != self.inode,
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        }
    }

    /// True when `keys` keys (some perhaps already here) fit without growing.
    pub fn has_room_for(&self, keys: u64) -> bool {
        let new = keys.saturating_sub(self.key_count());
        keys <= self.layout.max_cells && self.blocks_used() + new <= self.layout.max_blocks
    }

    /// The database generation whose admin changes this file holds.
    pub fn generation(&self) -> i64 {
        self.header().generation.load(Ordering::Acquire)
    }

    pub fn set_generation(&self, generation: i64) {
        self.header().generation.store(generation, Ordering::Release);
    }

    pub fn key_count(&self) -> u64 {
        self.header().cells_used.load(Ordering::Acquire)
    }
}

/// A random incarnation id, never 0 (an id of 0 would look like a file built before incarnations), below
/// 2^63 (the fleet writes it as a signed integer).
fn new_incarnation() -> Result<u64> {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes).map_err(|e| Error::internal(format!("no randomness: {e}")))?;
    Ok((u64::from_le_bytes(bytes) >> 1).max(1))
}

impl SharedCounters {
    /// This file's incarnation id: a new one whenever the file is built from the database alone (its
    /// counts are then those of the last flush), the same when it grows (its counts carried exactly).
    pub fn incarnation(&self) -> u64 {
        self.header().incarnation
    }

    /// Takes the incarnation of the file this one replaces and carries the counts of. Only while
    /// building, before any other process can see the file.
    pub(super) fn adopt_incarnation(&self, from: &SharedCounters) {
        let h = self.header_mut();
        h.incarnation = from.incarnation();
        h.checksum = checksum(h);
    }
}

/// Removes temporary files of builds whose process died (`<path>.<pid>.tmp`).
fn remove_stale_builds(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else { return };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(pid) = file
            .to_str()
            .and_then(|f| f.strip_prefix(name))
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|rest| rest.strip_suffix(".tmp"))
            .and_then(|pid| pid.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        let alive =
            unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{built, entry};
    use super::*;

    #[test]
    fn layout_leaves_the_index_at_most_half_full() {
        for keys in [0, 1, 4096, 1_000_000] {
            let g = Layout::for_keys(keys);
            assert!(g.index_slots >= 2 * g.max_cells && g.max_cells >= keys + keys / 2);
            assert!(g.file_len >= g.blocks_off + g.max_blocks * BLOCK_LEN);
        }
    }

    #[test]
    fn a_forged_header_with_overflowing_sizes_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, c) = built(&dir, &[entry(1, None)]);
        let h = c.header_mut();
        h.index_slots = 1 << 61; // index_slots * 8 wraps to 0
        h.checksum = checksum(h); // anyone who can write the file can recompute it
        drop(c);
        assert!(SharedCounters::open_existing(&path).unwrap().is_none());
    }

    #[test]
    fn a_forged_header_whose_cell_count_doubled_overflows_is_refused() {
        // Found by the `counters` fuzz target: `2 * max_cells` overflowed (a panic with overflow checks).
        let dir = tempfile::tempdir().unwrap();
        let (path, c) = built(&dir, &[entry(1, None)]);
        let h = c.header_mut();
        h.max_cells = 1 << 63;
        h.checksum = checksum(h);
        drop(c);
        assert!(SharedCounters::open_existing(&path).unwrap().is_none());
    }
}
