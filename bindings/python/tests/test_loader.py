"""Finding the library, refusing a wrong one with a clear message, and the declared prototypes."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

import ms_auth
from ms_auth import _ffi

PKG_DIR = Path(ms_auth.__file__).resolve().parent
REAL_LIB = Path(ms_auth.library_path)
REPO = Path(__file__).resolve().parents[3]
HEADER = REPO / "include" / "ms_auth.h"


def run_import(env_extra: Dict[str, str], pythonpath: Optional[Path] = None,
               cwd: Optional[Path] = None) -> Tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MS_AUTH_LIB", "MS_AUTH_TARGET_DIR")}
    env.update(env_extra)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    proc = subprocess.run(
        [sys.executable, "-c", "import ms_auth; print(ms_auth.library_path)"],
        env=env, cwd=str(cwd) if cwd else None, capture_output=True, text=True, timeout=60,
    )
    return proc.returncode, proc.stdout.strip(), proc.stderr


def copy_package(dest: Path, with_lib: bool = False) -> Path:
    """A copy of the installed package, with no bundled library unless asked for."""
    pkg = dest / "ms_auth"
    shutil.copytree(PKG_DIR, pkg, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    if with_lib:
        (pkg / "_lib").mkdir(exist_ok=True)
        shutil.copy(REAL_LIB, pkg / "_lib" / _ffi.LIB_FILENAME)
    return dest


def build_fake(tmp_path: Path, source: str) -> Path:
    src = tmp_path / "fake.c"
    src.write_text("#include <stdint.h>\n" + source)
    out = tmp_path / "libfake.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(out), str(src)], check=True)
    return out


def test_explicit_path_that_does_not_exist(tmp_path: Path) -> None:
    rc, _, err = run_import({"MS_AUTH_LIB": str(tmp_path / "nope" / "libms_auth.so")})
    assert rc != 0
    assert "LibraryLoadError" in err
    assert "cannot find the core library" in err
    assert f"$MS_AUTH_LIB: {tmp_path / 'nope' / 'libms_auth.so'}" in err
    assert "cargo build --release" in err


def test_found_nowhere_lists_every_place(tmp_path: Path) -> None:
    root = copy_package(tmp_path / "site")
    rc, _, err = run_import({}, pythonpath=root, cwd=tmp_path)
    assert rc != 0
    assert f"bundled copy: {root / 'ms_auth' / '_lib' / _ffi.LIB_FILENAME}" in err
    assert f"repository build: {tmp_path / 'target' / 'release' / _ffi.LIB_FILENAME}" in err
    assert "MS_AUTH_LIB=" in err


def test_bundled_copy_is_used(tmp_path: Path) -> None:
    root = copy_package(tmp_path / "site", with_lib=True)
    rc, out, err = run_import({}, pythonpath=root)
    assert rc == 0, err
    assert out == str(root / "ms_auth" / "_lib" / _ffi.LIB_FILENAME)


def test_explicit_path_wins_over_bundled_copy(tmp_path: Path) -> None:
    root = copy_package(tmp_path / "site", with_lib=True)
    rc, out, err = run_import({"MS_AUTH_LIB": str(REAL_LIB)}, pythonpath=root)
    assert rc == 0, err
    assert out == str(REAL_LIB)


def test_target_dir_variable(tmp_path: Path) -> None:
    root = copy_package(tmp_path / "site")
    rc, out, err = run_import({"MS_AUTH_TARGET_DIR": str(REAL_LIB.parent)}, pythonpath=root)
    assert rc == 0, err
    assert out == str(REAL_LIB.parent / _ffi.LIB_FILENAME)


def test_repository_build_found_by_walking_up(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "target" / "release").mkdir(parents=True)
    shutil.copy(REAL_LIB, repo / "target" / "release" / _ffi.LIB_FILENAME)
    root = copy_package(repo / "bindings" / "python" / "src")
    rc, out, err = run_import({}, pythonpath=root)
    assert rc == 0, err
    assert out == str(repo / "target" / "release" / _ffi.LIB_FILENAME)


def test_candidate_order() -> None:
    pkg = Path("/x/site/ms_auth")
    only = _ffi.candidate_paths({"MS_AUTH_LIB": "/a/lib.so", "MS_AUTH_TARGET_DIR": "/t"}, pkg)
    assert only == [("$MS_AUTH_LIB", Path("/a/lib.so"))]
    order = _ffi.candidate_paths({"MS_AUTH_TARGET_DIR": "/t"}, pkg)
    assert order[:3] == [
        ("bundled copy", pkg / "_lib" / _ffi.LIB_FILENAME),
        ("$MS_AUTH_TARGET_DIR", Path("/t") / _ffi.LIB_FILENAME),
        ("repository build", Path("/x/site/target/release") / _ffi.LIB_FILENAME),
    ]
    assert order[-1] == ("repository build", Path("/target/release") / _ffi.LIB_FILENAME)


def test_abi_mismatch_is_refused_at_import(tmp_path: Path) -> None:
    fake = build_fake(tmp_path, """
        int32_t ms_abi_version(void) { return 2; }
        const char *ms_version(void) { return "2.0.0"; }
    """)
    rc, _, err = run_import({"MS_AUTH_LIB": str(fake)})
    assert rc != 0
    assert "AbiVersionError" in err
    assert f"{fake} speaks C ABI version 2 (ms_version '2.0.0')" in err
    assert "needs ABI version 1" in err


def test_major_version_must_match_too() -> None:
    with pytest.raises(ms_auth.AbiVersionError, match="ms_version '0.9.0'"):
        _ffi.check_abi("/lib.so", lambda: 1, lambda: b"0.9.0")
    assert _ffi.check_abi("/lib.so", lambda: 1, lambda: b"1.4.2") == "1.4.2"


def test_missing_symbols_are_named(tmp_path: Path) -> None:
    fake = build_fake(tmp_path, """
        int32_t ms_abi_version(void) { return 1; }
        const char *ms_version(void) { return "1.0.0"; }
    """)
    rc, _, err = run_import({"MS_AUTH_LIB": str(fake)})
    assert rc != 0
    assert "has no symbol ms_open" in err


def test_not_an_ms_auth_library(tmp_path: Path) -> None:
    fake = build_fake(tmp_path, "int unrelated(void) { return 0; }\n")
    rc, _, err = run_import({"MS_AUTH_LIB": str(fake)})
    assert rc != 0
    assert "has no ms_abi_version()" in err


def test_not_a_shared_object(tmp_path: Path) -> None:
    junk = tmp_path / "libms_auth.so"
    junk.write_text("not an ELF file")
    rc, _, err = run_import({"MS_AUTH_LIB": str(junk)})
    assert rc != 0
    assert f"cannot load {junk}" in err


# -- every declared prototype matches the committed header ---------------------------------------

_C_TYPES: Dict[str, Any] = {
    "int32_t": ctypes.c_int32,
    "int64_t": ctypes.c_int64,
    "size_t": ctypes.c_size_t,
    "void": None,
}


def _ctype(decl: str) -> Any:
    """ctypes type the binding must use for a C type (void* for opaque and out pointers)."""
    decl = re.sub(r"\b(const|struct)\b", " ", decl)
    stars = decl.count("*")
    base = decl.replace("*", " ").split()[0]
    if stars == 0:
        return _C_TYPES[base]
    if stars == 2:
        return ctypes.POINTER(ctypes.c_void_p)
    return ctypes.c_char_p if base == "char" else ctypes.c_void_p


def _header_prototypes() -> Dict[str, Tuple[Any, List[Any]]]:
    text = HEADER.read_text()
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    text = re.sub(r"^\s*#[^\n]*", " ", text, flags=re.M)
    text = re.sub(r"\s+", " ", text)
    found: Dict[str, Tuple[Any, List[Any]]] = {}
    for ret, name, params in re.findall(r"([A-Za-z_][\w \*]*?)\b(ms_\w+)\s*\(([^()]*)\)\s*;", text):
        ret = ret.strip().split(";")[-1].split("}")[-1]
        ret = re.sub(r"\bextern\b", " ", ret)
        args: List[Any] = []
        if params.strip() not in ("", "void"):
            for p in params.split(","):
                p = p.strip()
                type_part = re.sub(r"\b\w+$", "", p)  # drop the parameter name
                args.append(_ctype(type_part))
        found[name] = (_ctype(ret), args)
    return found


def test_prototypes_match_the_header() -> None:
    assert HEADER.is_file(), f"{HEADER} is missing"
    header = _header_prototypes()
    missing = sorted(set(_ffi.PROTOTYPES) - set(header))
    assert not missing, f"declared here but not in the header: {missing}"
    # Every function of the ABI is reachable from Python, the ones added after v1 included.
    undeclared = sorted(set(header) - set(_ffi.PROTOTYPES))
    assert not undeclared, f"in the header but not declared here: {undeclared}"
    assert {"ms_store_open_v2", "ms_key_rotate", "ms_usage", "ms_metrics_text"} <= set(header)
    # ms_string_free takes back a pointer the library allocated: the binding keeps it as void*
    # (a char* argtype would make ctypes hand over a copy of the string instead).
    header["ms_string_free"] = (None, [ctypes.c_void_p])
    for name, (restype, argtypes) in _ffi.PROTOTYPES.items():
        assert header[name] == (restype, argtypes), name


def test_the_fields_bound_matches_the_header() -> None:
    # The buffer a check hands ms_store_check_http must be the size the header promises suffices.
    m = re.search(r"#define MS_HTTP_FIELDS_MAX (\d+)", HEADER.read_text())
    assert m and int(m.group(1)) == _ffi.HTTP_FIELDS_MAX


def test_every_symbol_is_declared_on_the_loaded_library() -> None:
    lib = _ffi.lib
    for name, (restype, argtypes) in _ffi.PROTOTYPES.items():
        fn = getattr(lib, name)
        assert fn.restype == restype, name
        assert list(fn.argtypes) == argtypes, name


def test_process_wide_store_functions(tmp_path: Path) -> None:
    # The simple form of the ABI (ms_open/ms_auth_check/ms_close) is declared too; prove it works.
    path = tmp_path / "global.db"
    with ms_auth.Store(path) as s:
        created = s.create_key()
    lib = _ffi.lib
    assert lib.ms_open(str(path).encode()) == 0
    try:
        now = ms_auth.now_ms()
        assert lib.ms_auth_check(created.key.encode(), now) == 0
        assert lib.ms_auth_check(None, now) == 1
        assert lib.ms_auth_check(b"ms_live_nope", now) == 2
    finally:
        lib.ms_close()
    assert lib.ms_auth_check(created.key.encode(), ms_auth.now_ms()) == 101
