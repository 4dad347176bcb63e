"""The reference's Gluon kernel for Hopper (reference/flash_attention_hopper.py), checked
without a GPU: it must compile for sm_90 with the Triton this project pins (Gluon's API
moves between releases), keep the matmul/softmax overlap it exists for, and stay off the
CPU path. Its numbers are checked on a GPU by `pytest katas/05 --impl reference`.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton.experimental.gluon")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compiled() -> list[dict]:
    """scripts/compile_flash_hopper.py's report, run outside the interpreter mode of this session."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "compile_flash_hopper.py")],
                         capture_output=True, text=True, env=env, timeout=600)
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert rows, f"scripts/compile_flash_hopper.py printed no report (exit {run.returncode}):\n{run.stderr[-2000:]}"
    return rows


def test_gluon_kernel_compiles_for_sm90(compiled):
    broken = [f"D={r['D']} causal={r['causal']} {r['dtype']}: {r['error']}" for r in compiled if not r["ok"]]
    assert not broken, (f"reference/flash_attention_hopper.py no longer compiles for sm_90 with "
                        f"triton {compiled[0]['triton']}:\n" + "\n".join(broken))


def test_gluon_kernel_overlaps_softmax_with_the_pv_matmul(compiled):
    for r in compiled:
        if not r["ok"]:
            continue
        case = f"D={r['D']} causal={r['causal']} {r['dtype']}"
        assert r["wgmma"], f"{case}: no Hopper tensor-core matmul (wgmma) in the PTX"
        assert r["waits_with_one_in_flight"], (
            f"{case}: the kernel never waits with one wgmma group in flight, so the softmax "
            "no longer overlaps the P @ V matmul")
        assert r["shared_bytes"] <= 114 * 1024, (
            f"{case}: {r['shared_bytes']} bytes of shared memory; two programs no longer fit on "
            "one H100 SM (228 KB), and the kernel relies on two")


def test_cpu_inputs_take_the_portable_kernel():
    path = ROOT / "reference" / "flash_attention_hopper.py"
    spec = importlib.util.spec_from_file_location("_test_flash_attention_hopper", path)
    hopper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hopper)
    q = torch.zeros(1, 1, 64, 64, dtype=torch.float16)
    assert not hopper.supports(q, q, q, 0.18), "the Gluon kernel must never be chosen for CPU tensors"
