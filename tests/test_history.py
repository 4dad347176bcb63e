"""`kata.py perf-history`: medians with confidence intervals per run, a verdict against the
previous run of the same environment, a refusal across environments; and the recording hook in
PerfChecker.check (on a CPU stand-in device, into a temporary folder)."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness import history
from harness.katas import ROOT
from perf_tricks.simdevice import FakeBenchmark, FakeRequest
from harness.perf import Device, DevicePeaks, PerfChecker, Plan

ENV_A = {"gpu": "NVIDIA H200", "driver": "570.86", "cuda": "12.8", "torch": "2.13.0",
         "triton": "3.9.0", "sm_clock_max_mhz": "1980", "sm_clock_app_mhz": "1980",
         "sm_clock_mhz": "1755"}
ENV_B = dict(ENV_A, driver="580.10")


def entry(t: float, ms: float, env: dict, *, spread: float = 0.01, sha: str = "a" * 64,
          case: str = "softmax[4096x4096 fp32]", seed: int = 0, n: int = 10) -> dict:
    rng = random.Random(seed)
    samples = [ms * (1 + rng.uniform(-spread, spread)) for _ in range(n)]
    return {"schema": 1, "time": t, "run": f"run{t}", "module": "online_softmax",
            "target": "softmax", "label": case.split("[")[1][:-1], "case": case, "tier": "gold",
            "ms": ms, "rounds_ms": [ms], "samples_ms": samples, "samples_from": "pytest-benchmark rounds",
            "metrics": {}, "env": env, "env_id": history.env_id(env), "impl": "stubs",
            "file_sha256": sha}


def write(tmp_path: Path, entries: list[dict]) -> Path:
    (tmp_path / "online_softmax.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    return tmp_path


def run(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = history.main(["03", "--dir", str(tmp_path), *args])
    return code, capsys.readouterr().out


def test_median_ci_contains_the_median_and_is_deterministic() -> None:
    values = [1.0, 1.1, 0.9, 1.05, 0.95, 1.2, 0.8, 1.0, 1.02, 0.98]
    lo, hi = history.median_ci(values)
    assert lo <= history.median(values) <= hi
    assert (lo, hi) == history.median_ci(values)
    assert history.median_ci([2.0]) == (2.0, 2.0)


def test_overlapping_runs_are_no_significant_change(tmp_path, capsys) -> None:
    write(tmp_path, [entry(1000, 0.070, ENV_A, seed=1), entry(2000, 0.0702, ENV_A, seed=2, sha="b" * 64)])
    code, out = run(tmp_path, capsys)
    assert code == 0, out
    assert "softmax[4096x4096 fp32]" in out and "95% CI [" in out
    assert "no significant change" in out and "your file changed since" in out, out


def test_a_clear_change_is_faster_or_slower(tmp_path, capsys) -> None:
    write(tmp_path, [entry(1000, 0.100, ENV_A, seed=1), entry(2000, 0.050, ENV_A, seed=2)])
    code, out = run(tmp_path, capsys)
    assert "-> last run: faster (" in out and "same file" in out, out
    write(tmp_path, [entry(1000, 0.050, ENV_A, seed=1), entry(2000, 0.100, ENV_A, seed=2)])
    code, out = run(tmp_path, capsys)
    assert "-> last run: slower" in out, out


def test_runs_of_different_environments_are_not_compared(tmp_path, capsys) -> None:
    write(tmp_path, [entry(1000, 0.100, ENV_A, seed=1), entry(2000, 0.050, ENV_B, seed=2)])
    code, out = run(tmp_path, capsys)
    assert "not compared: no earlier run on this environment" in out, out
    assert "driver 570.86 vs 580.10" in out and "faster" not in out, out
    # An earlier run on the same environment is compared; the other one is named and skipped.
    write(tmp_path, [entry(1000, 0.100, ENV_B, seed=1), entry(1500, 0.05, ENV_A, seed=3),
                     entry(2000, 0.1001, ENV_B, seed=2)])
    code, out = run(tmp_path, capsys, "--json")
    data = json.loads(out)["softmax[4096x4096 fp32]"]
    assert data["result"].startswith("no significant change") and data["refused"], data


def test_the_current_clock_is_not_part_of_the_environment() -> None:
    assert history.env_id(ENV_A) == history.env_id(dict(ENV_A, sm_clock_mhz="1200"))
    assert history.env_id(ENV_A) != history.env_id(ENV_B)


def test_nothing_recorded_says_how_to_record(tmp_path, capsys) -> None:
    code, out = run(tmp_path, capsys)
    assert code == 1 and "pytest katas/03 -m perf" in out, out


def test_perf_checks_record_figures_environment_and_file_hash(tmp_path, monkeypatch) -> None:
    targets = tmp_path / "targets"
    targets.mkdir()
    (targets / "online_softmax.toml").write_text(
        "[softmax]\nrequired = \"bronze\"\n[softmax.tiers.bronze]\nvs_torch = 0.0\n")
    store = tmp_path / "history"
    monkeypatch.setenv(history.ENV_VAR, str(store))
    peaks = DevicePeaks(name="cpu", copy_bytes_per_s=1e11, matmul_flops_per_s=1e12)
    pc = PerfChecker(FakeRequest(), peaks, FakeBenchmark(), device=Device(),
                     plan=Plan(warmup=1, batches=3, batch_size=2, confirm_rounds=0, bench_rounds=2),
                     targets_dir=targets)

    def make(i: int) -> tuple[torch.Tensor]:
        return (torch.randn(64, 64, generator=torch.Generator().manual_seed(i)),)

    def check(args, out) -> None:
        assert torch.allclose(out, torch.softmax(args[0], dim=-1))

    m = pc.measure(lambda x: torch.softmax(x, dim=-1), make_inputs=make, check=check,
                   label="64x64", peers={"torch": lambda x: torch.softmax(x, dim=-1)})
    pc.check("online_softmax", "softmax", m)
    lines = (store / "online_softmax.jsonl").read_text().splitlines()
    assert len(lines) == 1
    e = json.loads(lines[0])
    assert e["case"] == "softmax[64x64]" and e["samples_ms"] and e["ms"] > 0
    assert {"gpu", "driver", "torch", "triton", "sm_clock_mhz"} <= set(e["env"])
    assert e["env"]["torch"] == torch.__version__
    assert e["file_sha256"] and len(e["file_sha256"]) == 64
    # Not a kata's module (the harness's own tests): nothing recorded.
    (targets / "guard.toml").write_text((targets / "online_softmax.toml").read_text())
    pc.check("guard", "softmax", m)
    assert not (store / "guard.jsonl").exists()


def test_help() -> None:
    proc = subprocess.run([sys.executable, "-m", "harness", "perf-history", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "95% confidence interval" in proc.stdout, proc.stdout + proc.stderr
