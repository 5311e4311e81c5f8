"""One Store shared by many threads: exact quota, and each thread gets its own result."""

from __future__ import annotations

import threading
from collections import Counter
from typing import List

from ms_auth import CheckResult, Status, Store

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
    assert store.get(created.id)["usage"]["used"] == 1000


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
    assert {r["id"] for r in store.list()} == set(ids)
