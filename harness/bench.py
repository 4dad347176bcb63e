"""What every kata's bench.py starts with: the implementation to time, on a GPU, and this
GPU's copy bandwidth and matmul rate measured now (harness/perf.py)."""
from __future__ import annotations

import os
from types import ModuleType
from typing import Any


def open_bench(module: str, impl: str) -> tuple[ModuleType, Any] | None:
    """Load `module` from `impl` (stubs, reference or a folder) and measure the device's peaks,
    printing the GPU and its copy bandwidth; None (after saying why) without a CUDA GPU."""
    os.environ["KATA_IMPL"] = impl
    import torch

    if not torch.cuda.is_available():
        print("bench.py needs a CUDA GPU (none found).")
        return None
    from harness import load_kata_module
    from harness.perf import measure_device_peaks

    m = load_kata_module(module)
    peaks = measure_device_peaks()
    print(f"GPU: {peaks.name}")
    print(f"copy bandwidth (measured now, read + write): {peaks.copy_bytes_per_s / 1e12:.2f} TB/s")
    return m, peaks
