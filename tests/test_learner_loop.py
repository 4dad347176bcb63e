"""What a learner sees: a first run that fits a screen, --task, one IMPORT ERROR line,
honest summaries, readable ids, a fast status, and hints only where their cause can be."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harness import compare, triton_probe
from harness.katas import KATAS, ROOT, built_katas

FIRST_RUN_MAX_LINES = 40


def run_pytest(*args: str, profile: str = "ci") -> tuple[int, str]:
    env = dict(os.environ, HYPOTHESIS_PROFILE=profile, KATA_NO_PROGRESS="1", COLUMNS="100")
    for var in ("KATA_IMPL", "KATA_REPORT"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, "-m", "pytest", *args, "-p", "no:cacheprovider"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("number", built_katas())
def test_first_run_on_the_stubs_fits_one_screen(number: str) -> None:
    code, out = run_pytest(f"katas/{number}")
    lines = out.rstrip().splitlines()
    assert code == 1, f"a pristine stub must not pass (exit {code})"
    assert len(lines) <= FIRST_RUN_MAX_LINES, (
        f"kata {number}'s first run printed {len(lines)} lines (at most {FIRST_RUN_MAX_LINES}):\n{out}")
    assert lines[-1].startswith("  next: Task 1"), f"the kata summary must come last:\n{out}"
    for noise in ("FAILED", "@seed(", "reproduce_failure", "Traceback", "[dtype"):
        assert noise not in out, f"{noise!r} in kata {number}'s first run:\n{out}"


def test_task_selection_never_claims_the_whole_kata() -> None:
    code, out = run_pytest("katas/04", "--impl", "reference", "--task", "1")
    assert code == 0, out
    assert "all checks pass" not in out and "compare with reference" not in out, out
    assert "were not selected in this run (Tasks 2, 3, 4)" in out, out
    assert "Task 1 `attention` for multi-head attention" in out and "done" in out, out


def test_a_run_without_gpu_checks_says_what_was_not_checked() -> None:
    if torch.cuda.is_available():
        pytest.skip("on a GPU the speed checks run")
    code, out = run_pytest("katas/03", "--impl", "reference")
    assert code == 0, out
    assert "all checks pass" not in out, out
    assert "CPU correctness done; Task 5" in out and "pytest katas/03 -m gpu" in out, out


def _results(number: str, outcomes: dict[str, tuple[str, int]]) -> list[dict]:
    """Made-up plugin results: {task: (outcome, how many checks)}."""
    return [{"nodeid": f"katas/x.py::TestTask{task}X::test_{i}", "kata": number, "task": task,
             "outcome": outcome, "todo": None, "message": ""}
            for task, (outcome, n) in outcomes.items() for i in range(n)]


def test_an_optional_skip_is_reported_as_optional_and_a_gpu_skip_as_gpu() -> None:
    from harness import report

    rows = _results("10", {"1": ("passed", 3), "2": ("passed", 2), "3": ("passed", 2),
                           "4": ("passed", 2), "5": ("skipped", 4), "6": ("optional", 26)})
    lines, tasks = report.kata_summary("10", rows, [], ROOT / "stubs", stopped_early=False)
    task5 = next(l for l in lines if l.lstrip().startswith("Task 5"))
    task6 = next(l for l in lines if l.lstrip().startswith("Task 6"))
    assert "needs a GPU (4 checks skipped here)" in task5, lines
    assert "optional, not started (26 checks skipped)" in task6 and "GPU" not in task6, lines
    assert not tasks["6"].done and tasks["6"].counts()["optional"] == 26, tasks["6"]
    assert lines[-1] == ("  CPU correctness done; Task 5 (the simulator) needs a GPU: pytest "
                         "katas/10 -m gpu; optional Task 6 (abort) not started "
                         "(read katas/10_scheduler/README.md)"), lines
    # Only the optional task left out: CPU correctness is done, no word of a GPU.
    rows = [r for r in rows if r["task"] != "5"]
    lines, _ = report.kata_summary("10", rows, [], ROOT / "stubs", stopped_early=False)
    assert "GPU" not in "\n".join(lines) and "next:" not in "\n".join(lines), lines
    assert lines[-1].startswith("  CPU correctness done: every required check passes; "
                                "optional Task 6 (abort) not started"), lines


def test_status_neither_waits_on_nor_claims_an_optional_task() -> None:
    from harness import status

    done = {"passed": 3, "failed": 0, "todo": 0, "skipped": 0, "optional": 0, "not_run": 0}
    left_out = dict(done, passed=0, optional=26)
    tasks = {str(t): dict(done) for t in range(1, 6)}
    entry = lambda tasks: {"10": {"tasks": tasks, "file_mtime": time.time() + 1e6}}  # noqa: E731
    impl = ROOT / "reference"
    state, step = status.kata_state("10", entry({**tasks, "6": left_out}), impl)
    assert state == "done (5 of 5 tasks; optional Task 6 not started)" and step == "", (state, step)
    state, step = status.kata_state("10", entry({**tasks, "6": dict(done)}), impl)
    assert state == "done (6 of 6 tasks)" and step == "", (state, step)
    state, step = status.kata_state("10", entry({**tasks, "5": dict(done, failed=1),
                                                 "6": left_out}), impl)
    assert state.startswith("in progress") and step.startswith("Task 5"), (state, step)
    gpu = dict(done, passed=0, skipped=4)  # a GPU-only task on a CPU, as before
    state, step = status.kata_state("10", entry({**tasks, "5": gpu, "6": left_out}), impl)
    assert state.startswith("done on CPU (5 of 5 tasks") and "-m gpu" in step, (state, step)


def test_a_learner_without_the_optional_task_is_told_so(tmp_path: Path) -> None:
    """Kata 10 without Scheduler.abort: Task 6's checks skip as optional, not as GPU-only."""
    source = (ROOT / "reference" / "scheduler.py").read_text()
    (tmp_path / "scheduler.py").write_text(source + "\n\ndel Scheduler.abort  # Task 6 left out\n")
    code, out = run_pytest("katas/10", "--impl", str(tmp_path))
    assert code == 0, out
    task6 = next(l for l in out.splitlines() if l.lstrip().startswith("Task 6"))
    assert "optional, not started" in task6, out
    assert "needs a GPU" not in out and "-m gpu" not in out and "all checks pass" not in out, out
    assert "CPU correctness done: every required check passes; optional Task 6" in out, out


def test_stopping_early_is_not_called_progress() -> None:
    code, out = run_pytest("katas/04", "-x")
    assert code == 1, out
    assert "stopped at the first failure" in out, out


def test_an_import_error_is_reported_once(tmp_path: Path) -> None:
    (tmp_path / "attention.py").write_text("def attention(q, k, v:\n    pass\n")
    code, out = run_pytest("katas/04", "--impl", str(tmp_path))
    assert code == 1, out
    assert out.count("IMPORT ERROR:") == 1, out
    assert "SyntaxError at line 1" in out, out


def test_a_missing_module_is_an_import_error(tmp_path: Path) -> None:
    code, out = run_pytest("katas/04", "--impl", str(tmp_path))
    assert code == 1 and out.count("IMPORT ERROR:") == 1 and "file not found" in out, out


def test_a_real_failure_is_short_and_names_the_learners_line(tmp_path: Path) -> None:
    source = (ROOT / "reference" / "memory_math.py").read_text()
    broken = source.replace("def param_count(m: ModelShape) -> int:\n",
                            "def param_count(m: ModelShape) -> int:\n    return 7\n", 1)
    assert broken != source
    (tmp_path / "memory_math.py").write_text(broken)
    code, out = run_pytest("katas/01", "--impl", str(tmp_path), "--task", "1")
    assert code == 1, out
    assert f"in your code, {tmp_path / 'memory_math.py'}" in out or "memory_math.py:" in out, out
    assert "def test_" not in out, f"test source shown:\n{out}"
    assert "tensor(" not in out, f"a tensor repr shown:\n{out}"
    assert "(--tb=long for the full traceback)" in out, out


def test_status_answers_at_once_and_knows_missing_modules(tmp_path: Path) -> None:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "harness", "status", "--impl", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    seconds = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert seconds < 3, f"status took {seconds:.1f} s"
    for number in built_katas():
        assert f"no module here ({KATAS[number][1]}.py" in proc.stdout, proc.stdout


def test_every_subcommand_has_help() -> None:
    for command in ("check", "status", "selftest"):
        proc = subprocess.run([sys.executable, "-m", "harness", command, "--help"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "usage:" in proc.stdout, (command, proc.stdout, proc.stderr)


def test_dtype_ids_name_the_dtype() -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest", "katas/04", "--collect-only", "-q",
                           "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert "[float32]" in proc.stdout or "float32]" in proc.stdout, proc.stdout[-2000:]
    assert "dtype0" not in proc.stdout, proc.stdout[-2000:]


def _garbage_bf16() -> tuple[torch.Tensor, torch.Tensor]:
    expected = torch.ones(4, dtype=torch.bfloat16)
    return torch.full((4,), float("nan"), dtype=torch.bfloat16), expected


def test_interpreter_hint_only_after_a_triton_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    actual, expected = _garbage_bf16()
    compare.new_check()
    with pytest.raises(AssertionError) as plain_torch:
        compare.assert_close(actual, expected)
    assert "interpreter" not in str(plain_torch.value), "hint shown for plain torch code"
    monkeypatch.setattr(triton_probe, "_TOTAL", triton_probe.total_launches() + 1)  # a launch
    with pytest.raises(AssertionError) as after_kernel:
        compare.assert_close(actual, expected)
    assert "interpreter" in str(after_kernel.value), str(after_kernel.value)


def test_relative_error_is_not_reported_against_zero() -> None:
    with pytest.raises(AssertionError) as info:
        compare.assert_close(torch.tensor([1e-3, 0.0]), torch.tensor([0.0, 0.0]))
    text = str(info.value)
    assert "max rel error" not in text and "exactly 0, judged by atol" in text, text


def test_triton_launches_are_counted() -> None:
    triton = pytest.importorskip("triton")
    import triton.language as tl

    @triton.jit
    def _add_one(x_ptr, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=mask) + 1, mask=mask)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.zeros(8, device=device)
    with triton_probe.count_triton_launches() as none:
        x.add_(1)
    with triton_probe.count_triton_launches() as one:
        _add_one[(1,)](x, 8, BLOCK=8)
    assert none.count == 0 and one.count == 1, (none, one)
    with pytest.raises(AssertionError, match="launched no Triton kernel"):
        triton_probe.assert_triton_ran(none, "f(x)")
