//! Which file a store is: the database path resolved once, so that every name of one database (a
//! symbolic link, a relative path, `..`) shares one counters file; and the checks SQLite's own
//! documentation asks for (<https://www.sqlite.org/howtocorrupt.html>, sections 2.2 and 2.5): no
//! second set of hard links to the database, and no other code in this process holding the file open,
//! since closing any descriptor of a file drops every POSIX lock this process holds on it, and a second
//! copy of SQLite (Python's `sqlite3`, Go's drivers) does not see ours.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::error::{Error, Result};

/// Database files (device, inode) that ms-auth stores of this process have open, with how many.
type Registry = Option<HashMap<(u64, u64), usize>>;

/// A std mutex, held across `fork()` by the fork handlers: see [`super::fork`] for why not `parking_lot`'s.
static OPEN: Mutex<Registry> = Mutex::new(None);

fn lock_registry() -> MutexGuard<'static, Registry> {
    OPEN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The path with every symbolic link and `..` resolved; refused if the file has several hard links.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    let resolved = std::fs::canonicalize(path).map_err(|e| Error::store(format!("cannot resolve the path: {e}")))?;
    let links = std::fs::metadata(&resolved).map_err(|e| Error::store(format!("cannot stat the file: {e}")))?.nlink();
    if links > 1 {
        return Err(Error::store(format!(
            "the database file has {links} hard links: SQLite cannot lock a file reached by several names \
             safely (its journal is named after the path); keep one link, or use a symbolic link"
        )));
    }
    Ok(resolved)
}

/// Held while a store is opened, so that two stores of this process opening one new file at once do not
/// take each other's descriptors for a stranger's; and until its connection is registered for the fork
/// handlers, which take it first, so that no fork happens while an opening thread is inside SQLite.
pub struct Opening(MutexGuard<'static, Registry>);

/// Refuses a database file that something else in this process (not an ms-auth store) holds open.
pub fn check_not_held(path: &Path) -> Result<Opening> {
    let open = lock_registry();
    let Ok(meta) = std::fs::metadata(path) else { return Ok(Opening(open)) };
    let id = (meta.dev(), meta.ino());
    if open.as_ref().is_some_and(|m| m.get(&id).is_some_and(|n| *n > 0)) {
        // Our own descriptors cannot be told apart from a stranger's: trust the first open's check.
        return Ok(Opening(open));
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        for fd in fds.flatten() {
            let Ok(target) = std::fs::metadata(fd.path()) else { continue };
            if target.is_file() && (target.dev(), target.ino()) == id {
                return Err(Error::store(format!(
                    "file descriptor {} of this process already has the database open outside ms-auth (another \
                     copy of SQLite, such as Python's sqlite3 module?): its locks and ms-auth's do not see each \
                     other and closing it drops ms-auth's, which can corrupt the database; use the ms-auth API \
                     in this process, or read the file from another process",
                    fd.file_name().to_string_lossy()
                )));
            }
        }
    }
    Ok(Opening(open))
}

/// Marks a database file as open by an ms-auth store of this process for as long as it lives.
pub struct OpenFile {
    id: (u64, u64),
}

impl Opening {
    /// Records the (now existing) file as opened by ms-auth.
    pub fn register(mut self, path: &Path) -> Result<OpenFile> {
        let meta = std::fs::metadata(path).map_err(|e| Error::store(format!("cannot stat the file: {e}")))?;
        let id = (meta.dev(), meta.ino());
        *self.0.get_or_insert_with(HashMap::new).entry(id).or_insert(0) += 1;
        Ok(OpenFile { id })
    }
}

impl OpenFile {
    /// Fails unless `path` is still the database file the store opened. A connection opened later (the
    /// check path's, or any after a fork) on a file put there since, or one still open on the deleted
    /// file, would make the counters file follow a database that is not the store's: a new empty one
    /// took every valid key for revoked.
    pub fn still_at(&self, path: &Path) -> Result<()> {
        const SO: &str = "checks go on deciding from the counters file, and admin calls and flushes fail until \
                          the store is opened again";
        match std::fs::metadata(path) {
            Ok(meta) if (meta.dev(), meta.ino()) == self.id => Ok(()),
            Ok(_) => Err(Error::store(format!(
                "the database file {} was replaced by another file after this handle opened it: {SO}",
                path.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::store(format!(
                "the database file {} was deleted after this handle opened it: {SO}",
                path.display()
            ))),
            Err(e) => Err(Error::store(format!("cannot stat the database file {}: {e}", path.display()))),
        }
    }
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        let mut open = lock_registry();
        if let Some(n) = open.as_mut().and_then(|m| m.get_mut(&self.id)) {
            *n = n.saturating_sub(1);
        }
    }
}

/// The registry, held by the forking thread across `fork()` (see [`super::fork`]): no other thread may
/// hold it at the fork (the child would find it locked for ever), nor be opening a store.
pub struct HeldForFork {
    _registry: MutexGuard<'static, Registry>,
}

pub fn hold_for_fork() -> HeldForFork {
    HeldForFork { _registry: lock_registry() }
}
