"""Kata 03, Task 5 on a GPU: how fast is softmax_triton? (Skipped without CUDA.)

Each case times softmax_triton(x) beside torch.softmax(x, -1) in the same run and judges
it against perf_targets/online_softmax.toml [softmax_triton]:
  vs_torch       torch's time / yours,
  copy_fraction  (bytes read + bytes written) per second / this GPU's measured copy bandwidth,
where the bytes are the minimum any softmax moves: x read once, the output written once.
A learner's run must reach bronze; `--impl reference` must reach gold.

The harness (harness/perf.py) calls softmax_triton only on inputs it has never seen
(make_inputs(i), new values for every i) and checks every timed output against torch.softmax
outside the timed region; a miss is re-measured before it fails.
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
# Relative error ||out - ref|| / ||ref|| over the whole output a timed call may have. One
# rounding of the output is at most 2^-24 (fp32) / 2^-9 (bf16) relative; another input's result,
# or an output left unset, is off by ~100 % on every row it concerns.
REL_ERR = {torch.float32: 1e-4, torch.bfloat16: 1e-2}


def make_inputs_for(n_cols: int, dtype: torch.dtype):
    def make_inputs(i: int) -> tuple[torch.Tensor]:
        gen = torch.Generator(device="cuda").manual_seed(1_000_003 * n_cols + i)
        return ((3 * torch.randn(rows_for(n_cols), n_cols, device="cuda", generator=gen)).to(dtype),)
    return make_inputs


def check_softmax(args: tuple[torch.Tensor], out: torch.Tensor) -> None:
    """The whole output against torch.softmax in float32 (cheap next to the kernel)."""
    (x,) = args
    assert isinstance(out, torch.Tensor) and out.shape == x.shape and out.dtype == x.dtype, (
        f"expected a {tuple(x.shape)} {x.dtype} tensor, got "
        f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    ref = torch.softmax(x.float(), dim=-1)
    err = (torch.linalg.vector_norm(out.float() - ref) / torch.linalg.vector_norm(ref)).item()
    assert err <= REL_ERR[x.dtype], f"relative error {err:.3g} > {REL_ERR[x.dtype]:g} against torch.softmax"


@pytest.mark.gpu
@pytest.mark.perf
@pytest.mark.parametrize("n_cols", COLS)
@pytest.mark.parametrize("dtype_name", list(DTYPES))
class TestTask5SoftmaxTritonSpeed:
    def test_speed(self, perf, dtype_name, n_cols):
        dtype = DTYPES[dtype_name]
        make_inputs = make_inputs_for(n_cols, dtype)
        (x,) = make_inputs(0)
        # A fast wrong kernel earns nothing: check a slice of the result first (the message
        # names the worst element); the timed calls are then checked whole, more cheaply.
        out = m.softmax_triton(x)
        assert_close(out[:64].cpu(), torch.softmax(x[:64].double(), -1).cpu().to(dtype),
                     what=f"softmax_triton(x ({rows_for(n_cols)}, {n_cols}) {dtype_name}), first 64 rows",
                     inputs=dict(x=x))
        del out, x
        r = perf.measure(m.softmax_triton, make_inputs=make_inputs, check=check_softmax,
                         label=f"{dtype_name} {rows_for(n_cols)}x{n_cols}",
                         bytes_moved=2 * rows_for(n_cols) * n_cols * torch.finfo(dtype).bits // 8,
                         peers={"torch": lambda x: torch.softmax(x, dim=-1)})
        perf.check("online_softmax", "softmax_triton", r)
