"""Checks per second from one Python thread on a hot valid key, with the cost of a trivial ctypes
call (ms_status_http) measured in the same run as the baseline.

    bash bindings/python/bench.sh [--seconds 1] [--repeat 5]
"""

from __future__ import annotations

import argparse
import ctypes
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import ms_auth
from ms_auth import Store, _ffi

BATCH = 20_000


def one_round(loop: Callable[[int], None], seconds: float) -> float:
    """Calls/s over one round of about `seconds`."""
    calls = 0
    start = time.perf_counter()
    while True:
        loop(BATCH)
        calls += BATCH
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one round")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; the best one counts")
    parser.add_argument("--goal", type=float, default=300_000, help="checks/s to reach")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "bench.db") as store:
        plain = store.create_key(expires_at_ms=None, rate_limit=None).key
        limited = store.create_key(quota=(10**12, "daily"), rate_limit=(1_000_000, 1000)).key
        assert store.check(plain).ok and store.check(limited).ok

        def check_plain(n: int) -> None:
            check = store.check
            for _ in range(n):
                check(plain)

        def check_limited(n: int) -> None:
            check = store.check
            for _ in range(n):
                check(limited)

        def check_fixed_now(n: int) -> None:
            check, now = store.check, ms_auth.now_ms()
            for _ in range(n):
                check(plain, now)

        handle = store._native.handle
        raw_key = plain.encode()
        out = _ffi.CheckResultStruct()
        out_addr = ctypes.addressof(out)

        def raw_store_check(n: int) -> None:
            fn, now, klen = _ffi.lib.ms_store_check, ms_auth.now_ms(), len(raw_key)
            for _ in range(n):
                fn(handle, raw_key, klen, now, out_addr)

        def trivial(n: int) -> None:
            fn = _ffi.lib.ms_status_http
            for _ in range(n):
                fn(0)

        rows = [
            ("store.check(key)  [no quota, no rate limit]", check_plain),
            ("store.check(key)  [quota + rate limit]", check_limited),
            ("store.check(key, now_ms)  [no clock read]", check_fixed_now),
            ("raw ctypes ms_store_check (no wrapper)", raw_store_check),
            ("raw ctypes ms_status_http(0) (baseline)", trivial),
        ]
        # Rounds are interleaved across rows so that a busy spell of the machine hits every row
        # alike; the best round of each row counts.
        figures = {name: 0.0 for name, _ in rows}
        for _ in range(args.repeat):
            for name, fn in rows:
                figures[name] = max(figures[name], one_round(fn, args.seconds))

    print(f"python {platform.python_version()} ({sys.executable})")
    print(f"libms_auth {ms_auth.library_version} at {ms_auth.library_path}")
    print(f"one thread, best of {args.repeat} rounds of {args.seconds:g} s")
    for name, per_s in figures.items():
        print(f"  {name:<46} {per_s:>12,.0f} /s  {1e9 / per_s:>7.0f} ns/call")
    baseline = figures[rows[-1][0]]
    headline = figures[rows[0][0]]
    print(f"  ratio store.check / trivial ctypes call: {baseline / headline:.2f}x the cost")
    met = "met" if headline >= args.goal else "NOT met"
    print(f"goal >= {args.goal:,.0f} checks/s: {met} ({headline:,.0f} checks/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
