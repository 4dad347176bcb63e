"""The suite's self-test: every kata passes on reference/, fails cleanly on the pristine
stubs, and catches every one of its planted bugs (mutants). CI runs this.

    python -m harness selftest [--kata 03 ...] [-j 2]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from harness.katas import KATAS, KATAS_DIR, ROOT, built_katas
from harness.mutants import Mutant

SCRATCH_ROOT = ROOT / ".selftest"
SCRATCH = SCRATCH_ROOT  # this run's own folder, set in main() (runs may overlap)
MIN_MUTANTS = {"04": 8, "05": 8}  # the default is 6
RUN_TIMEOUT_S = 900


@dataclass
class Check:
    kata: str  # "03", or "--" for the harness's own tests
    name: str  # "reference", "stubs", "mutant:<name>", "harness"
    passed: bool = False
    detail: str = ""
    seconds: float = 0.0


def load_mutants(number: str) -> list[Mutant]:
    path = KATAS_DIR / KATAS[number][0] / "mutants.py"
    if not path.is_file():
        return []
    spec = importlib.util.spec_from_file_location(f"_mutants_{number}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.MUTANTS)


def run_pytest(target: str, impl: str | Path, report: Path, extra: list[str]) -> tuple[int, str, dict]:
    """Run pytest in a fresh process; returns (exit code, output, the plugin's JSON report)."""
    env = dict(os.environ, HYPOTHESIS_PROFILE="ci", KATA_REPORT=str(report), PYTHONUNBUFFERED="1")
    env.pop("KATA_IMPL", None)
    cmd = [sys.executable, "-m", "pytest", target, "--impl", str(impl), "-q", "-p", "no:cacheprovider",
           "--benchmark-disable", *extra]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=RUN_TIMEOUT_S)
        code, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        code, out = -1, f"timed out after {RUN_TIMEOUT_S} s\n{exc.stdout or ''}"
    data = json.loads(report.read_text()) if report.is_file() else {}
    return code, out, data


def _log(check: Check, out: str) -> str:
    path = SCRATCH / "logs" / f"{check.kata}_{check.name.replace(':', '_')}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(out)
    return str(path.relative_to(ROOT))


def check_reference(number: str) -> Check:
    check = Check(number, "reference")
    code, out, data = run_pytest(f"katas/{KATAS[number][0]}", "reference",
                                 SCRATCH / f"{number}_reference.json", [])
    summary = data.get("katas", {}).get(number, {})
    check.passed = code == 0 and summary.get("passed", 0) > 0
    check.detail = (f"{summary.get('passed', 0)} checks pass" if check.passed
                    else f"exit {code}; log {_log(check, out)}")
    return check


def check_stubs(number: str) -> Check:
    check = Check(number, "stubs")
    code, out, data = run_pytest(f"katas/{KATAS[number][0]}", "stubs",
                                 SCRATCH / f"{number}_stubs.json", [])
    results = [r for r in data.get("results", []) if r["outcome"] != "skipped"]
    unclean = [r["nodeid"] for r in results if r["outcome"] not in ("todo", "passed")]
    todo = sum(r["outcome"] == "todo" for r in results)
    check.passed = code == 1 and todo > 0 and not unclean
    if check.passed:
        check.detail = f"{todo} TODO lines, no tracebacks"
    else:
        why = f"not a TODO line: {unclean[0]}" if unclean else f"exit {code}"
        check.detail = f"{why}; log {_log(check, out)}"
    return check


def check_mutant(number: str, mutant: Mutant) -> Check:
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
    target, report = f"katas/{KATAS[number][0]}", SCRATCH / f"{number}_{mutant.name}.json"
    code, out, data = run_pytest(target, folder, report, ["-x"])
    if code == 1 and mutant.expect and mutant.expect not in out:
        # The hint may come from a later test than the first failure: run them all.
        code, out, data = run_pytest(target, folder, report, [])
    caught = [r["nodeid"] for r in data.get("results", []) if r["outcome"] in ("failed", "timeout")]
    if code != 1 or not caught:
        check.detail = f"NOT caught (exit {code}): {mutant.bug}; log {_log(check, out)}"
    elif mutant.expect and mutant.expect not in out:
        check.detail = f"caught, but no failure says {mutant.expect!r}; log {_log(check, out)}"
    else:
        check.passed = True
        check.detail = f"caught by {caught[0].split('::', 1)[-1]}"
    return check


def check_harness() -> Check:
    check = Check("--", "harness")
    code, out, _ = run_pytest("tests", "reference", SCRATCH / "harness.json", [])
    check.passed = code == 0
    last = out.strip().splitlines()[-1] if out.strip() else ""
    check.detail = last if check.passed else f"exit {code}; log {_log(check, out)}"
    return check


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
            jobs.append(lambda n=number, k=len(mutants), w=needed: Check(
                n, "mutants", False, f"only {k} mutants; a kata ships at least {w}"))
        jobs += [lambda n=number, m=m: check_mutant(n, m) for m in mutants]

    def timed(job):  # type: ignore[no-untyped-def]
        start = time.monotonic()
        check = job()
        check.seconds = time.monotonic() - start
        return check

    start = time.monotonic()
    print(f"self-test: {len(jobs)} checks on {len(numbers)} katas, {args.jobs} at a time", flush=True)
    results = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for check in pool.map(timed, jobs):
            mark = "ok  " if check.passed else "FAIL"
            print(f"  {mark} {check.kata} {check.name:<40} {check.seconds:6.1f}s  {check.detail}",
                  flush=True)
            results.append(check)
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
    if failed:
        print(f"(took {time.monotonic() - start:.0f} s; logs of the failures under "
              f"{SCRATCH.relative_to(ROOT)}/logs/)")
    else:
        shutil.rmtree(SCRATCH, ignore_errors=True)
        print(f"(took {time.monotonic() - start:.0f} s)")
    print(f"selftest: {len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
