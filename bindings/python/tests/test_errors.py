"""Library failures (codes >= 100) surface as MsAuthError subclasses carrying ms_last_error()."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Dict, List

import pytest

import ms_auth
from ms_auth import (
    ErrorCode,
    InternalError,
    InvalidArgumentError,
    KeyNotFoundError,
    MsAuthError,
    Store,
    StoreNotOpenError,
    StoreUnavailableError,
)


def test_class_hierarchy() -> None:
    for cls in (InvalidArgumentError, StoreNotOpenError, StoreUnavailableError, KeyNotFoundError,
                InternalError):
        assert issubclass(cls, MsAuthError)
    assert issubclass(InvalidArgumentError, ValueError)
    assert issubclass(KeyNotFoundError, LookupError)
    assert not issubclass(MsAuthError, ImportError)
    assert issubclass(ms_auth.AbiVersionError, ms_auth.LibraryLoadError)
    assert issubclass(ms_auth.LibraryLoadError, ImportError)
    assert [e.name.lower() for e in ErrorCode] == [
        ms_auth.status_code_string(e) for e in ErrorCode
    ]


def test_unknown_key_id(store: Store) -> None:
    for call in (
        lambda: store.get("nope"),
        lambda: store.update("nope", name="x"),
        lambda: store.revoke("nope"),
    ):
        with pytest.raises(KeyNotFoundError) as info:
            call()
        err = info.value
        assert err.code == ErrorCode.NOT_FOUND
        assert err.code == 103
        assert err.code_name == "not_found"
        assert err.detail  # ms_last_error() explains it
        assert "nope" in str(err) or err.detail in str(err)


def test_now_in_seconds_is_an_invalid_argument(store: Store) -> None:
    created = store.create_key()
    with pytest.raises(InvalidArgumentError) as info:
        store.check(created.key, now_ms=1_700_000_000)  # seconds, not milliseconds
    assert info.value.code == 100 and info.value.code_name == "invalid_argument"
    assert info.value.detail
    assert info.value.operation == "check"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"quota": (10, "weekly")},
        {"quota": (-1, "daily")},
        {"rate_limit": (0, 1000)},
        {"env": "prod"},
        {"key": "short"},
    ],
)
def test_bad_specs_are_invalid_arguments(store: Store, kwargs: Dict[str, object]) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        store.create_key(**kwargs)  # type: ignore[arg-type]
    assert info.value.detail


def test_bad_spec_shapes_are_caught_before_the_call(store: Store) -> None:
    with pytest.raises(TypeError):
        store.create_key(quota=10)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.create_key(rate_limit=(1,))  # type: ignore[arg-type]


def test_duplicate_import_is_refused(store: Store) -> None:
    store.create_key(key="imported-key-123456")
    with pytest.raises(MsAuthError) as info:
        store.create_key(key="imported-key-123456")
    assert info.value.code >= 100 and info.value.detail


def test_unusable_files_are_store_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailableError) as info:
        Store(tmp_path / "missing-dir" / "keys.db")
    assert info.value.code == 102 and info.value.code_name == "store_unavailable"
    assert info.value.detail
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreUnavailableError):
        Store(junk)


def test_last_error_is_per_thread(store: Store) -> None:
    # A failure on one thread must not change the detail another thread reads for its own.
    seen: Dict[str, str] = {}
    go = threading.Barrier(2)

    def fail_not_found() -> None:
        go.wait()
        try:
            store.get("absent-id")
        except KeyNotFoundError as exc:
            seen["not_found"] = exc.detail

    def fail_seconds() -> None:
        go.wait()
        try:
            store.check("ms_live_x", now_ms=1)
        except InvalidArgumentError as exc:
            seen["invalid"] = exc.detail

    threads: List[threading.Thread] = [
        threading.Thread(target=fail_not_found),
        threading.Thread(target=fail_seconds),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen["not_found"] and seen["invalid"]
    assert seen["not_found"] != seen["invalid"]


def test_error_message_shape() -> None:
    err = StoreUnavailableError(102, "disk full", "check")
    assert str(err) == "check: store_unavailable (102): disk full"
    assert str(MsAuthError(104, "", "")) == "internal_error (104)"
    assert MsAuthError(150, "x").code_name == "unknown"
    # A detail that already names the code is not prefixed twice.
    dup = InvalidArgumentError(100, "invalid_argument: bad JSON", "create_key")
    assert str(dup) == "create_key: invalid_argument (100): bad JSON"
    assert dup.detail == "invalid_argument: bad JSON"
