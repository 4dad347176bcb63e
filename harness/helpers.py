"""Small helpers that kata tests and scripts share (exported from `harness`)."""
from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType


@contextmanager
def assert_raises(errors: type[BaseException] | tuple[type[BaseException], ...], what: str,
                  where: str = "") -> Iterator[None]:
    """Like pytest.raises, with a message that names the call and the error it must raise."""
    __tracebackhide__ = True
    names = " or ".join(e.__name__ for e in (errors if isinstance(errors, tuple) else (errors,)))
    at = f"; at {where}" if where else ""
    try:
        yield
    except errors:
        return
    except Exception as exc:  # noqa: BLE001 - the wrong error type
        raise AssertionError(f"{what} must raise {names}, but raised {type(exc).__name__}: {exc}{at}") from exc
    raise AssertionError(f"{what} must raise {names}, but returned normally{at}")


def load_kata_file(path: Path, name: str) -> ModuleType:
    """Import a kata's own helper file (katas/10_scheduler/shadow.py, say) once, as `name`.

    Kata folders start with a digit, so they cannot be imported as packages; the module is
    registered in sys.modules first, because dataclasses look their module up there.
    """
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
