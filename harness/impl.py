"""Which implementation is under test (``--impl stubs|reference|PATH``) and how to import it.

The folder is chosen once per pytest run by the plugin (option ``--impl`` or the
environment variable ``KATA_IMPL``; default ``stubs``). Modules are imported from
their file, so two folders never mix in one run.
"""
from __future__ import annotations

import functools
import importlib.util
import inspect
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
        raise NotADirectoryError(f"--impl {value!r}: no such folder ({path})")
    return path


def impl_dir() -> Path:
    """The folder under test in this run (set by the pytest plugin)."""
    return resolve_impl_dir(os.environ.get(ENV_VAR))


class KataTodo(BaseException):
    """A stub function was called. Raised in place of its NotImplementedError.

    It derives from BaseException so that hypothesis stops at the first example instead
    of shrinking a "failure" that every input reproduces (a hundred calls per test).
    """


def _todo_aware(fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True  # tracebacks go from the test straight into the learner's code
        try:
            return fn(*args, **kwargs)
        except NotImplementedError as exc:
            raise KataTodo(str(exc)) from exc

    return wrapper


def _wrap_learner_functions(module: ModuleType) -> None:
    """Wrap the module's own functions and methods (not Triton kernels) with _todo_aware."""
    for name, obj in list(vars(module).items()):
        if inspect.isfunction(obj) and obj.__module__ == module.__name__:
            setattr(module, name, _todo_aware(obj))
        elif inspect.isclass(obj) and obj.__module__ == module.__name__:
            for attr, member in list(vars(obj).items()):
                if inspect.isfunction(member):
                    setattr(obj, attr, _todo_aware(member))
                elif isinstance(member, property) and member.fget is not None:
                    setattr(obj, attr, property(_todo_aware(member.fget), member.fset, member.fdel,
                                                member.__doc__))


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
    _wrap_learner_functions(module)
    module.__kata_impl__ = True
    return module
