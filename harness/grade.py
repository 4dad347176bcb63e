"""`python kata.py grade ROSTER_DIR`: grade every learner folder of a class, kata by kata.

Each folder under ROSTER_DIR is one learner's `--impl` folder (it holds e.g. `scheduler.py`).
Every (learner, kata) pair is graded by `pytest katas/NN --impl COPY` in a process of its own:

- the learner's folder is copied into a scratch directory first, so a submission cannot write
  into the roster (its own folder or another learner's);
- the process runs in a scratch working directory with its own HOME and TMPDIR, with limits on
  memory (RLIMIT_AS) and CPU time (RLIMIT_CPU), and a wall-clock limit after which its whole
  process group is killed: a submission that hangs is reported as TIMEOUT, one that does not
  import as IMPORT ERROR, and the grader goes on with the next;
- the learner's code never runs inside the grader's process.

This keeps one bad submission from taking the machine down or spoiling another's grade. It is
NOT a security sandbox: the code runs as your user, can read your files and use the network.
Grade code you do not trust inside a container or a throw-away VM.

Score of a task = checks of the task that pass / checks of the task (GPU-only checks that were
skipped on a CPU are left out of both). Reports: CSV (one row per learner, kata and task,
sorted), JSON (sorted keys) and a self-contained HTML page (a heatmap learner x task and the
checks that failed most often).
"""
from __future__ import annotations

import argparse
import csv
import html
import io
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from harness import progress
from harness.katas import KATAS, KATAS_DIR, ROOT, built_katas

DEFAULT_TIMEOUT = 600.0  # seconds of wall clock per learner and kata
DEFAULT_MEMORY_GB = 4.0
_TASK = re.compile(r"TestTask(\d+)")


# -- Running one submission -----------------------------------------------------------------
@dataclass
class RunResult:
    """What one pytest process of a submission left behind."""

    status: str  # "ok" (pytest ran to its end), "timeout", "crashed"
    returncode: int | None
    seconds: float
    report: dict[str, Any] | None
    output: str


def _limits(memory_bytes: int | None, cpu_seconds: int | None) -> Any:
    def apply() -> None:  # runs in the child, between fork and exec
        os.setsid()  # a process group of its own: a timeout kills it and every child
        if memory_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        if cpu_seconds:
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def run_checks(kata: str, impl: Path, *, scratch: Path, timeout: float,
               memory_gb: float | None = DEFAULT_MEMORY_GB, cpu_seconds: int | None = None,
               extra_args: Sequence[str] = (), env: dict[str, str] | None = None) -> RunResult:
    """Run `pytest katas/NN --impl impl` in a child process under limits; cwd, HOME and TMPDIR
    are fresh folders under `scratch`. The kata's report (KATA_REPORT) is read back."""
    work, home, tmp = scratch / "work", scratch / "home", scratch / "tmp"
    for d in (work, home, tmp):
        d.mkdir(parents=True, exist_ok=True)
    report_path = scratch / "report.json"
    child_env = {k: v for k, v in os.environ.items()
                 if k not in ("KATA_IMPL", "KATA_REPORT", "PYTEST_ADDOPTS", "HYPOTHESIS_STORAGE_DIRECTORY")}
    child_env.update(KATA_REPORT=str(report_path), KATA_NO_PROGRESS="1", HYPOTHESIS_PROFILE="ci",
                     HOME=str(home), TMPDIR=str(tmp), PYTHONDONTWRITEBYTECODE="1",
                     COLUMNS="120")
    child_env.update(env or {})
    folder = KATAS_DIR / KATAS[kata][0]
    cmd = [sys.executable, "-m", "pytest", str(folder), "--impl", str(impl),
           "--rootdir", str(ROOT), "-c", str(ROOT / "pyproject.toml"),
           "-p", "no:cacheprovider", "-q", "--benchmark-storage", f"file://{work / '.benchmarks'}",
           *extra_args]
    memory = int(memory_gb * (1 << 30)) if memory_gb else None
    cpu = cpu_seconds if cpu_seconds is not None else int(2 * timeout) + 30
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=work, env=child_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            preexec_fn=_limits(memory, cpu))
    status = "ok"
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        status = "timeout"
        _kill_group(proc)
        out, _ = proc.communicate()
    seconds = time.monotonic() - start
    text = out.decode(errors="replace") if out else ""
    report = None
    if report_path.is_file():
        try:
            report = json.loads(report_path.read_text())
        except ValueError:
            report = None
    if status == "ok" and report is None:
        status = "crashed"
    if status == "ok" and proc.returncode is not None and proc.returncode < 0:
        status = "crashed"  # killed by a signal (SIGXCPU at the CPU limit, SIGKILL, ...)
    return RunResult(status, proc.returncode, seconds, report, text)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# -- What a kata checks (from the test files, without importing anyone's code) --------------
@dataclass
class KataChecks:
    """Checks of each task as collected on reference/ (trusted code), GPU-only ones apart."""

    tasks: dict[str, list[str]] = field(default_factory=dict)  # task -> nodeids
    gpu_only: set[str] = field(default_factory=set)
    gpu: bool = False  # whether the collecting process saw a CUDA GPU


_COLLECT_SCRIPT = r"""
import json, sys, pytest
class Grab:
    def __init__(self): self.items, self.gpu = [], False
    def pytest_collection_finish(self, session):
        self.gpu = bool(getattr(session.config, "_kata_gpu", False))
        self.items = [(i.nodeid, any(m.name == "skip" for m in i.iter_markers()) or
                       any(m.name == "gpu" for m in i.iter_markers())) for i in session.items]
g = Grab()
code = pytest.main(sys.argv[2:], plugins=[g])
open(sys.argv[1], "w").write(json.dumps({"gpu": g.gpu, "items": g.items}))
"""


def collect_checks(kata: str, scratch: Path) -> KataChecks:
    """Every check of kata NN, per task, from a collection of reference/ in a child process."""
    scratch.mkdir(parents=True, exist_ok=True)
    out = scratch / "collected.json"
    folder = KATAS_DIR / KATAS[kata][0]
    env = {k: v for k, v in os.environ.items() if k not in ("KATA_IMPL", "KATA_REPORT", "PYTEST_ADDOPTS")}
    env.update(KATA_NO_PROGRESS="1", HYPOTHESIS_PROFILE="ci")
    proc = subprocess.run([sys.executable, "-c", _COLLECT_SCRIPT, str(out), str(folder),
                           "--impl", "reference", "--collect-only", "-q", "-p", "no:cacheprovider"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if not out.is_file():
        raise RuntimeError(f"could not collect kata {kata}'s checks:\n{proc.stdout}{proc.stderr}")
    data = json.loads(out.read_text())
    checks = KataChecks(gpu=data["gpu"])
    for nodeid, gpu in data["items"]:
        task = _task_of(nodeid)
        if task is None:
            continue
        checks.tasks.setdefault(task, []).append(nodeid)
        if gpu:
            checks.gpu_only.add(nodeid)
    return checks


def _task_of(nodeid: str) -> str | None:
    m = _TASK.search(nodeid)
    return m.group(1) if m else None


def _short(nodeid: str) -> str:
    """'katas/10_scheduler/test_scheduler.py::TestTask1Basics::test_x[a]' -> 'TestTask1Basics::test_x[a]'."""
    return nodeid.split("::", 1)[1] if "::" in nodeid else nodeid


# -- Scoring ----------------------------------------------------------------------------------
def score(kata: str, checks: KataChecks, run: RunResult | None, tasks: set[str] | None,
          gpu: bool) -> list[dict[str, Any]]:
    """One row per task: counts, the score and the failing checks (stable order)."""
    outcomes: dict[str, str] = {}
    import_error = ""
    if run is not None and run.report:
        for r in run.report.get("results", []):
            outcomes[_normalise(r["nodeid"])] = r["outcome"]
            if r["outcome"] == "import_error" and not import_error:
                import_error = str(r.get("message", ""))[:500]
    rows = []
    for task in sorted(checks.tasks, key=int):
        if tasks is not None and task not in tasks:
            continue
        counted = [n for n in checks.tasks[task] if gpu or n not in checks.gpu_only]
        counts = {"passed": 0, "failed": 0, "todo": 0, "timeout": 0, "import_error": 0,
                  "not_run": 0}
        failing = []
        for nodeid in counted:
            outcome = outcomes.get(_normalise(nodeid))
            if outcome is None:  # the process died before the check ran (or never started)
                outcome = "timeout" if run is not None and run.status == "timeout" else "not_run"
            if outcome in progress.NOT_RUN_OUTCOMES:  # GPU-only on a CPU, or an optional task left out
                outcome = "not_run"
            counts[outcome if outcome in counts else "failed"] += 1
            if outcome in ("failed", "timeout") and _normalise(nodeid) in outcomes:
                failing.append(_short(nodeid))  # checks that ran and failed (not a killed run)
        total = len(counted)
        rows.append({"kata": kata, "task": task, "checks": total, **counts,
                     "score": round(counts["passed"] / total, 4) if total else None,
                     "status": _status(run, counts, total), "failing": sorted(failing),
                     **({"import_error_message": import_error} if counts["import_error"] else {})})
    return rows


def _normalise(nodeid: str) -> str:
    """Node ids relative to the repository whatever the child's cwd was."""
    i = nodeid.find("katas/")
    return nodeid[i:] if i >= 0 else nodeid


def _status(run: RunResult | None, counts: dict[str, int], total: int) -> str:
    if run is None:
        return "missing"  # no module for this kata in the learner's folder
    if run.status == "timeout":
        return "timeout"
    if run.status == "crashed":
        return "crashed"
    if counts["import_error"]:
        return "import_error"
    if counts["timeout"]:
        return "timeout"
    if total and counts["passed"] == total:
        return "done"
    if counts["todo"] == total:
        return "todo"
    return "partial"


# -- The roster --------------------------------------------------------------------------------
def learners(roster: Path) -> list[Path]:
    return sorted((p for p in roster.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name)


def grade(roster: Path, katas: list[str], *, jobs: int = 1, timeout: float = DEFAULT_TIMEOUT,
          memory_gb: float | None = -1.0, tasks: set[str] | None = None,
          check_timeout: float | None = None, log: Any = None) -> dict[str, Any]:
    """Grade every learner folder under roster on katas; returns the JSON-ready result.
    memory_gb: the address-space limit per process; negative: 4 GiB on a CPU, none on a GPU."""
    roster = roster.resolve()
    people = learners(roster)
    base = Path(tempfile.mkdtemp(prefix="kata-grade-"))
    try:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            collected = list(pool.map(lambda k: collect_checks(k, base / f"collect-{k}"), katas))
        checks = dict(zip(katas, collected))
        gpu = any(c.gpu for c in collected)
        if memory_gb is not None and memory_gb < 0:  # auto: CUDA reserves far more address space
            memory_gb = None if gpu else DEFAULT_MEMORY_GB
        jobs_list = [(p, k) for p in people for k in katas]

        def one(job: tuple[Path, str]) -> tuple[str, str, RunResult | None]:
            person, kata = job
            module = KATAS[kata][1]
            if not (person / f"{module}.py").is_file():
                return person.name, kata, None
            scratch = base / f"{person.name}-{kata}"
            impl = scratch / "impl"
            shutil.copytree(person, impl, symlinks=False,
                            ignore=shutil.ignore_patterns("__pycache__", ".*"))
            extra = ["-m", "not gpu"] if not gpu else []
            if tasks:
                extra += ["--task", ",".join(sorted(tasks, key=int))]
            if check_timeout:
                extra += ["-o", f"kata_timeout={check_timeout:g}"]
            run = run_checks(kata, impl, scratch=scratch, timeout=timeout, memory_gb=memory_gb,
                             extra_args=extra)
            if log:
                log(f"  {person.name:<20} kata {kata}: {run.status} in {run.seconds:.1f}s")
            return person.name, kata, run

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            runs = list(pool.map(one, jobs_list))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    result: dict[str, Any] = {"roster": str(roster), "katas": katas, "gpu": gpu,
                              "timeout_s": timeout, "memory_gb": memory_gb, "learners": {}}
    for name, kata, run in runs:
        entry = result["learners"].setdefault(name, {})
        rows = score(kata, checks[kata], run, tasks, gpu)
        entry[kata] = {
            "status": "missing" if run is None else run.status,
            "seconds": None if run is None else round(run.seconds, 1),
            "tasks": {r["task"]: {k: v for k, v in r.items() if k not in ("kata", "task")} for r in rows},
            "passed": sum(r["passed"] for r in rows),
            "checks": sum(r["checks"] for r in rows),
        }
    return result


# -- Reports -------------------------------------------------------------------------------------
CSV_FIELDS = ["learner", "kata", "task", "score", "passed", "checks", "failed", "todo",
              "timeout", "import_error", "not_run", "status"]


def rows_of(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for learner in sorted(result["learners"]):
        for kata in sorted(result["learners"][learner]):
            for task, t in sorted(result["learners"][learner][kata]["tasks"].items(),
                                  key=lambda kv: int(kv[0])):
                rows.append({"learner": learner, "kata": kata, "task": task,
                             **{k: t[k] for k in CSV_FIELDS[3:]}})
    return rows


def to_csv(result: dict[str, Any]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows_of(result):
        row = dict(row)
        row["score"] = "" if row["score"] is None else f"{row['score']:.4f}"
        writer.writerow(row)
    return buf.getvalue()


def to_json(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=1, sort_keys=True) + "\n"


def most_failed(result: dict[str, Any], top: int = 15) -> list[tuple[str, str, int, list[str]]]:
    """(kata, check, how many learners failed it, who), most failed first, then by name."""
    failed: dict[tuple[str, str], list[str]] = {}
    for learner, katas in result["learners"].items():
        for kata, entry in katas.items():
            for t in entry["tasks"].values():
                for check in t["failing"]:
                    failed.setdefault((kata, check), []).append(learner)
    ranked = sorted(failed.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    return [(kata, check, len(who), sorted(who)) for (kata, check), who in ranked[:top]]


def _colour(score: float | None, status: str) -> str:
    if status in ("timeout", "crashed", "import_error"):
        return "#b0b0b0"
    if score is None:
        return "#eeeeee"
    # red (0) -> yellow (0.5) -> green (1)
    r = 220 if score < 0.5 else int(220 - (score - 0.5) * 2 * 170)
    g = int(60 + score * 2 * 150) if score < 0.5 else 210
    return f"rgb({r},{g},80)"


def to_html(result: dict[str, Any]) -> str:
    people = sorted(result["learners"])
    columns = sorted({(k, t) for p in people for k, e in result["learners"][p].items()
                      for t in e["tasks"]}, key=lambda kt: (kt[0], int(kt[1])))
    esc = html.escape
    head = "".join(f"<th title='kata {esc(k)} task {esc(t)}'>{esc(k)}<br>T{esc(t)}</th>"
                   for k, t in columns)
    body = []
    for p in people:
        cells = []
        for k, t in columns:
            e = result["learners"][p].get(k, {}).get("tasks", {}).get(t)
            if e is None:
                cells.append("<td class='none'>-</td>")
                continue
            label = {"timeout": "TIMEOUT", "crashed": "CRASH", "import_error": "IMPORT"}.get(
                e["status"], "" if e["score"] is None else f"{e['score'] * 100:.0f}%")
            cells.append(f"<td style='background:{_colour(e['score'], e['status'])}' "
                         f"title='{esc(p)} kata {k} task {t}: {e['passed']}/{e['checks']} "
                         f"({e['status']})'>{esc(label)}</td>")
        total_p = sum(e["passed"] for e in result["learners"][p].values())
        total_c = sum(e["checks"] for e in result["learners"][p].values())
        body.append(f"<tr><th class='who'>{esc(p)}</th>{''.join(cells)}"
                    f"<td class='total'>{total_p}/{total_c}</td></tr>")
    failed = "".join(f"<li><code>kata {esc(k)} {esc(c)}</code>: {n} learner{'s' * (n != 1)} "
                     f"({esc(', '.join(who))})</li>" for k, c, n, who in most_failed(result))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>kata grades</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #999; padding: 4px 8px; text-align: center; font-size: 13px; }}
th.who {{ text-align: left; }}
td.total {{ font-weight: bold; }}
td.none {{ color: #999; }}
.legend span {{ display: inline-block; padding: 2px 8px; margin-right: 4px; }}
</style></head>
<body>
<h1>Grades</h1>
<p>Roster <code>{esc(result['roster'])}</code>; katas {esc(', '.join(result['katas']))};
{'GPU' if result['gpu'] else 'CPU only (GPU-only checks left out)'}; time limit
{result['timeout_s']:g} s per learner and kata. A cell is the share of the task's checks that pass.</p>
<p class="legend"><span style="background:{_colour(0.0, 'partial')}">0%</span>
<span style="background:{_colour(0.5, 'partial')}">50%</span>
<span style="background:{_colour(1.0, 'done')}">100%</span>
<span style="background:{_colour(None, 'timeout')}">timeout / crash / import error</span></p>
<table id="heatmap"><thead><tr><th>learner</th>{head}<th>total</th></tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table>
<h2>Most failed checks</h2>
<ol id="most-failed">{failed or '<li>none</li>'}</ol>
</body></html>
"""


# -- Command line --------------------------------------------------------------------------------
def _parse_katas(value: str | None) -> list[str]:
    if not value:
        return built_katas()
    out = []
    for part in value.split(","):
        number = part.strip().zfill(2)
        if number not in KATAS or number not in built_katas():
            raise argparse.ArgumentTypeError(f"no kata {part.strip()!r} in this checkout")
        out.append(number)
    return sorted(set(out))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python kata.py grade",
        description="Grade every learner folder under ROSTER_DIR (each an --impl folder) on "
        "the katas, each learner and kata in a child process with memory, CPU-time and "
        "wall-clock limits and a scratch copy of the folder. Not a security sandbox: grade "
        "untrusted code inside a container or VM.")
    p.add_argument("roster", metavar="ROSTER_DIR", type=Path, help="one folder per learner")
    p.add_argument("--katas", type=_parse_katas, default=None, metavar="NN[,MM]",
                   help="katas to grade (default: every kata in this checkout)")
    p.add_argument("--tasks", default=None, metavar="N[,M]", help="only these tasks of each kata")
    p.add_argument("--report", default="csv,json,html", metavar="csv,json,html",
                   help="which reports to write (default: all three)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for the reports (default: ROSTER_DIR/../grades-<roster name>)")
    p.add_argument("--jobs", "-j", type=int, default=1, help="learners graded at once")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help=f"wall-clock seconds per learner and kata (default {DEFAULT_TIMEOUT:g})")
    p.add_argument("--check-timeout", type=float, default=None,
                   help="seconds per check before it counts as TIMEOUT (default: the suite's 120)")
    p.add_argument("--memory-gb", type=float, default=-1.0,
                   help=f"address-space limit per process in GiB (default: {DEFAULT_MEMORY_GB:g} "
                   "without a GPU, none with one, where CUDA reserves far more address space "
                   "than it uses; 0 = none)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    roster: Path = args.roster
    if not roster.is_dir():
        print(f"grade: {roster} is not a folder")
        return 2
    kinds = {k.strip() for k in args.report.split(",") if k.strip()}
    if not kinds <= {"csv", "json", "html"}:
        print(f"grade: --report takes csv, json and html, not {args.report!r}")
        return 2
    katas = args.katas or built_katas()
    tasks = {t.strip().lstrip("0") or "0" for t in args.tasks.split(",")} if args.tasks else None
    people = learners(roster)
    if not people:
        print(f"grade: no learner folders in {roster}")
        return 2
    print(f"grading {len(people)} learner(s) on kata(s) {', '.join(katas)} "
          f"({args.jobs} at a time, {args.timeout:g} s each) ...", flush=True)
    result = grade(roster, katas, jobs=args.jobs, timeout=args.timeout,
                   memory_gb=args.memory_gb or None, tasks=tasks,
                   check_timeout=args.check_timeout, log=lambda s: print(s, flush=True))
    out = args.out or roster.resolve().parent / f"grades-{roster.resolve().name}"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, render in (("csv", to_csv), ("json", to_json), ("html", to_html)):
        if kind in kinds:
            path = out / f"grades.{kind}"
            path.write_text(render(result))
            written.append(path)
    print()
    for name in sorted(result["learners"]):
        parts = []
        for kata, e in sorted(result["learners"][name].items()):
            flag = "" if e["status"] == "ok" else f" {e['status'].upper()}"
            parts.append(f"kata {kata} {e['passed']}/{e['checks']}{flag}")
        print(f"  {name:<20} " + ", ".join(parts))
    print("\nreports: " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
