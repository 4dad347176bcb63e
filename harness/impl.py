"""Which implementation is under test (``--impl stubs|reference|PATH``) and how to import it.

The folder is chosen once per pytest run by the plugin (option ``--impl`` or the
environment variable ``KATA_IMPL``; default ``stubs``). Modules are imported from
their file, so two folders never mix in one run.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from harness.katas import ROOT

ENV_VAR = "KATA_IMPL"


def resolve_impl_dir(value: str | None = None) -> Path:
    """Turn 'stubs', 'reference' or a path into an existing folder."""
    value = value or os.environ.get(ENV_VAR) or "stubs"
    if value in ("stubs", "reference"):
        return ROOT / value
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"--impl {value!r}: no such folder ({path})")
    return path


def impl_dir() -> Path:
    """The folder under test in this run (set by the pytest plugin)."""
    return resolve_impl_dir(os.environ.get(ENV_VAR))


class BrokenModule:
    """Stands in for a module that could not be imported: any use fails with one clear line."""

    def __init__(self, name: str, path: Path, reason: str) -> None:
        self._name, self._path, self._reason = name, path, reason

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise ImportError(f"could not import {self._path}: {self._reason}")


def load_kata_module(name: str) -> ModuleType | BrokenModule:
    """Import module `name` from the implementation folder under test.

    A missing file or an import-time error (a syntax error in the learner's code, say)
    does not break collection: every test that uses the module fails with one line
    that names the file and the error.
    """
    if name in sys.modules and getattr(sys.modules[name], "__kata_impl__", None):
        return sys.modules[name]
    path = impl_dir() / f"{name}.py"
    if not path.is_file():
        return BrokenModule(name, path, "file not found (is --impl pointing at the right folder?)")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the learner's import-time error, reported per test
        del sys.modules[name]
        if isinstance(exc, SyntaxError):
            where = f"line {exc.lineno}"
        else:
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            where = f"line {frame.lineno}" if frame.filename == str(path) else f"{frame.filename}:{frame.lineno}"
        return BrokenModule(name, path, f"{type(exc).__name__} at {where}: {exc}")
    module.__kata_impl__ = True
    return module
