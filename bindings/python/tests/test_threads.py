"""One Store shared by many threads: exact quota, each thread gets its own result, and close()
waits for the calls in progress."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, List

import pytest

from ms_auth import CheckResult, Status, Store, StoreNotOpenError, _store

THREADS = 8


def run_threads(target: "object", n: int = THREADS) -> None:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]  # type: ignore[arg-type]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_threads_never_admit_more_than_the_quota(store: Store) -> None:
    created = store.create_key(quota=(1000, "daily"), rate_limit=None)
    statuses: Counter[Status] = Counter()
    lock = threading.Lock()
    start = threading.Barrier(THREADS)

    def worker(_: int) -> None:
        start.wait()
        local: Counter[Status] = Counter(store.check(created.key).status for _ in range(250))
        with lock:
            statuses.update(local)

    run_threads(worker)
    assert statuses[Status.OK] == 1000
    assert statuses[Status.API_KEY_QUOTA_EXCEEDED] == THREADS * 250 - 1000
    assert store.get(created.id).usage.used == 1000


def test_each_thread_reads_its_own_result(store: Store) -> None:
    # ctypes drops the GIL during the call: a result buffer shared between threads would mix
    # up key ids. Each thread checks its own key and must always see its own id and plan.
    keys = [store.create_key(plan=f"plan-{i}", rate_limit=None) for i in range(THREADS)]
    errors: List[str] = []
    start = threading.Barrier(THREADS)

    def worker(i: int) -> None:
        start.wait()
        for n in range(3000):
            key = keys[i].key if n % 3 else "ms_live_unknown"
            r: CheckResult = store.check(key)
            if n % 3 and (r.key_id != keys[i].id or r.plan != f"plan-{i}" or not r.ok):
                errors.append(f"thread {i}: {r!r}")
            if not n % 3 and r.status is not Status.API_KEY_INVALID:
                errors.append(f"thread {i}: {r!r}")

    run_threads(worker)
    assert errors == []


def test_admin_calls_from_threads(store: Store) -> None:
    ids: List[str] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        for j in range(10):
            created = store.create_key(name=f"t{i}-{j}")
            assert store.check(created.key).ok
            with lock:
                ids.append(created.id)

    run_threads(worker)
    assert len(set(ids)) == THREADS * 10
    assert {r.id for r in store.list()} == set(ids)


# -- close() while other threads call -------------------------------------------------------------


def test_close_waits_for_a_check_in_progress(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    # A check held inside the native call: close() must wait for it, and refuse new calls meanwhile.
    created = store.create_key(rate_limit=None)
    inside, release = threading.Event(), threading.Event()
    real = _store._store_check_http

    def held(*args: Any) -> int:
        inside.set()
        release.wait(10)
        rc: int = real(*args)
        return rc

    monkeypatch.setattr(_store, "_store_check_http", held)
    results: List[CheckResult] = []
    checker = threading.Thread(target=lambda: results.append(store.check(created.key)))
    checker.start()
    assert inside.wait(10)
    closer = threading.Thread(target=store.close)
    closer.start()
    deadline = time.monotonic() + 10
    while not store.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store.closed
    closer.join(0.3)
    assert closer.is_alive(), "close() returned while a check was using the handle"
    with pytest.raises(StoreNotOpenError):
        store.check(created.key)
    with pytest.raises(StoreNotOpenError):
        store.get(created.id)
    release.set()
    checker.join(10)
    closer.join(10)
    assert not closer.is_alive()
    assert [r.status for r in results] == [Status.OK]


def run_python(script: str, *args: str) -> "subprocess.CompletedProcess[str]":
    # A use-after-free may crash the interpreter: run it in a child, and read its exit status.
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True, text=True, timeout=60,
    )


def test_close_while_threads_check(tmp_path: Path) -> None:
    p = run_python(
        """
        import sys, threading, time
        from ms_auth import Store, StoreNotOpenError

        store = Store(sys.argv[1])
        key = store.create_key(rate_limit=None).key
        counts = {"ok": 0, "closed": 0, "other": []}
        lock, started = threading.Lock(), threading.Barrier(7)

        def worker():
            ok, closed = store.check(key).ok, 0
            started.wait()
            try:
                while closed < 100:
                    try:
                        r = store.check(key)
                    except StoreNotOpenError:
                        closed += 1
                        continue
                    if r.ok:
                        ok += 1
                    else:
                        counts["other"].append(repr(r))
            except BaseException as exc:
                counts["other"].append(repr(exc))
            with lock:
                counts["ok"] += ok
                counts["closed"] += closed

        threads = [threading.Thread(target=worker) for _ in range(6)]
        for t in threads:
            t.start()
        started.wait()
        time.sleep(0.1)
        store.close()
        for t in threads:
            t.join(30)
        print(counts["ok"] >= 6, counts["closed"], counts["other"])
        """,
        str(tmp_path / "k.db"),
    )
    assert (p.returncode, p.stderr) == (0, "")
    assert p.stdout.split() == ["True", "600", "[]"]


def test_finalizer_at_exit_waits_for_a_daemon_check(tmp_path: Path) -> None:
    # The interpreter exits with the store still open while a daemon thread is inside a check:
    # the finalizer must let that call finish before freeing the handle.
    p = run_python(
        """
        import sys, threading, time
        from ms_auth import Store, _store

        store = Store(sys.argv[1])
        key = store.create_key(rate_limit=None).key
        real, inside = _store._store_check_http, threading.Event()

        def held(*args):
            inside.set()
            time.sleep(0.5)
            rc = real(*args)
            print("call returned", rc, flush=True)
            return rc

        _store._store_check_http = held
        threading.Thread(target=store.check, args=(key,), daemon=True).start()
        inside.wait(10)
        """,
        str(tmp_path / "k.db"),
    )
    assert (p.returncode, p.stderr) == (0, "")
    assert p.stdout == "call returned 0\n"


def test_calls_in_progress_at_fork_do_not_hold_the_child(store: Store) -> None:
    # The parent's other threads do not exist in a child: their calls must not block its close().
    created = store.create_key(rate_limit=None)
    store._native.calls.append(None)  # a call in progress in another thread, as fork() sees it
    try:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                ok = store.check(created.key).ok
                store.close()
                code = 0 if ok and store.closed else 1
            finally:
                os._exit(code)
        deadline = time.monotonic() + 20
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if not done:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        assert done and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    finally:
        store._native.calls.pop()


def test_children_forked_while_threads_make_keys_never_hang(store: Store) -> None:
    # The locks the library holds across fork() were handed, in the child, to parent threads queued
    # on them that do not exist there: most children hung for ever in their first admin call.
    created = store.create_key(rate_limit=None)
    stop = threading.Event()

    def make_keys() -> None:
        while not stop.is_set():
            store.create_key(rate_limit=None)

    threads = [threading.Thread(target=make_keys) for _ in range(4)]
    for t in threads:
        t.start()
    children = []
    try:
        time.sleep(0.1)  # the threads are busy by now
        for _ in range(100):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    works = store.get(created.id).id == created.id and store.check(created.key).ok
                    code = 0 if works else 1
                finally:
                    os._exit(code)
            children.append((pid, time.monotonic() + 10))
    finally:
        stop.set()
        for t in threads:
            t.join()
    hung = failed = 0
    while children:
        waiting = []
        for pid, deadline in children:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                failed += not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0)
            elif time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                hung += 1
            else:
                waiting.append((pid, deadline))
        children = waiting
        time.sleep(0.01)
    assert (hung, failed) == (0, 0), "children hung (killed after 10 s), children failed"
