"""What a learner reads: a failure in a few lines, and the kata summary that ends a run.

`compact_failure` turns a failed check into its message, the test's line and the learner's
line (no test source, no harness frames, no tensor reprs; `--tb=long` shows everything).
`kata_summary` renders one kata's progress task by task and says what was not checked.
"""
from __future__ import annotations

import re
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import katas as catalog
from harness import progress

MAX_LINE = 240  # characters of one message line (a tensor repr would be thousands)
MAX_LINES = 30

_SEED_NOTE = re.compile(r"You can reproduce this failure by adding @seed\((\d+)\).*")


def short_path(path: str | Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def learner_frame(exc: BaseException, impl: Path) -> tuple[str, str]:
    """(function name, file:line) of the deepest frame in the learner's module, or '?'."""
    func, where = "?", "?"
    for frame in traceback.extract_tb(exc.__traceback__):
        path = Path(frame.filename)
        if path.parent.resolve() == impl.resolve():
            func, where = frame.name, f"{short_path(path)}:{frame.lineno}"
    return func, where


def _clip(line: str) -> str:
    return line if len(line) <= MAX_LINE else line[: MAX_LINE - 20] + f" ... ({len(line)} chars)"


def _message(exc: BaseException) -> list[str]:
    """The exception's own words. Assertion rewriting's 'assert ... where ...' dump is
    dropped when the test gave a message, and clipped when it did not."""
    text = str(exc)
    lines = text.splitlines() or [""]
    if isinstance(exc, AssertionError):
        cut = next((i for i, line in enumerate(lines) if line.startswith("assert ")), None)
        if cut is not None:
            lines = lines[:cut] if cut > 0 else lines[:1]
    else:
        lines[0] = f"{type(exc).__name__}: {lines[0]}"
    notes = [n for n in getattr(exc, "__notes__", []) if "@seed(" not in n and "reproduce_failure" not in n]
    lines += [_one_line_example(str(note)) for note in notes]
    return [_clip(line) for line in lines]


def _one_line_example(note: str) -> str:
    """Hypothesis' 'Falsifying example: test(self=..., seed=3, B=1)' on one line, no self."""
    flat = " ".join(part.strip() for part in note.splitlines())
    flat = re.sub(r"self=<[^>]*>,\s*", "", flat)
    return "  " + flat.replace("( ", "(").replace(", )", ")")


def compact_failure(exc: BaseException, test_path: Path, impl: Path) -> str:
    """A failure in a few lines: message, the learner's frames, the test's line."""
    extra = ""
    group = getattr(exc, "exceptions", None)
    if group:  # hypothesis found several distinct failures: show the first
        extra = f"(and {len(group) - 1} more distinct failure(s); --tb=long shows them all)"
        exc = group[0]
    lines = _message(exc)
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if Path(f.filename).parent.resolve() == impl.resolve()]
    for frame in mine[-3:]:
        code = f": {frame.line.strip()}" if frame.line else ""
        lines.append(_clip(f"  in your code, {short_path(frame.filename)}:{frame.lineno} "
                           f"{frame.name}(){code}"))
    test = [f for f in frames if Path(f.filename).resolve() == test_path.resolve()]
    if test:
        lines.append(f"  check: {short_path(test[-1].filename)}:{test[-1].lineno} "
                     "(--tb=long for the full traceback)")
    if extra:
        lines.append("  " + extra)
    if len(lines) > MAX_LINES:
        lines = lines[:MAX_LINES] + [f"  ... {len(lines) - MAX_LINES} more lines (--tb=long)"]
    return "\n".join(lines)


def one_line(exc: BaseException) -> str:
    """The first line of a failure, for the checks after the first few of a run."""
    group = getattr(exc, "exceptions", None)
    return _message(group[0] if group else exc)[0]


def rewrite_seed_note(text: str) -> str:
    """Hypothesis asks to add @seed(...) to the test; a learner never edits tests."""
    return _SEED_NOTE.sub(lambda m: f"Replay these inputs: add --hypothesis-seed={m.group(1)} "
                          "to the same pytest command.", text)


# -- The kata summary ---------------------------------------------------------------
@dataclass
class TaskTally:
    # passed/failed/todo/skipped (GPU-only)/optional (an optional task left out)/...
    outcomes: Counter = field(default_factory=Counter)
    not_run: int = 0  # deselected (--task, -k, -m) or never reached (-x)
    first_failure: str = ""
    todo: tuple[str, str] | None = None  # (function, file:line) of the first TODO

    @property
    def ran(self) -> int:
        return sum(n for k, n in self.outcomes.items() if k not in progress.NOT_RUN_OUTCOMES)

    @property
    def passed(self) -> int:
        return self.outcomes["passed"]

    @property
    def done(self) -> bool:
        return self.ran > 0 and self.passed == self.ran and not self.not_run

    @property
    def optional_not_started(self) -> bool:
        """An optional task the learner left out: its checks skipped as optional, none ran."""
        return self.ran == 0 and self.outcomes["optional"] > 0 and not self.not_run

    def counts(self) -> dict[str, int]:
        return {"passed": self.passed, "failed": self.ran - self.passed - self.outcomes["todo"],
                "todo": self.outcomes["todo"], "skipped": self.outcomes["skipped"],
                "optional": self.outcomes["optional"], "not_run": self.not_run}


def tally(results: list[dict[str, Any]], unrun: list[tuple[str | None, str | None]],
          number: str) -> dict[str, TaskTally]:
    """Per task ('' for checks outside a task class), in task order."""
    tasks: dict[str, TaskTally] = {t: TaskTally() for t in catalog.task_titles(number)}
    for r in results:
        t = tasks.setdefault(r["task"] or "", TaskTally())
        t.outcomes[r["outcome"]] += 1
        if r["outcome"] == "todo" and t.todo is None:
            t.todo = tuple(r["todo"][:2])
        if r["outcome"] in ("failed", "timeout") and not t.first_failure:
            t.first_failure = r["nodeid"].split("::")[-1]
    for kata, task in unrun:
        if kata == number:
            tasks.setdefault(task or "", TaskTally()).not_run += 1
    return {k: v for k, v in tasks.items() if v.ran or v.not_run or v.outcomes}


def _task_line(task: str, title: str, t: TaskTally) -> str:
    name = f"Task {task}" if task else "other checks"
    label = f"{name} {title}"
    if len(label) > 46:
        label = label[:45] + "…"
    gpu, optional = t.outcomes["skipped"], t.outcomes["optional"]
    if t.optional_not_started:
        state = f"optional, not started ({optional + gpu} checks skipped)"
    elif t.ran == 0 and gpu and not t.not_run:
        state = f"needs a GPU ({gpu} checks skipped here)"
    elif t.ran == 0:
        state = f"not run here ({t.not_run} checks)"
    elif t.outcomes["todo"] == t.ran:
        func, where = t.todo or ("?", "?")
        state = f"TODO ({t.ran} check{'s' if t.ran != 1 else ''}): {func}() in {where}"
    elif t.passed == t.ran:
        state = f"done ({t.passed} checks)"
    else:
        parts = [f"{t.passed} of {t.ran} pass"]
        if t.outcomes["todo"]:
            parts.append(f"{t.outcomes['todo']} TODO")
        if t.first_failure:
            parts.append(f"first failure: {t.first_failure}")
        state = "; ".join(parts)
    if t.ran and gpu:
        state += f" (+{gpu} GPU-only skipped)"
    if t.ran and optional:
        state += f" (+{optional} optional skipped)"
    if t.ran and t.not_run:
        state += f" (+{t.not_run} not run)"
    return f"  {label:<47} {state}"


def _bare(title: str) -> str:
    """'abort (optional)' -> 'abort': the line already says the task is optional."""
    return re.sub(r"\s*\(optional\)\s*$", "", title, flags=re.IGNORECASE) or title


def kata_summary(number: str, results: list[dict[str, Any]],
                 unrun: list[tuple[str | None, str | None]], impl: Path,
                 stopped_early: bool) -> tuple[list[str], dict[str, TaskTally]]:
    """The summary lines of one kata, and its task tallies (for the progress file)."""
    folder, module = catalog.KATAS[number]
    titles = catalog.task_titles(number)
    tasks = tally(results, unrun, number)
    ran = sum(t.ran for t in tasks.values())
    passed = sum(t.passed for t in tasks.values())
    lines = [f"kata {number} {module} ({short_path(impl / (module + '.py'))}): "
             f"{passed} of {ran} checks pass"]
    import_errors = [r for r in results if r["outcome"] == "import_error"]
    if import_errors:
        lines.append(f"  IMPORT ERROR: {import_errors[0]['message']}")
        lines.append("  fix this first: no check can run until the module imports")
        return lines, tasks
    for task, t in tasks.items():
        lines.append(_task_line(task, titles.get(task, ""), t))
    readme = f"katas/{folder}/README.md"
    not_run = sum(t.not_run for t in tasks.values())
    gpu_tasks = [k for k, t in tasks.items() if t.outcomes["skipped"] and not t.optional_not_started]
    optional_tasks = [k for k, t in tasks.items() if t.optional_not_started]
    unfinished = [k for k, t in tasks.items() if t.ran and t.passed < t.ran]
    if unfinished:
        task = unfinished[0]
        t = tasks[task]
        what = (f"implement {t.todo[0]}() in {t.todo[1]}" if t.todo and not t.first_failure
                else f"fix {t.first_failure}")
        lines.append(f"  next: Task {task} ({titles.get(task, '')}): {what}. Read {readme}, Task {task}.")
    if stopped_early and not_run:
        lines.append(f"  stopped at the first failure: {not_run} checks did not run.")
    elif not_run:
        skipped_tasks = [k for k, t in tasks.items() if t.not_run and not t.ran]
        which = f" (Tasks {', '.join(skipped_tasks)})" if skipped_tasks else ""
        lines.append(f"  {not_run} checks were not selected in this run{which}: "
                     f"pytest katas/{number} runs them all.")
    if not unfinished and not not_run and ran:
        if gpu_tasks or optional_tasks:
            verdict = "  CPU correctness done"
            if gpu_tasks:
                names = ", ".join(f"Task {k}" + (f" ({titles[k]})" if k in titles else "")
                                  for k in gpu_tasks)
                verdict += f"; {names} needs a GPU: pytest katas/{number} -m gpu"
            else:
                verdict += ": every required check passes"
            if optional_tasks:
                names = ", ".join(f"Task {k}" + (f" ({_bare(titles[k])})" if k in titles else "")
                                  for k in optional_tasks)
                verdict += f"; optional {names} not started (read {readme})"
            lines.append(verdict)
        else:
            lines.append(f"  all checks pass. Now compare with reference/{module}.py and read "
                         f"the README's notes ({readme}).")
    return lines, tasks
