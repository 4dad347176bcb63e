"""Kata 03, Task 5 on a GPU: how fast is softmax_triton? (Skipped without CUDA.)

Each case times softmax_triton(x) beside torch.softmax(x, -1) in the same run and judges
it against perf_targets/online_softmax.toml [softmax_triton]:
  vs_torch       torch's time / yours,
  copy_fraction  (bytes read + bytes written) per second / this GPU's measured copy bandwidth,
where the bytes are the minimum any softmax moves: x read once, the output written once.
A learner's run must reach bronze; `--impl reference` must reach gold.
"""
from __future__ import annotations

import pytest
import torch

from harness import assert_close, load_kata_module

m = load_kata_module("online_softmax")

# >= 4k rows, as the target asks, and at least 2^25 elements, so that even 1k-column cases
# fill the chip and are not dominated by launch latency (8192 x 1024 bf16 is only 16 MiB).
def rows_for(n_cols: int) -> int:
    return max(8192, 2**25 // n_cols)
COLS = [1024, 4096, 8192, 16384, 32768]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@pytest.mark.gpu
@pytest.mark.perf
@pytest.mark.parametrize("n_cols", COLS)
@pytest.mark.parametrize("dtype_name", list(DTYPES))
class TestTask5SoftmaxTritonSpeed:
    def test_speed(self, perf, dtype_name, n_cols):
        dtype = DTYPES[dtype_name]
        gen = torch.Generator(device="cuda").manual_seed(n_cols)
        x = (3 * torch.randn(rows_for(n_cols), n_cols, device="cuda", generator=gen)).to(dtype)
        # A fast wrong kernel earns nothing: check a slice of the result first.
        out = m.softmax_triton(x)
        assert_close(out[:64].cpu(), torch.softmax(x[:64].double(), -1).cpu().to(dtype),
                     what=f"softmax_triton(x ({rows_for(n_cols)}, {n_cols}) {dtype_name}), first 64 rows",
                     inputs=dict(x=x))
        del out
        r = perf.measure(lambda: m.softmax_triton(x), label=f"{dtype_name} {rows_for(n_cols)}x{n_cols}",
                         bytes_moved=2 * x.numel() * x.element_size(),
                         peers={"torch": lambda: torch.softmax(x, dim=-1)})
        perf.check("online_softmax", "softmax_triton", r)
