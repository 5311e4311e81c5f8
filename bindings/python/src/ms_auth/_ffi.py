"""Loading libms_auth and declaring the C ABI v1 (see docs/c-abi.md).

Every symbol gets explicit ``argtypes``/``restype``: without them ctypes would pass Python ints as
C ``int`` and truncate the 64-bit timestamps and sizes.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

ABI_VERSION = 1
# MS_HTTP_FIELDS_MAX: bytes that ms_store_check_http's fields always fit in (with the NUL).
HTTP_FIELDS_MAX = 512

if sys.platform == "darwin":
    LIB_FILENAME = "libms_auth.dylib"
elif sys.platform == "win32":
    LIB_FILENAME = "ms_auth.dll"
else:
    LIB_FILENAME = "libms_auth.so"


class LibraryLoadError(ImportError):
    """The core library could not be found, loaded, or is not ABI version 1."""


class AbiVersionError(LibraryLoadError):
    """The core library found speaks another C ABI version than this package."""


class CheckResultStruct(ctypes.Structure):
    """``ms_check_result``: field order and sizes are fixed by the ABI."""

    _fields_ = [
        ("status", ctypes.c_int32),
        ("http_status", ctypes.c_int32),
        ("retry_after_ms", ctypes.c_int64),
        ("quota_limit", ctypes.c_int64),
        ("quota_remaining", ctypes.c_int64),
        ("quota_reset_ms", ctypes.c_int64),
        ("rate_limit", ctypes.c_int64),
        ("rate_remaining", ctypes.c_int64),
        ("rate_reset_ms", ctypes.c_int64),
        ("key_id", ctypes.c_char * 48),
        ("plan", ctypes.c_char * 64),
    ]


_c_void_p_p = ctypes.POINTER(ctypes.c_void_p)

# name -> (restype, argtypes). Out-strings (char **) are received as void* so that ctypes does not
# convert them to bytes and lose the pointer we must hand back to ms_string_free.
PROTOTYPES: Dict[str, Tuple[Any, List[Any]]] = {
    "ms_abi_version": (ctypes.c_int32, []),
    "ms_version": (ctypes.c_char_p, []),
    "ms_open": (ctypes.c_int32, [ctypes.c_char_p]),
    "ms_auth_check": (ctypes.c_int32, [ctypes.c_char_p, ctypes.c_int64]),
    "ms_close": (None, []),
    "ms_store_open": (ctypes.c_int32, [ctypes.c_char_p, _c_void_p_p]),
    "ms_store_close": (None, [ctypes.c_void_p]),
    # The result pointer is passed as a plain address (an int): cheaper than byref() per call.
    "ms_store_check": (
        ctypes.c_int32,
        [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int64, ctypes.c_void_p],
    ),
    "ms_store_check_http": (
        ctypes.c_int32,
        [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_int64,
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_void_p,
        ],
    ),
    "ms_key_create": (
        ctypes.c_int32,
        [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int64, _c_void_p_p],
    ),
    "ms_key_revoke": (ctypes.c_int32, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int64]),
    "ms_key_revoke_v2": (ctypes.c_int32, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int64]),
    "ms_key_update": (
        ctypes.c_int32,
        [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, _c_void_p_p],
    ),
    "ms_key_get": (ctypes.c_int32, [ctypes.c_void_p, ctypes.c_char_p, _c_void_p_p]),
    "ms_key_list": (ctypes.c_int32, [ctypes.c_void_p, ctypes.c_char_p, _c_void_p_p]),
    # Added to the ABI after v1 (key lifecycle and monitoring).
    "ms_store_open_v2": (ctypes.c_int32, [ctypes.c_char_p, ctypes.c_char_p, _c_void_p_p]),
    "ms_store_set_actor": (ctypes.c_int32, [ctypes.c_void_p, ctypes.c_char_p]),
    "ms_key_rotate": (
        ctypes.c_int32,
        [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int64, _c_void_p_p],
    ),
    "ms_plan_put": (
        ctypes.c_int32,
        [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int64, _c_void_p_p],
    ),
    "ms_plan_list": (ctypes.c_int32, [ctypes.c_void_p, _c_void_p_p]),
    "ms_policy_put": (
        ctypes.c_int32,
        [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int64, _c_void_p_p],
    ),
    "ms_policy_get": (ctypes.c_int32, [ctypes.c_void_p, _c_void_p_p]),
    "ms_audit": (ctypes.c_int32, [ctypes.c_void_p, ctypes.c_char_p, _c_void_p_p]),
    "ms_usage": (
        ctypes.c_int32,
        [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int64, ctypes.c_int64, _c_void_p_p],
    ),
    "ms_metrics_text": (ctypes.c_int32, [ctypes.c_void_p, _c_void_p_p]),
    "ms_string_free": (None, [ctypes.c_void_p]),
    "ms_status_code": (ctypes.c_char_p, [ctypes.c_int32]),
    "ms_status_message": (ctypes.c_char_p, [ctypes.c_int32]),
    "ms_status_http": (ctypes.c_int32, [ctypes.c_int32]),
    "ms_error_json": (ctypes.c_size_t, [ctypes.c_int32, ctypes.c_char_p, ctypes.c_size_t]),
    "ms_last_error": (ctypes.c_char_p, []),
}


def candidate_paths(
    environ: Optional[Dict[str, str]] = None, package_dir: Optional[Path] = None
) -> List[Tuple[str, Path]]:
    """The places searched, in order, as (how it was found, path) pairs.

    1. ``$MS_AUTH_LIB`` (when set, it is the only candidate: an explicit choice must not be
       silently replaced by another copy);
    2. a copy shipped inside the package (``ms_auth/_lib/``);
    3. ``$MS_AUTH_TARGET_DIR`` (the cargo output directory, e.g. ``<repo>/target/release``);
    4. ``target/release`` of each directory above the package (a checkout of the repository).
    """
    env = os.environ if environ is None else environ
    pkg = Path(__file__).resolve().parent if package_dir is None else package_dir
    explicit = env.get("MS_AUTH_LIB")
    if explicit:
        return [("$MS_AUTH_LIB", Path(explicit))]
    found: List[Tuple[str, Path]] = [("bundled copy", pkg / "_lib" / LIB_FILENAME)]
    target = env.get("MS_AUTH_TARGET_DIR")
    if target:
        found.append(("$MS_AUTH_TARGET_DIR", Path(target) / LIB_FILENAME))
    for parent in pkg.parents:
        found.append(("repository build", parent / "target" / "release" / LIB_FILENAME))
    return found


def _not_found_message(tried: Sequence[Tuple[str, Path]]) -> str:
    lines = "\n".join(f"  - {how}: {path}" for how, path in tried)
    return (
        f"ms_auth: cannot find the core library {LIB_FILENAME}. Looked in:\n{lines}\n"
        "Build it with `cargo build --release` in the ms-auth repository, or set "
        f"MS_AUTH_LIB=/path/to/{LIB_FILENAME} (or MS_AUTH_TARGET_DIR=/path/to/target/release)."
    )


def check_abi(
    path: str, abi_version: Callable[[], int], version: Callable[[], Optional[bytes]]
) -> str:
    """Refuse a library of another ABI: struct layout and codes are hard-coded here."""
    abi = int(abi_version())
    raw = version()
    text = raw.decode("ascii", "replace") if raw is not None else ""
    major = text.split(".", 1)[0]
    if abi != ABI_VERSION or major != str(ABI_VERSION):
        raise AbiVersionError(
            f"ms_auth: {path} speaks C ABI version {abi} (ms_version {text!r}), but this Python "
            f"package needs ABI version {ABI_VERSION} (a 1.x library). Install the ms-auth Python "
            "package that matches the library, or point MS_AUTH_LIB at a 1.x libms_auth."
        )
    return text


def declare(lib: ctypes.CDLL, path: str) -> None:
    """Set argtypes/restype on every ABI symbol; a missing one is a clear load error."""
    for name, (restype, argtypes) in PROTOTYPES.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            raise LibraryLoadError(
                f"ms_auth: {path} has no symbol {name}: it is not a complete ms-auth C ABI v1 library"
            ) from None
        fn.restype = restype
        fn.argtypes = argtypes


def load(
    environ: Optional[Dict[str, str]] = None, package_dir: Optional[Path] = None
) -> Tuple[ctypes.CDLL, str, str]:
    """Find, load, check and declare the library: (handle, path, ms_version())."""
    tried = candidate_paths(environ, package_dir)
    path: Optional[Path] = None
    for _how, candidate in tried:
        if candidate.is_file():
            path = candidate
            break
    if path is None:
        raise LibraryLoadError(_not_found_message(tried))
    spath = str(path)
    try:
        lib = ctypes.CDLL(spath)
    except OSError as exc:
        raise LibraryLoadError(f"ms_auth: cannot load {spath}: {exc}") from exc
    # The version functions are declared and called first, before anything whose layout may differ.
    for name in ("ms_abi_version", "ms_version"):
        if not hasattr(lib, name):
            raise AbiVersionError(
                f"ms_auth: {spath} has no {name}(): it is not an ms-auth library of C ABI "
                f"version {ABI_VERSION}"
            )
    lib.ms_abi_version.restype = ctypes.c_int32
    lib.ms_abi_version.argtypes = []
    lib.ms_version.restype = ctypes.c_char_p
    lib.ms_version.argtypes = []
    version = check_abi(spath, lib.ms_abi_version, lib.ms_version)
    declare(lib, spath)
    return lib, spath, version


if ctypes.sizeof(CheckResultStruct) != 176:  # pragma: no cover - a platform with odd alignment
    raise LibraryLoadError("ms_auth: unexpected ms_check_result layout on this platform")

lib, library_path, library_version = load()
