//! A store's database connections across `fork()`: SQLite must never cross one, so every live store's
//! connections are closed just before any fork (see [`Connections`]) and opened again on next need.
//!
//! The locks the fork handlers hold across a fork are `std::sync::Mutex`es, not `parking_lot`'s: std's
//! unlock (a futex on Linux) marks the lock free and wakes a waiter, which must then take it itself; in
//! the child, where the parent's waiting threads do not exist, that leaves it free. `parking_lot`'s
//! unlock may hand the lock over to the waiter it wakes (its eventual fairness), and in the child that
//! waiter never runs: children forked while other threads queued on a store's connection hung for ever
//! in their first admin call.

use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard, Once, PoisonError, TryLockError, Weak};
use std::time::Duration;

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

/// Every store's connections, for the fork handlers.
static LIVE: Mutex<Vec<Weak<Connections>>> = Mutex::new(Vec::new());
static ATFORK: Once = Once::new();

/// What the forking thread holds from just before a fork until just after it, in parent and child.
struct Held {
    /// Each store's two connection locks. Declared before `stores`, so released before the references
    /// that keep their mutexes alive.
    guards: Vec<MutexGuard<'static, Option<Db>>>,
    stores: Vec<Arc<Connections>>,
    live: Option<MutexGuard<'static, Vec<Weak<Connections>>>>,
    registry: Option<identity::HeldForFork>,
}

struct HeldAcrossFork(UnsafeCell<Held>);

// Touched only by the fork handlers, with LIVE's lock taken (the prepare handler takes it before the first
// touch, the parent and child handlers release it after the last): one thread at a time.
unsafe impl Sync for HeldAcrossFork {}

static HELD: HeldAcrossFork =
    HeldAcrossFork(UnsafeCell::new(Held { guards: Vec::new(), stores: Vec::new(), live: None, registry: None }));

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a connection leaves nothing half-done that matters here: SQLite rolls back
    // an unfinished transaction, so the lock is usable as is.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

extern "C" fn before_fork() {
    let registry = identity::hold_for_fork();
    let live = lock(&LIVE);
    // Ours alone until the parent or child handler releases LIVE (see `HeldAcrossFork`).
    let held = unsafe { &mut *HELD.0.get() };
    for conns in live.iter().filter_map(Weak::upgrade) {
        // Lives as long as `held.stores` holds `conns`, which outlives the guards (see `after_fork`).
        let mutexes: &'static Connections = unsafe { &*Arc::as_ptr(&conns) };
        for mutex in [&mutexes.db, &mutexes.quick] {
            let mut guard = lock(mutex);
            *guard = None; // closes the connection
            held.guards.push(guard);
        }
        held.stores.push(conns);
    }
    held.live = Some(live);
    held.registry = Some(registry);
}

/// Releases what `before_fork` holds. Frees no memory (the vectors keep their capacity for the next fork),
/// so that in the child it touches no allocator state another thread of the parent may have left locked.
fn after_fork(in_child: bool) {
    let held = unsafe { &mut *HELD.0.get() };
    held.guards.clear(); // unlocks every connection
    for conns in held.stores.drain(..) {
        // The last reference belongs to a store a vanished thread of the parent was dropping: the child
        // keeps its (closed) connections rather than free them here.
        if in_child && Arc::strong_count(&conns) == 1 {
            std::mem::forget(conns);
        }
    }
    let (live, registry) = (held.live.take(), held.registry.take());
    // `held` is not touched past this point: another thread may fork once LIVE is released.
    drop(live);
    drop(registry);
}

extern "C" fn after_fork_in_parent() {
    after_fork(false);
}

extern "C" fn after_fork_in_child() {
    after_fork(true);
}

/// Closes every store's connections just before any fork of this process (installed on the first open).
pub(super) fn install_fork_handlers() {
    ATFORK.call_once(|| unsafe {
        libc::pthread_atfork(Some(before_fork), Some(after_fork_in_parent), Some(after_fork_in_child));
    });
}

/// A new store's connections: `conn` for admin calls, the check path's opened on first need.
pub(super) fn connections(conn: Connection) -> Arc<Connections> {
    let conns = Arc::new(Connections { db: Mutex::new(Some(Db { conn })), quick: Mutex::new(None) });
    let mut live = lock(&LIVE);
    live.retain(|w| w.strong_count() > 0);
    live.push(Arc::downgrade(&conns));
    conns
}

impl Connections {
    /// Closes both connections, each under its lock: a store dropped while another thread forks is then
    /// never inside SQLite at the fork.
    pub(super) fn close(&self) {
        for mutex in [&self.db, &self.quick] {
            *lock(mutex) = None;
        }
    }
}

/// One of a store's connections, locked for the caller.
pub(super) struct DbGuard<'a>(MutexGuard<'a, Option<Db>>);

impl Deref for DbGuard<'_> {
    type Target = Db;

    fn deref(&self) -> &Db {
        self.0.as_ref().expect("a guard is made on an open connection")
    }
}

impl DerefMut for DbGuard<'_> {
    fn deref_mut(&mut self) -> &mut Db {
        self.0.as_mut().expect("a guard is made on an open connection")
    }
}

impl Store {
    /// This process's database connection, opened again after a fork.
    pub(super) fn db(&self) -> Result<DbGuard<'_>> {
        self.opened(lock(&self.connections.db), self.options.busy_timeout)
    }

    /// The connection for a check's own work, if no other thread of this process is using it. It never
    /// waits for another process's write lock either (a busy timeout of zero).
    pub(super) fn quick_db(&self) -> Result<Option<DbGuard<'_>>> {
        let guard = match self.connections.quick.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return Ok(None),
        };
        self.opened(guard, Duration::ZERO).map(Some)
    }

    /// The connection under `guard`, opened if this process has none yet (first need, or after a fork).
    /// Only ever on the database file this store opened: one deleted or replaced since is never read or
    /// written (see [`identity::OpenFile::still_at`]), and never created again.
    fn opened<'a>(&self, mut guard: MutexGuard<'a, Option<Db>>, busy_timeout: Duration) -> Result<DbGuard<'a>> {
        self.file.still_at(&self.path)?;
        if guard.is_none() {
            let (conn, _) = open_connection(&self.path, busy_timeout, false)?;
            // The file just opened is still the store's (it was not replaced in between).
            self.file.still_at(&self.path)?;
            *guard = Some(Db { conn });
        }
        Ok(DbGuard(guard))
    }
}
