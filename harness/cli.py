"""Command line: `python kata.py COMMAND` (also `python -m harness COMMAND`, or `katas COMMAND`)."""
from __future__ import annotations

import subprocess
import sys

from harness.katas import KATAS, ROOT

USAGE = """usage: python kata.py COMMAND [--help]

  check NN [--task N] [pytest args]   run kata NN's checks on your stubs
                                      (the same as: pytest katas/NN --task N)
  status [--impl PATH] [--run]        every kata, task by task, from your last runs
  simulate [--impl PATH] [--quick]    kata 10's serving simulator: your scheduler against
                                      static batching (throughput, TTFT, TPOT, a plot)
  doctor [--json]                     what runs here: backend per kata, versions against the
                                      pins, pitfalls; copy and matmul rates on a GPU
  hint NN [TASK]                      the next rung of a task's hint ladder
  solution NN [--force]               the reference, once your module passes the kata
  reset NN / restore NN [--list|--last|STAMP]
                                      put the pristine stub back (yours is backed up) / undo
  interview NN [--minutes M] [--tasks 1,3] [--seed S] | --status | --finish
                                      a timed interview on a scratch copy, graded on hidden seeds
  grade ROSTER_DIR [--katas 02,04] [--report csv,json,html] [--jobs N]
                                      grade every learner folder of a roster
  perf-history NN                     your recorded perf runs, with confidence intervals
  selftest [--kata NN] [-j N]         the suite's self-test: reference passes, stubs fail
                                      cleanly, every planted bug is caught
"""

CHECK_USAGE = """usage: python kata.py check NN [--task N[,M]] [pytest args ...]

Runs kata NN's checks against your stubs (stubs/<module>.py), exactly as
`pytest katas/NN` does; --task N runs only the checks of Task N of the kata's README.
Any other argument goes to pytest: --impl reference, -x, -k NAME, --tb=long, -m gpu.
"""


# The learner's, the interviewer's and the instructor's tools: one module per command, each
# with its own --help; this file only dispatches.
COMMANDS: dict[str, tuple[str, str]] = {
    "doctor": ("harness.doctor", "main"),
    "hint": ("harness.hints", "hint_main"),
    "solution": ("harness.hints", "solution_main"),
    "reset": ("harness.backups", "reset_main"),
    "restore": ("harness.backups", "restore_main"),
    "interview": ("harness.interview", "main"),
    "grade": ("harness.grade", "main"),
    "perf-history": ("harness.history", "main"),
    "serve": ("harness.serve", "main"),  # kata 16: the OpenAI-compatible server
}


def _module_exists(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _run_kata_script(number: str, script: str, argv: list[str]) -> int:
    """Run a kata's own script (e.g. katas/10_scheduler/simulate.py) through its main()."""
    from harness.helpers import load_kata_file

    path = ROOT / "katas" / KATAS[number][0] / script
    return int(load_kata_file(path, f"kata{number}_{path.stem}").main(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = args[0], args[1:]
    if command == "check":
        if rest and rest[0] in ("-h", "--help"):
            print(CHECK_USAGE)
            return 0
        if not rest or rest[0].zfill(2) not in KATAS:
            print(CHECK_USAGE)
            return 2
        target = f"katas/{rest[0].zfill(2)}"
        return subprocess.call([sys.executable, "-m", "pytest", target, *rest[1:]], cwd=ROOT)
    if command == "selftest":
        from harness import selftest

        return selftest.main(rest)
    if command == "status":
        from harness import status

        return status.main(rest)
    if command == "simulate":
        return _run_kata_script("10", "simulate.py", rest)
    if command in COMMANDS and _module_exists(COMMANDS[command][0]):
        import importlib

        module, function = COMMANDS[command]
        return int(getattr(importlib.import_module(module), function)(rest) or 0)
    print(f"unknown command {command!r}\n")
    print(USAGE)
    return 2
