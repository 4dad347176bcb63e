"""`python kata.py interview NN`: a timed coding interview on one kata.

    interview NN [--minutes 45] [--tasks 1,3] [--seed S] [--candidate NAME]   start
    interview --status        the countdown (also: interview --watch, live; finishes at 0)
    interview --finish        grade now: the rubric, and a JSON record for the interviewer
    interview --abandon       end without grading

Starting copies the pristine stub (stubs/<module>.py as committed) into a scratch folder,
`.kata_interview/NN/`, where the candidate works and checks with
`pytest katas/NN --impl .kata_interview/NN`. While an interview runs, `kata.py hint` and
`kata.py solution` refuse (they ask `active_interview()`).

The finish runs the kata's checks in a child process (harness/grade.py's runner: a scratch
cwd, a wall-clock limit) on inputs the candidate has never seen: hypothesis randomised (30
examples a property) from a hidden seed, with an empty example database (nothing replayed
from the candidate's own runs). The seed is derived from `--seed` when given (two candidates
started with the same --seed get the same draw), otherwise drawn fresh at the finish; it is
shown only in the rubric. The `ci` profile is not used: it is derandomised, which makes
hypothesis ignore --hypothesis-seed, so its inputs would be the same in every interview.

The rubric: correctness per task, edge cases caught (the kata's specific-case checks, as
opposed to its hypothesis properties), the perf tier on a GPU, the time used and the hints
used. It is printed and written to `.kata_interview/record-<stamp>.json`, beside a copy of
the candidate's file.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import progress
from harness.katas import KATAS, KATAS_DIR, ROOT, built_katas, task_titles

DEFAULT_MINUTES = 45.0
FINISH_TIME_LIMIT = 900.0  # seconds for the finishing run of the checks


def _dir() -> Path:
    return Path(os.environ.get("KATA_INTERVIEW_DIR") or ROOT / ".kata_interview")


def _state_path() -> Path:
    return _dir() / "state.json"


def _now() -> float:
    """The clock (tests replace it)."""
    return time.time()


def _load_state() -> dict[str, Any] | None:
    try:
        return json.loads(_state_path().read_text())
    except (OSError, ValueError):
        return None


def _save_state(state: dict[str, Any]) -> None:
    path = _state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    os.replace(tmp, path)


def active_interview() -> dict[str, Any] | None:
    """The running interview (kata, module, scratch folder, start, minutes, tasks), or None.

    While it returns a value, hints and solutions must be refused. The hidden seed is not in
    it (it is not decided, or not stored, before the finish)."""
    state = _load_state()
    if not state or state.get("finished"):
        return None
    return {k: state[k] for k in ("kata", "module", "scratch", "started", "minutes", "tasks",
                                  "candidate") if k in state}


def hidden_seed(kata: str, seed: int | None) -> int:
    """The hypothesis seed of the finishing run: derived from --seed, else fresh."""
    if seed is None:
        return secrets.randbits(32)
    digest = hashlib.sha256(f"kata-interview/{kata}/{seed}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def pristine_stub(module: str) -> str:
    """stubs/<module>.py as committed (a learner may have edited the working copy)."""
    try:
        proc = subprocess.run(["git", "show", f"HEAD:stubs/{module}.py"], cwd=ROOT,
                              capture_output=True, text=True, timeout=30)
        if proc.returncode == 0 and proc.stdout:
            return proc.stdout
    except (OSError, subprocess.SubprocessError):
        pass
    return (ROOT / "stubs" / f"{module}.py").read_text()


def _hints_seen(kata: str) -> int:
    try:
        seen = getattr(progress, "hints_seen", None)
        return sum(seen(kata, progress.load()).values()) if seen else 0
    except Exception:  # noqa: BLE001 - the count is informative only
        return 0


def _fmt(seconds: float) -> str:
    seconds = int(round(abs(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def remaining(state: dict[str, Any]) -> float:
    return state["started"] + state["minutes"] * 60 - _now()


def countdown_line(state: dict[str, Any]) -> str:
    left = remaining(state)
    what = f"kata {state['kata']} ({state['module']})"
    if state.get("tasks"):
        what += f", Tasks {', '.join(state['tasks'])}"
    if left > 0:
        return f"interview: {what}: {_fmt(left)} left of {state['minutes']:g} min"
    return (f"interview: {what}: time is up ({_fmt(left)} over): "
            "python kata.py interview --finish")


# -- Start --------------------------------------------------------------------------------------
def start(kata: str, minutes: float, tasks: list[str] | None, seed: int | None,
          candidate: str | None, force: bool) -> int:
    current = active_interview()
    if current and not force:
        print(f"interview: an interview of kata {current['kata']} is running; "
              "finish it (--finish) or abandon it (--abandon) first")
        return 2
    folder, module = KATAS[kata]
    titles = task_titles(kata)
    if tasks:
        unknown = [t for t in tasks if titles and t not in titles]
        if unknown:
            print(f"interview: kata {kata} has Tasks {', '.join(titles)}, not {', '.join(unknown)}")
            return 2
    scratch = _dir() / kata
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    target = scratch / f"{module}.py"
    target.write_text(pristine_stub(module))
    state = {"kata": kata, "module": module, "scratch": str(scratch), "started": _now(),
             "minutes": minutes, "tasks": tasks or [], "seed": seed, "candidate": candidate,
             "hints_at_start": _hints_seen(kata), "finished": False}
    _save_state(state)
    rel = os.path.relpath(scratch, ROOT) if scratch.is_relative_to(ROOT) else str(scratch)
    print(f"interview: kata {kata} ({module}), {minutes:g} minutes"
          + (f", Tasks {', '.join(tasks)}" if tasks else ", every task"))
    print(f"  the candidate edits   {os.path.relpath(target, ROOT) if target.is_relative_to(ROOT) else target}")
    print(f"  the task              katas/{folder}/README.md"
          + (f" (Tasks {', '.join(tasks)})" if tasks else ""))
    task_opt = f" --task {','.join(tasks)}" if tasks else ""
    print(f"  check as you go       pytest katas/{kata} --impl {rel}{task_opt}")
    print("  countdown             python kata.py interview --status   (--watch: live)")
    print("  at the end            python kata.py interview --finish")
    print("hints and solutions are locked until the interview ends; the final checks use "
          "hidden inputs.")
    print(countdown_line(state))
    return 0


# -- Finish -------------------------------------------------------------------------------------
def check_kinds(kata: str) -> dict[str, str]:
    """test function name -> 'property' (hypothesis @given) or 'edge case' (a specific case),
    read from the kata's test files without importing them."""
    kinds: dict[str, str] = {}
    for path in sorted((KATAS_DIR / KATAS[kata][0]).glob("test_*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                given = any("given" in ast.unparse(d) for d in node.decorator_list)
                kinds[node.name] = "property" if given else "edge case"
    return kinds


def _test_name(nodeid: str) -> str:
    return nodeid.split("::")[-1].split("[")[0]


def rubric(state: dict[str, Any], report: dict[str, Any] | None, run_status: str,
           seed: int, finished_at: float, perf_cases: list[dict[str, Any]],
           gpu: bool) -> dict[str, Any]:
    kata = state["kata"]
    titles = task_titles(kata)
    kinds = check_kinds(kata)
    results = (report or {}).get("results", [])
    tasks: dict[str, Any] = {}
    selected = state.get("tasks") or sorted(titles, key=int)
    for task in selected:
        rows = [r for r in results if r.get("task") == task
                and r["outcome"] not in progress.NOT_RUN_OUTCOMES]
        passed = sum(r["outcome"] == "passed" for r in rows)
        tasks[task] = {"title": titles.get(task, ""), "passed": passed, "checks": len(rows),
                       "done": bool(rows) and passed == len(rows),
                       "outcomes": {o: sum(r["outcome"] == o for r in rows)
                                    for o in sorted({r["outcome"] for r in rows})},
                       "failing": sorted(r["nodeid"].split("::", 1)[-1] for r in rows
                                         if r["outcome"] != "passed")}
    graded = [r for r in results if r.get("task") in tasks
              and r["outcome"] not in progress.NOT_RUN_OUTCOMES]
    edge = [r for r in graded if kinds.get(_test_name(r["nodeid"])) == "edge case"]
    props = [r for r in graded if kinds.get(_test_name(r["nodeid"])) == "property"]
    tier_order = ["none", "bronze", "silver", "gold"]
    tiers = [c.get("tier", "none") for c in perf_cases]
    deadline = state["started"] + state["minutes"] * 60
    module_file = Path(state["scratch"]) / f"{state['module']}.py"
    edited_late = module_file.is_file() and module_file.stat().st_mtime > deadline
    hints = max(0, _hints_seen(kata) - int(state.get("hints_at_start", 0)))
    return {
        "kata": kata, "module": state["module"], "candidate": state.get("candidate"),
        "tasks": tasks, "run": run_status,
        "edge_cases": {"caught": sum(r["outcome"] == "passed" for r in edge), "of": len(edge),
                       "missed": sorted({_test_name(r["nodeid"]) for r in edge
                                         if r["outcome"] != "passed"})},
        "properties": {"hold": sum(r["outcome"] == "passed" for r in props), "of": len(props),
                       "broken": sorted({_test_name(r["nodeid"]) for r in props
                                         if r["outcome"] != "passed"})},
        "perf": ({"tier": min(tiers, key=tier_order.index) if tiers else "not measured",
                  "cases": perf_cases} if gpu else {"tier": "no CUDA GPU: not measured", "cases": []}),
        "time": {"started": state["started"], "finished": finished_at,
                 "used_s": round(finished_at - state["started"], 1),
                 "allowed_s": state["minutes"] * 60,
                 "over_s": round(max(0.0, finished_at - deadline), 1),
                 "edited_after_time_up": edited_late},
        "hints_used": hints,
        "hidden_seed": seed, "seed": state.get("seed"),
        "profile": "learner (randomised, 30 examples a property, empty example database)",
        "file_sha256": hashlib.sha256(module_file.read_bytes()).hexdigest() if module_file.is_file() else None,
    }


def print_rubric(r: dict[str, Any]) -> None:
    who = f" - {r['candidate']}" if r.get("candidate") else ""
    print(f"\ninterview rubric: kata {r['kata']} ({r['module']}){who}")
    t = r["time"]
    over = f", {_fmt(t['over_s'])} over" if t["over_s"] else ", on time"
    print(f"  time used      {_fmt(t['used_s'])} of {_fmt(t['allowed_s'])}{over}"
          + ("; the file was edited after time was up" if t["edited_after_time_up"] else ""))
    if r["run"] != "ok":
        print(f"  checks run     {r['run'].upper()}: the run did not finish normally")
    print("  correctness per task")
    for task, e in r["tasks"].items():
        state = "done" if e["done"] else ("not run" if not e["checks"] else "")
        extra = {k: v for k, v in e["outcomes"].items() if k != "passed"}
        detail = ", ".join(f"{v} {k}" for k, v in extra.items())
        print(f"    Task {task} {e['title'][:40]:<40} {e['passed']:>3}/{e['checks']:<3} {state}"
              + (f" ({detail})" if detail else ""))
    ec, pr = r["edge_cases"], r["properties"]
    print(f"  edge cases     {ec['caught']} of {ec['of']} specific-case checks pass"
          + (f"; missed: {', '.join(ec['missed'][:6])}" if ec["missed"] else ""))
    print(f"  properties     {pr['hold']} of {pr['of']} hypothesis properties hold on hidden inputs"
          + (f"; broken: {', '.join(pr['broken'][:6])}" if pr["broken"] else ""))
    print(f"  perf tier      {r['perf']['tier']}")
    print(f"  hints used     {r['hints_used']} (hints and solutions are locked during an interview)")
    seed_from = f" (from --seed {r['seed']})" if r.get("seed") is not None else " (drawn fresh)"
    print(f"  hidden seed    {r['hidden_seed']}{seed_from}")


def finish(time_limit: float) -> int:
    state = _load_state()
    if not state or state.get("finished"):
        print("interview: no interview is running (start one: python kata.py interview NN)")
        return 2
    from harness import grade

    finished_at = _now()
    kata, module = state["kata"], state["module"]
    seed = hidden_seed(kata, state.get("seed"))
    scratch_impl = Path(state["scratch"])
    print(f"interview: grading kata {kata} on hidden inputs ...", flush=True)
    with tempfile.TemporaryDirectory(prefix="kata-interview-") as tmp:
        work = Path(tmp)
        impl = work / "impl"
        shutil.copytree(scratch_impl, impl, ignore=shutil.ignore_patterns("__pycache__"))
        extra = [f"--hypothesis-seed={seed}"]
        if state.get("tasks"):
            extra += ["--task", ",".join(state["tasks"])]
        env = {"HYPOTHESIS_PROFILE": "learner",
               "HYPOTHESIS_STORAGE_DIRECTORY": str(work / "hypothesis"),
               "KATA_PERF_HISTORY": str(work / "perf")}
        run = grade.run_checks(kata, impl, scratch=work / "run", timeout=time_limit,
                               memory_gb=None, extra_args=extra, env=env)
        perf_cases = []
        history_file = work / "perf" / f"{module}.jsonl"
        if history_file.is_file():
            perf_cases = [json.loads(line) for line in history_file.read_text().splitlines() if line]
            perf_cases = [{"case": c.get("case"), "tier": c.get("tier"), "ms": c.get("ms")}
                          for c in perf_cases]
        gpu = "GPU " in run.output and "gpu and perf checks run" in run.output
    r = rubric(state, run.report, run.status, seed, finished_at, perf_cases, gpu)
    print_rubric(r)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(finished_at))
    record = _dir() / f"record-{stamp}.json"
    code_copy = _dir() / f"record-{stamp}.{module}.py"
    src = scratch_impl / f"{module}.py"
    if src.is_file():
        shutil.copy2(src, code_copy)
        r["code"] = str(code_copy)
    r["output_tail"] = run.output[-4000:]
    record.write_text(json.dumps(r, indent=1, sort_keys=True))
    state.update(finished=True, finished_at=finished_at, record=str(record))
    _save_state(state)
    print(f"  record         {record}")
    return 0


def abandon() -> int:
    state = _load_state()
    if not state or state.get("finished"):
        print("interview: no interview is running")
        return 2
    state.update(finished=True, finished_at=_now(), abandoned=True)
    _save_state(state)
    print(f"interview: kata {state['kata']} abandoned (no grade); hints and solutions are unlocked")
    return 0


def status() -> int:
    state = active_interview()
    if not state:
        print("interview: no interview is running")
        return 1
    print(countdown_line(state))
    return 0


def watch(time_limit: float) -> int:
    """A live countdown; at zero it finishes the interview."""
    state = active_interview()
    if not state:
        print("interview: no interview is running")
        return 1
    try:
        while remaining(state) > 0:
            print("\r" + countdown_line(state) + "   ", end="", flush=True)
            time.sleep(min(1.0, max(0.05, remaining(state))))
            if not active_interview():  # finished from another terminal
                print()
                return 0
    except KeyboardInterrupt:
        print("\ninterview: countdown stopped; the interview goes on (--status, --finish)")
        return 0
    print("\n" + countdown_line(state))
    return finish(time_limit)


# -- Command line -------------------------------------------------------------------------------
def _kata(value: str) -> str:
    number = value.strip().zfill(2)
    if number not in KATAS or number not in built_katas():
        raise argparse.ArgumentTypeError(f"no kata {value!r} in this checkout")
    return number


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python kata.py interview",
        description="A timed interview on one kata: a scratch copy of the stub, hints and "
        "solutions locked, a countdown; the finish grades on hidden inputs and prints a rubric "
        "(also written as JSON to .kata_interview/record-<stamp>.json).",
        epilog="examples: python kata.py interview 10 --minutes 45 --tasks 1,3 --seed 7\n"
               "          python kata.py interview --status\n"
               "          python kata.py interview --finish",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kata", nargs="?", type=_kata, help="kata number, e.g. 10 (to start)")
    p.add_argument("--minutes", type=float, default=DEFAULT_MINUTES,
                   help=f"time allowed (default {DEFAULT_MINUTES:g})")
    p.add_argument("--tasks", default=None, metavar="N[,M]",
                   help="only these tasks of the kata (default: all)")
    p.add_argument("--seed", type=int, default=None,
                   help="derive the hidden inputs from this seed (same seed, same draw); "
                   "default: fresh at the finish")
    p.add_argument("--candidate", default=None, help="a name for the record")
    p.add_argument("--force", action="store_true", help="start even if one is running (drops it)")
    p.add_argument("--time-limit", type=float, default=FINISH_TIME_LIMIT,
                   help=f"seconds the finishing run may take (default {FINISH_TIME_LIMIT:g})")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--status", action="store_true", help="print the countdown")
    g.add_argument("--watch", action="store_true", help="a live countdown; finishes at zero")
    g.add_argument("--finish", action="store_true", help="grade now and print the rubric")
    g.add_argument("--abandon", action="store_true", help="end without grading")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.finish:
        return finish(args.time_limit)
    if args.abandon:
        return abandon()
    if args.status:
        return status()
    if args.watch:
        return watch(args.time_limit)
    if args.kata is None:
        state = active_interview()
        if state:
            print(countdown_line(state))
            return 0
        p.print_usage()
        print("interview: give a kata number to start, e.g. python kata.py interview 10")
        return 2
    tasks = None
    if args.tasks:
        tasks = sorted({t.strip().lstrip("0") or "0" for t in args.tasks.split(",") if t.strip()},
                       key=lambda t: int(t) if t.isdigit() else 0)
        if not all(t.isdigit() for t in tasks):
            print(f"interview: --tasks {args.tasks!r}: give task numbers, e.g. --tasks 1,3")
            return 2
    if args.minutes <= 0:
        print("interview: --minutes must be positive")
        return 2
    return start(args.kata, args.minutes, tasks, args.seed, args.candidate, args.force)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
