"""Counting Triton kernel launches, so a test can tell a kernel from a torch fallback.

    with count_triton_launches() as launches:
        out = m.softmax_triton(x)
    assert_triton_ran(launches, "softmax_triton(x)")

The plugin installs the counter once per run (`install()`); it wraps the launch method of
compiled kernels (`JITFunction.run`, which Gluon kernels share) and of the interpreter's
kernels (`InterpretedFunction.run`), so it sees launches on a GPU and on the CPU alike.
"""
from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

_TOTAL = 0  # launches since install()
_NAMES: list[str] = []  # kernel names, in launch order (kept short)
_INSTALLED = False


def _counting(run: Any) -> Any:
    @functools.wraps(run)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        global _TOTAL
        if not kwargs.get("warmup", False):
            _TOTAL += 1
            if len(_NAMES) < 64:
                _NAMES.append(getattr(getattr(self, "fn", None), "__name__", "?"))
        return run(self, *args, **kwargs)

    wrapper.__kata_counting__ = True  # type: ignore[attr-defined]
    return wrapper


def install() -> bool:
    """Wrap Triton's launch methods (once). False when Triton is not installed."""
    global _INSTALLED
    if _INSTALLED:
        return True
    try:
        from triton.runtime import interpreter, jit
    except Exception:  # noqa: BLE001 - no Triton here (macOS, say): nothing to count
        return False
    for cls in (jit.JITFunction, interpreter.InterpretedFunction):
        if not getattr(cls.run, "__kata_counting__", False):
            cls.run = _counting(cls.run)
    _INSTALLED = True
    return True


def total_launches() -> int:
    """Triton kernels launched in this process since the counter was installed."""
    return _TOTAL


@dataclass
class Launches:
    start: int
    count: int = 0
    kernels: list[str] = field(default_factory=list)


@contextmanager
def count_triton_launches() -> Iterator[Launches]:
    """Count the Triton kernels launched inside the `with` block."""
    install()
    launches = Launches(start=_TOTAL)
    first_name = len(_NAMES)
    try:
        yield launches
    finally:
        launches.count = _TOTAL - launches.start
        launches.kernels = _NAMES[first_name:]


def assert_triton_ran(launches: Launches, call: str) -> None:
    """Fail unless the counted block launched at least one Triton kernel."""
    __tracebackhide__ = True
    if launches.count == 0:
        raise AssertionError(
            f"{call} launched no Triton kernel: this task asks for one (@triton.jit, launched "
            "as kernel[grid](...)); a torch fallback computes the right values but is not the kata."
        )
