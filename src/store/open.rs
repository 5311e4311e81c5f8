//! Opening a connection to the database file: creating it private (mode 0600) or refusing a path with no
//! store (`create: false`), WAL mode, and migrating it (see [`super::schema`]). Which file a store is,
//! resolved once, is [`super::identity`]'s.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
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
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(Error::store(format!("directory {} does not exist", dir.display())));
            }
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
