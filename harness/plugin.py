"""The pytest plugin behind every kata (loaded by the root conftest.py).

It adds ``--impl``, lets ``pytest katas/05`` name a kata by number, runs Triton under
its interpreter when there is no GPU, skips GPU-only tests with a reason, turns an
unimplemented stub into one line per test, and ends the run with a kata summary.
"""
from __future__ import annotations

import builtins
import json
import os
import re
import signal
import threading
import time
import traceback
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from harness import katas as catalog
from harness.impl import ENV_VAR, resolve_impl_dir

from harness import profiles, triton_probe

try:
    profiles.register()
except ImportError:  # pragma: no cover - hypothesis is a dependency
    pass

_TASK_CLASS = re.compile(r"TestTask(\d+)")
_EXCEPTION_GROUP: Any = getattr(builtins, "BaseExceptionGroup", ())  # Python 3.11+


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - no torch, no GPU
        return False


class KataTimeout(BaseException):
    """A check ran over its time limit. A BaseException, so that hypothesis does not catch
    it and replay the hanging example (which would then hang with no alarm left)."""

    def __init__(self, limit: float) -> None:
        super().__init__(f"Timeout (>{limit:g}s)")
        self.limit = limit


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("kata_timeout", "seconds a check may run before it is stopped as a hang",
                  default="120")
    group = parser.getgroup("katas")
    group.addoption(
        "--impl",
        default=None,
        help="whose modules to test: 'stubs' (default), 'reference', or a folder of modules "
        f"(also set by the environment variable {ENV_VAR})",
    )


def _rewrite_kata_args(args: list[str]) -> list[str]:
    """'katas/05', '05' or '/abs/katas/05/test_x.py::t': the number selects the kata folder."""
    out = []
    for arg in args:
        path_part, sep, node = arg.partition("::")
        parts = list(Path(path_part).parts)
        for i, part in enumerate(parts):
            number = part.zfill(2)
            under_katas = i == 0 or parts[i - 1] == "katas"
            if part.isdigit() and number in catalog.KATAS and under_katas:
                # katas/NN is a small placeholder file (so that pytest finds this project's
                # configuration from the path alone); the tests live in katas/NN_name/.
                if not Path(*parts[: i + 1]).is_dir():
                    if i == 0:
                        parts[0:1] = ["katas", catalog.KATAS[number][0]]
                    else:
                        parts[i] = catalog.KATAS[number][0]
                    arg = str(Path(*parts)) + sep + node
                break
        out.append(arg)
    return out


def pytest_configure(config: pytest.Config) -> None:
    try:
        impl = resolve_impl_dir(config.getoption("--impl"))
    except NotADirectoryError as exc:
        raise pytest.UsageError(str(exc)) from None
    os.environ[ENV_VAR] = str(impl)
    config._kata_impl = impl  # type: ignore[attr-defined]
    config.args[:] = _rewrite_kata_args(list(config.args))
    config._kata_gpu = _cuda_available()  # type: ignore[attr-defined]
    if not config._kata_gpu:  # type: ignore[attr-defined]
        # Must happen before any @triton.jit runs: the decorator reads it.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    triton_probe.install()
    config._kata_results = []  # type: ignore[attr-defined]
    config._kata_perf = []  # type: ignore[attr-defined]


def pytest_report_header(config: pytest.Config) -> list[str]:
    impl = config._kata_impl  # type: ignore[attr-defined]
    lines = [f"katas: testing the modules in {impl}  (--impl stubs|reference|PATH)"]
    if config._kata_gpu:  # type: ignore[attr-defined]
        import torch

        lines.append(f"katas: GPU {torch.cuda.get_device_name()}: gpu and perf tests run")
    else:
        lines.append(
            "katas: no CUDA GPU: Triton kernels run under the interpreter (TRITON_INTERPRET=1), "
            "gpu/perf tests skip. In your kernels, cast bf16/fp16 to float32 right after tl.load: "
            "the interpreter computes garbage with bf16 values."
        )
    return lines


@pytest.hookimpl(tryfirst=True)  # before `-m gpu` deselects: a perf check is a gpu check
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "perf" in item.keywords and "gpu" not in item.keywords:
            item.add_marker(pytest.mark.gpu)
    if config._kata_gpu:  # type: ignore[attr-defined]
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none found); on CPU the kernels are "
                            "checked for correctness under the Triton interpreter instead")
    for item in items:
        if "gpu" in item.keywords or "perf" in item.keywords:
            item.add_marker(skip)


# -- Time limit: a hanging check is stopped with a message -----------------------------
@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    """Stop a check after `kata_timeout` s (or @pytest.mark.kata_timeout(s)). Python-level
    hangs only; pytest-timeout (timeout_method = thread, a longer limit) ends the run if
    the hang is inside C code."""
    marker = item.get_closest_marker("kata_timeout")
    limit = float(marker.args[0]) if marker else float(item.config.getini("kata_timeout"))
    if limit <= 0 or not hasattr(signal, "setitimer") or \
            threading.current_thread() is not threading.main_thread():
        return (yield)

    def on_alarm(signum: int, frame: Any) -> None:
        raise KataTimeout(limit)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    # Repeats every 2 s after the limit: an alarm swallowed by library code (one that lands
    # in hypothesis's own bookkeeping, say) is followed by another.
    signal.setitimer(signal.ITIMER_REAL, limit, 2.0)
    try:
        return (yield)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- Fixtures shared by every kata ----------------------------------------------------
@pytest.fixture(scope="session")
def device() -> Any:
    """torch.device('cuda') when a GPU is present, else CPU (Triton under the interpreter)."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def device_peaks() -> Any:
    """Copy bandwidth and bf16 matmul rate of this GPU, measured once per run."""
    from harness import perf

    return perf.measure_device_peaks()


@pytest.fixture
def perf(request: pytest.FixtureRequest, device_peaks: Any, benchmark: Any) -> Any:
    """Times kernels with CUDA events and checks them against perf_targets/ (see harness/perf.py)."""
    from harness import perf as perf_mod

    return perf_mod.PerfChecker(request, device_peaks, benchmark)


# -- Reporting: one line for a TODO, a timeout that says "hang", a kata summary --------
def _task_of(item: pytest.Item) -> str | None:
    m = _TASK_CLASS.search(item.nodeid)
    return m.group(1) if m else None


def _learner_frame(exc: BaseException, impl: Path) -> tuple[str, str]:
    """(function name, file:line) of the deepest frame of the learner's module."""
    func, where = "?", "?"
    for frame in traceback.extract_tb(exc.__traceback__):
        path = Path(frame.filename)
        if path.parent.resolve() == impl.resolve():
            func, where = frame.name, f"{_short(path)}:{frame.lineno}"
    return func, where


def _short(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _not_implemented(excinfo: pytest.ExceptionInfo[BaseException] | None) -> BaseException | None:
    """The stub's NotImplementedError behind a failure, if that is what it is."""
    if excinfo is None:
        return None
    exc: BaseException | None = excinfo.value
    while exc is not None:  # KataTodo and hypothesis chain the original error
        if isinstance(exc, NotImplementedError):
            return exc
        if isinstance(exc, _EXCEPTION_GROUP):  # several failing examples at once
            inner = [_not_implemented(pytest.ExceptionInfo.from_exception(e)) for e in exc.exceptions]
            return inner[0] if inner and all(inner) else None
        exc = exc.__cause__ or exc.__context__
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if call.when != "call" and not (call.when == "setup" and report.failed):
        return report
    number = catalog.kata_of_path(item.path)
    task = _task_of(item)
    kind = report.outcome
    impl = item.config._kata_impl  # type: ignore[attr-defined]
    todo_exc = _not_implemented(call.excinfo) if report.failed else None
    if todo_exc is not None:
        kind = "todo"
        func, where = _learner_frame(todo_exc, impl)
        readme = f"katas/{catalog.KATAS[number][0]}/README.md" if number else "the kata README"
        section = f", Task {task}" if task else ""
        report.longrepr = (f"TODO: {func}() is not implemented yet ({where}). "
                           f"Read {readme}{section}.")
        report._kata_todo = (func, where, task)  # type: ignore[attr-defined]
    elif report.failed and call.excinfo is not None and call.excinfo.errisinstance(KataTimeout):
        _, where = _learner_frame(call.excinfo.value, impl)
        at = f" It was at {where}." if where != "?" else ""
        report.longrepr = (
            f"TIMEOUT: the check ran over {call.excinfo.value.limit:g}s and was stopped.{at} "
            "Your code probably hangs: a loop whose condition never changes, a wait on something "
            "that never comes, or a kernel launched over a far too large grid."
        )
        kind = "timeout"
    elif report.failed and isinstance(getattr(call.excinfo, "value", None), ImportError) and \
            "could not import" in str(call.excinfo.value):  # type: ignore[union-attr]
        report.longrepr = f"IMPORT ERROR: {call.excinfo.value}"  # type: ignore[union-attr]
        kind = "import_error"
    item.config._kata_results.append(  # type: ignore[attr-defined]
        {"nodeid": item.nodeid, "kata": number, "task": task, "outcome": kind,
         "todo": getattr(report, "_kata_todo", None)}
    )
    return report


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    results = config._kata_results  # type: ignore[attr-defined]
    skipped = defaultdict(int)
    for rep in terminalreporter.stats.get("skipped", []):
        number = catalog.kata_of_path(rep.nodeid.split("::")[0])
        if number:
            skipped[number] += 1
    by_kata: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        if r["kata"]:
            by_kata[r["kata"]].append(r)
    if not by_kata:
        return
    tr = terminalreporter
    tr.section("kata summary")
    summary = {}
    for number in sorted(by_kata):
        rows = by_kata[number]
        folder, module = catalog.KATAS[number]
        passed = sum(r["outcome"] == "passed" for r in rows)
        todo = [r for r in rows if r["outcome"] == "todo"]
        failed = [r for r in rows if r["outcome"] not in ("passed", "todo", "skipped")]
        total = len([r for r in rows if r["outcome"] != "skipped"])
        line = f"kata {number} {module}: {passed} of {total} checks pass"
        if skipped[number]:
            line += f" ({skipped[number]} skipped: GPU only)"
        tr.write_line(line, green=passed == total, yellow=0 < passed < total, red=passed == 0)
        if failed and all(r["outcome"] == "import_error" for r in failed):
            tr.write_line("  the module could not be imported: fix the IMPORT ERROR above first")
        elif failed:
            first = failed[0]
            task = f"Task {first['task']}, " if first["task"] else ""
            tr.write_line(f"  first real failure: {task}{first['nodeid']}")
        if todo:
            func, where, task = todo[0]["todo"]
            task_text = f"Task {task}: " if task else ""
            tr.write_line(f"  next to implement: {task_text}{func}() in {where} "
                          f"(katas/{folder}/README.md)")
        elif not failed and passed == total:
            tr.write_line("  all checks pass. Hints and the reference solution: "
                          f"katas/{folder}/README.md and reference/{module}.py")
        summary[number] = {"passed": passed, "total": total, "todo": len(todo),
                           "failed": len(failed), "skipped": skipped[number]}
    _save_progress(config, summary)


def _save_progress(config: pytest.Config, summary: dict[str, Any]) -> None:
    """Write the run's results for the self-test (KATA_REPORT) and perf tiers for `status`."""
    perf_cases = config._kata_perf  # type: ignore[attr-defined]
    if perf_cases:
        import torch

        progress_path = catalog.ROOT / ".kata_progress.json"
        progress = json.loads(progress_path.read_text()) if progress_path.is_file() else {}
        for module in {c["module"] for c in perf_cases}:
            progress.setdefault("perf", {})[module] = {
                "gpu": torch.cuda.get_device_name(), "time": time.time(),
                "impl": str(config._kata_impl),  # type: ignore[attr-defined]
                "cases": [c for c in perf_cases if c["module"] == module]}
        progress_path.write_text(json.dumps(progress, indent=1))
    report_path = os.environ.get("KATA_REPORT")
    payload = {"impl": str(config._kata_impl), "time": time.time(),  # type: ignore[attr-defined]
               "katas": summary, "results": config._kata_results}  # type: ignore[attr-defined]
    if report_path:
        Path(report_path).write_text(json.dumps(payload, indent=1))
