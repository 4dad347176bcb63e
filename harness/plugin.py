"""The pytest plugin behind every kata (loaded by the root conftest.py).

It adds ``--impl`` and ``--task``, lets ``pytest katas/05`` name a kata by number, runs
Triton under its interpreter when there is no GPU, skips GPU-only tests with a reason,
counts an unimplemented stub as TODO (no traceback), tells a skipped check of an optional
task (a skip reason that starts with 'optional') from a GPU-only one, shows real failures
in a few lines (harness/report.py), and ends the run with a kata summary, task by task.
"""
from __future__ import annotations

import builtins
import json
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from harness import katas as catalog
from harness.impl import ENV_VAR, resolve_impl_dir
from harness.report import rewrite_seed_note

from harness import compare, profiles, progress, report, triton_probe

DETAILED_FAILURES = 3  # failures per run shown with all their lines (-v: every one)
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
    group.addoption(
        "--task", default=None, metavar="N[,M]",
        help="run only the checks of these tasks of the kata (as numbered in its README)",
    )
    group.addoption(
        "--use-ref", default=None, metavar="NN[,MM]",
        help="kata 16: our reference for these katas' modules (e.g. 04,07, or all), "
        "yours for the others (harness/compose.py)",
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
    profiles.register()  # per session: a forked self-test worker reads its own HYPOTHESIS_PROFILE
    try:
        impl = resolve_impl_dir(config.getoption("--impl"))
    except NotADirectoryError as exc:
        raise pytest.UsageError(str(exc)) from None
    os.environ[ENV_VAR] = str(impl)
    config._kata_impl = impl  # type: ignore[attr-defined]
    if config.getoption("--use-ref") is not None:
        from harness.compose import set_use_ref

        try:
            set_use_ref(config.getoption("--use-ref"))
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
    config.args[:] = _rewrite_kata_args(list(config.args))
    config._kata_gpu = _cuda_available()  # type: ignore[attr-defined]
    if not config._kata_gpu:  # type: ignore[attr-defined]
        # Must happen before any @triton.jit runs: the decorator reads it.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    triton_probe.install()
    # The timer (CUDA events, clocks, synchronize) is captured now, before any learner module
    # is imported, so a module that patches it is caught (harness/perf.py).
    from harness import perf as _perf  # noqa: F401
    config._kata_results = []  # type: ignore[attr-defined]
    config._kata_perf = []  # type: ignore[attr-defined]
    config._kata_detailed = 0  # type: ignore[attr-defined]  # failures shown in full so far
    config._kata_selected = []  # type: ignore[attr-defined]  # (kata, task) of each selected check
    config._kata_unselected = []  # type: ignore[attr-defined]  # (kata, task) deselected
    if config.option.verbose <= 0 and config.option.tbstyle == "auto":
        # pytest's version/plugin header is noise for a learner; our own line follows.
        config.option.no_header = True


def _backend_line(config: pytest.Config) -> str:
    if config._kata_gpu:  # type: ignore[attr-defined]
        import torch

        return f"GPU {torch.cuda.get_device_name()}: gpu and perf checks run"
    return ("no CUDA GPU: Triton kernels run under the interpreter, GPU-only checks skip "
            "(cast bf16/fp16 to float32 right after tl.load)")


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"katas: testing the modules in {config._kata_impl}  (--impl stubs|reference|PATH)",  # type: ignore[attr-defined]
            f"katas: {_backend_line(config)}"]


def pytest_report_collectionfinish(config: pytest.Config, items: list[pytest.Item]) -> list[str]:
    if not config.option.no_header:
        return []
    impl = config._kata_impl  # type: ignore[attr-defined]
    return [f"testing {report.short_path(impl)}/ (--impl); {_backend_line(config)}"]


def pytest_make_parametrize_id(config: pytest.Config, val: object, argname: str) -> str | None:
    """Test ids name their dtype: [bfloat16], not [dtype0]."""
    if type(val).__module__ == "torch" and type(val).__name__ == "dtype":
        return str(val).replace("torch.", "")
    return None


def _parse_tasks(value: str | None) -> set[str] | None:
    if not value:
        return None
    tasks = {part.strip().lstrip("0") or "0" for part in value.split(",") if part.strip()}
    if not tasks or not all(t.isdigit() for t in tasks):
        raise pytest.UsageError(f"--task {value!r}: give task numbers, e.g. --task 2 or --task 1,3")
    return tasks


@pytest.hookimpl(tryfirst=True)  # before `-m gpu` deselects: a perf check is a gpu check
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "perf" in item.keywords and "gpu" not in item.keywords:
            item.add_marker(pytest.mark.gpu)
    tasks = _parse_tasks(config.getoption("--task"))
    if tasks is not None:
        keep = [item for item in items if _task_of(item) in tasks]
        drop = [item for item in items if _task_of(item) not in tasks]
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep
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


# -- Reporting: TODO and IMPORT ERROR as outcomes of their own, compact failures --------
def _task_of(item: pytest.Item) -> str | None:
    m = _TASK_CLASS.search(item.nodeid)
    return m.group(1) if m else None


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


def _import_error(excinfo: pytest.ExceptionInfo[BaseException] | None) -> str | None:
    value = getattr(excinfo, "value", None)
    if isinstance(value, ImportError) and str(value).startswith("could not import"):
        return str(value)
    return None


def _skip_reason(rep: pytest.TestReport) -> str:
    """The reason given to pytest.skip / a skip marker, without pytest's 'Skipped: '."""
    longrepr = rep.longrepr
    text = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr or "")
    return text.removeprefix("Skipped: ").strip()


def is_optional_skip(reason: str) -> bool:
    """A check of an optional task the learner left out skips with a reason that starts with
    'optional' (e.g. kata 10's Task 6 without Scheduler.abort): its own outcome, 'optional',
    never confused with a GPU-only check skipped on a CPU."""
    return reason.lower().startswith("optional")


def pytest_deselected(items: list[pytest.Item]) -> None:
    for item in items:
        item.config._kata_unselected.append(  # type: ignore[attr-defined]
            (catalog.kata_of_path(item.path), _task_of(item)))


def pytest_collection_finish(session: pytest.Session) -> None:
    session.config._kata_selected = [  # type: ignore[attr-defined]
        (item.nodeid, catalog.kata_of_path(item.path), _task_of(item)) for item in session.items]


def pytest_runtest_setup(item: pytest.Item) -> None:
    compare.new_check()  # the interpreter hint looks only at this check's own launches


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    if not (call.when == "call" or (call.when == "setup" and (rep.failed or rep.skipped))):
        return rep
    impl = item.config._kata_impl  # type: ignore[attr-defined]
    number, task = catalog.kata_of_path(item.path), _task_of(item)
    kind, message = rep.outcome, ""
    todo_exc = _not_implemented(call.excinfo) if rep.failed else None
    import_error = _import_error(call.excinfo) if rep.failed else None
    if todo_exc is not None:
        kind = "todo"
        func, where = report.learner_frame(todo_exc, impl)
        rep._kata_todo = (func, where, task)  # type: ignore[attr-defined]
        readme = f"katas/{catalog.KATAS[number][0]}/README.md" if number else "the kata README"
        rep.longrepr = (f"TODO: {func}() is not implemented yet ({where}). Read {readme}"
                        + (f", Task {task}." if task else "."))
    elif import_error is not None:
        kind, message = "import_error", import_error
        rep._kata_import_error = True  # type: ignore[attr-defined]
        rep.longrepr = f"IMPORT ERROR: {import_error}"
    elif rep.skipped and is_optional_skip(_skip_reason(rep)):
        kind = "optional"
    elif rep.failed and call.excinfo is not None and call.excinfo.errisinstance(KataTimeout):
        _, where = report.learner_frame(call.excinfo.value, impl)
        at = f" It was at {where}." if where != "?" else ""
        rep.longrepr = (
            f"TIMEOUT: the check ran over {call.excinfo.value.limit:g}s and was stopped.{at} "
            "Your code probably hangs: a loop whose condition never changes, a wait on something "
            "that never comes, or a kernel launched over a far too large grid."
        )
        kind = "timeout"
    elif rep.failed and call.excinfo is not None and item.config.option.tbstyle == "auto":
        shown = item.config._kata_detailed  # type: ignore[attr-defined]
        if shown < DETAILED_FAILURES or item.config.option.verbose > 0 or os.environ.get("KATA_REPORT"):
            rep.longrepr = report.compact_failure(call.excinfo.value, Path(item.path), impl)
            item.config._kata_detailed = shown + 1  # type: ignore[attr-defined]
        else:  # the first few failures in full; later ones (often the same bug) in one line
            rep.longrepr = (f"{report.one_line(call.excinfo.value)}\n  (details: add -v, or run "
                            f"this check alone with -k {item.name.split('[')[0]})")
    item.config._kata_results.append(  # type: ignore[attr-defined]
        {"nodeid": item.nodeid, "kata": number, "task": task, "outcome": kind,
         "todo": getattr(rep, "_kata_todo", None), "message": message})
    return rep


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # (pytest names this hook's argument `report`, which hides the module of that name)
    report.sections = [(title, rewrite_seed_note(text)) for title, text in report.sections]


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> Any:
    """TODO and IMPORT ERROR are counted apart from failures: no FAILURES block, no FAILED
    line, no seed block for them (the exit status still says the run did not pass)."""
    if getattr(report, "_kata_todo", None):
        return "todo", "t", "TODO"
    if getattr(report, "_kata_import_error", False):
        return "import error", "I", "IMPORT ERROR"
    return None


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> Any:
    """The kata summary comes last, after pytest's own closing line."""
    result = yield
    config = session.config
    tr = config.pluginmanager.get_plugin("terminalreporter")
    results = config._kata_results  # type: ignore[attr-defined]
    ran = {r["nodeid"] for r in results}
    unrun = list(config._kata_unselected)  # type: ignore[attr-defined]
    unrun += [(kata, task) for nodeid, kata, task in config._kata_selected  # type: ignore[attr-defined]
              if nodeid not in ran]
    numbers = sorted({r["kata"] for r in results if r["kata"]} | {k for k, _ in unrun if k})
    impl = config._kata_impl  # type: ignore[attr-defined]
    summary = {}
    if numbers and tr is not None:
        tr.write_sep("=", "kata summary")
    for number in numbers:
        rows = [r for r in results if r["kata"] == number]
        lines, tasks = report.kata_summary(number, rows, unrun, impl, bool(session.shouldstop or session.shouldfail))
        if tr is not None:
            passed_all = all(t.done or not t.ran for t in tasks.values())
            for i, line in enumerate(lines):
                tr.write_line(line, bold=i == 0, green=i == 0 and passed_all,
                              red=i == 0 and not passed_all)
        summary[number] = {"tasks": {k: t.counts() for k, t in tasks.items()},
                           "passed": sum(t.passed for t in tasks.values()),
                           "total": sum(t.ran for t in tasks.values()),
                           "todo": sum(t.outcomes["todo"] for t in tasks.values()),
                           "skipped": sum(t.outcomes["skipped"] for t in tasks.values()),
                           "optional": sum(t.outcomes["optional"] for t in tasks.values())}
        summary[number]["failed"] = (summary[number]["total"] - summary[number]["passed"]
                                     - summary[number]["todo"])
    _save_progress(config, summary)
    return result


def _save_progress(config: pytest.Config, summary: dict[str, Any]) -> None:
    """The self-test reads KATA_REPORT; a learner's own runs go to the progress file."""
    impl = config._kata_impl  # type: ignore[attr-defined]
    report_path = os.environ.get("KATA_REPORT")
    if report_path:
        payload = {"impl": str(impl), "time": time.time(), "katas": summary,
                   "results": config._kata_results}  # type: ignore[attr-defined]
        Path(report_path).write_text(json.dumps(payload, indent=1))
        return
    if os.environ.get("KATA_NO_PROGRESS"):
        return
    for number, entry in summary.items():
        module_file = impl / f"{catalog.KATAS[number][1]}.py"
        mtime = module_file.stat().st_mtime if module_file.is_file() else 0.0
        progress.record_run(impl, number, entry["tasks"], mtime, time.time())
    perf_cases = config._kata_perf  # type: ignore[attr-defined]
    if perf_cases:
        import torch

        for module in {c["module"] for c in perf_cases}:
            progress.record_perf(module, {
                "gpu": torch.cuda.get_device_name(), "time": time.time(), "impl": str(impl),
                "cases": [c for c in perf_cases if c["module"] == module]})
