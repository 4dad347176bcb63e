"""Running many pytest sessions fast and in isolation (the self-test's engine).

The parent imports torch, triton, hypothesis and pytest once; every pytest session then
runs in a child forked from it, so it starts in milliseconds instead of seconds, and it
ends with its process: a mutant's module, Triton's in-memory caches and hypothesis' state
can never leak into the next session (tests/test_workers.py proves it). The parent stays
single-threaded (forking a threaded process can deadlock) and keeps `jobs` children busy.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from harness.katas import ROOT

RUN_TIMEOUT_S = 600


@dataclass
class Session:
    """One pytest invocation: `pytest TARGET --impl IMPL EXTRA...` with the ci profile."""
    target: str
    impl: str
    log: Path
    extra: list[str] = field(default_factory=list)

    @property
    def report(self) -> Path:
        return self.log.with_suffix(".json")


@dataclass
class Outcome:
    code: int  # pytest's exit code; -9 when killed at the time limit
    output: str
    data: dict[str, Any]  # the plugin's KATA_REPORT
    seconds: float


def preload() -> None:
    """Import the heavy libraries once, before any fork (no torch op runs here)."""
    os.environ.setdefault("HYPOTHESIS_PROFILE", "ci")
    try:
        import torch  # noqa: F401

        if not torch.cuda.is_available():  # checked without initialising CUDA state
            os.environ.setdefault("TRITON_INTERPRET", "1")
    except ImportError:  # pragma: no cover
        pass
    # transformers is the oracle of katas 06, 15 and 16: ~5 s to import, once here instead of
    # in every session. Its tokenizers must not start threads before a fork.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("numpy", "hypothesis", "hypothesis.strategies", "pytest", "triton",
                 "triton.language", "triton.runtime.interpreter", "safetensors",
                 "transformers", "transformers.models.llama.modeling_llama",
                 "transformers.models.mixtral.modeling_mixtral"):
        try:
            __import__(name)
        except ImportError:
            pass


def _child(session: Session) -> None:
    """Runs in the forked child: pytest in-process, output to the session's log."""
    code = 3
    try:
        fd = os.open(session.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.environ.update(HYPOTHESIS_PROFILE="ci", KATA_REPORT=str(session.report),
                          PYTHONUNBUFFERED="1")
        os.environ.pop("KATA_IMPL", None)
        os.chdir(ROOT)
        try:
            import torch

            torch.set_num_threads(1)  # the workers share the cores
        except ImportError:  # pragma: no cover
            pass
        import pytest

        code = int(pytest.main([session.target, "--impl", session.impl, "-q", "-p",
                                "no:cacheprovider", "--benchmark-disable", *session.extra]))
    except BaseException:  # noqa: BLE001 - whatever happens, the parent gets an exit code
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _start(session: Session) -> int:
    session.log.parent.mkdir(parents=True, exist_ok=True)
    session.report.unlink(missing_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
        _child(session)
    return pid


def _finish(session: Session, status: int, seconds: float) -> Outcome:
    code = os.waitstatus_to_exitcode(status) if status >= 0 else -9
    output = session.log.read_text(errors="replace") if session.log.is_file() else ""
    if status < 0:
        output += f"\n(killed after {RUN_TIMEOUT_S} s)"
    try:
        data = json.loads(session.report.read_text())
    except (OSError, ValueError):
        data = {}
    return Outcome(code, output, data, seconds)


# A job is a generator: it yields the Sessions it needs, one at a time, receives each
# Outcome, and returns its result. That lets a job decide on a second run (a mutant whose
# hint was not in the first, short run) without the parent ever using threads.
Job = Iterator[Session]


def run_jobs(jobs: list[Callable[[], Any]], workers: int,
             on_done: Callable[[Any, float], None]) -> None:
    """Drive `jobs` (generator functions) with up to `workers` pytest sessions at a time.
    `on_done(result, seconds)` is called as each job finishes, in finishing order."""
    preload()
    queue = deque(jobs)
    running: dict[int, tuple[Any, Session, float, float]] = {}  # pid -> (gen, session, t0, job t0)

    def advance(gen: Any, value: Any, job_start: float) -> None:
        try:
            session = gen.send(value)
        except StopIteration as stop:
            on_done(stop.value, time.monotonic() - job_start)
            return
        running[_start(session)] = (gen, session, time.monotonic(), job_start)

    while queue or running:
        while queue and len(running) < workers:
            advance(queue.popleft()(), None, time.monotonic())
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            now = time.monotonic()
            for child, (gen, session, t0, _) in list(running.items()):
                if now - t0 > RUN_TIMEOUT_S:
                    os.kill(child, signal.SIGKILL)
                    os.waitpid(child, 0)
                    gen, session, t0, job_start = running.pop(child)
                    advance(gen, _finish(session, -1, now - t0), job_start)
            time.sleep(0.02)
            continue
        if pid not in running:
            continue
        gen, session, t0, job_start = running.pop(pid)
        advance(gen, _finish(session, status, time.monotonic() - t0), job_start)
