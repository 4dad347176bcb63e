"""Compile reference/flash_attention_hopper.py for an H100 (sm_90) on any machine, GPU or not.

    python scripts/compile_flash_hopper.py [--ptxas]

Prints one JSON line per (D, causal, dtype): whether it compiled, the error if not, the shared
memory it needs, and two facts read off the PTX: that it uses Hopper's wgmma, and that it
waits with one wgmma group still in flight (the softmax / P@V overlap). --ptxas adds the
register and spill report of Triton's bundled ptxas. tests/test_hopper_fast_path.py runs
this in a subprocess, outside the Triton interpreter mode the test session runs in.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import tempfile
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon._runtime import GluonASTSource
from triton.runtime.jit import mangle_type

ROOT = Path(__file__).resolve().parents[1]
CASES = [(D, causal, dtype) for D in (64, 128) for causal in (False, True)
         for dtype in (torch.bfloat16, torch.float16)]


def load_hopper():
    path = ROOT / "reference" / "flash_attention_hopper.py"
    spec = importlib.util.spec_from_file_location("flash_attention_hopper", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compile_for_sm90(hopper, D: int, causal: bool, dtype: torch.dtype):
    """Ahead-of-time compile (no launch): descriptors built on CPU tensors give the signature."""
    bm, bn, stages, warps, q_regs = hopper.CONFIG[D]
    q = torch.empty(1, 2, 256, D, dtype=dtype)
    k = torch.empty(1, 1, 256, D, dtype=dtype)
    args = {"q_desc": hopper._desc(q, bm), "k_desc": hopper._desc(k, bn),
            "v_desc": hopper._desc(k, bn), "Out": q, "Lse": torch.empty(2, 256),
            "Hq": 2, "group": 2, "Sq": 256, "Sk": 256, "qk_scale": 0.1}
    consts = {"HEAD_D": D, "CAUSAL": causal, "BLOCK_M": bm, "BLOCK_N": bn, "STAGES": stages,
              "Q_IN_REGS": q_regs, "num_warps": warps}
    fn = hopper._flash_fwd_hopper
    signature = {}
    for name in fn.arg_names:
        if name in consts:
            signature[name] = "constexpr"
        elif isinstance(args[name], float):
            signature[name] = "fp32"
        elif isinstance(args[name], int):
            signature[name] = "i32"
        else:
            signature[name] = mangle_type(args[name])
    constexprs = {(fn.arg_names.index(name),): value for name, value in consts.items()}
    source = GluonASTSource(fn, signature, constexprs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})


def ptxas_report(ptx: str) -> str:
    """Registers and spills from one of Triton's bundled ptxas builds (the newer one reads
    the newer PTX versions that later Tritons emit)."""
    bins = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        for ptxas in (bins / "ptxas", bins / "ptxas-blackwell"):
            run = subprocess.run([str(ptxas), "-v", "--gpu-name", "sm_90a", str(src), "-o",
                                  str(Path(tmp) / "k.cubin")], capture_output=True, text=True)
            if run.returncode == 0:
                return " ".join(line.split(":", 1)[-1].strip() for line in run.stderr.splitlines()
                                if "registers" in line or "spill" in line)
    return f"ptxas failed: {run.stderr.strip()[:300]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ptxas", action="store_true")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("unset TRITON_INTERPRET: the interpreter cannot compile Gluon kernels")
    hopper = load_hopper()
    for D, causal, dtype in CASES:
        row = {"D": D, "causal": causal, "dtype": str(dtype).removeprefix("torch."),
               "triton": triton.__version__}
        try:
            kernel = compile_for_sm90(hopper, D, causal, dtype)
        except Exception as exc:  # noqa: BLE001 - the error is the report
            row.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:2000])
        else:
            ptx = kernel.asm["ptx"]
            row.update(ok=True, shared_bytes=kernel.metadata.shared,
                       wgmma="wgmma.mma_async" in ptx,
                       waits_with_one_in_flight="wgmma.wait_group.sync.aligned 1;" in ptx)
            if args.ptxas:
                row["ptxas"] = ptxas_report(ptx)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
