"""Store: an open ms-auth store, its hot path (check) and its administration calls."""

from __future__ import annotations

import ctypes
import datetime as _dt
import json
import os
import threading
import time
import weakref
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, TypeVar, Union

from . import _ffi
from ._args import (
    DEFAULT,
    UNCHANGED,
    DurationLike,
    TimeLike,
    _cstr,
    _Default,
    _dumps,
    _duration_ms,
    _optional_time,
    _time_ms,
    _Unchanged,
    _when,
)
from ._check import CheckResult, _unpack_result
from ._errors import StoreNotOpenError, error_from_code
from ._native import _Native
from ._records import (
    AbusePolicy,
    AuditEvent,
    CreatedKey,
    KeyPage,
    KeyRecord,
    KeyState,
    Plan,
    Policies,
    Quota,
    RateLimit,
    Usage,
    _created,
    _event_of,
    _page_of,
    _plan_of,
    _policies_of,
    _record,
    _usage_of,
)
from ._specs import (
    AbuseSpec,
    Durability,
    QuotaSpec,
    RateLimitSpec,
    _abuse_json,
    _idle_json,
    _quota_json,
    _rate_json,
)

_lib = _ffi.lib


class _Scratch(threading.local):
    """One ms_check_result per thread: ctypes releases the GIL during the call, so threads
    cannot share one, and allocating one per call would cost more than the check."""

    def __init__(self) -> None:
        self.buf = _ffi.CheckResultStruct()
        self.addr = ctypes.addressof(self.buf)
        # MS_HTTP_FIELDS_MAX: every answer's fields fit, so a check never has to be repeated.
        self.fields = ctypes.create_string_buffer(_ffi.HTTP_FIELDS_MAX)
        self.needed = ctypes.c_size_t()
        self.needed_addr = ctypes.addressof(self.needed)


_scratch = _Scratch()
_store_check_http = _lib.ms_store_check_http
_time_ns = time.time_ns


_S = TypeVar("_S", bound="Store")


class Store:
    """An open ms-auth store (one SQLite file). Safe to share between threads.

    Use it as a context manager or call ``close()``; a forgotten store is closed when it is
    garbage-collected, and a live one at interpreter exit. Closing waits for the calls other
    threads have in progress; their later calls raise StoreNotOpenError.
    """

    def __init__(
        self,
        path: Union[str, "os.PathLike[str]"],
        *,
        flush_interval_ms: Optional[DurationLike] = None,
        durability: Optional[Durability] = None,
        busy_timeout_ms: Optional[DurationLike] = None,
        create: Optional[bool] = None,
    ) -> None:
        """Open (or create) the store at ``path``. Options left as None keep the library's
        defaults: counts written to the database at most every second (``flush_interval_ms``),
        ``durability="batched"`` (``"strict"`` also writes every admitted check before answering),
        admin writes waiting up to 5 s for another process's lock (``busy_timeout_ms``), and a new
        store where ``path`` has none (``create=False`` raises StoreUnavailableError instead, naming
        the path, and writes nothing: for tools that only read)."""
        self.path = os.fspath(path)
        options: Dict[str, Any] = {}
        if flush_interval_ms is not None:
            options["flush_interval_ms"] = _duration_ms(flush_interval_ms, "flush_interval_ms")
        if durability is not None:
            options["durability"] = durability
        if busy_timeout_ms is not None:
            options["busy_timeout_ms"] = _duration_ms(busy_timeout_ms, "busy_timeout_ms")
        if create is not None:
            options["create"] = create
        handle = ctypes.c_void_p()
        if options:
            rc = _lib.ms_store_open_v2(
                os.fsencode(self.path), _dumps(options), ctypes.byref(handle)
            )
        else:
            rc = _lib.ms_store_open(os.fsencode(self.path), ctypes.byref(handle))
        if rc != 0:
            raise error_from_code(rc, f"open {self.path}")
        if not handle.value:
            raise error_from_code(104, f"open {self.path}: the library returned no handle")
        self._native = _Native(handle.value)
        self._finalizer = weakref.finalize(self, self._native.close)

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the store, once the calls other threads have in progress return; further calls
        raise StoreNotOpenError. Idempotent. Not from a signal handler: the thread it interrupts
        may be inside a call, which would then never return."""
        self._native.close()
        self._finalizer.detach()

    @property
    def closed(self) -> bool:
        return self._native.handle is None

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"Store({self.path!r}, {state})"

    def _call(self, operation: str, fn: Callable[..., int], *args: Any) -> int:
        """``fn(handle, *args)`` with the handle held open until it returns."""
        native = self._native
        handle = native.enter(operation)
        try:
            return fn(handle, *args)
        finally:
            native.leave()

    # -- the hot path ------------------------------------------------------------------------

    def check(
        self, key: Union[str, bytes, None], now_ms: Optional[TimeLike] = None
    ) -> CheckResult:
        """Decide one request carrying ``key`` (None: no key header) at ``now_ms`` (default: now).

        An admitted request (``.ok``) is counted against the key's quota and rate limit.
        Library failures raise MsAuthError subclasses: fail closed on them.
        """
        if now_ms is None:
            now_ms = _time_ns() // 1_000_000
        elif not isinstance(now_ms, int):
            now_ms = _time_ms(now_ms, "now_ms", "check")
        if key is None:
            length = 0
        else:
            if key.__class__ is not bytes:
                # surrogatepass never fails, and turns odd characters into non-ASCII bytes that
                # the library rejects as invalid, rather than into a different printable key.
                if isinstance(key, str):
                    key = key.encode("utf-8", "surrogatepass")
                else:
                    key = bytes(memoryview(key))  # bytearray, memoryview; TypeError for others
            length = len(key)
        scratch = _scratch
        # _Native.enter and leave, inlined: this is the hot path.
        native = self._native
        calls = native.calls
        calls.append(None)
        try:
            handle = native.handle
            if handle is None:
                raise StoreNotOpenError(101, "the Store was closed", "check")
            # The length goes with the pointer so that an embedded NUL is seen (and rejected).
            rc: int = _store_check_http(
                handle,
                key,
                length,
                now_ms,
                scratch.addr,
                scratch.fields,
                _ffi.HTTP_FIELDS_MAX,
                scratch.needed_addr,
            )
        finally:
            calls.pop()
            if native.handle is None:
                native.wake()
        if rc > 6 or rc < 0:
            # 100+: a library failure. Anything else unknown is not a decision this package
            # understands: it fails closed the same way.
            raise error_from_code(rc, "check")
        n = scratch.needed.value
        # .value stops at the NUL the library wrote after the n bytes: no copy of the whole buffer.
        return CheckResult(_unpack_result(scratch.buf), now_ms, scratch.fields.value if n else b"")

    # -- administration ----------------------------------------------------------------------

    def _string_call(self, fn: Callable[..., int], operation: str, *args: Any) -> bytes:
        """``fn(handle, *args, &out)``; the library's string, copied and freed."""
        out = ctypes.c_void_p()
        rc = self._call(operation, fn, *args, ctypes.byref(out))
        if rc != 0:
            raise error_from_code(rc, operation)
        if not out.value:
            raise error_from_code(104, f"{operation}: the library returned no answer")
        try:
            return ctypes.string_at(out.value)
        finally:
            _lib.ms_string_free(out)

    def _json_call(self, fn: Callable[..., int], operation: str, *args: Any) -> Any:
        return json.loads(self._string_call(fn, operation, *args))

    def create_key(
        self,
        *,
        env: str = "live",
        name: Optional[str] = None,
        plan: Optional[str] = None,
        new_plan: bool = False,
        expires_at_ms: Union[TimeLike, None, _Default] = DEFAULT,
        quota: Optional[QuotaSpec] = None,
        rate_limit: Union[RateLimitSpec, None, _Default] = DEFAULT,
        meta: Any = None,
        key: Optional[str] = None,
        now_ms: Optional[TimeLike] = None,
    ) -> CreatedKey:
        """Issue a key (or import ``key``). ``expires_at_ms=None``: never expires;
        ``rate_limit=None``: no rate limit; DEFAULT leaves them to the store (365 d, 60/min).
        Once plans are defined, ``plan`` must name one (InvalidArgumentError lists them) unless
        ``new_plan=True`` says a label that names no plan is meant."""
        spec: Dict[str, Any] = {"env": env}
        if name is not None:
            spec["name"] = name
        if plan is not None:
            spec["plan"] = plan
        if new_plan:
            spec["new_plan"] = True
        if expires_at_ms is not DEFAULT:
            spec["expires_at_ms"] = _optional_time(expires_at_ms, "expires_at_ms", "create_key")
        if quota is not None:
            spec["quota"] = _quota_json(quota)
        if rate_limit is not DEFAULT:
            spec["rate_limit"] = _rate_json(rate_limit)
        if meta is not None:
            spec["meta"] = meta
        if key is not None:
            spec["key"] = key
        when = _when(now_ms, "create_key")
        answer: Dict[str, Any] = self._json_call(_lib.ms_key_create, "create_key", _dumps(spec), when)
        return _created(answer, "create_key")

    def get(self, key_id: str) -> KeyRecord:
        """The record of ``key_id``; KeyNotFoundError if there is none."""
        op = f"get {key_id}"
        return _record(self._json_call(_lib.ms_key_get, op, _cstr(key_id, "key_id", op)))

    def list(self, *, plan: Optional[str] = None, env: Optional[str] = None) -> List[KeyRecord]:
        """All key records, or those of one ``plan`` and/or ``env``."""
        flt: Dict[str, str] = {}
        if plan is not None:
            flt["plan"] = plan
        if env is not None:
            flt["env"] = env
        answer = self._json_call(_lib.ms_key_list, "list", _dumps(flt) if flt else None)
        return [_record(k) for k in answer["keys"]]

    def list_keys(
        self,
        *,
        state: Union[KeyState, str, Iterable[Union[KeyState, str]], None] = None,
        plan: Optional[str] = None,
        env: Optional[str] = None,
        expiring_before_ms: Optional[TimeLike] = None,
        limit: Optional[int] = None,
        after: Optional[str] = None,
    ) -> KeyPage:
        """A page of the key list, in the order keys were created: those in ``state`` (one state or
        several: a key in any of them, as its record's ``state`` says), of ``plan`` and ``env``, still
        admitted and expiring by ``expiring_before_ms``; at most ``limit`` (1 to 1000; None: every
        key) after the cursor ``after`` (a page's ``next``). ``page.next`` is None when no matching key
        follows. A bad state, limit or cursor raises InvalidArgumentError. ``iter_keys`` walks every
        page."""
        flt: Dict[str, Any] = {}
        if state is not None:
            flt["state"] = _state_names(state)
        if plan is not None:
            flt["plan"] = plan
        if env is not None:
            flt["env"] = env
        if expiring_before_ms is not None:
            flt["expiring_before_ms"] = _time_ms(expiring_before_ms, "expiring_before_ms", "list_keys")
        if limit is not None:
            flt["limit"] = limit
        if after is not None:
            flt["after"] = after
        return _page_of(self._json_call(_lib.ms_key_list, "list_keys", _dumps(flt)))

    def iter_keys(
        self,
        *,
        state: Union[KeyState, str, Iterable[Union[KeyState, str]], None] = None,
        plan: Optional[str] = None,
        env: Optional[str] = None,
        expiring_before_ms: Optional[TimeLike] = None,
        page_size: int = 1000,
    ) -> Iterator[KeyRecord]:
        """Every key ``list_keys`` selects with these filters, a page of ``page_size`` at a time
        (each page one call, so the store is never read whole at once). Each key comes once; a key
        created meanwhile comes on a later page."""
        after: Optional[str] = None
        while True:
            page = self.list_keys(
                state=state,
                plan=plan,
                env=env,
                expiring_before_ms=expiring_before_ms,
                limit=page_size,
                after=after,
            )
            yield from page.keys
            if page.next is None:
                return
            after = page.next

    def update(
        self,
        key_id: str,
        *,
        name: Union[str, None, _Unchanged] = UNCHANGED,
        plan: Union[str, None, _Unchanged] = UNCHANGED,
        new_plan: bool = False,
        expires_at_ms: Union[TimeLike, None, _Unchanged] = UNCHANGED,
        quota: Union[QuotaSpec, None, _Unchanged] = UNCHANGED,
        rate_limit: Union[RateLimitSpec, None, _Unchanged] = UNCHANGED,
        meta: Any = UNCHANGED,
    ) -> KeyRecord:
        """Change the given fields of a key; None clears one (no expiry, no quota, no rate
        limit, no name/plan/meta). ``new_plan`` as in ``create_key``. Returns the updated record."""
        patch: Dict[str, Any] = {}
        if name is not UNCHANGED:
            patch["name"] = name
        if plan is not UNCHANGED:
            patch["plan"] = plan
        if new_plan:
            patch["new_plan"] = True
        op = f"update {key_id}"
        if expires_at_ms is not UNCHANGED:
            patch["expires_at_ms"] = _optional_time(expires_at_ms, "expires_at_ms", op)
        if quota is not UNCHANGED:
            patch["quota"] = _quota_json(quota)
        if rate_limit is not UNCHANGED:
            patch["rate_limit"] = _rate_json(rate_limit)
        if meta is not UNCHANGED:
            patch["meta"] = meta
        return _record(
            self._json_call(_lib.ms_key_update, op, _cstr(key_id, "key_id", op), _dumps(patch))
        )

    def revoke(self, key_id: str, now_ms: Optional[TimeLike] = None, *, reason: Optional[str] = None) -> None:
        """Revoke a key for good: its next check answers api_key_revoked. ``reason`` is recorded in the
        key's record and the audit log (what support staff read, e.g. "leaked in a public repository");
        without one the reason is "manual". Revoking a revoked key keeps its first reason."""
        op = f"revoke {key_id}"
        when = _when(now_ms, op)
        creason = None if reason is None else _cstr(reason, "reason", op)
        rc = self._call(op, _lib.ms_key_revoke_v2, _cstr(key_id, "key_id", op), creason, when)
        if rc != 0:
            raise error_from_code(rc, op)

    # -- key lifecycle and monitoring ----------------------------------------------------------

    def set_actor(self, actor: str) -> None:
        """Name the actor the audit log records for this store's admin calls (default: the
        program, its pid and uid), e.g. ``"portal:alice@example.com"``; at most 200 bytes, without
        control characters, bidirectional controls (U+202E...) or invisible characters."""
        rc = self._call("set_actor", _lib.ms_store_set_actor, _cstr(actor, "actor", "set_actor"))
        if rc != 0:
            raise error_from_code(rc, "set_actor")

    def rotate(
        self,
        key_id: str,
        *,
        grace_ms: Optional[DurationLike] = None,
        now_ms: Optional[TimeLike] = None,
    ) -> CreatedKey:
        """Replace a key with a new one of the same policy, plan and meta that counts against the
        same quota. The old key works for ``grace_ms`` more (None: the library's 24 hours; 0: ends
        at once), then answers api_key_revoked. The new plaintext key is shown only here."""
        op = f"rotate {key_id}"
        opts = None
        if grace_ms is not None:
            opts = _dumps({"grace_ms": _duration_ms(grace_ms, "grace_ms")})
        answer: Dict[str, Any] = self._json_call(
            _lib.ms_key_rotate, op, _cstr(key_id, "key_id", op), opts, _when(now_ms, op)
        )
        return _created(answer, op)

    def put_plan(
        self,
        name: str,
        *,
        quota: Union[QuotaSpec, Quota, None] = None,
        rate_limit: Union[RateLimitSpec, RateLimit, None, _Default] = DEFAULT,
        lifetime_ms: Optional[DurationLike] = None,
        now_ms: Optional[TimeLike] = None,
    ) -> Plan:
        """Create or replace a plan. Keys on it that set no quota (or rate limit) of their own
        follow it from their next check, in every process. ``quota=None``: no quota;
        ``rate_limit=None``: no rate limit, DEFAULT: the store's (60 per minute);
        ``lifetime_ms``: the expiry of keys created on the plan without one."""
        op = f"put_plan {name}"
        spec: Dict[str, Any] = {"name": name}
        if quota is not None:
            spec["quota"] = _quota_json(quota)
        if rate_limit is not DEFAULT:
            spec["rate_limit"] = _rate_json(rate_limit)
        if lifetime_ms is not None:
            spec["lifetime_ms"] = _duration_ms(lifetime_ms, "lifetime_ms")
        answer = self._json_call(_lib.ms_plan_put, op, _dumps(spec), _when(now_ms, op))
        return _plan_of(answer)

    def plans(self) -> List[Plan]:
        """Every plan, by name."""
        answer = self._json_call(_lib.ms_plan_list, "plans")
        return [_plan_of(p) for p in answer["plans"]]

    def set_policy(
        self,
        *,
        idle_days: Union[int, _dt.timedelta, None, _Unchanged] = UNCHANGED,
        abuse: Union[AbuseSpec, AbusePolicy, None, _Unchanged] = UNCHANGED,
        now_ms: Optional[TimeLike] = None,
    ) -> Policies:
        """Change the store-wide revocation policies; every process enforces them from its next
        check. None turns a policy off, a policy left out stays as it is. ``idle_days``: revoke
        keys unused for that many days; ``abuse=(limit, window_ms)``: revoke a key refused by its
        rate limit more than ``limit`` times within ``window_ms``. Returns the policies now in
        force."""
        change: Dict[str, Any] = {}
        if idle_days is not UNCHANGED:
            change["idle"] = _idle_json(idle_days, "set_policy")
        if abuse is not UNCHANGED:
            change["abuse"] = _abuse_json(abuse)
        answer = self._json_call(
            _lib.ms_policy_put, "set_policy", _dumps(change), _when(now_ms, "set_policy")
        )
        return _policies_of(answer)

    def policy(self) -> Policies:
        """The revocation policies in force."""
        return _policies_of(self._json_call(_lib.ms_policy_get, "policy"))

    def audit(
        self,
        *,
        key_id: Optional[str] = None,
        since_ms: Optional[TimeLike] = None,
        limit: Optional[int] = None,
    ) -> List[AuditEvent]:
        """The audit log, oldest first: of one key, from an instant on, the last ``limit`` events
        (the library's default: the last 1000)."""
        flt: Dict[str, Any] = {}
        if key_id is not None:
            flt["key_id"] = key_id
        if since_ms is not None:
            flt["since_ms"] = _time_ms(since_ms, "since_ms", "audit")
        if limit is not None:
            flt["limit"] = limit
        answer = self._json_call(_lib.ms_audit, "audit", _dumps(flt) if flt else None)
        return [_event_of(e) for e in answer["events"]]

    def usage(self, key_id: str, from_ms: TimeLike, to_ms: TimeLike) -> Usage:
        """A key's admitted requests and refusals per UTC day, every day from ``from_ms`` to
        ``to_ms`` included, counted by every process; and its last use."""
        op = f"usage {key_id}"
        answer = self._json_call(
            _lib.ms_usage,
            op,
            _cstr(key_id, "key_id", op),
            _time_ms(from_ms, "from_ms", op),
            _time_ms(to_ms, "to_ms", op),
        )
        return _usage_of(answer)

    def metrics_text(self) -> str:
        """Prometheus text exposition (version 0.0.4), for the host's own ``/metrics``."""
        return self._string_call(_lib.ms_metrics_text, "metrics_text").decode("utf-8")


def _state_names(state: Union[KeyState, str, Iterable[Union[KeyState, str]]]) -> Union[str, List[str]]:
    """One state's name, or a list of them (a KeyState is a ``str``: its value is sent)."""
    if isinstance(state, str):
        return state.value if isinstance(state, KeyState) else state
    return [s.value if isinstance(s, KeyState) else s for s in state]
