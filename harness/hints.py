"""`python kata.py hint NN [TASK]` and `python kata.py solution NN`.

The hints are the kata README's own: under `## Hints`, each `### Task N` holds a ladder of
`<details><summary>Hint k</summary> ... </details>` blocks, from a question to the
invariant to near-pseudocode. `hint` shows one rung per call, the next one you have not
seen, and records it in the progress file (`status` shows how many you used).

`solution` prints our reference module once your module passes the kata's CPU checks
(from your last `pytest katas/NN` run, with the module unchanged since), and where to
read on.
"""
from __future__ import annotations

import argparse
import re
import textwrap
from pathlib import Path

from harness import progress
from harness.impl import resolve_impl_dir
from harness.katas import KATAS, ROOT, readme_path, task_titles

_DETAILS = re.compile(r"<details>\s*<summary>\s*Hint\s*\d*\s*</summary>(.*?)</details>",
                      re.DOTALL | re.IGNORECASE)
# A README section a kata may add for what to read once you pass; else "Further reading".
_AFTER_PASS = re.compile(r"^## .*(after you pass|once you pass)", re.IGNORECASE)


def kata_number(value: str) -> str:
    number = value.strip().zfill(2)
    if number not in KATAS:
        raise argparse.ArgumentTypeError(f"no kata {value!r} (katas are 01 to {max(KATAS)})")
    return number


def readme_section(text: str, heading: re.Pattern[str] | str) -> str:
    """The lines under the first `## ` heading that matches, up to the next `## `."""
    pattern = re.compile(rf"^## {re.escape(heading)}\s*$") if isinstance(heading, str) else heading
    lines, inside = [], False
    for line in text.splitlines():
        if line.startswith("## "):
            if inside:
                break
            inside = bool(pattern.match(line))
            continue
        if inside:
            lines.append(line)
    return "\n".join(lines).strip("\n")


def hint_ladders(number: str) -> dict[str, list[str]]:
    """{TASK: [rung 1 text, rung 2 text, ...]} from the README's `## Hints` section."""
    path = readme_path(number)
    section = readme_section(path.read_text(encoding="utf-8"), "Hints") if path.is_file() else ""
    ladders: dict[str, list[str]] = {}
    for part in re.split(r"^### ", section, flags=re.MULTILINE)[1:]:
        head, _, body = part.partition("\n")
        match = re.match(r"Task\s+(\d+)", head.strip())
        if match:
            rungs = [textwrap.dedent(m.group(1)).strip() for m in _DETAILS.finditer(body)]
            ladders[str(int(match.group(1)))] = rungs
    return ladders


def next_task(number: str, data: dict, impl: Path) -> str | None:
    """The first task (README order) whose last recorded run is not done, or None."""
    entry = data.get("runs", {}).get(str(impl), {}).get(number)
    return progress.next_unfinished_task(entry, list(task_titles(number))) if entry else None


HINT_HELP = """Show the next rung of a task's hint ladder: a question first, then the invariant,
then near-pseudocode, one rung per call. The rungs are the kata README's own
(`## Hints`, `### Task N`); the ones you saw are recorded in .kata_progress.json and
`python kata.py status` counts them."""


def _locked_by_interview(command: str) -> bool:
    """Hints and solutions are locked while an interview runs (harness/interview.py)."""
    from harness.interview import active_interview

    running = active_interview()
    if running:
        print(f"{command}: locked while the interview of kata {running.get('kata', '?')} runs "
              "(python3 kata.py interview --status; --finish ends it)")
    return bool(running)


def hint_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python kata.py hint", description=HINT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples: python kata.py hint 04      (the next task you have not finished)\n"
               "          python kata.py hint 04 2    (Task 2's next hint)\n"
               "          python kata.py hint 04 2 --all  (the hints of Task 2 you have seen)")
    parser.add_argument("kata", type=kata_number, help="kata number, e.g. 04")
    parser.add_argument("task", nargs="?", help="task number (default: the first task your last "
                                                "run did not finish, else 1)")
    parser.add_argument("--all", action="store_true",
                        help="show again every hint of the task you have already seen")
    args = parser.parse_args(argv)
    if _locked_by_interview("hint"):
        return 2
    number = args.kata
    ladders = hint_ladders(number)
    if not ladders:
        print(f"hint: {readme_path(number).relative_to(ROOT)} has no hints yet.")
        return 2
    data = progress.load()
    if args.task is None:
        try:
            impl = resolve_impl_dir()
        except NotADirectoryError:
            impl = ROOT / "stubs"
        task = next_task(number, data, impl) or min(ladders, key=int)
        task = task if task in ladders else min(ladders, key=int)
    else:
        task = args.task.strip().lstrip("0") or "0"
        if task not in ladders:
            print(f"hint: kata {number} has hints for Tasks {', '.join(ladders)}, not {args.task!r}.")
            return 2
    rungs = ladders[task]
    seen = min(progress.hints_seen(number, data).get(task, 0), len(rungs))
    title = task_titles(number).get(task, "")
    name = f"kata {number}, Task {task}" + (f" ({title})" if title else "")
    if args.all:
        if not seen:
            print(f"{name}: no hints seen yet. `python kata.py hint {number} {task}` shows the first.")
            return 0
        for k in range(seen):
            print(f"{name}: hint {k + 1} of {len(rungs)}\n\n{rungs[k]}\n")
        return 0
    if seen >= len(rungs):
        print(f"{name}: all {len(rungs)} hints shown already "
              f"(`python kata.py hint {number} {task} --all` shows them again).\n"
              f"Still stuck? Re-read the README's Task {task} and Pitfalls, run "
              f"`pytest katas/{number} --task {task} -v`, and once you pass: "
              f"python kata.py solution {number}")
        return 0
    rung = seen + 1
    print(f"{name}: hint {rung} of {len(rungs)}\n\n{rungs[rung - 1]}\n")
    if progress.recording():
        progress.record_hint(number, task, rung)
    else:
        print("(not recorded: KATA_NO_PROGRESS or KATA_REPORT is set)")
    if rung < len(rungs):
        print(f"next: python kata.py hint {number} {task}   shows hint {rung + 1}")
    else:
        print("that was the last hint of this task.")
    return 0


def passes_cpu_checks(number: str, impl: Path, data: dict) -> tuple[bool, str]:
    """(True, "") if the last recorded run of `impl` passes every task of the kata (GPU-only
    checks and optional tasks left out aside) and the module is unchanged since; else (False, why)."""
    module_file = impl / f"{KATAS[number][1]}.py"
    run = f"pytest katas/{number}" + ("" if impl == ROOT / "stubs" else f" --impl {impl}")
    entry = data.get("runs", {}).get(str(impl), {}).get(number)
    if not module_file.is_file():
        return False, f"there is no {module_file}"
    if not entry:
        return False, f"no run of kata {number} is recorded yet: run `{run}` first"
    task = progress.next_unfinished_task(entry, list(task_titles(number)))
    if task is not None:
        return False, f"your last run did not pass Task {task}: finish it (`{run}`)"
    if not all(progress.task_done(counts) or progress.optional_not_started(counts)
               for counts in entry.get("tasks", {}).values()):
        return False, f"your last run has failing checks: `{run}`"
    if progress.edited_since(module_file, entry):
        return False, f"{module_file.name} changed since your last run: run `{run}` again"
    return True, ""


def solution_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python kata.py solution",
        description="Print our reference solution of a kata, and where to read on, once your "
                    "module passes the kata's CPU checks (your last `pytest katas/NN` run "
                    "passed every task and the module is unchanged since).")
    parser.add_argument("kata", type=kata_number, help="kata number, e.g. 04")
    parser.add_argument("--force", action="store_true",
                        help="print it anyway (spoils the kata: try `python kata.py hint NN` first)")
    parser.add_argument("--impl", default=None,
                        help="whose run counts: stubs (default), reference, or a folder")
    args = parser.parse_args(argv)
    if _locked_by_interview("solution"):
        return 2
    number = args.kata
    folder, module = KATAS[number]
    try:
        impl = resolve_impl_dir(args.impl)
    except NotADirectoryError as exc:
        print(f"solution: {exc}")
        return 2
    ok, why = passes_cpu_checks(number, impl, progress.load())
    if not ok and not args.force:
        print(f"solution: not yet, {why}.\nThe reference is shown once your module passes the "
              f"kata's CPU checks. Stuck? python kata.py hint {number}\n"
              f"(--force shows it anyway)")
        return 1
    if not ok:
        print(f"WARNING: --force: {why}. Reading the solution before you solve it takes the "
              "kata away from you.\n")
    reference = ROOT / "reference" / f"{module}.py"
    if not reference.is_file():
        print(f"solution: {reference} is missing")
        return 2
    print(f"===== reference/{module}.py =====\n")
    print(reference.read_text(encoding="utf-8").rstrip("\n"))
    others = sorted(p.name for p in (ROOT / "reference").glob(f"{module}_*.py"))
    if others:
        print(f"\n(also in reference/: {', '.join(others)})")
    readme = readme_path(number)
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    notes = readme_section(text, _AFTER_PASS)
    rel = readme.relative_to(ROOT)
    if notes:
        print(f"\n===== after you pass ({rel}) =====\n\n{notes}")
    else:
        print(f"\n===== read on =====\nCompare it with yours, then read the notes in {rel}: "
              f"\"Pitfalls\" and \"Further reading\".")
    return 0
