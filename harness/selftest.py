"""The suite's self-test: every kata passes on reference/, fails cleanly on the pristine
stubs, and catches every one of its planted bugs (mutants). CI runs this.

    python -m harness selftest [--kata 03 ...] [-j 2]

Each check is a pytest session in a child forked from one parent that imported torch and
triton once (harness/workers.py); a timing table, slowest kata first, ends the run.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from harness import progress
from harness.katas import KATAS, KATAS_DIR, ROOT, built_katas
from harness.mutants import Mutant, likely_tasks
from harness.workers import Outcome, Session, run_jobs

SCRATCH_ROOT = ROOT / ".selftest"
SCRATCH = SCRATCH_ROOT  # this run's own folder, set in main() (runs may overlap)
MIN_MUTANTS = {"04": 8, "05": 8, "06": 10, "07": 8, "08": 8, "09": 8, "10": 8, "11": 8, "12": 8, "13": 8, "15": 8}  # the default is 6
SUITE_BUDGET_S = 1200  # all sixteen katas, 2 cores, idle machine
KATA_SHARE_S = SUITE_BUDGET_S / 16  # one kata's share of the wall-clock budget


@dataclass
class Check:
    kata: str  # "03", or "--" for the harness's own tests
    name: str  # "reference", "stubs", "mutant:<name>", "harness"
    passed: bool = False
    detail: str = ""
    seconds: float = 0.0


def _no_run(check: Check):  # type: ignore[no-untyped-def]
    """A job that needs no pytest session (its verdict is known up front)."""
    return check
    yield  # noqa: unreachable - makes this a generator


def load_mutants(number: str) -> list[Mutant]:
    path = KATAS_DIR / KATAS[number][0] / "mutants.py"
    if not path.is_file():
        return []
    spec = importlib.util.spec_from_file_location(f"_mutants_{number}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.MUTANTS)


def _session(name: str, target: str, impl: str | Path, extra: list[str] | None = None) -> Session:
    return Session(target=target, impl=str(impl), log=SCRATCH / "logs" / f"{name}.log",
                   extra=list(extra or []))


def _log(outcome: Outcome, session: Session) -> str:
    """Keep the log of a failed check (the scratch folder is removed after a green run)."""
    return str(session.log.relative_to(ROOT))


def check_reference(number: str):  # type: ignore[no-untyped-def]
    check = Check(number, "reference")
    session = _session(f"{number}_reference", f"katas/{KATAS[number][0]}", "reference")
    out: Outcome = yield session
    summary = out.data.get("katas", {}).get(number, {})
    check.passed = out.code == 0 and summary.get("passed", 0) > 0
    check.detail = (f"{summary.get('passed', 0)} checks pass" if check.passed
                    else f"exit {out.code}; log {_log(out, session)}")
    return check


def check_stubs(number: str):  # type: ignore[no-untyped-def]
    check = Check(number, "stubs")
    session = _session(f"{number}_stubs", f"katas/{KATAS[number][0]}", "stubs")
    out: Outcome = yield session
    results = [r for r in out.data.get("results", []) if r["outcome"] not in progress.NOT_RUN_OUTCOMES]
    unclean = [r["nodeid"] for r in results if r["outcome"] not in ("todo", "passed")]
    todo = sum(r["outcome"] == "todo" for r in results)
    check.passed = out.code == 1 and todo > 0 and not unclean
    if check.passed:
        check.detail = f"{todo} TODO lines, no tracebacks"
    else:
        why = f"not a TODO line: {unclean[0]}" if unclean else f"exit {out.code}"
        check.detail = f"{why}; log {_log(out, session)}"
    return check


def check_mutant(number: str, mutant: Mutant):  # type: ignore[no-untyped-def]
    check = Check(number, f"mutant:{mutant.name}")
    module = KATAS[number][1]
    folder = SCRATCH / number / mutant.name
    folder.mkdir(parents=True, exist_ok=True)
    try:
        source = mutant.apply((ROOT / "reference" / f"{module}.py").read_text())
    except ValueError as exc:
        check.detail = str(exc)
        return check
    (folder / f"{module}.py").write_text(source)
    target = f"katas/{KATAS[number][0]}"
    tests = [p.read_text() for p in sorted((KATAS_DIR / KATAS[number][0]).glob("test_*.py"))]
    tasks = likely_tasks((ROOT / "reference" / f"{module}.py").read_text(), mutant.find, tests)
    out: Outcome | None = None
    if tasks:  # the checks of the tasks that call the edited code first: most mutants die there
        session = _session(f"{number}_{mutant.name}_task", target, folder, ["-x", "--task", ",".join(tasks)])
        out = yield session
    if out is None or out.code != 1:
        session = _session(f"{number}_{mutant.name}", target, folder, ["-x"])
        out = yield session
    if out.code == 1 and mutant.expect and mutant.expect not in out.output:
        # The hint may come from a later test than the first failure: run them all.
        session = _session(f"{number}_{mutant.name}_all", target, folder)
        out = yield session
    caught = [r["nodeid"] for r in out.data.get("results", []) if r["outcome"] in ("failed", "timeout")]
    if out.code != 1 or not caught:
        check.detail = f"NOT caught (exit {out.code}): {mutant.bug}; log {_log(out, session)}"
    elif mutant.expect and mutant.expect not in out.output:
        check.detail = f"caught, but no failure says {mutant.expect!r}; log {_log(out, session)}"
    else:
        check.passed = True
        check.detail = f"caught by {caught[0].split('::', 1)[-1]}"
    return check


def check_harness():  # type: ignore[no-untyped-def]
    check = Check("--", "harness")
    session = _session("harness", "tests", "reference")
    out: Outcome = yield session
    check.passed = out.code == 0
    last = out.output.strip().splitlines()[-1] if out.output.strip() else ""
    check.detail = last if check.passed else f"exit {out.code}; log {_log(out, session)}"
    return check


def timing_table(results: list[Check], numbers: list[str], workers: int, wall: float) -> list[str]:
    """Per kata: the sessions' seconds, and its wall-clock share; slowest first."""
    per_kata = {n: sum(c.seconds for c in results if c.kata == n) for n in [*numbers, "--"]}
    lines = ["", f"{'kata':<26}{'checks':>7}{'cpu-s':>8}{'~wall-s':>9}  (share: {KATA_SHARE_S:.0f} s)"]
    warnings = []
    for number, seconds in sorted(per_kata.items(), key=lambda kv: -kv[1]):
        name = "harness tests" if number == "--" else f"{number} {KATAS[number][1]}"
        count = sum(c.kata == number for c in results)
        share = seconds / workers
        lines.append(f"{name:<26}{count:>7}{seconds:>8.0f}{share:>9.0f}")
        if number != "--" and share > KATA_SHARE_S:
            warnings.append(f"warning: kata {name} takes ~{share:.0f} s of wall time, over its "
                            f"share of the budget ({KATA_SHARE_S:.0f} s = {SUITE_BUDGET_S // 60} min "
                            f"/ {len(KATAS)} katas): shrink its interpreter-bound shapes")
    budget = KATA_SHARE_S * len(numbers) + 30
    lines.append(f"{'total':<26}{len(results):>7}{sum(per_kata.values()):>8.0f}{wall:>9.0f}"
                 f"  wall, {workers} workers (budget for {len(numbers)} katas: {budget:.0f} s)")
    if wall > budget:
        warnings.append(f"warning: the self-test took {wall:.0f} s, over its budget of {budget:.0f} s")
    return lines + warnings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness selftest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kata", action="append", help="only these katas (by number)")
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args(argv)
    numbers = [n.zfill(2) for n in args.kata] if args.kata else built_katas()
    global SCRATCH
    SCRATCH_ROOT.mkdir(exist_ok=True)
    SCRATCH = Path(tempfile.mkdtemp(prefix=time.strftime("run-%H%M%S-"), dir=SCRATCH_ROOT))

    jobs = [check_harness] if not args.kata else []
    for number in numbers:
        jobs.append(lambda n=number: check_reference(n))
        jobs.append(lambda n=number: check_stubs(n))
        mutants = load_mutants(number)
        needed = MIN_MUTANTS.get(number, 6)
        if len(mutants) < needed:
            jobs.append(lambda n=number, k=len(mutants), w=needed: _no_run(Check(
                n, "mutants", False, f"only {k} mutants; a kata ships at least {w}")))
        jobs += [lambda n=number, m=m: check_mutant(n, m) for m in mutants]

    start = time.monotonic()
    print(f"self-test: {len(jobs)} checks on {len(numbers)} katas, {args.jobs} workers", flush=True)
    results: list[Check] = []

    def done(check: Check, seconds: float) -> None:
        check.seconds = seconds
        mark = "ok  " if check.passed else "FAIL"
        print(f"  {mark} {check.kata} {check.name:<40} {check.seconds:6.1f}s  {check.detail}",
              flush=True)
        results.append(check)

    run_jobs(jobs, args.jobs, done)
    wall = time.monotonic() - start
    failed = [c for c in results if not c.passed]
    print(f"\n{'kata':<6}{'reference':<12}{'stubs':<8}{'mutants caught':<16}")
    for number in numbers:
        rows = [c for c in results if c.kata == number]
        ref = next((c for c in rows if c.name == "reference"), None)
        stub = next((c for c in rows if c.name == "stubs"), None)
        muts = [c for c in rows if c.name.startswith("mutant")]
        print(f"{number:<6}{'pass' if ref and ref.passed else 'FAIL':<12}"
              f"{'clean' if stub and stub.passed else 'FAIL':<8}"
              f"{sum(c.passed for c in muts)}/{len(muts)}")
    print("\n".join(timing_table(results, numbers, args.jobs, wall)))
    if failed:
        print(f"logs of the failures under {SCRATCH.relative_to(ROOT)}/logs/")
    else:
        shutil.rmtree(SCRATCH, ignore_errors=True)
    print(f"selftest: {len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
