"""`python kata.py status`: every kata's state, task by task, from the last recorded runs.

It answers at once from `.kata_progress.json` (which every `pytest katas/NN` run updates);
`--run` re-runs the checks of every kata first (quick profile), which takes a while.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Any

from harness import progress
from harness.impl import resolve_impl_dir
from harness.katas import KATAS, ROOT, built_katas, task_titles

TIER_ORDER = progress.TIER_ORDER


def perf_tier(data: dict[str, Any], module: str) -> str:
    """'perf gold on NVIDIA H100 ...': the lowest tier over the module's last perf cases,
    and the best tier any run reached when that was higher."""
    entry = data.get("perf", {}).get(module)
    if not entry or not entry.get("cases"):
        return ""
    worst = progress.run_tier(entry["cases"])
    text = f"perf {worst} on {entry['gpu']}"
    best = data.get("perf_best", {}).get(module, {}).get("tier", worst)
    if best in TIER_ORDER and TIER_ORDER.index(best) > TIER_ORDER.index(worst):
        text += f" (best: {best})"
    return text


def kata_state(number: str, impl_runs: dict[str, Any], impl: Any) -> tuple[str, str]:
    """(state, next step) of one kata for the implementation folder `impl`."""
    folder, module = KATAS[number]
    module_file = impl / f"{module}.py"
    if not module_file.is_file():
        return f"no module here ({module}.py is not in {impl})", ""
    entry = impl_runs.get(number)
    if not entry:
        return "not run yet", f"pytest katas/{number}"
    titles = task_titles(number)
    tasks = entry.get("tasks", {})
    order = list(titles) or sorted(tasks)
    finished = [t for t in order if progress.task_done(tasks.get(t))]
    gpu_only = [t for t in finished if tasks[t].get("skipped")]  # speed not checked here
    done = [t for t in finished if tasks[t].get("passed")]  # GPU-only tasks are not counted
    optional = [t for t in order if progress.optional_not_started(tasks.get(t))]
    todo_next = progress.next_unfinished_task(entry, order)
    total = len(titles or tasks)
    if not any(c.get("passed") or c.get("failed") for c in tasks.values()):
        state = f"not started (0 of {total} tasks)"
    elif todo_next is None:
        required = total - len(optional)
        state = "done" + (" on CPU" if gpu_only else "") + f" ({required} of {required} tasks"
        if optional:
            which = ", ".join(optional)
            state += f"; optional Task{'s' if len(optional) > 1 else ''} {which} not started"
        state += ")"
    else:
        state = f"in progress ({len(done)} of {total} tasks done)"
    if progress.edited_since(module_file, entry):
        state += ", edited since the last run"
    if todo_next is not None:
        title = titles.get(todo_next, "")
        step = f"Task {todo_next}" + (f" ({title})" if title else "") + f": pytest katas/{number} --task {todo_next}"
    elif gpu_only:
        step = f"speed needs a GPU: pytest katas/{number} -m gpu"
    else:
        step = ""
    return state, step


def rerun(impl: str, numbers: list[str]) -> None:
    env = dict(os.environ, HYPOTHESIS_PROFILE="learner")
    env.pop("KATA_REPORT", None)
    print(f"running the checks of {len(numbers)} katas against {impl} ...", flush=True)
    subprocess.run([sys.executable, "-m", "pytest", *[f"katas/{KATAS[n][0]}" for n in numbers],
                    "--impl", impl, "-q", "-p", "no:cacheprovider", "--benchmark-disable",
                    "--tb=no"], cwd=ROOT, env=env, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python kata.py status", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", default=os.environ.get("KATA_IMPL", "stubs"),
                        help="whose modules: stubs (default), reference, or a folder")
    parser.add_argument("--run", action="store_true",
                        help="re-run every kata's checks first instead of reading the last runs")
    args = parser.parse_args(argv)
    try:
        impl = resolve_impl_dir(args.impl)
    except NotADirectoryError as exc:
        print(f"status: {exc}")
        return 2
    numbers = built_katas()
    if args.run:
        rerun(str(impl), numbers)
    data = progress.load()
    impl_runs = data.get("runs", {}).get(str(impl), {})
    print(f"katas for {impl} (from the last runs; --run re-runs them)\n")
    print(f"{'kata':<24}{'state':<44}next")
    first_step = ""
    for number, (folder, module) in KATAS.items():
        if number not in numbers:
            print(f"{folder:<24}coming")
            continue
        state, step = kata_state(number, impl_runs, impl)
        tier = perf_tier(data, module) if impl_runs.get(number) else ""
        if tier:
            state += f", {tier}"
        hints = progress.hints_used(number, data)
        if hints:
            state += f", hints: {hints}"
        first_step = first_step or (f"kata {number}, {step}" if step else "")
        print(f"{folder:<24}{state:<43} {step}")
    if first_step:
        print(f"\nnext to do: {first_step}")
    return 0
