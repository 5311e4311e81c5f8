"""The native store handle, kept alive while calls use it, and closed once they are done."""

from __future__ import annotations

import os
import threading
import weakref
from typing import List, Optional

from . import _ffi
from ._errors import StoreNotOpenError

_lib = _ffi.lib


class _Native:
    """The native handle and the guard that keeps it alive while calls use it.

    Every call puts an item in ``calls`` before it reads ``handle`` and takes it out when done;
    ``close`` (or the finalizer, at garbage collection or interpreter exit) first takes the handle
    away, so that no new call uses it, then waits for ``calls`` to empty before freeing it: no
    thread calls into a freed handle. Under the GIL ``list.append``/``pop`` are atomic and each
    thread sees the others' steps in order, so the check path needs no lock (a lock costs it three
    times as much). Kept apart from the Store so that the finalizer does not keep the Store alive.
    """

    __slots__ = ("handle", "calls", "lock", "idle", "__weakref__")

    def __init__(self, handle: int) -> None:
        self.handle: Optional[int] = handle
        self.calls: List[None] = []
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)
        _natives.add(self)

    def enter(self, operation: str) -> int:
        self.calls.append(None)
        handle = self.handle
        if handle is None:
            self.leave()
            raise StoreNotOpenError(101, "the Store was closed", operation)
        return handle

    def leave(self) -> None:
        self.calls.pop()
        if self.handle is None:
            self.wake()

    def wake(self) -> None:
        """Tells a waiting close() that a call has ended."""
        with self.lock:
            self.idle.notify_all()

    def close(self) -> None:
        # The lock is held to the end, so that a concurrent close() also returns only once the
        # handle is freed.
        with self.lock:
            handle = self.handle
            if handle is None:
                return
            self.handle = None
            while self.calls:
                self.idle.wait()
            _lib.ms_store_close(handle)


_natives: "weakref.WeakSet[_Native]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Only the forking thread lives on in a child: calls that the parent's other threads had in
    # progress never end there, and must not hold close() (or the exit) up for ever.
    for native in list(_natives):
        native.calls.clear()
        native.lock = threading.Lock()
        native.idle = threading.Condition(native.lock)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
