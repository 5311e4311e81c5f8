//! The SQLite store: one file in WAL mode holding keys (as SHA-256 digests) and their usage, the source
//! of truth; and `check`, which decides from the shared counters file ([`SharedCounters`]) alone. Only
//! this module knows about SQL. Its parts:
//!
//! - [`schema`]: the migrations and `migrate`; [`open`]: opening a connection; [`identity`]: which file
//!   a store is; [`fork`]: the connections across `fork()`; [`options`]: [`StoreOptions`].
//! - [`check`]: deciding a request; [`flush`]: counts to the database, lasting policy revocations;
//!   [`sync`]: admin changes and keeping the counters file in line with the database (and verified);
//!   [`doctor`]: what `ms-auth doctor` finds, and rebuilding the counters file.
//! - [`keys`]: key administration; [`list`]: the key list, filtered and paged; [`rows`]: reading rows of
//!   `keys`; [`plans`]; [`policies`] (store-wide revocation); [`audit`]: the audit log; [`usage`]: daily
//!   usage and metrics.
//! - [`fleet`]: the store's side of fleet mode (the change log's `Change`, membership, the outbox,
//!   applying changes, the other hosts' usage).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::counters::{self, KeyRef, SharedCounters};
use crate::error::{Error, Result};
use crate::policy::Decision;
use crate::spec::KeyRecord;

// First: its macros (the fleet's JSON shapes) are used by `fleet::replica`.
#[macro_use]
mod schema;

mod audit;
mod check;
mod doctor;
mod fleet;
mod flush;
mod fork;
mod identity;
mod keys;
mod list;
mod open;
mod options;
mod plans;
mod policies;
mod rows;
mod sync;
mod usage;

pub use audit::{AuditEvent, AuditFilter, AuditFilterJson};
pub use doctor::{diagnose, Diagnosis, Finding};
pub use fleet::{Applied, Change, FleetQuota, FleetUsageRow, Gap, Head, LogHealth, Refused, Signed, Stale, KINDS};
pub use keys::{RotateOptions, DEFAULT_GRACE_MS};
pub use options::{Durability, StoreOptions, StoreOptionsJson, DEFAULT_LIFETIME_MS, DEFAULT_RATE};
pub use plans::{PlanRecord, PlanSpec, PlanSpecJson};
pub use policies::{AbusePolicy, IdlePolicy, PoliciesInForce, PolicySpec, PolicySpecJson};
pub use schema::schema_version;
pub use usage::{UsageDay, UsageHistory};

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Error {
        Error::store(format!("SQLite: {e}"))
    }
}

/// The answer to a check: the decision and the key it matched, if any.
#[derive(Debug)]
pub struct Checked {
    pub decision: Decision,
    pub key: Option<KeyRef>,
}

/// The answer of [`Store::create_key`]: the plaintext key (shown once) and the record.
#[derive(Debug)]
pub struct Created {
    pub key: String,
    pub record: KeyRecord,
}

impl Created {
    pub fn to_json(&self) -> String {
        self.record.to_json_with_key(&self.key)
    }
}

/// An open store. Safe to share between threads (`Arc<Store>`), and across `fork()`.
pub struct Store {
    path: PathBuf,
    counters_path: PathBuf,
    options: StoreOptions,
    connections: Arc<fork::Connections>,
    shared: ArcSwap<SharedCounters>,
    /// Who the audit log names for this handle's admin calls.
    actor: ArcSwap<String>,
    /// Checks in this process that matched no key: missing, invalid (for metrics).
    unmatched: [AtomicU64; 2],
    /// When (callers' clock) this process last recorded idle revocations.
    last_idle_sweep_ms: AtomicI64,
    /// Keys the abuse policy revoked whose revocation is not in the database yet (the write lock was
    /// busy): retried at this process's next flush turn, explicit flush or close.
    pending_abuse: Mutex<Vec<(String, i64)>>,
    /// Flush turns of this process that could not write (lock busy, disk failing), and the last reason:
    /// a check never answers with them, so they are kept for `metrics_text` and `last_flush_error`.
    flush_failures: AtomicU64,
    last_flush_error: Mutex<Option<String>>,
    /// Whether this open made the store: the path had none (no file, an empty file, a database without
    /// ms-auth's schema).
    created: bool,
    /// The database file this store opened, marked as opened by ms-auth in this process (see [`identity`]).
    file: identity::OpenFile,
}

impl Store {
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        Store::open_with(path, StoreOptions::default())
    }

    /// Opens or creates the store at `path` (a new file gets mode 0600; with `create: false` a path with no
    /// store is refused with `ErrStore`, naming it), migrating an older schema, and
    /// maps its shared counters file (built from the database if missing, damaged or from another boot).
    /// The path is resolved (symbolic links, `..`) so that every name of one database shares one
    /// counters file; a database file with several hard links is refused, as SQLite cannot lock it safely.
    pub fn open_with(path: impl AsRef<Path>, options: StoreOptions) -> Result<Store> {
        fork::install_fork_handlers();
        let given = path.as_ref().to_path_buf();
        let explain = |e: Error| Error {
            status: e.status,
            message: format!("cannot open store {}: {}", given.display(), e.message),
        };
        // Held until the connection is registered for the fork handlers (see `identity::Opening`).
        let opening = identity::check_not_held(&given).map_err(explain)?;
        let (mut conn, created) =
            open::open_connection(&given, options.busy_timeout, options.create).map_err(explain)?;
        let path = identity::resolve(&given).map_err(explain)?;
        let counters_path = counters::path_for(&path);
        let shared = sync::map_counters(&mut conn, &path, &counters_path).map_err(explain)?;
        let connections = fork::connections(conn);
        // Last, and releases the registry: an `OpenFile` dropped on a failure locks it.
        let file = opening.register(&path).map_err(explain)?;
        Ok(Store {
            path,
            counters_path,
            options,
            connections,
            shared: ArcSwap::from_pointee(shared),
            actor: ArcSwap::from_pointee(default_actor()),
            unmatched: [AtomicU64::new(0), AtomicU64::new(0)],
            last_idle_sweep_ms: AtomicI64::new(i64::MIN / 2),
            pending_abuse: Mutex::new(Vec::new()),
            flush_failures: AtomicU64::new(0),
            last_flush_error: Mutex::new(None),
            created,
            file,
        })
    }

    /// Whether this open made the store, where the path had none (of processes racing to, exactly one).
    pub fn created(&self) -> bool {
        self.created
    }

    /// The database file, resolved.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes the counts and closes the file.
    pub fn close(self) -> Result<()> {
        self.flush()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Counts must survive a handle dropped without close(); a failure here has no caller to tell.
        let _ = self.flush();
        self.connections.close();
    }
}

/// The wall clock, for admin calls and flushes that are given no time.
pub fn clock_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn default_actor() -> String {
    let exe = std::env::current_exe().ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    format!("{} (pid {}, uid {})", exe.unwrap_or_else(|| "?".into()), std::process::id(), unsafe { libc::geteuid() })
}
