//! The counter state shared by every process that opens a store: one file beside the database
//! (`<db>-counters`), mapped `MAP_SHARED`, holding an index of every key's digest, each key's policy, and
//! each key's usage (quota period and count, GCRA arrival time, totals).
//!
//! Layout: a header page; an open-addressing hash index of 8-byte slots (a 24-bit digest tag and a block
//! number); then 384-byte blocks, each a 128-byte counter cell and a 224-byte policy record. A key's first
//! block holds both its cell (for the life of the file) and its first record, so a check touches two
//! places in memory: the index slot and one block. Records are immutable once published. An admin change writes a new record and swaps the key's index slot to it
//! with one atomic store, so a check sees either the old policy or the new one, never half of each.
//! A check decides and charges with one 128-bit compare-and-swap over (quota word, arrival time): quota and
//! rate are charged together or not at all, and no lock exists that a killed process could leave held.
//!
//! The database stays the source of truth: the store writes these counts to it at most every flush
//! interval, and rebuilds this file from it when the file is missing, damaged, or from another boot.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};
use portable_atomic::AtomicU128;

use crate::error::{Error, Result};
use crate::gcra::RateLimit;
use crate::key::KeyDigest;
use crate::period::{Period, DAY_MS};
use crate::policy::{self, Decision, KeyPolicy, Quota, Usage};
use crate::status::Status;

const MAGIC: u64 = u64::from_le_bytes(*b"MSAUTHC1");
const LAYOUT_VERSION: u32 = 1;
const READY: u32 = 1;
const SUPERSEDED: u32 = 2;
const HEADER_LEN: u64 = 4096;
const RECORD_BITS: u32 = 40;
const RECORD_MASK: u64 = (1 << RECORD_BITS) - 1;
const USED_BITS: u32 = 40;
const USED_MASK: u64 = (1 << USED_BITS) - 1;
const NEVER: i64 = i64::MAX;
const NO_PLAN: u8 = u8::MAX;
pub const MAX_ID_LEN: usize = 47;
pub const MAX_PLAN_LEN: usize = 63;

/// Everything counted for one key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub usage: Usage,
    pub total: i64,
    pub last_used_at_ms: Option<i64>,
}

/// A key as the store describes it to this file: for building it and for admin changes.
#[derive(Clone, Debug)]
pub struct KeyEntry {
    pub row: i64,
    pub digest: KeyDigest,
    pub id: String,
    pub plan: Option<String>,
    pub policy: KeyPolicy,
    pub created_at_ms: i64,
    /// Counts to start from when the key is new to this file.
    pub tally: Tally,
    /// The whole counter state carried from the file this one replaces (wins over `tally`).
    pub carry: Option<CellState>,
    /// The key whose counters this one shares (a rotated key's successor counts with it).
    pub shares_with: Option<KeyDigest>,
}

/// A key's decisions on one UTC day.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DayCounts {
    /// Days since 1970-01-01 (UTC).
    pub day: i64,
    pub admitted: i64,
    pub expired: i64,
    pub revoked: i64,
    pub quota_exceeded: i64,
    pub rate_limited: i64,
}

/// The store-wide revocation policies, kept in the file so every check applies them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policies {
    /// Revoke keys unused for this long (0: off).
    pub idle_ms: i64,
    /// Revoke keys rate-limited more than this many times within `abuse_window_ms` (0: off).
    pub abuse_limit: i64,
    pub abuse_window_ms: i64,
}

/// What a check of a known key found.
#[derive(Clone, Copy, Debug)]
pub struct Admission {
    pub decision: Decision,
    pub key: KeyRef,
    /// This refusal took the key over the abuse policy's limit: the store revokes it.
    pub abusive: bool,
}

/// The matched key's id and plan, copied out of the file without allocating.
#[derive(Clone, Copy, Debug)]
pub struct KeyRef {
    id: [u8; 48],
    id_len: u8,
    plan: [u8; 64],
    plan_len: u8,
    cell: u64,
}

impl KeyRef {
    pub fn id(&self) -> &str {
        std::str::from_utf8(&self.id[..self.id_len as usize]).unwrap_or("")
    }
    pub fn plan(&self) -> Option<&str> {
        (self.plan_len != NO_PLAN).then(|| std::str::from_utf8(&self.plan[..self.plan_len as usize]).unwrap_or(""))
    }
}

/// One row of counts to write to the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dirty {
    pub row: i64,
    pub tally: Tally,
    /// The days whose decisions the cell still holds (at most two: today and yesterday).
    pub days: [Option<DayCounts>; 2],
    cell: u64,
    /// The day words as read: what the database has once this is written.
    day_words: [u128; 2],
}

/// Everything a counter cell holds, copied out of a file being replaced so that a larger file carries it
/// exactly: the quota and rate word, totals, the abuse window, and the day slots with what the database
/// has of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CellState {
    state: u128,
    total: u64,
    last_used_ms: i64,
    abuse: u64,
    days: [u128; 2],
    flushed_days: [u128; 2],
}

/// Every cell of a file about to be replaced, and which keys count in each.
#[derive(Debug, Default)]
pub struct Snapshot {
    cells: std::collections::HashMap<u64, CellState>,
    owners: std::collections::HashMap<KeyDigest, u64>,
}

impl Snapshot {
    /// The state of the cell this key counts in.
    pub fn cell_of(&self, digest: &KeyDigest) -> Option<CellState> {
        self.owners.get(digest).and_then(|c| self.cells.get(c)).copied()
    }
}

#[repr(C)]
struct Header {
    magic: u64,
    layout_version: u32,
    _reserved: u32,
    boot_id: [u8; 48],
    index_slots: u64,
    max_cells: u64,
    max_blocks: u64,
    index_off: u64,
    blocks_off: u64,
    file_len: u64,
    checksum: u64,
    _pad0: [u8; 112],
    // Mutable fields, on their own cache lines away from what every check reads.
    state: AtomicU32,
    _pad1: [u8; 60],
    generation: AtomicI64,
    cells_used: AtomicU64,
    blocks_used: AtomicU64,
    next_flush_ns: AtomicU64,
    idle_ms: AtomicI64,
    abuse_limit: AtomicI64,
    abuse_window_ms: AtomicI64,
    flush_cursor: AtomicU64,
}

#[repr(C, align(64))]
struct Cell {
    /// Low 64 bits: UTC day of the quota period's start (24 bits) and the count (40 bits).
    /// High 64 bits: the GCRA theoretical arrival time in Unix nanoseconds.
    state: AtomicU128,
    total: AtomicU64,
    last_used_ms: AtomicI64,
    row: AtomicI64,
    /// Rate-limit refusals in the abuse policy's current window: window number (32 bits), count (32 bits).
    abuse: AtomicU64,
    /// Decisions per UTC day, for the two most recent days (by day parity); see `DAY_FIELDS`. Every
    /// decision changes one, so they also tell whether the database is behind.
    days: [AtomicU128; 2],
    /// The day words the database has seen; `STALE` forces the next flush to write this cell.
    flushed_days: [AtomicU128; 2],
}

/// Never a real day word (its day field would be 2^20 - 1, past the year 4840).
const STALE: u128 = u128::MAX;

#[repr(C)]
struct Record {
    digest: [u8; 32],
    row: i64,
    cell: u64,
    expires_at_ms: i64,
    revoke_at_ms: i64,
    created_at_ms: i64,
    quota_limit: i64,
    rate_limit: i64,
    rate_window_ms: i64,
    rate_burst: i64,
    revoked: u8,
    quota_period: u8,
    id_len: u8,
    plan_len: u8,
    _pad: [u8; 4],
    id: [u8; 48],
    plan: [u8; 64],
}

const _: () = assert!(std::mem::size_of::<Header>() <= HEADER_LEN as usize);
const _: () = assert!(std::mem::size_of::<Cell>() == 128);
const _: () = assert!(std::mem::size_of::<Record>() == 224);

/// A key's cell and first record together (later versions of the record use only the record part).
#[repr(C, align(64))]
struct Block {
    cell: Cell,
    record: Record,
}

const BLOCK_LEN: u64 = std::mem::size_of::<Block>() as u64;
const _: () = assert!(BLOCK_LEN == 384);

/// The file is full: the store rebuilds it larger.
#[derive(Debug)]
pub struct Full;

/// A mapped counters file.
pub struct SharedCounters {
    map: MmapRaw,
    /// The geometry, validated once and copied out of the shared header: later writes to the header by
    /// another process cannot move what this process reads.
    layout: Layout,
    path: PathBuf,
    inode: u64,
    file: File,
    /// Set in this process once the file was found shorter than its layout (truncated by someone): from
    /// then on nothing of the mapping is touched, since a page past the end would raise SIGBUS.
    unusable: AtomicBool,
    /// When (CLOCK_MONOTONIC) this process next compares the file's size with its layout.
    next_size_check_ns: AtomicU64,
}

#[derive(Clone, Copy, Debug)]
struct Layout {
    index_slots: u64,
    max_cells: u64,
    max_blocks: u64,
    index_off: u64,
    blocks_off: u64,
    file_len: u64,
}

/// How often each process checks that the counters file was not truncated under its mapping.
const SIZE_CHECK_NS: u64 = 100_000_000;

/// What [`SharedCounters::claim_flush`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Turn {
    /// Not due, or another process claimed it.
    NotDue,
    /// This process writes the counts now.
    Claimed,
    /// The file is shorter than its layout: map the one at the path (or rebuild) before touching it.
    Unusable,
}

/// What a check found in the counters file.
#[derive(Clone, Copy, Debug)]
pub enum Found {
    Key(Admission),
    /// No key has this digest.
    Unknown,
    /// This file was superseded by a larger one while the check ran: map the new one and ask again.
    Moved,
    /// The file is damaged (it was marked superseded, so the next check rebuilds it from the database).
    Damaged(&'static str),
}

// The mapping is only reached through atomics and immutable-once-published records.
unsafe impl Send for SharedCounters {}
unsafe impl Sync for SharedCounters {}

/// The path of the counters file of the database at `db`, from the database's resolved path, so that
/// every name of one database (a symbolic link, a relative path) shares one counters file.
pub fn path_for(db: &Path) -> PathBuf {
    let db = std::fs::canonicalize(db).unwrap_or_else(|_| db.to_path_buf());
    let mut name = db.into_os_string();
    name.push("-counters");
    PathBuf::from(name)
}

fn boot_id() -> [u8; 48] {
    let mut id = [0u8; 48];
    if let Ok(text) = std::fs::read_to_string("/proc/sys/kernel/random/boot_id") {
        let text = text.trim().as_bytes();
        let n = text.len().min(48);
        id[..n].copy_from_slice(&text[..n]);
    }
    id
}

/// CLOCK_MONOTONIC in nanoseconds: system-wide, so processes agree on when a flush is due; read
/// through the vDSO, not a system call.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

struct Geometry {
    index_slots: u64,
    max_cells: u64,
    max_blocks: u64,
    index_off: u64,
    blocks_off: u64,
    file_len: u64,
}

impl Geometry {
    /// Room for `keys` keys with half as many again to grow, and two policy versions per key.
    fn for_keys(keys: u64) -> Geometry {
        let max_cells = (keys + keys / 2).max(4096);
        let index_slots = (max_cells * 2).next_power_of_two();
        let max_blocks = max_cells * 2;
        let index_off = HEADER_LEN;
        let blocks_off = align(index_off + index_slots * 8, 64);
        let file_len = align(blocks_off + max_blocks * BLOCK_LEN, 4096);
        Geometry { index_slots, max_cells, max_blocks, index_off, blocks_off, file_len }
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
    /// Maps the file at `path` if it is a complete counters file of this boot; `None` when it is missing,
    /// damaged, from an older boot or layout, or superseded (the caller then rebuilds it).
    pub fn open_existing(path: &Path) -> Result<Option<SharedCounters>> {
        // Never through a symbolic link (as SQLite opens its files): a planted link is replaced by a rebuild.
        let file = match OpenOptions::new().read(true).write(true).custom_flags(libc::O_NOFOLLOW).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
            Err(e) => return Err(io_error("cannot open counters file", path, e)),
        };
        let meta = file.metadata().map_err(|e| io_error("cannot stat counters file", path, e))?;
        if meta.len() < HEADER_LEN {
            return Ok(None);
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
                    && h.index_slots >= 2 * h.max_cells
                    && h.blocks_off >= index_end
                    && h.blocks_off % 64 == 0
                    && h.max_cells <= h.max_blocks
                    && h.max_blocks < RECORD_MASK
                    && blocks_end <= h.file_len,
            )
        };
        let valid = h.magic == MAGIC
            && h.layout_version == LAYOUT_VERSION
            && h.checksum == checksum(h)
            && h.boot_id == boot_id()
            && h.file_len == meta.len()
            && h.state.load(Ordering::Acquire) == READY
            && fits() == Some(true)
            && h.cells_used.load(Ordering::Acquire) <= h.max_cells
            && h.blocks_used.load(Ordering::Acquire) <= h.max_blocks;
        if !valid {
            return Ok(None);
        }
        let layout = Layout {
            index_slots: h.index_slots,
            max_cells: h.max_cells,
            max_blocks: h.max_blocks,
            index_off: h.index_off,
            blocks_off: h.blocks_off,
            file_len: h.file_len,
        };
        Ok(Some(SharedCounters::new(map, layout, path, meta.ino(), file)))
    }

    /// Builds a new file with room for `entries` (and growth), then puts it in place of `path` in one
    /// rename, so other processes see either the old file or the complete new one.
    /// Entries with a `carry` take the whole state of their cell from the file this one replaces.
    /// `room`: how many keys to size it for (at least the entries); `owner_of`: the database file, whose
    /// owner and group the new file takes (so workers that dropped root can open what root built).
    pub fn build(
        path: &Path,
        entries: &[KeyEntry],
        room: usize,
        generation: i64,
        owner_of: &Path,
    ) -> Result<SharedCounters> {
        let g = Geometry::for_keys(room.max(entries.len()) as u64);
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
                return Err(io_error("cannot allocate counters file", &tmp, std::io::Error::from_raw_os_error(rc)));
            }
            let map = MmapOptions::new()
                .len(g.file_len as usize)
                .map_raw(&file)
                .map_err(|e| io_error("cannot map counters file", &tmp, e))?;
            let inode = file.metadata().map_err(|e| io_error("cannot stat counters file", &tmp, e))?.ino();
            let layout = Layout {
                index_slots: g.index_slots,
                max_cells: g.max_cells,
                max_blocks: g.max_blocks,
                index_off: g.index_off,
                blocks_off: g.blocks_off,
                file_len: g.file_len,
            };
            let counters = SharedCounters::new(map, layout, path, inode, file);
            {
                let h = counters.header_mut();
                h.magic = MAGIC;
                h.layout_version = LAYOUT_VERSION;
                h.boot_id = boot_id();
                h.index_slots = g.index_slots;
                h.max_cells = g.max_cells;
                h.max_blocks = g.max_blocks;
                h.index_off = g.index_off;
                h.blocks_off = g.blocks_off;
                h.file_len = g.file_len;
                h.checksum = checksum(h);
                h.generation.store(generation, Ordering::Relaxed);
            }
            for entry in entries {
                counters.upsert(entry).map_err(|Full| Error::internal("a new counters file is too small"))?;
            }
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
        }
    }

    fn header(&self) -> &Header {
        unsafe { &*(self.map.as_ptr() as *const Header) }
    }

    #[allow(clippy::mut_from_ref)]
    fn header_mut(&self) -> &mut Header {
        // Only while building, before any other process can see the file.
        unsafe { &mut *(self.map.as_mut_ptr() as *mut Header) }
    }

    /// Callers pass `i < index_slots` (a masked hash).
    fn slot(&self, i: u64) -> &AtomicU64 {
        let l = &self.layout;
        assert!(i < l.index_slots, "index slot out of range");
        unsafe { &*(self.map.as_ptr().add((l.index_off + i * 8) as usize) as *const AtomicU64) }
    }

    /// Callers check `i < max_blocks` for numbers read from the file (see `find` and `valid_record`).
    fn block(&self, i: u64) -> *mut Block {
        let l = &self.layout;
        assert!(i < l.max_blocks, "block number out of range");
        unsafe { self.map.as_mut_ptr().add((l.blocks_off + i * BLOCK_LEN) as usize) as *mut Block }
    }

    /// Blocks in use, never more than the layout holds whatever the shared header says.
    fn blocks_used(&self) -> u64 {
        self.header().blocks_used.load(Ordering::Acquire).min(self.layout.max_blocks)
    }

    /// Checks what a record read from the file says before it is trusted.
    fn valid_record(&self, r: &Record) -> std::result::Result<(), &'static str> {
        let rate_ok =
            r.rate_limit == 0 || crate::spec::checked_rate(r.rate_limit, r.rate_window_ms, r.rate_burst).is_ok();
        let quota_ok = r.quota_period == 0 || (r.quota_period <= 2 && r.quota_limit >= 1);
        match () {
            _ if r.cell >= self.layout.max_blocks => Err("a record names a cell outside the file"),
            _ if !quota_ok => Err("a record has an impossible quota"),
            _ if !rate_ok => Err("a record has an impossible rate limit"),
            _ if r.id_len as usize > MAX_ID_LEN => Err("a record has an impossible id"),
            _ if r.plan_len != NO_PLAN && r.plan_len as usize > MAX_PLAN_LEN => Err("a record has an impossible plan"),
            _ => Ok(()),
        }
    }

    fn cell(&self, i: u64) -> &Cell {
        unsafe { &(*self.block(i)).cell }
    }

    fn record(&self, i: u64) -> &Record {
        unsafe { &(*self.block(i)).record }
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
    fn truncated(&self) -> bool {
        let short = self.file.metadata().map_or(true, |m| m.len() < self.layout.file_len);
        if short {
            self.unusable.store(true, Ordering::Relaxed);
        }
        short
    }

    /// True when the file at the path is no longer the one mapped (deleted or replaced).
    pub fn is_replaced(&self) -> bool {
        std::fs::metadata(&self.path).map(|m| m.ino() != self.inode).unwrap_or(true)
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

    /// Finds the published record of a digest: (index slot, slot value, record number).
    fn find(&self, digest: &KeyDigest) -> Option<(u64, u64, u64)> {
        let slots = self.layout.index_slots;
        let mask = slots - 1;
        let hash = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
        let tag = u64::from(u32::from_le_bytes(digest[8..12].try_into().expect("4 bytes")) & 0xFF_FFFF);
        let mut i = hash & mask;
        // The index is never more than half full, so an empty slot ends every probe.
        for _ in 0..slots {
            let v = self.slot(i).load(Ordering::Acquire);
            if v == 0 {
                return None;
            }
            if v >> RECORD_BITS == tag {
                let r = (v & RECORD_MASK).wrapping_sub(1);
                if r >= self.layout.max_blocks {
                    // A damaged slot: say so rather than read outside the file.
                    return Some((i, v, u64::MAX));
                }
                if self.record(r).digest == *digest {
                    return Some((i, v, r));
                }
            }
            i = (i + 1) & mask;
        }
        None
    }

    /// Decides one request for the key with this digest and charges it if admitted.
    pub fn admit(&self, digest: &KeyDigest, now_ms: i64) -> Found {
        let Some((_, _, r)) = self.find(digest) else { return Found::Unknown };
        if r == u64::MAX {
            return self.damaged("an index slot names a record outside the file");
        }
        let record = self.record(r);
        if let Err(why) = self.valid_record(record) {
            return self.damaged(why);
        }
        let cell = self.cell(record.cell);
        let mut policy = policy_of(record);
        let idle_ms = self.header().idle_ms.load(Ordering::Relaxed);
        if idle_ms > 0 {
            let active = cell.last_used_ms.load(Ordering::Relaxed).max(record.created_at_ms);
            let idle_at = active.saturating_add(idle_ms);
            policy.revoke_at_ms = Some(policy.revoke_at_ms.map_or(idle_at, |at| at.min(idle_at)));
        }
        let mut current = cell.state.load(Ordering::Acquire);
        let decision = loop {
            if current as u64 & FROZEN != 0 {
                return Found::Moved;
            }
            let usage = decode(current);
            let (decision, next) = policy::decide(&policy, &usage, now_ms);
            let Some(next) = next else { break decision };
            match cell.state.compare_exchange_weak(current, encode(&next), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    cell.total.fetch_add(1, Ordering::Relaxed);
                    if cell.last_used_ms.load(Ordering::Relaxed) < now_ms {
                        cell.last_used_ms.fetch_max(now_ms, Ordering::Relaxed);
                    }
                    break decision;
                }
                Err(seen) => current = seen,
            }
        };
        count_day(cell, now_ms, decision.status);
        let abusive = decision.status == Status::RateLimitExceeded && self.count_abuse(cell, now_ms);
        Found::Key(Admission { decision, key: key_ref(record), abusive })
    }

    fn damaged(&self, why: &'static str) -> Found {
        self.supersede();
        Found::Damaged(why)
    }

    /// Stops every counter of this (superseded) file: a check that reads a frozen counter maps the new
    /// file instead, so the counts carried over from this one are final.
    pub fn freeze(&self) {
        for c in 0..self.blocks_used() {
            let cell = self.cell(c);
            let mut current = cell.state.load(Ordering::Acquire);
            while current as u64 & FROZEN == 0 {
                match cell.state.compare_exchange_weak(
                    current,
                    current | FROZEN as u128,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => break,
                    Err(seen) => current = seen,
                }
            }
        }
    }

    /// Makes a digest refuse every request (revoked) and never be written to the database: for a key
    /// this file holds that the database does not (an admin change that failed to commit).
    pub fn tombstone(&self, digest: &KeyDigest) -> std::result::Result<(), Full> {
        let Some((_, _, r)) = self.find(digest) else { return Ok(()) };
        if r == u64::MAX {
            return Ok(());
        }
        let record = self.record(r);
        let entry = KeyEntry {
            row: 0,
            digest: *digest,
            id: String::new(),
            plan: None,
            policy: KeyPolicy { revoked: true, revoke_at_ms: None, expires_at_ms: None, quota: None, rate: None },
            created_at_ms: record.created_at_ms,
            tally: Tally::default(),
            carry: None,
            shares_with: None,
        };
        let cell = record.cell;
        self.upsert(&entry)?;
        // Its row number may be handed to another key: never flush this cell under it.
        if cell < self.layout.max_blocks && self.shares_no_cell(digest, cell) {
            self.cell(cell).row.store(0, Ordering::Release);
        }
        Ok(())
    }

    /// True when no other key's current record counts in `cell`.
    fn shares_no_cell(&self, digest: &KeyDigest, cell: u64) -> bool {
        (0..self.layout.index_slots).all(|i| {
            let v = self.slot(i).load(Ordering::Acquire);
            let r = (v & RECORD_MASK).wrapping_sub(1);
            v == 0 || r >= self.layout.max_blocks || {
                let record = self.record(r);
                record.cell != cell || record.digest == *digest
            }
        })
    }

    /// The digests of every key this file answers for.
    pub fn digests(&self) -> Vec<KeyDigest> {
        (0..self.layout.index_slots)
            .filter_map(|i| {
                let v = self.slot(i).load(Ordering::Acquire);
                let r = (v & RECORD_MASK).wrapping_sub(1);
                (v != 0 && r < self.layout.max_blocks).then(|| self.record(r).digest)
            })
            .collect()
    }

    /// Counts a rate-limit refusal; true when it is the one that goes over the abuse limit.
    fn count_abuse(&self, cell: &Cell, now_ms: i64) -> bool {
        let h = self.header();
        let limit = h.abuse_limit.load(Ordering::Relaxed);
        let window_ms = h.abuse_window_ms.load(Ordering::Relaxed);
        if limit <= 0 || window_ms <= 0 {
            return false;
        }
        let window = (now_ms / window_ms) as u64 & 0xFFFF_FFFF;
        let mut current = cell.abuse.load(Ordering::Acquire);
        loop {
            let count = if current >> 32 == window { (current & 0xFFFF_FFFF) + 1 } else { 1 };
            let next = window << 32 | count.min(0xFFFF_FFFF);
            match cell.abuse.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return count as i64 == limit + 1,
                Err(seen) => current = seen,
            }
        }
    }

    pub fn set_policies(&self, p: &Policies) {
        let h = self.header();
        h.idle_ms.store(p.idle_ms, Ordering::Release);
        h.abuse_limit.store(p.abuse_limit, Ordering::Release);
        h.abuse_window_ms.store(p.abuse_window_ms, Ordering::Release);
    }

    /// The counts of the key with this digest.
    pub fn tally(&self, digest: &KeyDigest) -> Option<Tally> {
        let (_, _, r) = self.find(digest)?;
        let record = (r != u64::MAX).then(|| self.record(r))?;
        self.valid_record(record).ok()?;
        Some(tally_of(self.cell(record.cell)))
    }

    /// Adds or changes a key. Only one process at a time may call it (the store holds the database's
    /// write lock); checks run concurrently and see the old record or the new one.
    pub fn upsert(&self, entry: &KeyEntry) -> std::result::Result<(), Full> {
        let h = self.header();
        let found = self.find(&entry.digest);
        let b = h.blocks_used.load(Ordering::Acquire);
        if b >= self.layout.max_blocks {
            return Err(Full);
        }
        // Numbers read from the file are checked before use: it may be damaged or hostile.
        let in_file = |(_, _, r): &(u64, u64, u64)| *r != u64::MAX && self.record(*r).cell < self.layout.max_blocks;
        let found = found.filter(in_file);
        let shared_cell =
            entry.shares_with.and_then(|d| self.find(&d)).filter(in_file).map(|(_, _, r)| self.record(r).cell);
        // Where the key goes in the index. A damaged index may have no empty slot: the probe is bounded,
        // and a full index is reported as a full file (the store rebuilds it) rather than looped over.
        let slot = match found {
            Some((i, _, _)) => i,
            None => {
                let mask = self.layout.index_slots - 1;
                let start = u64::from_le_bytes(entry.digest[..8].try_into().expect("8 bytes"));
                (0..self.layout.index_slots)
                    .map(|n| start.wrapping_add(n) & mask)
                    .find(|&i| self.slot(i).load(Ordering::Acquire) == 0)
                    .ok_or(Full)?
            }
        };
        let cell = match (found, shared_cell) {
            (Some((_, _, r)), _) => self.record(r).cell,
            (None, Some(cell)) => cell,
            (None, None) => {
                let c = h.cells_used.load(Ordering::Acquire);
                if c >= self.layout.max_cells {
                    return Err(Full);
                }
                let cell = self.cell(b);
                let t = &entry.tally;
                let start = entry.carry.unwrap_or(CellState {
                    state: encode(&t.usage),
                    total: t.total as u64,
                    last_used_ms: t.last_used_at_ms.unwrap_or(0),
                    abuse: 0,
                    days: [0; 2],
                    flushed_days: [0; 2],
                });
                write_cell(cell, &start);
                cell.row.store(entry.row, Ordering::Relaxed);
                h.cells_used.store(c + 1, Ordering::Release);
                b
            }
        };
        // Not yet reachable by any reader: it is published afterwards by the index store (Release).
        unsafe { std::ptr::addr_of_mut!((*self.block(b)).record).write(record_of(entry, cell)) };
        h.blocks_used.store(b + 1, Ordering::Release);
        let tag = u64::from(u32::from_le_bytes(entry.digest[8..12].try_into().expect("4 bytes")) & 0xFF_FFFF);
        self.slot(slot).store(tag << RECORD_BITS | (b + 1), Ordering::Release);
        Ok(())
    }

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

    /// True when the file holds exactly this key's policy, id and plan.
    /// A damaged slot or record never "holds" anything: the caller rewrites it or rebuilds the file.
    pub fn holds(&self, entry: &KeyEntry) -> bool {
        let Some((_, _, r)) = self.find(&entry.digest) else {
            return false;
        };
        if r == u64::MAX || self.valid_record(self.record(r)).is_err() {
            return false;
        }
        let record = self.record(r);
        let k = key_ref(record);
        policy_of(record) == entry.policy
            && k.id() == entry.id
            && k.plan() == entry.plan.as_deref()
            && record.row == entry.row
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

    /// Every counter cell's whole state and the keys that count in each (a rotated key and its successor
    /// share one), to carry them into a rebuilt file. Only records reached through the index and found
    /// valid are read: the file may be damaged.
    pub fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for i in 0..self.layout.index_slots {
            let v = self.slot(i).load(Ordering::Acquire);
            let r = (v & RECORD_MASK).wrapping_sub(1);
            if v == 0 || r >= self.layout.max_blocks || self.valid_record(self.record(r)).is_err() {
                continue;
            }
            let record = self.record(r);
            snapshot.owners.insert(record.digest, record.cell);
            snapshot.cells.entry(record.cell).or_insert_with(|| read_cell(self.cell(record.cell)));
        }
        snapshot
    }

    /// Adds what checks charged to this (superseded, frozen) file after `before` was taken to the cells
    /// of `to` that the same keys count in: each cell's change exactly once, compared on the whole state
    /// (a check's compare-and-swap may have landed before its statistics were bumped).
    pub fn carry_late_counts(&self, before: &Snapshot, to: &SharedCounters) {
        let mut owner_of_cell = std::collections::HashMap::new();
        for (digest, cell) in &before.owners {
            owner_of_cell.entry(*cell).or_insert(*digest);
        }
        for (c, then) in &before.cells {
            let now = read_cell(self.cell(*c));
            if now.state == then.state && now.total == then.total && now.days == then.days && now.abuse == then.abuse {
                continue;
            }
            let Some((_, _, r)) = owner_of_cell.get(c).and_then(|d| to.find(d)) else { continue };
            if r == u64::MAX || to.valid_record(to.record(r)).is_err() {
                continue;
            }
            merge_late(to.cell(to.record(r).cell), then, &now);
        }
    }
}

/// A cell's state as a copy; the frozen mark of a superseded file is not part of it.
fn read_cell(cell: &Cell) -> CellState {
    CellState {
        state: cell.state.load(Ordering::Acquire) & !(FROZEN as u128),
        total: cell.total.load(Ordering::Acquire),
        last_used_ms: cell.last_used_ms.load(Ordering::Acquire),
        abuse: cell.abuse.load(Ordering::Acquire),
        days: [0, 1].map(|i| cell.days[i].load(Ordering::Acquire)),
        flushed_days: [0, 1].map(|i| cell.flushed_days[i].load(Ordering::Acquire)),
    }
}

/// Only for a cell no reader can reach yet (a new file, or a new key before its index slot is stored).
fn write_cell(cell: &Cell, s: &CellState) {
    cell.state.store(s.state, Ordering::Relaxed);
    cell.total.store(s.total, Ordering::Relaxed);
    cell.last_used_ms.store(s.last_used_ms, Ordering::Relaxed);
    cell.abuse.store(s.abuse, Ordering::Relaxed);
    for i in 0..2 {
        cell.days[i].store(s.days[i], Ordering::Relaxed);
        cell.flushed_days[i].store(s.flushed_days[i], Ordering::Relaxed);
    }
}

/// Adds the change from `then` to `now` (of a cell in the old file) to a live cell of the new file, which
/// checks may be charging at the same time.
fn merge_late(cell: &Cell, then: &CellState, now: &CellState) {
    let (was, is) = (decode(then.state), decode(now.state));
    let extra_used = if was.period_start_ms == is.period_start_ms { (is.used - was.used).max(0) } else { is.used };
    let mut current = cell.state.load(Ordering::Acquire);
    loop {
        let mut usage = decode(current);
        if usage.period_start_ms == is.period_start_ms {
            usage.used = (usage.used + extra_used).min(USED_MASK as i64);
        } else if usage.period_start_ms < is.period_start_ms {
            usage = Usage { period_start_ms: is.period_start_ms, used: extra_used, ..usage };
        }
        usage.tat_ns = usage.tat_ns.max(is.tat_ns);
        match cell.state.compare_exchange(current, encode(&usage), Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => break,
            Err(seen) => current = seen,
        }
    }
    cell.total.fetch_add(now.total.wrapping_sub(then.total), Ordering::AcqRel);
    cell.last_used_ms.fetch_max(now.last_used_ms, Ordering::AcqRel);
    cell.abuse.fetch_max(now.abuse, Ordering::AcqRel);
    for i in 0..2 {
        if now.days[i] == then.days[i] {
            continue;
        }
        let same_day = then.days[i] != 0 && field(then.days[i], DAY_FIELDS[0]) == field(now.days[i], DAY_FIELDS[0]);
        let mut current = cell.days[i].load(Ordering::Acquire);
        loop {
            let day = field(now.days[i], DAY_FIELDS[0]);
            let cur_day = field(current, DAY_FIELDS[0]);
            if current != 0 && cur_day > day {
                break; // a later day already took this slot
            }
            let mut next = if current != 0 && cur_day == day { current } else { day };
            for f in &DAY_FIELDS[1..] {
                let extra = field(now.days[i], *f)
                    - if same_day { field(then.days[i], *f).min(field(now.days[i], *f)) } else { 0 };
                let max = (1u128 << f.1) - 1;
                let sum = (field(next, *f) + extra).min(max);
                next = next & !(max << f.0) | sum << f.0;
            }
            match cell.days[i].compare_exchange(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(seen) => current = seen,
            }
        }
    }
    // The database lacks these counts: the next flush writes the cell (absolute values, so at most twice).
    cell.flushed_days[0].store(STALE, Ordering::Release);
}

fn record_of(entry: &KeyEntry, cell: u64) -> Record {
    let mut id = [0u8; 48];
    let id_len = entry.id.len().min(MAX_ID_LEN);
    id[..id_len].copy_from_slice(&entry.id.as_bytes()[..id_len]);
    let mut plan = [0u8; 64];
    let plan_len = match &entry.plan {
        Some(p) => {
            let n = p.len().min(MAX_PLAN_LEN);
            plan[..n].copy_from_slice(&p.as_bytes()[..n]);
            n as u8
        }
        None => NO_PLAN,
    };
    let p = &entry.policy;
    Record {
        digest: entry.digest,
        row: entry.row,
        cell,
        expires_at_ms: p.expires_at_ms.unwrap_or(NEVER),
        revoke_at_ms: p.revoke_at_ms.unwrap_or(NEVER),
        created_at_ms: entry.created_at_ms,
        quota_limit: p.quota.map_or(0, |q| q.limit),
        rate_limit: p.rate.map_or(0, |r| r.limit),
        rate_window_ms: p.rate.map_or(0, |r| r.window_ms),
        rate_burst: p.rate.map_or(0, |r| r.burst),
        revoked: p.revoked as u8,
        quota_period: match p.quota.map(|q| q.period) {
            None => 0,
            Some(Period::Daily) => 1,
            Some(Period::Monthly) => 2,
        },
        id_len: id_len as u8,
        plan_len,
        _pad: [0; 4],
        id,
        plan,
    }
}

fn policy_of(r: &Record) -> KeyPolicy {
    KeyPolicy {
        revoked: r.revoked != 0,
        revoke_at_ms: (r.revoke_at_ms != NEVER).then_some(r.revoke_at_ms),
        expires_at_ms: (r.expires_at_ms != NEVER).then_some(r.expires_at_ms),
        quota: match r.quota_period {
            1 => Some(Quota { limit: r.quota_limit, period: Period::Daily }),
            2 => Some(Quota { limit: r.quota_limit, period: Period::Monthly }),
            _ => None,
        },
        rate: (r.rate_limit > 0).then_some(RateLimit {
            limit: r.rate_limit,
            window_ms: r.rate_window_ms,
            burst: r.rate_burst,
        }),
    }
}

fn key_ref(r: &Record) -> KeyRef {
    KeyRef { id: r.id, id_len: r.id_len.min(MAX_ID_LEN as u8), plan: r.plan, plan_len: r.plan_len, cell: r.cell }
}

/// Top bit of the quota word: the counter belongs to a superseded file and must not change any more.
const FROZEN: u64 = 1 << 63;

fn encode(u: &Usage) -> u128 {
    let day = (u.period_start_ms.div_euclid(DAY_MS) as u64) & 0x7F_FFFF;
    let quota_word = day << USED_BITS | (u.used as u64 & USED_MASK);
    (u.tat_ns as u64 as u128) << 64 | quota_word as u128
}

fn decode(v: u128) -> Usage {
    let quota_word = v as u64;
    Usage {
        period_start_ms: ((quota_word & !FROZEN) >> USED_BITS) as i64 * DAY_MS,
        used: (quota_word & USED_MASK) as i64,
        tat_ns: (v >> 64) as u64 as i64,
    }
}

fn tally_of(cell: &Cell) -> Tally {
    let last = cell.last_used_ms.load(Ordering::Acquire);
    Tally {
        usage: decode(cell.state.load(Ordering::Acquire)),
        total: cell.total.load(Ordering::Acquire) as i64,
        last_used_at_ms: (last > 0).then_some(last),
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

fn dirty_of(cell: &Cell, c: u64) -> Dirty {
    let day_words = [0, 1].map(|i| cell.days[i].load(Ordering::Acquire));
    let days = day_words.map(|word| (word != 0).then(|| decode_day(word)));
    Dirty { row: cell.row.load(Ordering::Relaxed), tally: tally_of(cell), days, cell: c, day_words }
}

// A day's decisions packed in 128 bits: day 20, admitted 34, expired 16, revoked 16, quota 20, rate 22.
const DAY_FIELDS: [(u32, u32); 6] = [(0, 20), (20, 34), (54, 16), (70, 16), (86, 20), (106, 22)];

fn field(word: u128, (at, bits): (u32, u32)) -> u128 {
    (word >> at) & ((1u128 << bits) - 1)
}

fn decode_day(word: u128) -> DayCounts {
    let f = |i: usize| field(word, DAY_FIELDS[i]) as i64;
    DayCounts { day: f(0), admitted: f(1), expired: f(2), revoked: f(3), quota_exceeded: f(4), rate_limited: f(5) }
}

/// Counts one decision in the cell's slot for its UTC day, saturating rather than wrapping.
fn count_day(cell: &Cell, now_ms: i64, status: Status) {
    let which = match status {
        Status::Ok => 1,
        Status::ApiKeyExpired => 2,
        Status::ApiKeyRevoked => 3,
        Status::ApiKeyQuotaExceeded => 4,
        Status::RateLimitExceeded => 5,
        _ => return,
    };
    let day = (now_ms.div_euclid(DAY_MS) as u128) & ((1 << 20) - 1);
    let slot = &cell.days[(day & 1) as usize];
    let mut current = slot.load(Ordering::Acquire);
    loop {
        let slot_day = field(current, DAY_FIELDS[0]);
        if slot_day > day && current != 0 {
            return; // a later day already took this slot (clocks that disagree): never erase it
        }
        let base = if slot_day == day && current != 0 { current } else { day };
        let (at, bits) = DAY_FIELDS[which];
        let next = if field(base, (at, bits)) == (1u128 << bits) - 1 { base } else { base + (1u128 << at) };
        match slot.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return,
            Err(seen) => current = seen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_round_trips_through_the_packed_word() {
        let u = Usage { period_start_ms: 20_000 * DAY_MS, used: 123_456_789, tat_ns: 1_800_000_000_000_000_000 };
        assert_eq!(decode(encode(&u)), u);
        assert_eq!(decode(encode(&Usage::default())), Usage::default());
    }

    #[test]
    fn layout_leaves_the_index_at_most_half_full() {
        for keys in [0, 1, 4096, 1_000_000] {
            let g = Geometry::for_keys(keys);
            assert!(g.index_slots >= 2 * g.max_cells && g.max_cells >= keys + keys / 2);
            assert!(g.file_len >= g.blocks_off + g.max_blocks * BLOCK_LEN);
        }
    }
}

#[cfg(test)]
mod hardening_tests {
    use super::*;

    fn entry(n: u8, shares_with: Option<KeyDigest>) -> KeyEntry {
        KeyEntry {
            row: n as i64 + 1,
            digest: crate::key::digest(&[n; 16]),
            id: format!("key_{n}"),
            plan: None,
            policy: KeyPolicy { revoked: false, revoke_at_ms: None, expires_at_ms: None, quota: None, rate: None },
            created_at_ms: 1_800_000_000_000,
            tally: Tally::default(),
            carry: None,
            shares_with,
        }
    }

    fn built(dir: &tempfile::TempDir, entries: &[KeyEntry]) -> (PathBuf, SharedCounters) {
        let path = dir.path().join("c");
        let db = dir.path().join("db");
        std::fs::write(&db, b"").unwrap();
        let c = SharedCounters::build(&path, entries, entries.len(), 1, &db).unwrap();
        (path, c)
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
    fn keys_sharing_a_cell_are_carried_once() {
        let dir = tempfile::tempdir().unwrap();
        let first = entry(1, None);
        let (_, c) = built(&dir, &[first.clone(), entry(2, Some(first.digest))]);
        let snapshot = c.snapshot();
        assert_eq!((snapshot.cells.len(), snapshot.owners.len()), (1, 2), "one cell, counted in by two keys");
    }

    #[test]
    fn a_damaged_record_is_reported_and_the_file_given_up() {
        let dir = tempfile::tempdir().unwrap();
        let e = entry(1, None);
        let (_, c) = built(&dir, std::slice::from_ref(&e));
        assert!(matches!(c.admit(&e.digest, 1_800_000_000_000), Found::Key(_)));
        let (_, _, r) = c.find(&e.digest).unwrap();
        unsafe { (*c.block(r)).record.plan_len = 200 };
        assert!(matches!(c.admit(&e.digest, 1_800_000_000_000), Found::Damaged(_)));
        assert!(c.is_superseded(), "the next check rebuilds it from the database");
    }

    /// Review (issue 9, item 5): a check whose compare-and-swap landed before `freeze()` but whose
    /// statistics were not bumped yet was dropped by the carry, which compared `total`.
    #[test]
    fn a_late_charge_whose_statistics_lag_is_carried() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = entry(1, None);
        e.policy.quota = Some(Quota { limit: 10, period: Period::Daily });
        let (_, old) = built(&dir, std::slice::from_ref(&e));
        let now = 1_800_000_000_000;
        assert!(matches!(old.admit(&e.digest, now), Found::Key(_)));
        let before = old.snapshot();
        // The charge of a check in flight: its CAS on the state word, and nothing else yet.
        let (_, _, r) = old.find(&e.digest).unwrap();
        let cell = old.cell(old.record(r).cell);
        let mut usage = decode(cell.state.load(Ordering::Acquire));
        usage.used += 1;
        cell.state.store(encode(&usage), Ordering::Release);
        let mut carried = e.clone();
        carried.carry = before.cell_of(&e.digest);
        let dir2 = tempfile::tempdir().unwrap();
        let (_, new) = built(&dir2, &[carried]);
        old.supersede();
        old.freeze();
        old.carry_late_counts(&before, &new);
        assert_eq!(new.tally(&e.digest).unwrap().usage.used, 2, "the late charge counts in the new file");
    }

    /// Review (issue 9, item 7): `holds` and the shared-cell path of `upsert` trusted numbers read from
    /// the file, and panicked on a slot naming a block past the end.
    #[test]
    fn damaged_slots_are_neither_held_nor_followed() {
        let dir = tempfile::tempdir().unwrap();
        let first = entry(1, None);
        let (_, c) = built(&dir, std::slice::from_ref(&first));
        let (i, v, _) = c.find(&first.digest).unwrap();
        c.slot(i).store(v & !RECORD_MASK | (c.layout.max_blocks + 5), Ordering::Release);
        assert!(!c.holds(&first));
        let successor = entry(2, Some(first.digest));
        assert!(c.upsert(&successor).is_ok(), "a damaged predecessor is not followed");
        assert!(c.holds(&successor));
        let (_, _, r) = c.find(&first.digest).unwrap();
        assert_eq!(r, u64::MAX, "still reported as damaged, for the check to say so");
    }

    #[test]
    fn a_frozen_file_sends_checks_to_its_successor() {
        let dir = tempfile::tempdir().unwrap();
        let e = entry(1, None);
        let (_, c) = built(&dir, std::slice::from_ref(&e));
        c.supersede();
        c.freeze();
        assert!(matches!(c.admit(&e.digest, 1_800_000_000_000), Found::Moved));
    }

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

    #[test]
    fn a_tombstoned_key_is_refused_and_never_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let e = entry(1, None);
        let (_, c) = built(&dir, std::slice::from_ref(&e));
        assert!(matches!(c.admit(&e.digest, 1_800_000_000_000), Found::Key(_)));
        c.tombstone(&e.digest).unwrap();
        match c.admit(&e.digest, 1_800_000_000_000) {
            Found::Key(a) => assert_eq!(a.decision.status, Status::ApiKeyRevoked),
            other => panic!("{other:?}"),
        }
        assert!(c.dirty().is_empty(), "its counts are never written under a row another key may get");
    }
}
