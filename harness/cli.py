"""Command line: `python -m harness check NN | selftest | status` (also `python kata.py ...`)."""
from __future__ import annotations

import subprocess
import sys

from harness.katas import KATAS, ROOT

USAGE = """usage: python kata.py COMMAND

  check NN [pytest args]   run kata NN's checks on your stubs (same as: pytest katas/NN)
  selftest [--kata NN]     the suite's self-test: reference passes, stubs fail cleanly,
                           every planted bug is caught
  status [--impl PATH]     every kata with its state
"""


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = args[0], args[1:]
    if command == "check":
        if not rest or rest[0].zfill(2) not in KATAS:
            print("usage: python kata.py check NN   (NN = kata number, e.g. 03)")
            return 2
        target = f"katas/{rest[0].zfill(2)}"
        return subprocess.call([sys.executable, "-m", "pytest", target, *rest[1:]], cwd=ROOT)
    if command == "selftest":
        from harness import selftest

        return selftest.main(rest)
    if command == "status":
        from harness import status

        return status.main(rest)
    print(USAGE)
    return 2
