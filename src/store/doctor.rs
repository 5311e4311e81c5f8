//! What `ms-auth doctor` looks at: the database (`integrity_check`, schema version), the counters file
//! against it (its checksum, every key present with its policy, no record of a key the database lacks,
//! the store-wide policies), and the owners and modes of the store's files against docs/security.md.
//! [`diagnose`] changes nothing (not even a schema migration); [`Store::rebuild_counters`] rebuilds
//! what is derived, the counters file.

use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use serde::Serialize;

use super::policies::load_policies;
use super::rows::{load_entries, Keys};
use super::schema::schema_version;
use super::sync::{generation, map_counters_locked};
use super::{identity, Store};
use crate::counters::{self, Content, Opened, SharedCounters};
use crate::error::{Error, Result};
use crate::key::KeyDigest;

/// How long [`diagnose`] waits for the write lock, which it holds while it compares the counters file with
/// the database (so that no admin change is half applied while it looks).
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// One thing [`diagnose`] looked at.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Finding {
    /// What was checked: `database.integrity`, `database.schema`, `counters.file`, `counters.keys`,
    /// `counters.policies`, `files.database`, `files.wal`, `files.shm`, `files.counters`.
    pub check: &'static str,
    pub ok: bool,
    pub detail: String,
    /// When not ok: whether rebuilding the counters file ([`Store::rebuild_counters`]) repairs it.
    pub repairable: bool,
}

/// Everything [`diagnose`] found, in the order it looked.
#[derive(Clone, Debug, Serialize)]
pub struct Diagnosis {
    /// The database file, resolved.
    pub store: PathBuf,
    pub findings: Vec<Finding>,
}

impl Diagnosis {
    pub fn healthy(&self) -> bool {
        self.findings.iter().all(|f| f.ok)
    }

    /// True when some problem is one that rebuilding the counters file repairs.
    pub fn repairable(&self) -> bool {
        self.findings.iter().any(|f| !f.ok && f.repairable)
    }

    pub fn finding(&self, check: &str) -> Option<&Finding> {
        self.findings.iter().find(|f| f.check == check)
    }

    fn note(&mut self, check: &'static str, ok: bool, detail: impl Into<String>, repairable: bool) {
        self.findings.push(Finding { check, ok, detail: detail.into(), repairable });
    }
}

/// Examines the store at `path` and changes nothing: a store that does not exist is an error (never
/// created), an older schema is not migrated, a damaged counters file is not rebuilt. Holds the write lock
/// (waiting up to 10 s) while it compares the counters file with the database.
pub fn diagnose(path: &Path) -> Result<Diagnosis> {
    if !path.is_file() {
        return Err(Error::store(format!("no store at {} (doctor never creates one)", path.display())));
    }
    let path = identity::resolve(path)?;
    let mut d = Diagnosis { store: path.clone(), findings: Vec::new() };
    let mut conn =
        Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .map_err(|e| Error::store(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(LOCK_WAIT)?;

    let integrity = integrity_check(&conn);
    let database_sound = integrity.is_ok();
    match integrity {
        Ok(()) => d.note("database.integrity", true, "ok", false),
        Err(problems) => d.note("database.integrity", false, format!("{problems} (restore it from a backup)"), false),
    }
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let current = schema_version() as i64;
    let schema_current = version == current;
    match version {
        v if v == current => d.note("database.schema", true, format!("version {v}, this ms-auth's"), false),
        0 => d.note("database.schema", false, "not an ms-auth store (schema version 0)", false),
        v if v < current => d.note(
            "database.schema",
            true,
            format!("version {v}, older than this ms-auth's ({current}): migrated by its next open"),
            false,
        ),
        v => d.note(
            "database.schema",
            false,
            format!("version {v}, newer than this ms-auth understands ({current}): upgrade ms-auth"),
            false,
        ),
    }

    let counters_path = counters::path_for(&path);
    {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let opened = SharedCounters::open_checked(&counters_path)?;
        let file = match &opened {
            Opened::Sound(c) => {
                d.note(
                    "counters.file",
                    true,
                    format!("its index and records match their checksum ({} keys)", c.key_count()),
                    false,
                );
                Some(c)
            }
            Opened::Unsealed(c) => {
                let why = "built by an ms-auth without content checksums: rebuilt by the next open";
                d.note("counters.file", false, why, true);
                Some(c)
            }
            Opened::Damaged(_, why) => {
                d.note(
                    "counters.file",
                    false,
                    format!("damaged: {why}; rebuilt from the database by the next open or verification"),
                    true,
                );
                None
            }
            Opened::Absent(why) => {
                d.note(
                    "counters.file",
                    true,
                    format!("none in use ({why}): built from the database by the next open"),
                    false,
                );
                None
            }
            Opened::Unusable(why) => {
                d.note(
                    "counters.file",
                    false,
                    format!("unusable: {why}; rebuilt from the database by the next open"),
                    true,
                );
                None
            }
        };
        match file {
            Some(c) if schema_current && database_sound => compare(&mut d, &tx, c)?,
            _ => {
                let why = "not compared: it takes a sound counters file and a sound database of this schema";
                d.note("counters.keys", true, why, false);
                d.note("counters.policies", true, why, false);
            }
        }
        tx.rollback()?;
    }
    drop(conn);

    check_files(&mut d, &path, &counters_path);
    Ok(d)
}

/// Every line `PRAGMA integrity_check` gives but "ok", joined (the first ten).
fn integrity_check(conn: &Connection) -> std::result::Result<(), String> {
    let lines = conn
        .prepare("PRAGMA integrity_check")
        .and_then(|mut s| s.query_map([], |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(|e| format!("integrity_check could not run: {e}"))?;
    match lines.as_slice() {
        [ok] if ok == "ok" => Ok(()),
        lines => Err(lines.iter().take(10).cloned().collect::<Vec<_>>().join("; ")),
    }
}

/// The counters file against the database, under the write lock: every key there with its policy, id
/// and plan; no record of a key the database lacks (tombstones of uncommitted keys aside); the policies.
fn compare(d: &mut Diagnosis, tx: &rusqlite::Transaction, file: &SharedCounters) -> Result<()> {
    let entries = load_entries(tx, Keys::All)?;
    let behind = file.generation() != generation(tx)?;
    let differing: Vec<&str> = entries.iter().filter(|e| !file.holds(e)).map(|e| e.id.as_str()).collect();
    let known: HashSet<KeyDigest> = entries.iter().map(|e| e.digest).collect();
    let (mut strays, mut tombstones) = (0, 0);
    for digest in file.digests().iter().filter(|d| !known.contains(*d)) {
        if file.is_tombstone(digest) {
            tombstones += 1;
        } else {
            strays += 1;
        }
    }
    let tombstoned = match tombstones {
        0 => String::new(),
        n => format!("; {n} tombstones of keys whose creation did not commit (refused, as they should be)"),
    };
    let mut problems = Vec::new();
    if !differing.is_empty() {
        let some: Vec<&str> = differing.iter().take(5).copied().collect();
        problems.push(format!(
            "{} of {} keys missing or with another policy ({}{})",
            differing.len(),
            entries.len(),
            some.join(", "),
            if differing.len() > some.len() { ", ..." } else { "" }
        ));
    }
    if strays > 0 {
        problems.push(format!("{strays} records of keys the database does not have"));
    }
    if problems.is_empty() {
        d.note(
            "counters.keys",
            true,
            format!("all {} keys present with their policy{tombstoned}", entries.len()),
            false,
        );
    } else {
        let lag =
            if behind { " (the file is behind the database: the next flush or admin change applies it)" } else { "" };
        d.note("counters.keys", false, format!("{}{lag}{tombstoned}", problems.join("; ")), true);
    }
    let (in_file, in_db) = (file.policies(), load_policies(tx)?);
    if in_file == in_db {
        d.note("counters.policies", true, "the database's", false);
    } else {
        d.note("counters.policies", false, format!("{in_file:?}, the database has {in_db:?}"), true);
    }
    Ok(())
}

/// The owners and modes docs/security.md gives: the database 0600 (never group- or world-accessible);
/// its WAL and shared-memory files, and the counters file, with its owner and no wider mode.
fn check_files(d: &mut Diagnosis, db: &Path, counters_path: &Path) {
    let Ok(db_meta) = std::fs::metadata(db) else { return };
    let (owner, db_mode) = (db_meta.uid(), db_meta.permissions().mode() & 0o7777);
    let private = |mode: u32| mode & 0o077 == 0;
    d.note(
        "files.database",
        private(db_mode),
        match private(db_mode) {
            true => format!("mode {db_mode:04o}, owner uid {owner}"),
            false => format!(
                "mode {db_mode:04o}: group or others can reach it; the documented mode is 0600 (chmod 600 {})",
                db.display()
            ),
        },
        false,
    );
    let mut beside = |check: &'static str, path: PathBuf, repairable: bool| {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            return d.note(check, true, "none (created when the store is opened)", false);
        };
        let mode = meta.permissions().mode() & 0o7777;
        let mut wrong = Vec::new();
        if !private(mode) {
            wrong.push(format!("mode {mode:04o} (documented: 0600)"));
        }
        if meta.uid() != owner {
            wrong.push(format!("owner uid {} (documented: the database's, {owner})", meta.uid()));
        }
        match wrong.is_empty() {
            true => d.note(check, true, format!("mode {mode:04o}, owner uid {owner}"), false),
            false => d.note(check, false, format!("{}: {}", path.display(), wrong.join(", ")), repairable),
        }
    };
    let with_suffix = |suffix: &str| {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    beside("files.wal", with_suffix("-wal"), false);
    beside("files.shm", with_suffix("-shm"), false);
    beside("files.counters", counters_path.to_path_buf(), true);
}

impl Store {
    /// Builds the counters file anew from the database, under the write lock (`ms-auth doctor --repair`):
    /// the counts of the current file are carried unless its index or records are damaged; the new file
    /// has the documented mode and owner, and every process moves to it at its next check.
    pub fn rebuild_counters(&self) -> Result<()> {
        let mut db = self.db()?;
        let tx = db.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let rebuilt = match SharedCounters::open_checked(&self.counters_path)? {
            Opened::Sound(file) | Opened::Unsealed(file) => {
                map_counters_locked(&tx, &self.path, &self.counters_path, Some(&file))?
            }
            Opened::Damaged(file, _) => {
                file.supersede();
                map_counters_locked(&tx, &self.path, &self.counters_path, None)?
            }
            // Nothing usable at the path: built (from a frozen file a growth left there, if any).
            Opened::Absent(_) | Opened::Unusable(_) => map_counters_locked(&tx, &self.path, &self.counters_path, None)?,
        };
        debug_assert_eq!(rebuilt.content(), Content::Sound);
        self.shared.store(Arc::new(rebuilt));
        tx.commit()?;
        Ok(())
    }
}
