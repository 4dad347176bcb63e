"""The learner's progress file, `.kata_progress.json` (ignored by git).

The plugin records every learner run here (never the self-test's): per implementation
folder and kata, the outcome of each task's checks, and the perf tiers of GPU runs.
`status` reads it and answers at once instead of re-running every kata.

Schema (version 1):
    {"schema": 1,
     "runs": {IMPL_DIR: {KATA: {"time": float, "file_mtime": float,
                                "tasks": {TASK: {"passed", "failed", "todo", "skipped",
                                                 "not_run"}}}}},
     "perf": {MODULE: {"gpu", "time", "impl", "cases": [...]}},
     "hints": {...}}   (other commands may add their own top-level keys)
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


def record_perf(module: str, entry: dict[str, Any]) -> None:
    data = load()
    data.setdefault("perf", {})[module] = entry
    save(data)
