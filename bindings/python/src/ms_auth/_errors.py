"""Exceptions for library failures (ABI codes 100 and up): never a decision about a key."""

from __future__ import annotations

import enum
from typing import Dict, Type

from . import _ffi

_lib = _ffi.lib


class ErrorCode(enum.IntEnum):
    """Library failure codes of the C ABI; names follow the ABI's code strings."""

    INVALID_ARGUMENT = 100
    STORE_NOT_OPEN = 101
    STORE_UNAVAILABLE = 102
    NOT_FOUND = 103
    INTERNAL_ERROR = 104


class MsAuthError(Exception):
    """A failure of the library (not a policy decision).

    ``code`` is the ABI code (>= 100), ``code_name`` its code string (``"store_unavailable"``) and
    ``detail`` the library's explanation (``ms_last_error()``, read on the failing thread).
    """

    code: int
    code_name: str
    detail: str

    def __init__(self, code: int, detail: str, operation: str = "") -> None:
        self.code = code
        self.code_name = status_code_string(code)
        self.detail = detail
        self.operation = operation
        where = f"{operation}: " if operation else ""
        text = f"{where}{self.code_name} ({code})"
        # The library's detail may already start with the code string: do not say it twice.
        shown = detail
        if detail.startswith(f"{self.code_name}:"):
            shown = detail[len(self.code_name) + 1 :].lstrip()
        super().__init__(f"{text}: {shown}" if shown else text)


class InvalidArgumentError(MsAuthError, ValueError):
    """MS_ERR_INVALID_ARGUMENT: malformed JSON, out-of-range value, a now_ms in seconds..."""


class StoreNotOpenError(MsAuthError):
    """MS_ERR_NOT_OPEN, also raised by this package for a Store that was closed."""


class StoreUnavailableError(MsAuthError):
    """MS_ERR_STORE: the SQLite file is unreadable, corrupt, read-only, full or locked too long."""


class KeyNotFoundError(MsAuthError, LookupError):
    """MS_ERR_NOT_FOUND: an admin call named a key id that does not exist."""


class InternalError(MsAuthError):
    """MS_ERR_INTERNAL: a bug in the library (a caught panic)."""


_BY_CODE: Dict[int, Type[MsAuthError]] = {
    ErrorCode.INVALID_ARGUMENT: InvalidArgumentError,
    ErrorCode.STORE_NOT_OPEN: StoreNotOpenError,
    ErrorCode.STORE_UNAVAILABLE: StoreUnavailableError,
    ErrorCode.NOT_FOUND: KeyNotFoundError,
    ErrorCode.INTERNAL_ERROR: InternalError,
}


def status_code_string(code: int) -> str:
    """The ABI's code string for any status or error code (``"unknown"`` for others)."""
    raw: bytes = _lib.ms_status_code(code)
    return raw.decode("ascii", "replace")


def last_error() -> str:
    """This thread's last library error detail (``""`` if none)."""
    raw = _lib.ms_last_error()
    return raw.decode("utf-8", "replace") if raw else ""


def error_from_code(code: int, operation: str = "") -> MsAuthError:
    """Build the exception for a failed call. Call it right after the failing call, on the same
    thread: ``ms_last_error`` is per thread and the next failure overwrites it."""
    cls = _BY_CODE.get(code, MsAuthError)
    return cls(code, last_error(), operation)
