//! Opening a connection to the database file: creating it private (mode 0600) or refusing a path with no
//! store (`create: false`), WAL mode, and migrating it (see [`super::schema`]). Which file a store is,
//! resolved once, is [`super::identity`]'s.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::schema::migrate;
use crate::error::{Error, Result};

/// Opens a connection, and says whether it made the store (see [`migrate`]); `busy_timeout` zero for the
/// check path's connection, which never waits. Without `create`, a path with no store (no file, an empty
/// file, a database ms-auth never initialised) is refused before anything is written.
pub(super) fn open_connection(path: &Path, busy_timeout: Duration, create: bool) -> Result<(Connection, bool)> {
    if path.as_os_str().is_empty() {
        return Err(Error::invalid("the path is empty"));
    }
    if !create && !path.exists() {
        return Err(no_store("no such file"));
    }
    if !create && std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0) {
        return Err(no_store("the file is empty"));
    }
    if !path.exists() {
        if let Ok(target) = std::fs::read_link(path) {
            // Never created through a link (one planted in a shared directory would choose the file).
            return Err(Error::store(format!("it is a symbolic link to {}, which does not exist", target.display())));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(Error::store(format!("directory {} does not exist", dir.display())));
            }
        }
        if let Some(who) = deleted_database_in_use(path) {
            // SQLite would take the -wal and -shm it still uses for the new file's: "disk I/O error", with
            // a file without the schema left at the path and that process's -wal truncated.
            return Err(Error::store(format!(
                "the database file was deleted while {who} still has it open (its -wal and -shm files are \
                 beside the path): a store can be created here once {who} has closed it"
            )));
        }
        // Create it ourselves so that it is private from the first byte; SQLite gives its WAL and shared
        // memory files the same mode. Another process starting at the same instant (nginx workers) may
        // create it first: then it is there, which is all this needs.
        match OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::store(format!("cannot create the file: {e}"))),
        }
    } else if path.is_dir() {
        return Err(Error::store("it is a directory"));
    }
    // Processes that start together on a store nobody has initialised yet (an empty file) race to turn
    // it into a WAL database; the losers see "locked" for an instant, whatever their busy timeout.
    let initialising = std::fs::metadata(path).is_ok_and(|m| m.len() == 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match set_up_connection(path, busy_timeout, create) {
            Err(e) if initialising && e.message.contains("locked") && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

/// SQLite holds a read lock on this byte of a WAL database's -shm file for as long as a connection has the
/// database open (the "DMS" lock of <https://www.sqlite.org/walformat.html>).
const SHM_DMS_BYTE: libc::off_t = 128;

/// Who (`Some("this process")` or `Some("another process")`) still has a deleted database at `path`
/// open: its -shm file is held by a descriptor of this process, or locked by another process's SQLite.
fn deleted_database_in_use(path: &Path) -> Option<&'static str> {
    let mut shm = path.as_os_str().to_owned();
    shm.push("-shm");
    let meta = std::fs::metadata(&shm).ok()?;
    let (dev, ino) = (meta.dev(), meta.ino());
    // Probed only if this process has no descriptor on it: closing the probe's descriptor would drop the
    // POSIX locks this process's SQLite holds on the file.
    let held_here = std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .any(|fd| std::fs::metadata(fd.path()).is_ok_and(|m| (m.dev(), m.ino()) == (dev, ino)));
    if held_here {
        return Some("this process");
    }
    let file = std::fs::File::open(&shm).ok()?;
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as _;
    lock.l_whence = libc::SEEK_SET as _;
    lock.l_start = SHM_DMS_BYTE;
    lock.l_len = 1;
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut lock) };
    (rc == 0 && i32::from(lock.l_type) != libc::F_UNLCK).then_some("another process")
}

fn set_up_connection(path: &Path, busy_timeout: Duration, create: bool) -> Result<(Connection, bool)> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(busy_timeout)?;
    if !create {
        // Before the journal mode, which would write to a database that is not (yet) a store.
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| Error::store(describe_open_failure(e)))?;
        if version == 0 {
            return Err(no_store("the database is not an ms-auth store"));
        }
    }
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| Error::store(describe_open_failure(e)))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::store(format!("cannot use WAL mode (journal mode is {mode})")));
    }
    conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")?;
    let created = migrate(&mut conn, !busy_timeout.is_zero())?;
    Ok((conn, created))
}

fn no_store(why: &str) -> Error {
    Error::store(format!("no store is there ({why})"))
}

pub(super) fn describe_open_failure(e: rusqlite::Error) -> String {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => "not an ms-auth store (file is not a database)".to_string(),
        Some(rusqlite::ErrorCode::ReadOnly) => "the file is read-only".to_string(),
        _ => e.to_string(),
    }
}
