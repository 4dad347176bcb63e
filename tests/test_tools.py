"""The learner's tools (doctor, hint, solution, reset, restore), end to end.

Each test runs `python -m harness COMMAND` in a temporary copy of the repository (its
tracked files, committed to a fresh git repository), so the progress file, the backups
and the stubs it touches are the copy's, never this checkout's.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.katas import ROOT

TOOLS = ("doctor", "hint", "solution", "reset", "restore")
EDITED = (b"def param_count(m):   \r\n    return 7\t \r\n\r\n# caf\xc3\xa9, unsaved-looking"
          b" edits   \r\n   ")  # CRLF, trailing spaces and tabs, no final newline


def _env(copy: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(copy), HYPOTHESIS_PROFILE="ci", COLUMNS="120")
    for var in ("KATA_NO_PROGRESS", "KATA_REPORT", "KATA_IMPL", "TRITON_INTERPRET"):
        env.pop(var, None)
    return env


def _git(copy: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=kata", "-c", "user.email=kata@example.invalid",
                    "-c", "commit.gpgsign=false", *args], cwd=copy, check=True,
                   capture_output=True, timeout=60)


def _copy_repo(dest: Path, *, git: bool = True) -> Path:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True,
                           timeout=60).stdout.decode().split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    if git:
        _git(dest, "init", "-q")
        _git(dest, "add", "-A")
        _git(dest, "commit", "-q", "-m", "the kata repository")
    return dest


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return _copy_repo(tmp_path / "repo")


def kata(copy: Path, *args: str, timeout: int = 120) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "harness", *args], cwd=copy, env=_env(copy),
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def backups(copy: Path, number: str = "01") -> list[Path]:
    folder = copy / ".kata_backups" / number
    return sorted(folder.iterdir()) if folder.is_dir() else []


def test_every_tool_has_help(repo: Path) -> None:
    for command in TOOLS:
        code, out = kata(repo, command, "--help")
        assert code == 0 and f"usage: python kata.py {command}" in out, (command, out)


def test_the_copy_runs_its_own_harness(repo: Path) -> None:
    code, out = kata(repo, "status")
    assert code == 0 and str(repo) in out, out


def test_reset_and_restore_round_trip_byte_for_byte(repo: Path) -> None:
    stub = repo / "stubs" / "memory_math.py"
    pristine = stub.read_bytes()
    stub.write_bytes(EDITED)
    code, out = kata(repo, "reset", "01")
    assert code == 0, out
    assert stub.read_bytes() == pristine, "reset must put the committed stub back"
    [saved] = backups(repo)
    assert saved.read_bytes() == EDITED, "the backup must be the learner's file, byte for byte"
    assert re.fullmatch(r"memory_math-\d{8}-\d{6}\.py", saved.name), saved.name
    assert "restore 01 --last" in out, out

    code, out = kata(repo, "restore", "01", "--list")
    stamp = saved.stem[len("memory_math-"):]
    assert code == 0 and stamp in out, out
    code, out = kata(repo, "restore", "01", "--last")
    assert code == 0, out
    assert stub.read_bytes() == EDITED
    assert backups(repo) == [saved], "a pristine stub needs no backup"

    # Restoring over other edits backs them up first, so the restore can be undone.
    other = b"# second attempt\n"
    stub.write_bytes(other)
    code, out = kata(repo, "restore", "01", stamp)
    assert code == 0 and stub.read_bytes() == EDITED, out
    newer = [p for p in backups(repo) if p != saved]
    assert len(newer) == 1 and newer[0].read_bytes() == other, out
    code, out = kata(repo, "restore", "01", "--last")
    assert code == 0 and stub.read_bytes() == other, out
    assert saved.read_bytes() == EDITED and newer[0].read_bytes() == other, "a backup changed"

    code, out = kata(repo, "restore", "01", "20000101-000000")
    assert code == 2 and "no backup" in out and stub.read_bytes() == other, out
    code, out = kata(repo, "reset", "01")
    assert code == 0 and stub.read_bytes() == pristine, out
    code, out = kata(repo, "reset", "01")
    assert code == 0 and "already the pristine stub" in out, out


def test_two_resets_in_one_second_keep_both_backups(repo: Path) -> None:
    script = (
        "import harness.backups as b\n"
        "b._stamp = lambda: '20261129-120000'\n"  # both resets in the same second
        "stub = b.stub_path('01')\n"
        "stub.write_bytes(b'first edit\\r\\n')\n"
        "assert b.reset_main(['01']) == 0\n"
        "stub.write_bytes(b'second edit, no newline')\n"
        "assert b.reset_main(['01']) == 0\n"
        "stub.write_bytes(b'third')\n"
        "assert b.restore_main(['01', '20261129-120000']) == 0\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=repo, env=_env(repo),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = {p.name: p.read_bytes() for p in backups(repo)}
    assert names == {"memory_math-20261129-120000.py": b"first edit\r\n",
                     "memory_math-20261129-120000-1.py": b"second edit, no newline",
                     "memory_math-20261129-120000-2.py": b"third"}, names
    assert (repo / "stubs" / "memory_math.py").read_bytes() == b"first edit\r\n"
    code, out = kata(repo, "restore", "01", "--last")
    assert code == 0 and (repo / "stubs" / "memory_math.py").read_bytes() == b"third", out


def test_reset_without_git_changes_nothing(tmp_path: Path) -> None:
    copy = _copy_repo(tmp_path / "plain", git=False)
    stub = copy / "stubs" / "memory_math.py"
    stub.write_bytes(EDITED)
    code, out = kata(copy, "reset", "01")
    assert code == 2 and "git" in out and "Nothing was changed" in out, out
    assert stub.read_bytes() == EDITED and not backups(copy)


def _readme_rungs(copy: Path, number_folder: str, task: str) -> list[str]:
    """The README's rungs for a task, read independently of harness/hints.py."""
    text = (copy / "katas" / number_folder / "README.md").read_text()
    hints = text.split("\n## Hints", 1)[1].split("\n## ", 1)[0]
    section = hints.split(f"### Task {task}\n", 1)[1].split("\n### ", 1)[0]
    return [body.strip() for body in re.findall(r"</summary>(.*?)</details>", section, re.S)]


def test_hint_ladder_one_rung_per_call_recorded_in_status(repo: Path) -> None:
    rungs = _readme_rungs(repo, "04_attention", "2")
    assert len(rungs) == 3
    for k, rung in enumerate(rungs, start=1):
        code, out = kata(repo, "hint", "04", "2")
        assert code == 0 and f"hint {k} of 3" in out, out
        assert rung.splitlines()[0] in out, (k, out)
        for later in rungs[k:]:
            assert later.splitlines()[0] not in out, f"hint {k} showed a later rung:\n{out}"
    code, out = kata(repo, "hint", "04", "2")
    assert code == 0 and "all 3 hints shown" in out, out
    code, out = kata(repo, "hint", "04", "2", "--all")
    assert code == 0 and all(r.splitlines()[0] in out for r in rungs), out

    code, out = kata(repo, "hint", "04")  # no run recorded yet: Task 1
    task1 = _readme_rungs(repo, "04_attention", "1")
    assert code == 0 and "Task 1" in out and task1[0].splitlines()[0] in out, out
    code, out = kata(repo, "hint", "04", "9")
    assert code == 2 and "Tasks 1, 2, 3, 4" in out, out

    data = json.loads((repo / ".kata_progress.json").read_text())
    assert data["schema"] == 1 and data["hints"]["04"] == {"2": 3, "1": 1}, data
    code, out = kata(repo, "status")
    line = next(l for l in out.splitlines() if l.startswith("04_attention"))
    assert "hints: 4" in line, out
    assert "next to do:" in out, out


def test_solution_only_after_a_recorded_pass(repo: Path) -> None:
    reference = (repo / "reference" / "memory_math.py").read_text()
    marker = reference.strip().splitlines()[0]
    code, out = kata(repo, "solution", "01")
    assert code == 1 and "not yet" in out and "pytest katas/01" in out, out
    assert reference not in out

    stub = repo / "stubs" / "memory_math.py"
    shutil.copyfile(repo / "reference" / "memory_math.py", stub)
    code, out = kata(repo, "check", "01", "-q", "-p", "no:cacheprovider", timeout=300)
    assert code == 0 and "all checks pass" in out, out[-3000:]
    code, out = kata(repo, "status")
    assert "done (3 of 3 tasks)" in out, out
    code, out = kata(repo, "solution", "01")
    assert code == 0 and reference.rstrip("\n") in out and marker in out, out
    assert "Further reading" in out and "katas/01_memory_math/README.md" in out, out
    assert "WARNING" not in out, out

    stub.write_text(stub.read_text() + "\n# edited after the run\n")
    os.utime(stub, (stub.stat().st_atime, stub.stat().st_mtime + 5))
    code, out = kata(repo, "solution", "01")
    assert code == 1 and "changed since your last run" in out and reference not in out, out
    code, out = kata(repo, "solution", "01", "--force")
    assert code == 0 and "WARNING" in out and reference.rstrip("\n") in out, out


def test_doctor_json_and_a_broken_pin(repo: Path) -> None:
    code, out = kata(repo, "doctor", "--json", "--quick")
    report = json.loads(out)
    assert code == (0 if report["ok"] else 1), out
    versions = {row["name"]: row for row in report["versions"]}
    assert "torch" in versions and "pytest" in versions, versions
    assert versions["pytest"]["pinned"] == "9.2.0" and versions["pytest"]["installed"], versions
    assert {row["kata"] for row in report["katas"]} >= {"01", "03", "04"}, report["katas"]
    if report["gpu"] is None:
        row03 = next(row for row in report["katas"] if row["kata"] == "03")
        assert "interpreter" in row03["backend"] and row03["skips"], row03
        assert any("bf16" in p for p in row03["pitfalls"]), row03

    pyproject = repo / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"pytest==9.2.0"', '"pytest==0.0.1"'))
    code, out = kata(repo, "doctor", "--quick")
    assert code == 1, out
    assert "pytest" in out and "0.0.1" in out and "fix:" in out, out


def test_status_shows_the_best_perf_tier_and_old_files_still_load(repo: Path) -> None:
    (repo / ".kata_progress.json").write_text(json.dumps({"schema": 1, "runs": {}}))  # no hints key
    script = (
        "import time\n"
        "from harness import progress\n"
        "from harness.katas import ROOT\n"
        "assert progress.hints_used('03') == 0\n"
        "stub = ROOT / 'stubs' / 'online_softmax.py'\n"
        "done = {'passed': 3, 'failed': 0, 'todo': 0, 'skipped': 0, 'not_run': 0}\n"
        "progress.record_run(stub.parent, '03', {str(t): done for t in range(1, 6)},\n"
        "                    stub.stat().st_mtime, time.time())\n"
        "case = lambda tier: {'gpu': 'H200', 'time': 1.0, 'impl': str(stub.parent),\n"
        "                     'cases': [{'tier': 'gold'}, {'tier': tier}]}\n"
        "progress.record_perf('online_softmax', case('silver'))\n"
        "progress.record_perf('online_softmax', case('bronze'))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=repo, env=_env(repo),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    code, out = kata(repo, "status")
    line = next(l for l in out.splitlines() if l.startswith("03_online_softmax"))
    assert code == 0 and "perf bronze on H200 (best: silver)" in line, out
    assert "done (5 of 5 tasks)" in line, out
