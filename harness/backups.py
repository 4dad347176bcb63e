"""`python kata.py reset NN` and `python kata.py restore NN`: start a kata over, safely.

`reset` copies your stub (stubs/<module>.py) to a backup, then puts back the pristine
stub: the file as committed in git (HEAD, or `--from REV`). `restore` brings a backup
back, byte for byte, after backing up the file it replaces. Nothing is ever lost:

- backups live in `.kata_backups/NN/<module>-YYYYmmdd-HHMMSS.py` (ignored by git), one
  file per backup, never overwritten (a second backup in the same second gets `-1`, ...);
- a file is copied as bytes (line endings, trailing spaces, a missing final newline
  and all), and a new file is written next to the old one and renamed over it;
- a file that equals the pristine stub is not backed up (`reset` gets it back any time).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path

from harness.katas import KATAS, ROOT

BACKUP_DIR = ROOT / ".kata_backups"


def _stamp() -> str:
    """The time part of a backup's name (a function, so a test can pin the clock)."""
    return time.strftime("%Y%m%d-%H%M%S")


def kata_number(value: str) -> str:
    number = value.strip().zfill(2)
    if number not in KATAS:
        raise argparse.ArgumentTypeError(f"no kata {value!r} (katas are 01 to {max(KATAS)})")
    return number


def stub_path(number: str) -> Path:
    return ROOT / "stubs" / f"{KATAS[number][1]}.py"


def backup_dir(number: str) -> Path:
    return BACKUP_DIR / number


def backup(number: str, source: Path | None = None) -> Path:
    """Copy `source` (default: the kata's stub) into a new backup file; never overwrites."""
    source = source or stub_path(number)
    content = source.read_bytes()
    folder = backup_dir(number)
    folder.mkdir(parents=True, exist_ok=True)
    base = f"{KATAS[number][1]}-{_stamp()}"
    k = 0
    while True:
        target = folder / (f"{base}.py" if k == 0 else f"{base}-{k}.py")
        try:
            with open(target, "xb") as handle:  # "x": fails if the file exists, no race
                handle.write(content)
        except FileExistsError:
            k += 1
            continue
        return target


def list_backups(number: str) -> list[Path]:
    """The kata's backups, oldest first (by name: the stamp, then the counter)."""
    module = KATAS[number][1]

    def order(path: Path) -> tuple[str, int]:
        stamp = path.stem[len(module) + 1:]
        date, _, rest = stamp.partition("-")
        clock, _, counter = rest.partition("-")
        return (f"{date}-{clock}", int(counter) if counter.isdigit() else 0)

    folder = backup_dir(number)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.glob(f"{module}-*.py") if p.is_file()), key=order)


def pristine_stub(number: str, rev: str = "HEAD") -> bytes:
    """The stub as committed in git at `rev`; RuntimeError with a clear message if not."""
    relative = f"stubs/{KATAS[number][1]}.py"
    try:
        proc = subprocess.run(["git", "show", f"{rev}:{relative}"], cwd=ROOT,
                              capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"cannot run git ({exc}): reset needs a git checkout of the "
                           "repository to know the pristine stub") from exc
    if proc.returncode != 0:
        raise RuntimeError(f"git has no {relative} at {rev} "
                           f"({proc.stderr.decode(errors='replace').strip()}). reset needs a git "
                           "checkout (git clone) to know the pristine stub.")
    return proc.stdout


def _write_bytes(path: Path, content: bytes) -> None:
    """Write beside the file, then rename over it: the old file stays whole until then."""
    tmp = path.with_name(f".{path.name}.kata-tmp")
    tmp.write_bytes(content)
    os.replace(tmp, path)


def _short(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def reset_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python kata.py reset", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: python kata.py reset 04   then, to undo:  python kata.py restore 04 --last")
    parser.add_argument("kata", type=kata_number, help="kata number, e.g. 04")
    parser.add_argument("--from", dest="rev", default="HEAD", metavar="REV",
                        help="the git revision whose stub is pristine (default HEAD; use the "
                             "upstream commit if you committed your own work)")
    args = parser.parse_args(argv)
    stub = stub_path(args.kata)
    try:
        pristine = pristine_stub(args.kata, args.rev)
    except RuntimeError as exc:
        print(f"reset: {exc}\nNothing was changed.")
        return 2
    if stub.is_file():
        if stub.read_bytes() == pristine:
            print(f"{_short(stub)} is already the pristine stub; nothing to do.")
            return 0
        saved = backup(args.kata, stub)
        print(f"backed up {_short(stub)} to {_short(saved)}")
    _write_bytes(stub, pristine)
    print(f"{_short(stub)} is the pristine stub again (as committed at {args.rev}).\n"
          f"undo: python kata.py restore {args.kata} --last")
    return 0


def restore_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python kata.py restore",
        description="Bring a backup of a kata's stub back, byte for byte (see `reset`). The "
                    "file it replaces is backed up first, so a restore can be undone too.",
        epilog="examples: python kata.py restore 04 --list;  python kata.py restore 04 --last;"
               "  python kata.py restore 04 20261129-203015")
    parser.add_argument("kata", type=kata_number, help="kata number, e.g. 04")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--list", action="store_true", help="list the backups, oldest first")
    group.add_argument("--last", action="store_true", help="restore the newest backup")
    group.add_argument("stamp", nargs="?", help="which backup: its stamp (YYYYmmdd-HHMMSS[-k]), "
                                                "as --list shows it, or its file name")
    args = parser.parse_args(argv)
    module = KATAS[args.kata][1]
    backups = list_backups(args.kata)
    stamps = {p.stem[len(module) + 1:]: p for p in backups}
    if args.list or not (args.last or args.stamp):
        if not backups:
            print(f"no backups of {module}.py yet (python kata.py reset {args.kata} makes one)")
            return 0 if args.list else 2
        print(f"backups of stubs/{module}.py in {_short(backup_dir(args.kata))}, oldest first:")
        for stamp, path in stamps.items():
            print(f"  {stamp}  {path.stat().st_size:>7} bytes")
        if not args.list:
            print(f"\nchoose one: python kata.py restore {args.kata} STAMP   (or --last)")
            return 2
        return 0
    if args.last:
        if not backups:
            print(f"restore: no backups of {module}.py yet; nothing was changed.")
            return 2
        chosen = backups[-1]
    else:
        key = Path(args.stamp).name
        key = key[:-3] if key.endswith(".py") else key
        key = key[len(module) + 1:] if key.startswith(f"{module}-") else key
        if key not in stamps:
            print(f"restore: no backup {args.stamp!r} of {module}.py; nothing was changed. "
                  f"The backups: python kata.py restore {args.kata} --list")
            return 2
        chosen = stamps[key]
    content = chosen.read_bytes()  # read before backing up: a same-second stamp can't clash
    stub = stub_path(args.kata)
    if stub.is_file():
        current = stub.read_bytes()
        if current == content:
            print(f"{_short(stub)} already equals {_short(chosen)}; nothing to do.")
            return 0
        try:
            pristine = pristine_stub(args.kata)
        except RuntimeError:
            pristine = None
        if current != pristine:
            saved = backup(args.kata, stub)
            print(f"backed up the current {_short(stub)} to {_short(saved)}")
    _write_bytes(stub, content)
    print(f"restored {_short(stub)} from {_short(chosen)}")
    return 0
