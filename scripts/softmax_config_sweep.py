"""Time every row-kernel config of kata 03's reference with the perf harness's own method
(fresh inputs, flushed L2, synchronized batches), beside torch.softmax, on a GPU.

    python scripts/softmax_config_sweep.py 1024:fp32 1024:bf16 8192:fp32

Prints per case the configs by median time over 3 rounds, with the spread of the rounds, so
a config can be chosen for its steadiness as well as its speed.
"""
from __future__ import annotations

import importlib.util
import statistics
import sys
from pathlib import Path

import torch
import triton

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from harness import perf  # noqa: E402

spec = importlib.util.spec_from_file_location("ref_softmax", ROOT / "reference" / "online_softmax.py")
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)  # type: ignore[union-attr]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def rows_for(n_cols: int) -> int:
    return max(8192, 2**25 // n_cols)


def main(cases: list[str]) -> None:
    dev, plan = perf.CudaDevice(), perf.Plan()
    for case in cases:
        n_cols_s, dtype_name = case.split(":")
        n_cols, dtype = int(n_cols_s), DTYPES[dtype_name]
        rows = rows_for(n_cols)

        def make_inputs(i: int, rows: int = rows, n_cols: int = n_cols, dtype: torch.dtype = dtype):
            gen = torch.Generator(device="cuda").manual_seed(1000 + i)
            return ((3 * torch.randn(rows, n_cols, device="cuda", generator=gen)).to(dtype),)

        block_n = triton.next_power_of_2(n_cols)
        x0 = make_inputs(0)[0]
        configs = ref._prune_fused(ref._fused_configs(), {"x_ptr": x0}, BLOCK_N=block_n)
        n_sm = ref._num_sms(0)

        def launcher(cfg: triton.Config):
            kw = dict(cfg.kwargs)

            def fn(x: torch.Tensor) -> torch.Tensor:
                y = torch.empty_like(x)
                grid = ref._grid(rows, n_sm)(kw)
                ref._softmax_rows_kernel[grid](x, y, rows, n_cols, x.stride(0), y.stride(0),
                                               BLOCK_N=block_n, num_warps=cfg.num_warps, **kw)
                return y
            return fn

        inputs = perf.FreshInputs(make_inputs)
        results = []
        torch_rounds = []
        for cfg in configs:
            fn = launcher(cfg)
            ours = []
            for _ in range(3):
                ours.append(perf.time_calls(dev, fn, inputs, plan).ms)
                torch_rounds.append(perf.time_calls(dev, lambda x: torch.softmax(x, -1), inputs, plan).ms)
            results.append((statistics.median(ours), max(ours) - min(ours), cfg))
        # The launcher the tests time: the autotuned softmax_triton, host-side work included.
        tuned = [perf.time_calls(dev, ref.softmax_triton, inputs, plan).ms for _ in range(3)]
        best = getattr(ref._softmax_rows_tuned, "best_config", None)
        torch_ms = statistics.median(torch_rounds)
        print(f"\n{dtype_name} {rows}x{n_cols}: autotuned softmax_triton {statistics.median(tuned):.4f} ms "
              f"(rounds {', '.join(f'{t:.4f}' for t in tuned)}), autotuner chose {best}")
        nbytes = 2 * rows * n_cols * x0.element_size()
        print(f"{dtype_name} {rows}x{n_cols}: torch {torch_ms:.4f} ms "
              f"({nbytes / torch_ms / 1e9:.2f} TB/s); configs by median of 3 rounds")
        for ms, spread, cfg in sorted(results, key=lambda r: r[0])[:8]:
            print(f"  {ms:.4f} ms  spread {spread:.4f}  vs_torch {torch_ms / ms:.3f}  "
                  f"{nbytes / ms / 1e9:.2f} TB/s  BLOCK_M={cfg.kwargs['BLOCK_M']} warps={cfg.num_warps} "
                  f"stages={cfg.kwargs['NUM_STAGES']} per_sm={cfg.kwargs['PROGRAMS_PER_SM']}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["1024:fp32", "1024:bf16", "8192:fp32"])
