//! A store's database connections across `fork()`: SQLite must never cross one, so every live store's
//! connections are closed just before any fork (see [`Connections`]) and opened again on next need.

use std::sync::{Arc, Once, Weak};
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use rusqlite::Connection;

use super::open::open_connection;
use super::{identity, Store};
use crate::error::Result;

pub(super) struct Db {
    pub(super) conn: Connection,
}

/// A store's database connections, each opened on first need. SQLite must never cross a `fork()`, not even
/// as its per-process lock bookkeeping: just before any fork, every store's connection is closed (under
/// its lock, so no thread is inside SQLite), and parent and child each open a fresh one when they next
/// need it. The shared counters mapping is inherited as is, which is what lets children check at once.
pub(super) struct Connections {
    /// For admin calls, explicit flushes and strict durability: waits up to the busy timeout for the
    /// write lock.
    db: Mutex<Option<Db>>,
    /// For the work a check may do (its flush turn, mapping a rebuilt counters file): never waits, not
    /// for another thread of this process nor for another process's write lock.
    quick: Mutex<Option<Db>>,
}

static LIVE: Mutex<Vec<Weak<Connections>>> = Mutex::new(Vec::new());
static HELD_ACROSS_FORK: Mutex<Vec<Arc<Connections>>> = Mutex::new(Vec::new());
static ATFORK: Once = Once::new();

extern "C" fn before_fork() {
    identity::lock_for_fork();
    let live = LIVE.lock();
    let mut held = HELD_ACROSS_FORK.lock();
    for conns in live.iter().filter_map(Weak::upgrade) {
        for db in [&conns.db, &conns.quick] {
            let mut guard = db.lock();
            *guard = None; // closes the connection
            std::mem::forget(guard); // stays locked across the fork; released just after it
        }
        held.push(conns);
    }
    std::mem::forget(held);
    std::mem::forget(live);
}

extern "C" fn after_fork() {
    unsafe { HELD_ACROSS_FORK.force_unlock() };
    for conns in HELD_ACROSS_FORK.lock().drain(..) {
        unsafe { conns.db.force_unlock() };
        unsafe { conns.quick.force_unlock() };
    }
    unsafe { LIVE.force_unlock() };
    identity::unlock_after_fork();
}

/// Closes every store's connections just before any fork of this process (installed on the first open).
pub(super) fn install_fork_handlers() {
    ATFORK.call_once(|| unsafe {
        libc::pthread_atfork(Some(before_fork), Some(after_fork), Some(after_fork));
    });
}

/// A new store's connections: `conn` for admin calls, the check path's opened on first need.
pub(super) fn connections(conn: Connection) -> Arc<Connections> {
    register(Connections { db: Mutex::new(Some(Db { conn })), quick: Mutex::new(None) })
}

fn register(conns: Connections) -> Arc<Connections> {
    let conns = Arc::new(conns);
    let mut live = LIVE.lock();
    live.retain(|w| w.strong_count() > 0);
    live.push(Arc::downgrade(&conns));
    conns
}

impl Store {
    /// This process's database connection, opened again after a fork.
    pub(super) fn db(&self) -> Result<parking_lot::MappedMutexGuard<'_, Db>> {
        let mut guard = self.connections.db.lock();
        if guard.is_none() {
            let (conn, _) = open_connection(&self.path, self.options.busy_timeout, self.options.create)?;
            *guard = Some(Db { conn });
        }
        Ok(MutexGuard::map(guard, |db| db.as_mut().expect("opened above")))
    }

    /// The connection for a check's own work, if no other thread of this process is using it. It never
    /// waits for another process's write lock either (a busy timeout of zero).
    pub(super) fn quick_db(&self) -> Result<Option<parking_lot::MappedMutexGuard<'_, Db>>> {
        let Some(mut guard) = self.connections.quick.try_lock() else { return Ok(None) };
        if guard.is_none() {
            let (conn, _) = open_connection(&self.path, Duration::ZERO, self.options.create)?;
            *guard = Some(Db { conn });
        }
        Ok(Some(MutexGuard::map(guard, |db| db.as_mut().expect("opened above"))))
    }
}
