"""`kata.py interview`: a scratch copy of the pristine stub, a countdown on a fake clock, hints
locked while it runs (active_interview), a rubric and a JSON record at the finish, on hidden
seeds: the same --seed gives the same draw, no --seed a fresh one. Kata 10, Task 1 (fast)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import interview
from harness.katas import ROOT


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Clock:
    monkeypatch.setenv("KATA_INTERVIEW_DIR", str(tmp_path / "iv"))
    c = Clock()
    monkeypatch.setattr(interview, "_now", c)
    return c


def records(tmp_path: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "iv").glob("record-*.json"))]


def test_start_copies_the_pristine_stub_locks_hints_and_counts_down(tmp_path, clock, capsys) -> None:
    assert interview.active_interview() is None
    assert interview.main(["10", "--minutes", "30", "--tasks", "1", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    scratch = tmp_path / "iv" / "10"
    stub = subprocess.run(["git", "show", "HEAD:stubs/scheduler.py"], cwd=ROOT,
                          capture_output=True, text=True).stdout  # the committed stub ...
    stub = stub or (ROOT / "stubs" / "scheduler.py").read_text()  # ... or the file, without git
    assert (scratch / "scheduler.py").read_text() == stub
    assert f"pytest katas/10 --impl {scratch} --task 1" in out, out
    assert "30m 00s left" in out, out
    active = interview.active_interview()
    assert active and active["kata"] == "10" and active["tasks"] == ["1"]
    assert "seed" not in active
    # Hints and the solution are locked while it runs.
    from harness import hints

    capsys.readouterr()
    assert hints.hint_main(["10", "1"]) == 2 and hints.solution_main(["10", "--force"]) == 2
    assert "locked while the interview" in capsys.readouterr().out
    # A second interview does not start over the running one.
    assert interview.main(["02"]) == 2
    clock.t += 25 * 60 + 30
    assert interview.main(["--status"]) == 0
    assert "4m 30s left of 30 min" in capsys.readouterr().out
    clock.t += 10 * 60
    interview.main(["--status"])
    assert "time is up (5m 30s over)" in capsys.readouterr().out
    assert interview.main(["--abandon"]) == 0
    assert interview.active_interview() is None


def test_finish_prints_the_rubric_and_writes_a_record(tmp_path, clock, capsys) -> None:
    interview.main(["10", "--minutes", "20", "--tasks", "1", "--seed", "11", "--candidate", "ada"])
    source = (ROOT / "reference" / "scheduler.py").read_text()
    # A candidate who gets everything right but the duplicate-id check.
    broken = source.replace('raise ValueError(f"request {request_id!r} already exists")',
                            "pass  # forgot the duplicate-id check", 1)
    assert broken != source
    (tmp_path / "iv" / "10" / "scheduler.py").write_text(broken)
    clock.t += 12 * 60 + 5
    assert interview.main(["--finish"]) == 0
    out = capsys.readouterr().out
    assert "interview rubric: kata 10 (scheduler) - ada" in out, out
    assert "time used      12m 05s of 20m 00s, on time" in out, out
    assert "Task 1 requests, steps and the budget" in out, out
    assert "edge cases" in out and "properties" in out and "hidden seed" in out, out
    assert "hints used     0" in out and "perf tier" in out, out
    [rec] = records(tmp_path)
    assert rec["kata"] == "10" and rec["candidate"] == "ada" and rec["hints_used"] == 0
    assert set(rec["tasks"]) == {"1"} and rec["tasks"]["1"]["checks"] >= 10
    assert rec["edge_cases"]["of"] >= 5 and rec["properties"]["of"] >= 1
    assert rec["hidden_seed"] == interview.hidden_seed("10", 11)
    assert rec["time"]["used_s"] == 12 * 60 + 5 and rec["run"] == "ok"
    assert Path(rec["code"]).read_text() == broken
    assert interview.active_interview() is None
    assert not rec["tasks"]["1"]["done"], rec
    assert rec["edge_cases"]["missed"] == ["test_duplicate_request_id_is_a_value_error"], rec


def test_the_hidden_seed_is_shared_by_seed_and_fresh_without() -> None:
    assert interview.hidden_seed("10", 7) == interview.hidden_seed("10", 7)
    assert interview.hidden_seed("10", 7) != interview.hidden_seed("10", 8)
    assert len({interview.hidden_seed("10", None) for _ in range(5)}) == 5


def test_two_finishes_without_seed_use_different_seeds(tmp_path, clock, capsys, monkeypatch) -> None:
    """The finishing run gets --hypothesis-seed=<hidden> and the randomised profile with an
    empty database (ci is derandomised, which would ignore the seed)."""
    from harness import grade

    calls = []

    def fake_run(kata, impl, *, scratch, timeout, memory_gb, extra_args, env):
        calls.append((list(extra_args), dict(env)))
        return grade.RunResult("ok", 0, 0.1, {"results": []}, "")

    monkeypatch.setattr(grade, "run_checks", fake_run)
    for _ in range(2):
        interview.main(["10", "--tasks", "1"])
        interview.main(["--finish"])
        clock.t += 2  # two records, two stamps
    interview.main(["10", "--seed", "5"])
    interview.main(["--finish"])
    seeds = [next(a for a in args if a.startswith("--hypothesis-seed=")) for args, _ in calls]
    assert seeds[0] != seeds[1]
    assert seeds[2] == f"--hypothesis-seed={interview.hidden_seed('10', 5)}"
    for args, env in calls:
        assert env["HYPOTHESIS_PROFILE"] == "learner" and "HYPOTHESIS_STORAGE_DIRECTORY" in env
    assert calls[0][0][-2:] == ["--task", "1"] and "--task" not in calls[2][0]
    # The seed is not written anywhere before the finish.
    interview.main(["10", "--seed", "5"])
    state = (tmp_path / "iv" / "state.json").read_text()
    assert str(interview.hidden_seed("10", 5)) not in state


def test_help() -> None:
    proc = subprocess.run([sys.executable, "-m", "harness", "interview", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--finish" in proc.stdout and "--seed" in proc.stdout


def test_watch_counts_down_and_finishes_at_zero(tmp_path, monkeypatch, capsys) -> None:
    from harness import grade

    monkeypatch.setenv("KATA_INTERVIEW_DIR", str(tmp_path / "iv"))
    monkeypatch.setattr(grade, "run_checks", lambda *a, **k: grade.RunResult("ok", 0, 0.1, {"results": []}, ""))
    interview.main(["10", "--minutes", "0.01", "--tasks", "1"])  # 0.6 s on the real clock
    assert interview.main(["--watch"]) == 0
    out = capsys.readouterr().out
    assert "left of 0.01 min" in out and "interview rubric: kata 10" in out, out
    assert interview.active_interview() is None and records(tmp_path)
