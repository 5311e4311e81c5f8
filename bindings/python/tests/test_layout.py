"""The package's modules import only modules listed before them (the order ``ms_auth``'s docstring
gives): no circle, and the ctypes layer knows nothing of the Store or the middleware."""

from __future__ import annotations

import ast
from pathlib import Path

import ms_auth

ORDER = ["_ffi", "_errors", "_args", "_check", "_records", "_specs", "_native", "_store",
         "_http", "wsgi", "asgi"]


def test_modules_import_only_those_below_them() -> None:
    package = Path(ms_auth.__file__).parent
    modules = sorted(p.stem for p in package.glob("*.py") if p.stem != "__init__")
    assert modules == sorted(ORDER), "a new module needs its place in ORDER and the docstring"
    upward = []
    for rank, name in enumerate(ORDER):
        tree = ast.parse((package / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                targets = [node.module] if node.module else [a.name for a in node.names]
                upward += [f"{name} -> {t}" for t in targets if ORDER.index(t) >= rank]
    assert upward == []
