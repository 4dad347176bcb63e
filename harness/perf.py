"""Timing kernels on a GPU and judging them against perf_targets/.

How a number is measured (the same for every kata):
- CUDA events around each run, after a warm-up, the L2 cache flushed before each run;
  the median of the runs is the time.
- Targets are relative to what the same pytest run measures, never absolute figures:
  `copy_fraction`   achieved bytes/s over this GPU's device-to-device copy bandwidth,
  `matmul_fraction` achieved FLOP/s over this GPU's bf16 matmul rate (8192^3, torch),
  `vs_<peer>`       a peer's time over ours (2.0 = twice as fast as the peer), the peer
                    timed in the same test (torch.softmax, SDPA's flash backend, ...).
- perf_targets/<module>.toml lists tiers per target (bronze, silver, gold), each a set of
  minimum metrics; a learner's run fails below `required` (bronze), `--impl reference`
  fails below `reference_required`. `[target.gpu."H100"]` overrides tiers on GPUs whose
  name contains that text.
"""
from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest

from harness.katas import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TARGETS_DIR = ROOT / "perf_targets"
METRICS = ("copy_fraction", "matmul_fraction")  # plus vs_<peer>


@dataclass
class DevicePeaks:
    name: str
    copy_bytes_per_s: float  # bytes read + bytes written per second
    matmul_flops_per_s: float  # bf16, dense


@dataclass
class Measurement:
    label: str
    ms: float
    peer_ms: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        parts = [f"{self.ms:.4g} ms"]
        if "tbps" in self.metrics:
            parts.append(f"{self.metrics['tbps']:.3g} TB/s")
        if "tflops" in self.metrics:
            parts.append(f"{self.metrics['tflops']:.4g} TFLOP/s")
        parts += [f"{peer} {ms:.4g} ms" for peer, ms in self.peer_ms.items()]
        return ", ".join(parts)


def cuda_median_ms(fn: Callable[[], Any], *, warmup: int = 10, rep: int = 50) -> float:
    """Median time of fn() in ms: CUDA events, after warm-up, L2 flushed before each run."""
    import torch

    flush = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device="cuda")
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(rep)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(rep)]
    for start, end in zip(starts, ends):
        flush.zero_()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def measure_device_peaks() -> DevicePeaks:
    """This GPU's copy bandwidth and bf16 matmul rate, measured now (a few seconds)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    gen = torch.Generator(device="cuda").manual_seed(0)
    src = torch.empty(256 * 1024 * 1024, dtype=torch.float32, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    src.uniform_(generator=gen)
    copy_ms = cuda_median_ms(lambda: dst.copy_(src), warmup=5, rep=20)
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16, generator=gen)  # random, never zeros
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16, generator=gen)
    mm_ms = cuda_median_ms(lambda: a @ b, warmup=5, rep=20)
    del src, dst, a, b
    return DevicePeaks(
        name=torch.cuda.get_device_name(),
        copy_bytes_per_s=2 * 4 * 256 * 1024 * 1024 / (copy_ms * 1e-3),
        matmul_flops_per_s=2 * n**3 / (mm_ms * 1e-3),
    )


def load_target(module: str, target: str, device_name: str) -> dict[str, Any]:
    """The target's settings with this GPU's overrides merged in."""
    path = TARGETS_DIR / f"{module}.toml"
    data = tomllib.loads(path.read_text())
    if target not in data:
        raise KeyError(f"{path} has no target [{target}]")
    spec = dict(data[target])
    tiers = {name: dict(cond) for name, cond in spec.get("tiers", {}).items()}
    for gpu_key, override in spec.get("gpu", {}).items():
        if gpu_key.lower() in device_name.lower():
            for name, cond in override.get("tiers", {}).items():
                tiers.setdefault(name, {}).update(cond)
    spec["tiers"] = tiers
    return spec


def tiers_met(tiers: dict[str, dict[str, float]], metrics: dict[str, float]) -> list[str]:
    """Names of the tiers whose every minimum the metrics reach (in the file's order)."""
    met = []
    for name, conditions in tiers.items():
        missing = [k for k in conditions if k not in metrics]
        if missing:
            raise KeyError(f"tier {name!r} uses metrics {missing} that this test does not measure")
        if all(metrics[k] >= v for k, v in conditions.items()):
            met.append(name)
    return met


def explain_shortfall(tier: str, conditions: dict[str, float], metrics: dict[str, float]) -> str:
    short = [f"{k} >= {v:g} (got {metrics[k]:.3g})" for k, v in conditions.items() if metrics[k] < v]
    return f"{tier} needs " + ", ".join(short)


class PerfChecker:
    """The `perf` fixture: time a kernel beside its peers and check it against its tiers."""

    def __init__(self, request: pytest.FixtureRequest, peaks: DevicePeaks, benchmark: Any) -> None:
        self.request, self.peaks, self.benchmark = request, peaks, benchmark

    def measure(
        self,
        fn: Callable[[], Any],
        *,
        label: str,
        bytes_moved: float | None = None,
        flops: float | None = None,
        peers: dict[str, Callable[[], Any]] | None = None,
    ) -> Measurement:
        """Time fn (and each peer) and derive the metrics the tiers are written in."""
        import torch

        ms = cuda_median_ms(fn)
        m = Measurement(label=label, ms=ms)
        for peer, peer_fn in (peers or {}).items():
            m.peer_ms[peer] = cuda_median_ms(peer_fn)
            m.metrics[f"vs_{peer}"] = m.peer_ms[peer] / ms
        if bytes_moved is not None:
            m.metrics["tbps"] = bytes_moved / (ms * 1e-3) / 1e12
            m.metrics["copy_fraction"] = bytes_moved / (ms * 1e-3) / self.peaks.copy_bytes_per_s
        if flops is not None:
            m.metrics["tflops"] = flops / (ms * 1e-3) / 1e12
            m.metrics["matmul_fraction"] = flops / (ms * 1e-3) / self.peaks.matmul_flops_per_s
        # Record in pytest-benchmark too, so --benchmark-save / --benchmark-compare track progress.
        self.benchmark.extra_info.update(label=label, ms_cuda_events=ms, **m.metrics)
        self.benchmark.pedantic(lambda: (fn(), torch.cuda.synchronize()), rounds=10, warmup_rounds=2)
        return m

    def check(self, module: str, target: str, m: Measurement) -> str:
        """Fail below the required tier; report the best tier reached. Returns its name."""
        from harness.impl import impl_dir

        spec = load_target(module, target, self.peaks.name)
        tiers = spec["tiers"]
        met = tiers_met(tiers, m.metrics)
        best = met[-1] if met else "none"
        is_reference = impl_dir().resolve() == (ROOT / "reference").resolve()
        required = spec.get("reference_required" if is_reference else "required", next(iter(tiers)))
        self.benchmark.extra_info["tier"] = best
        self.request.config._kata_perf.append(  # type: ignore[attr-defined]
            {"module": module, "target": target, "label": m.label, "tier": best, **m.metrics}
        )
        line = (f"{module}.{target} [{m.label}] on {self.peaks.name}: {m.describe()}; tier {best} "
                f"(copy {self.peaks.copy_bytes_per_s / 1e12:.2f} TB/s, "
                f"matmul {self.peaks.matmul_flops_per_s / 1e12:.0f} TFLOP/s measured this run)")
        print(line)
        if required not in met:
            raise AssertionError(
                f"too slow: {line}\n  {explain_shortfall(required, tiers[required], m.metrics)}"
                f"\n  targets: perf_targets/{module}.toml [{target}]"
            )
        return best
