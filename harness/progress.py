"""The learner's progress file, `.kata_progress.json` (ignored by git).

The plugin records every learner run here (never the self-test's): per implementation
folder and kata, the outcome of each task's checks, and the perf tiers of GPU runs.
`status` reads it and answers at once instead of re-running every kata.

Schema (version 1):
    {"schema": 1,
     "runs": {IMPL_DIR: {KATA: {"time": float, "file_mtime": float,
                                "tasks": {TASK: {"passed", "failed", "todo", "skipped",
                                                 "optional", "not_run"}}}}},
     "perf": {MODULE: {"gpu", "time", "impl", "cases": [...]}},
     "perf_best": {MODULE: {"tier", "gpu", "time"}},      (the best tier any run reached)
     "hints": {KATA: {TASK: RUNGS_SHOWN}}}                 (`python kata.py hint`)
    Other commands may add their own top-level keys; readers ignore the keys they don't know.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from harness.katas import ROOT

SCHEMA = 1
PATH = ROOT / ".kata_progress.json"


def load(path: Path | None = None) -> dict[str, Any]:
    path = path or PATH
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"schema": SCHEMA}
    if data.get("schema") != SCHEMA:  # an older layout: start again rather than misread it
        return {"schema": SCHEMA}
    return data


def save(data: dict[str, Any], path: Path | None = None) -> None:
    path = path or PATH
    data["schema"] = SCHEMA
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)  # never a half-written file


def record_run(impl: Path, kata: str, tasks: dict[str, dict[str, int]], file_mtime: float,
               when: float) -> None:
    """Merge one run's task results in: tasks that ran replace their old entries."""
    data = load()
    entry = data.setdefault("runs", {}).setdefault(str(impl), {}).setdefault(kata, {"tasks": {}})
    for task, counts in tasks.items():
        old = entry["tasks"].get(task)
        if counts.get("not_run") and old and not old.get("not_run"):
            continue  # a --task/-k run that skipped this task keeps the last full result
        entry["tasks"][task] = counts
    entry["time"], entry["file_mtime"] = when, file_mtime
    save(data)


TIER_ORDER = ["none", "bronze", "silver", "gold"]


def run_tier(cases: list[dict[str, Any]]) -> str:
    """A perf run's tier: the lowest tier over its cases."""
    tiers = [case.get("tier", "none") for case in cases] or ["none"]
    return min((t if t in TIER_ORDER else "none" for t in tiers), key=TIER_ORDER.index)


def record_perf(module: str, entry: dict[str, Any]) -> None:
    data = load()
    data.setdefault("perf", {})[module] = entry
    tier = run_tier(entry.get("cases", []))
    best = data.setdefault("perf_best", {}).get(module)
    if best is None or best.get("tier") not in TIER_ORDER or \
            TIER_ORDER.index(tier) > TIER_ORDER.index(best["tier"]):
        data["perf_best"][module] = {"tier": tier, "gpu": entry.get("gpu", ""),
                                     "time": entry.get("time", 0.0)}
    save(data)


# Outcomes of a check that did not run: a GPU-only check on a CPU ("skipped"), or a check of
# an optional task the learner left out ("optional", harness/plugin.py).
NOT_RUN_OUTCOMES = ("skipped", "optional")


def task_done(counts: dict[str, int] | None) -> bool:
    """A task's last result passed: every check that ran passed (GPU-only checks skipped on a
    CPU count as done here), nothing failed, nothing left out. An optional task left out (its
    checks skipped as optional, none ran) is not done: see optional_not_started."""
    if not counts or counts.get("not_run") or counts.get("failed") or counts.get("todo"):
        return False
    return counts.get("passed", 0) > 0 or (counts.get("skipped", 0) > 0
                                           and not counts.get("optional", 0))


def optional_not_started(counts: dict[str, int] | None) -> bool:
    """An optional task the learner left out: its checks skipped as optional, none ran. It
    is neither done nor in the way of the required tasks."""
    if not counts or not counts.get("optional") or counts.get("not_run"):
        return False
    return not (counts.get("passed") or counts.get("failed") or counts.get("todo"))


def next_unfinished_task(entry: dict[str, Any], order: list[str]) -> str | None:
    """The first task of `order` (README order) whose last recorded result is not done (an
    optional task left out is passed over)."""
    tasks = entry.get("tasks", {})
    return next((t for t in order or sorted(tasks)
                 if not task_done(tasks.get(t)) and not optional_not_started(tasks.get(t))), None)


def edited_since(module_file: Path, entry: dict[str, Any]) -> bool:
    """Was the learner's module saved after the recorded run?"""
    return module_file.stat().st_mtime > entry.get("file_mtime", 0) + 1e-6


def recording() -> bool:
    """False for the self-test (KATA_REPORT) and runs that asked not to (KATA_NO_PROGRESS)."""
    return not (os.environ.get("KATA_REPORT") or os.environ.get("KATA_NO_PROGRESS"))


def record_hint(kata: str, task: str, rung: int) -> None:
    """Remember that rung `rung` (1-based) of kata's Task `task` hint ladder was shown."""
    data = load()
    seen = data.setdefault("hints", {}).setdefault(kata, {})
    seen[task] = max(int(seen.get(task, 0)), rung)
    save(data)


def hints_seen(kata: str, data: dict[str, Any] | None = None) -> dict[str, int]:
    """{TASK: rungs shown} for one kata."""
    data = load() if data is None else data
    return {task: int(n) for task, n in data.get("hints", {}).get(kata, {}).items()}


def hints_used(kata: str, data: dict[str, Any] | None = None) -> int:
    return sum(hints_seen(kata, data).values())
