"""Kata 12, Task 7 on a GPU: GPTQ for a 4096 x 4096 layer in under a second. (Skipped without CUDA.)

The time is the wall time between two CUDA events around one gptq_quantize call (median of
3 after a warm-up), so Python's launch overhead counts: a column loop that launches a dozen
small kernels per column is fine, a per-element Python loop or a rank-1 update of every later
column per column is not. For comparison the check also times bench.py's eager loop (the same
algorithm without lazy blocks) and prints both. Before timing, a small layer on the GPU must
pass the same teacher-forced check as on the CPU, with every field on w's device.
"""
from __future__ import annotations

import pytest
import torch

from harness import load_kata_file, load_kata_module
from harness.katas import KATAS_DIR

m = load_kata_module("gptq")
bench = load_kata_file(KATAS_DIR / "12_gptq" / "bench.py", "kata12_bench")
LIMIT_S = 1.0


def on_cpu(q):
    """The same QuantizedLinear with every tensor on the CPU (for the float64 yardstick)."""
    cpu = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in vars(q).items()}
    return type(q)(**cpu)


@pytest.mark.gpu
class TestTask7Speed:
    def test_correct_on_the_gpu(self):
        t = load_kata_file(KATAS_DIR / "12_gptq" / "test_gptq.py", "kata12_tests")
        w, x, h = t.layer(3, 32, 256)
        for act_order in (False, True):
            q = m.gptq_quantize(w.cuda(), h.cuda(), bits=4, group_size=128, act_order=act_order)
            for name in ("codes", "scales", "zeros", "g_idx"):
                assert getattr(q, name).device.type == "cuda", f"gptq_quantize on CUDA inputs: {name} is on the CPU"
            t.check_gptq(on_cpu(q), w, h, bits=4, group_size=128, sym=False, act_order=act_order,
                         inputs=dict(w=(32, 256), device="cuda", act_order=act_order))

    def test_4096_layer_under_a_second(self, capsys):
        w, x, h = bench.make_problem(4096, 4096)
        t_gptq = bench.cuda_seconds(lambda: m.gptq_quantize(w, h, bits=4, group_size=128))
        t_eager = bench.cuda_seconds(lambda: bench.eager_gptq(w, h), repeats=1)
        q = m.gptq_quantize(w, h, bits=4, group_size=128)
        e_q = bench.rel_err(w, m.dequantize(q), x)
        e_r = bench.rel_err(w, m.dequantize(m.quantize_rtn(w, bits=4, group_size=128)), x)
        line = (f"GPTQ 4096 x 4096, 4 bits, group 128 on {torch.cuda.get_device_name()}: gptq_quantize "
                f"{t_gptq:.3f} s, eager loop without lazy blocks {t_eager:.3f} s ({t_eager / t_gptq:.1f}x); "
                f"relative output error {e_q:.4f} (RTN {e_r:.4f})")
        with capsys.disabled():
            print("\n" + line)
        assert e_q < e_r, f"{line}: GPTQ's output error is not below round-to-nearest's"
        assert t_gptq < LIMIT_S, (f"{line}: over the {LIMIT_S} s limit. Apply the updates of later columns "
                                  f"once per block as a matrix product, and keep the per-column work to a "
                                  f"few tensor ops on whole columns (no per-element Python, no .item()).")
