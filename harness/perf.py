"""Timing kernels on a GPU and judging them against perf_targets/.

How a number is measured (the same for every kata):
- A test hands the harness its function, a factory `make_inputs(i) -> args` and a
  `check(args, out)` (see `PerfChecker.measure`). The harness never times a call on inputs
  the function has seen before: before each timed batch it makes `batch_size` new input sets
  (index i never repeats within a test, and make_inputs gives different values for every i).
- A batch: device-wide synchronize, then per call: a GPU spin, L2 flushed (by reading 256 MiB,
  which leaves no dirty lines for the call to write back), CUDA event, the call, CUDA event;
  then a device-wide synchronize (every stream, not only the timed one) and the harness's host
  clock. After a warm-up, `batches` batches are timed. The spin lasts twice the host-side cost
  of launching the call (measured in the warm-up; at least 0.1 ms, at most 1 ms): the GPU is still busy when
  the call's kernels arrive, so a slow Python launcher is not timed as idle GPU time (ours and
  the peers' alike; in a server, CUDA graphs hide launch costs the same way).
- The time of a call is the median over batches of the batch's mean event time. The mean
  inside a batch counts work that is batched up and done every n-th call; the median over
  batches drops a disturbed batch.
- The synchronized wall clock of each batch, less the same batch run with the flushes alone,
  is a second estimate. Work the timed stream's events do not see (left on a side stream, on a
  host thread) shows up there only. When it exceeds the events' figure by more than
  `wall_slack` (15 % + 10 us), the wall-clock figure is the time, and the report says so.
- After each batch (outside the timed region, before the function runs again) every output
  of the batch is checked with `check(args, out)`: a result cached from another input, work
  skipped, deferred to a later call or left unfinished fails there. Outputs must be plain
  tensors of their own (two calls returning the same memory fail: it could not be checked).
- The timer belongs to the harness: time.perf_counter, torch.cuda.Event (class and methods),
  torch.cuda.synchronize / current_stream and the harness's own functions are captured when
  this module is imported, checked to be the genuine ones (defined by Python/torch, right
  name), and checked again before and after every batch. A learner's module that replaces
  any of them fails with a message naming what was replaced and by which file. A thread that
  the function started and that is still running after a batch fails too.
- Targets are relative to what the same pytest run measures, never absolute figures:
  `copy_fraction`   achieved bytes/s over this GPU's device-to-device copy bandwidth,
  `matmul_fraction` achieved FLOP/s over this GPU's bf16 matmul rate (8192^3, torch),
  `vs_<peer>`       a peer's time over ours (2.0 = twice as fast as the peer), the peer
                    timed in the same test (torch.softmax, SDPA's flash backend, ...).
- perf_targets/<module>.toml lists tiers per target (bronze, silver, gold), each a set of
  minimum metrics; a learner's run fails below `required` (bronze), `--impl reference`
  fails below `reference_required`. `[target.gpu."H100"]` overrides tiers on GPUs whose
  name contains that text.

A miss is confirmed before it fails. When the first round (ours, then each peer) misses the
required tier, `confirm_rounds` (3) more rounds are measured, interleaved: ours, peers, ours,
peers, ... Each round gives its own metrics (each vs_<peer> from the ours/peer pair measured
back to back); the check is judged on the per-metric median of the confirmation rounds (the
first round is left out: it was selected for having missed), and a failure prints every round.

How this bounds false failures: let p be the chance that one round of an implementation whose
true speed meets its tier measures below it (a transient: clocks ramping, another process on
the GPU, a page of the allocator, a GC pause). A failure needs the first round to miss AND the
median of 3 further rounds to miss, i.e. at least 2 of those 3: with independent rounds
  P(false failure) = p * (3p^2 - 2p^3) <= 3 p^3,
e.g. 3.6e-4 per case for p = 5 % (an unconfirmed check: 5e-2), 2.8e-3 for p = 10 %; over the
42 perf cases of katas 03 and 05 at p = 5 %: 1.5 % per full run instead of ~88 %. Interleaving
ours and the peer in every round makes slow drifts (clocks, temperature, a neighbour) hit both
sides of a vs_<peer> ratio alike, which keeps the rounds close to independent. Not covered: an
implementation whose true speed is at the bar (it misses about half its rounds, so about half
its checks fail: that is correct), and a slowdown lasting the whole check (a real miss of that
run). The guards add no false failure of their own to an honest implementation: the outputs are
checked with its check's tolerances, and the wall clock replaces the events only past the slack
(on an H200, 2026-11-29: torch.softmax 32768x1024 fp32 took 0.074 ms by events and 0.080 ms by
the synchronized clock; none of the 26 honest kata 03/05 cases run fell back to the wall clock,
while a kernel leaving 4x torch's work on a side stream, 0.018 ms to naive events, was judged
at 0.30 ms).

Limits: Python lets a module change anything in the process. The guard covers the timing
primitives the harness uses and its own functions; a module that rewrites the harness's
internals some other way, or a C extension faking a builtin clock, is out of its reach.
`cuda_median_ms` is the plain event timer for bench scripts: it has none of these guards.
"""
from __future__ import annotations

import gc
import math
import os
import sys
import threading
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pytest
import torch

from harness.katas import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TARGETS_DIR = ROOT / "perf_targets"
METRICS = ("copy_fraction", "matmul_fraction")  # plus vs_<peer>


# -- The timer belongs to the harness -------------------------------------------------
class TimerTampered(AssertionError):
    """A timing primitive the harness relies on was replaced."""


class PerfGuardError(AssertionError):
    """A timed call broke the rules of a timed check (wrong output, shared output, a thread)."""


_TORCH_DIR = Path(torch.__file__).resolve().parent
_HERE = Path(__file__).resolve()


def _origin(obj: Any) -> str:
    """Where a callable was defined: a file, or '<builtin>' for one written in C."""
    fn = getattr(obj, "__func__", obj)
    code = getattr(fn, "__code__", None)
    if code is not None:
        return f"{code.co_filename}:{code.co_firstlineno}"
    if isinstance(obj, type):
        module = sys.modules.get(obj.__module__)
        return str(getattr(module, "__file__", None) or "<builtin>")
    if isinstance(obj, (types.BuiltinFunctionType, types.MethodDescriptorType,
                        types.WrapperDescriptorType, types.ClassMethodDescriptorType)):
        return "<builtin>"
    return f"<{type(obj).__name__} {obj!r:.60}>"


@dataclass(frozen=True)
class _Guarded:
    owner: Any
    attr: str
    original: Any
    name: str  # as a learner would write it: "torch.cuda.Event.elapsed_time"
    home: str  # 'torch', 'builtin' or 'harness': where the genuine one is defined


def _genuine(g: _Guarded) -> bool:
    obj = g.original
    if g.home == "builtin":
        return isinstance(obj, types.BuiltinFunctionType) and obj.__name__ == g.attr
    name = getattr(getattr(obj, "__func__", obj), "__name__", None)
    if name != g.attr:
        return False
    origin = _origin(obj)
    if origin == "<builtin>":
        return g.home == "torch"  # C methods of torch's own types
    path = Path(origin.rsplit(":", 1)[0] if origin[-1].isdigit() else origin).resolve()
    home = _TORCH_DIR if g.home == "torch" else _HERE
    return path == home or home in path.parents


def _guard_list() -> list[_Guarded]:
    out: list[_Guarded] = []

    def add(owner: Any, attr: str, name: str, home: str) -> None:
        if hasattr(owner, attr):
            out.append(_Guarded(owner, attr, getattr(owner, attr), name, home))

    for attr in ("perf_counter", "perf_counter_ns", "monotonic", "monotonic_ns"):
        add(time, attr, f"time.{attr}", "builtin")
    cuda = torch.cuda
    add(cuda, "Event", "torch.cuda.Event", "torch")
    add(cuda, "Stream", "torch.cuda.Stream", "torch")
    add(cuda, "synchronize", "torch.cuda.synchronize", "torch")
    add(cuda, "current_stream", "torch.cuda.current_stream", "torch")
    add(cuda.streams, "Event", "torch.cuda.streams.Event", "torch")
    for attr in ("__new__", "record", "elapsed_time", "synchronize", "query", "wait"):
        add(cuda.Event, attr, f"torch.cuda.Event.{attr}", "torch")
    for base in cuda.Event.__mro__[1:-1]:  # torch._C._CudaEventBase (a Python stand-in on CPU builds)
        for attr in ("record", "elapsed_time", "synchronize", "query"):
            if attr in vars(base):
                add(base, attr, f"{base.__module__}.{base.__name__}.{attr}", "torch")
    for attr in ("synchronize", "wait_stream", "query"):
        add(cuda.Stream, attr, f"torch.cuda.Stream.{attr}", "torch")
    for attr in ("_cuda_synchronize", "_cuda_getCurrentStream"):
        if hasattr(torch._C, attr):
            add(torch._C, attr, f"torch._C.{attr}", "torch")
    add(torch.Tensor, "zero_", "torch.Tensor.zero_", "torch")
    add(torch.Tensor, "sum", "torch.Tensor.sum", "torch")  # the L2 flush (a read)
    return out


_GUARDED: list[_Guarded] = _guard_list()
# Replaced before this module was imported (a learner's module imported first): the originals
# captured above are then not genuine, and verify_timer says so.
_COUNTERFEIT = [g for g in _GUARDED if not _genuine(g)]

_perf_counter = time.perf_counter  # the harness's host clock (checked genuine above)


def _describe_replacement(g: _Guarded, now: Any) -> str:
    return f"{g.name} was replaced (now {getattr(now, '__qualname__', type(now).__name__)} from {_origin(now)})"


def verify_timer(when: str = "") -> None:
    """Fail if a timing primitive the harness relies on is not the genuine one any more."""
    problems = []
    for g in _GUARDED:
        now = getattr(g.owner, g.attr, None)
        if now is not g.original:
            problems.append(_describe_replacement(g, now))
        elif g in _COUNTERFEIT:
            problems.append(f"{g.name} was replaced before the harness was imported "
                            f"(it is {getattr(now, '__qualname__', now)!s:.60} from {_origin(now)})")
    if problems:
        raise TimerTampered(
            "the timer was tampered with" + (f" ({when})" if when else "") + ": "
            + "; ".join(problems)
            + ". The harness times with its own clock and events and does not accept a module "
            "that patches them: remove the monkeypatching."
        )


# -- Devices: what the timing core needs, pluggable so that it runs on CPU in CI ------------
class Device:
    """The CPU version, also the interface. Work on the CPU is synchronous, so an 'event' is
    the host clock when recorded. Tests plug in subclasses (side streams simulated by threads)."""

    name = "cpu"

    def synchronize(self) -> None:
        """Wait for all work on the device, every stream."""

    def event(self) -> Any:
        return [0.0]

    def record(self, event: Any) -> None:
        event[0] = _perf_counter()

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return (end[0] - start[0]) * 1e3

    def flush(self, spin_ms: float = 0.0) -> None:
        """Keep the device busy for spin_ms (so the host's launch of the next call is not timed
        as idle time), then evict the caches before a timed call."""

    def wall(self) -> float:
        """The harness's host clock, seconds."""
        return _perf_counter()


_ORIG = {g.name: g.original for g in _GUARDED}


MIN_SPIN_MS = 0.1  # the GPU spin before every timed call, at least (see time_calls) ...
MAX_SPIN_MS = 1.0  # ... and at most: a launch slower than 0.5 ms is the call's own cost


class CudaDevice(Device):
    """The current CUDA device, timed with the CUDA events and clock captured at import."""

    def __init__(self) -> None:
        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA GPU")
        self.name = torch.cuda.get_device_name()
        self._flush_buf = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device="cuda")
        self._Event = _ORIG["torch.cuda.Event"]
        self._record = _ORIG["torch.cuda.Event.record"]
        self._elapsed = _ORIG["torch.cuda.Event.elapsed_time"]
        self._sync = _ORIG["torch.cuda.synchronize"]
        self._read = _ORIG["torch.Tensor.sum"]
        self._spin = torch.cuda._sleep
        self._cycles_per_ms = self._calibrate_spin()

    def _calibrate_spin(self) -> float:
        """GPU clock cycles per millisecond of torch.cuda._sleep, measured (clocks vary by GPU)."""
        cycles, runs = 1_000_000, []
        for _ in range(3):
            s, e = self.event(), self.event()
            self.record(s)
            self._spin(cycles)
            self.record(e)
            self._sync()
            runs.append(self.elapsed_ms(s, e))
        return cycles / max(_median(runs), 1e-3)

    def synchronize(self) -> None:
        self._sync()

    def event(self) -> Any:
        return self._Event(enable_timing=True)

    def record(self, event: Any) -> None:
        self._record(event)

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return self._elapsed(start, end)

    def flush(self, spin_ms: float = MIN_SPIN_MS) -> None:
        # A spin first: the GPU stays busy while the host launches the call, so a launcher's
        # host-side cost (Triton's is 40-80 us, a Gluon kernel with TMA descriptors ~200 us) is
        # not timed as GPU idle time. time_calls sizes it from the call's measured host cost; the
        # flush-only batches of flush_overhead_ms spin as long, so the wall clock stays fair.
        self._spin(max(1, int(spin_ms * self._cycles_per_ms)))
        # Then a read of 256 MiB, more than any L2: it evicts whatever the last call left there.
        # A read, not a write: zeroing the buffer would leave the L2 full of dirty lines, and the
        # timed call would pay their write-back (up to ~50 MB of extra writes on a Hopper GPU,
        # 5-10 % of a 64 MiB softmax's time on an H200: scripts/perf_flush_experiment.py).
        self._read(self._flush_buf)


# -- The timing core ----------------------------------------------------------------------
@dataclass
class Plan:
    """How much to time. Defaults: 5 checked warm-up calls, then 10 batches of 5 fresh calls."""

    warmup: int = 5
    batches: int = 10
    batch_size: int = 5
    confirm_rounds: int = 3
    wall_slack: float = 1.15  # the wall clock may exceed the events by this factor ...
    wall_slack_ms: float = 0.01  # ... plus this, before it replaces them
    bench_rounds: int = 10  # pytest-benchmark's record (fresh inputs too, outputs checked)


@dataclass
class Timing:
    """One function timed once: `ms` is the judged time per call."""

    ms: float
    event_ms: float  # median over batches of the mean CUDA-event time per call
    wall_ms: float  # median over batches of the synchronized wall clock per call, flushes out
    outside: bool  # the wall clock saw work the events did not: ms is wall_ms
    calls: int

    def note(self, who: str) -> str:
        if not self.outside:
            return ""
        return (f"{who}: the events on the timed stream saw {self.event_ms:.4g} ms per call, "
                f"the synchronized batch took {self.wall_ms:.4g} ms per call: work left running "
                "outside the timed stream (a side stream, a thread) is counted; judged on the latter")


def _median(values: Sequence[float]) -> float:
    s = sorted(values)
    if not s:
        raise ValueError("median of nothing")
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _tensors(item)]
    if isinstance(out, dict):
        return [t for item in out.values() for t in _tensors(item)]
    return []


def _as_args(args: Any) -> tuple:
    return tuple(args) if isinstance(args, (tuple, list)) else (args,)


class FreshInputs:
    """Hands out (i, make_inputs(i)) with an index i never used before by this object."""

    def __init__(self, make_inputs: Callable[[int], Any], start: int = 1) -> None:
        self.make_inputs, self.next = make_inputs, start

    def __call__(self) -> tuple[int, tuple]:
        i, self.next = self.next, self.next + 1
        return i, _as_args(self.make_inputs(i))


def check_outputs(results: list[tuple[int, tuple, Any]], check: Callable[[tuple, Any], Any],
                  who: str, what: str = "timed call") -> None:
    """Check every (index, args, out) of a batch: plain tensors, own memory, check() passes."""
    owner: dict[tuple[int, int], int] = {}
    for k, (i, args, out) in enumerate(results):
        for t in _tensors(out):
            if type(t) is not torch.Tensor:
                raise PerfGuardError(
                    f"{who} returned a {type(t).__name__} (a tensor subclass) for {what} {k + 1}: "
                    "timed functions must return plain torch.Tensor results")
            if t.numel() == 0:
                continue
            key = (t.device.index or 0, t.data_ptr())
            if key in owner and owner[key] != k:
                raise PerfGuardError(
                    f"{who} returned the same memory for timed calls {owner[key] + 1} and {k + 1}: "
                    "each call must return an output of its own (every timed output is checked "
                    "after its batch, so a reused buffer could not be)")
            owner[key] = k
    for k, (i, args, out) in enumerate(results):
        try:
            ok = check(args, out)
        except Exception as exc:  # noqa: BLE001 - any failure of the check is a wrong result
            raise PerfGuardError(
                f"{who}: {what} {k + 1} (inputs make_inputs({i})) returned a wrong "
                f"result: {type(exc).__name__}: {exc}\n  Every timed call gets inputs it has never "
                "seen and its output is checked after the batch: a result cached from another "
                "input, work skipped, deferred to a later call or left unfinished fails here."
            ) from exc
        if ok is False:
            raise PerfGuardError(
                f"{who}: {what} {k + 1} (inputs make_inputs({i})) returned a wrong "
                "result (check returned False)")


def flush_overhead_ms(device: Device, plan: Plan, spin_ms: float = MIN_SPIN_MS) -> float:
    """Per call: the synchronized wall clock of a batch of flushes and events alone."""
    cache = device.__dict__.setdefault("_flush_overhead_ms", {})
    if spin_ms in cache:
        return cache[spin_ms]
    walls = []
    for _ in range(3):
        evs = [(device.event(), device.event()) for _ in range(plan.batch_size)]
        device.synchronize()
        t0 = device.wall()
        for s, e in evs:
            device.flush(spin_ms)
            device.record(s)
            device.record(e)
        device.synchronize()
        walls.append((device.wall() - t0) * 1e3 / plan.batch_size)
    cache[spin_ms] = _median(walls)
    return cache[spin_ms]


def spin_for(host_ms: list[float]) -> float:
    """The GPU spin before each timed call: twice the call's host-side cost (median of the
    warm-up calls after the first, which may compile), rounded up to 0.05 ms so that the
    flush-only baseline is shared between nearby values, within [MIN_SPIN_MS, MAX_SPIN_MS]."""
    steady = host_ms[1:] or host_ms
    if not steady:
        return MIN_SPIN_MS
    return min(MAX_SPIN_MS, max(MIN_SPIN_MS, math.ceil(2 * _median(steady) / 0.05) * 0.05))


def time_calls(device: Device, fn: Callable[..., Any], inputs: Callable[[], tuple[int, tuple]],
               plan: Plan, *, check: Callable[[tuple, Any], Any] | None = None,
               who: str = "yours") -> Timing:
    """Time fn on fresh inputs in synchronized batches; check each output when check is given."""
    verify_timer(f"before timing {who}")
    host_ms = []
    for _ in range(plan.warmup):
        i, args = inputs()
        t0 = device.wall()
        out = fn(*args)
        host_ms.append((device.wall() - t0) * 1e3)  # the host's cost of launching the call
        device.synchronize()
        if check is not None:
            check_outputs([(i, args, out)], check, who, "warm-up call")
        del out
    verify_timer(f"after {who} ran its warm-up")
    spin_ms = spin_for(host_ms)
    overhead = flush_overhead_ms(device, plan, spin_ms)
    event_means, walls = [], []
    for _ in range(plan.batches):
        batch = [inputs() for _ in range(plan.batch_size)]
        evs = [(device.event(), device.event()) for _ in batch]
        outs: list[Any] = []
        threads_before = set(threading.enumerate())
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            device.synchronize()
            t0 = device.wall()
            for (_, args), (s, e) in zip(batch, evs):
                device.flush(spin_ms)
                device.record(s)
                outs.append(fn(*args))
                device.record(e)
            device.synchronize()  # every stream: work left on a side stream ends inside the clock
            t1 = device.wall()
        finally:
            if gc_was_enabled:
                gc.enable()
        verify_timer(f"after a timed batch of {who}")
        stray = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
        if stray and check is not None:
            raise PerfGuardError(
                f"{who} started a thread that was still running after its timed batch "
                f"({', '.join(t.name for t in stray)}): work left running outside the timed "
                "region is not allowed; finish the work before returning")
        if check is not None:
            check_outputs([(i, args, out) for (i, args), out in zip(batch, outs)], check, who,
                          "timed call")
        event_means.append(sum(device.elapsed_ms(s, e) for s, e in evs) / len(evs))
        walls.append((t1 - t0) * 1e3 / len(batch) - overhead)
        del batch, outs
    event_ms, wall_ms = _median(event_means), _median(walls)
    outside = wall_ms > plan.wall_slack * event_ms + plan.wall_slack_ms
    return Timing(ms=wall_ms if outside else event_ms, event_ms=event_ms, wall_ms=wall_ms,
                  outside=outside, calls=plan.warmup + plan.batches * plan.batch_size)


def cuda_median_ms(fn: Callable[[], Any], *, warmup: int = 10, rep: int = 50) -> float:
    """Median time of fn() in ms: CUDA events, after warm-up, L2 flushed before each run.
    The plain timer for bench scripts and the device peaks: no fresh inputs, no checks."""
    dev = CudaDevice()
    for _ in range(warmup):
        fn()
    dev.synchronize()
    evs = [(dev.event(), dev.event()) for _ in range(rep)]
    for s, e in evs:
        dev.flush()
        dev.record(s)
        fn()
        dev.record(e)
    dev.synchronize()
    return _median([dev.elapsed_ms(s, e) for s, e in evs])


# -- Device peaks ---------------------------------------------------------------------------
@dataclass
class DevicePeaks:
    name: str
    copy_bytes_per_s: float  # bytes read + bytes written per second
    matmul_flops_per_s: float  # bf16, dense


def measure_device_peaks() -> DevicePeaks:
    """This GPU's copy bandwidth and bf16 matmul rate, measured now (a few seconds)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    verify_timer("before measuring the device peaks")
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


# -- Targets --------------------------------------------------------------------------------
def load_target(module: str, target: str, device_name: str,
                directory: Path | None = None) -> dict[str, Any]:
    """The target's settings with this GPU's overrides merged in."""
    path = (directory or TARGETS_DIR) / f"{module}.toml"
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


# -- Measurements and the checker -------------------------------------------------------------
@dataclass
class Round:
    """Ours and each peer timed once, back to back, and the metrics of that pair."""

    ms: float
    peer_ms: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        parts = [f"yours {self.ms:.4g} ms"] + [f"{p} {ms:.4g} ms" for p, ms in self.peer_ms.items()]
        parts += [f"{k} {v:.3g}" for k, v in self.metrics.items() if k not in ("tbps", "tflops")]
        return ", ".join(parts) + "".join(f"\n      {n}" for n in self.notes)


@dataclass
class Measurement:
    label: str
    ms: float
    peer_ms: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    rounds: list[Round] = field(default_factory=list)  # the first, then any confirmation rounds
    confirmed: bool = False  # the first round missed and confirmation rounds were measured
    remeasure: Callable[[], Round] | None = field(default=None, repr=False)

    def describe(self) -> str:
        parts = [f"{self.ms:.4g} ms"]
        if "tbps" in self.metrics:
            parts.append(f"{self.metrics['tbps']:.3g} TB/s")
        if "tflops" in self.metrics:
            parts.append(f"{self.metrics['tflops']:.4g} TFLOP/s")
        parts += [f"{peer} {ms:.4g} ms" for peer, ms in self.peer_ms.items()]
        return ", ".join(parts)


class PerfChecker:
    """The `perf` fixture: time a kernel beside its peers and check it against its tiers."""

    def __init__(self, request: pytest.FixtureRequest, peaks: DevicePeaks, benchmark: Any, *,
                 device: Device | None = None, plan: Plan | None = None,
                 targets_dir: Path | None = None) -> None:
        self.request, self.peaks, self.benchmark = request, peaks, benchmark
        self.device = device if device is not None else CudaDevice()
        self.plan = plan or Plan()
        self.targets_dir = targets_dir or TARGETS_DIR
        self._index = 1  # make_inputs indices handed out so far; 0 is left to the test's own use

    def _inputs(self, make_inputs: Callable[[int], Any]) -> Callable[[], tuple[int, tuple]]:
        def next_inputs() -> tuple[int, tuple]:  # indices go on across calls of measure()
            i, self._index = self._index, self._index + 1
            return i, _as_args(make_inputs(i))
        return next_inputs

    def measure(
        self,
        fn: Callable[..., Any],
        *,
        make_inputs: Callable[[int], Any] | None = None,
        check: Callable[[tuple, Any], Any] | None = None,
        label: str,
        bytes_moved: float | None = None,
        flops: float | None = None,
        peers: dict[str, Callable[..., Any]] | None = None,
    ) -> Measurement:
        """Time fn(*make_inputs(i)) (and each peer on the same kind of inputs), check every
        output with check(args, out), and derive the metrics the tiers are written in.

        make_inputs(i) -> args (a tuple, or one tensor): a new input set for every i, different
        values for different i (seed a generator with i). check(args, out) raises (or returns
        False) when out is not fn's correct result for args; it runs outside the timed region
        on every timed output, so keep it cheap (a sample of rows, a checksum), not lenient.
        """
        if make_inputs is None or check is None:
            raise TypeError(
                "perf.measure(fn, make_inputs=..., check=..., label=...) times fn(*make_inputs(i)) "
                "on inputs it has never seen and checks every output with check(args, out); "
                "a closure over fixed tensors (fn() with no arguments) is no longer accepted")
        verify_timer("when the check started")
        peers = dict(peers or {})
        next_inputs = self._inputs(make_inputs)

        def one_round() -> Round:
            ours = time_calls(self.device, fn, next_inputs, self.plan, check=check, who="yours")
            r = Round(ms=ours.ms, notes=[n for n in [ours.note("yours")] if n])
            for peer, peer_fn in peers.items():
                t = time_calls(self.device, peer_fn, next_inputs, self.plan, who=peer)
                r.peer_ms[peer] = t.ms
                r.metrics[f"vs_{peer}"] = t.ms / ours.ms
                if t.outside:
                    r.notes.append(t.note(peer))
            if bytes_moved is not None:
                r.metrics["tbps"] = bytes_moved / (ours.ms * 1e-3) / 1e12
                r.metrics["copy_fraction"] = bytes_moved / (ours.ms * 1e-3) / self.peaks.copy_bytes_per_s
            if flops is not None:
                r.metrics["tflops"] = flops / (ours.ms * 1e-3) / 1e12
                r.metrics["matmul_fraction"] = flops / (ours.ms * 1e-3) / self.peaks.matmul_flops_per_s
            return r

        first = one_round()
        m = Measurement(label=label, ms=first.ms, peer_ms=dict(first.peer_ms),
                        metrics=dict(first.metrics), rounds=[first], remeasure=one_round)
        # Record in pytest-benchmark too, so --benchmark-save / --benchmark-compare track progress.
        self.benchmark.extra_info.update(label=label, ms_cuda_events=first.ms, **first.metrics)
        self._bench(fn, next_inputs, check)
        return m

    def _bench(self, fn: Callable[..., Any], next_inputs: Callable[[], tuple[int, tuple]],
               check: Callable[[tuple, Any], Any]) -> None:
        """pytest-benchmark's record: fresh inputs each round, every output checked too."""
        pending: list[tuple[int, tuple, Any]] = []
        current: dict[str, Any] = {}

        def setup() -> tuple[tuple, dict]:
            if pending:
                check_outputs(pending, check, "yours", "benchmark-record call")
                pending.clear()
            current["i"], args = next_inputs()
            current["args"] = args
            return args, {}

        def target(*args: Any) -> Any:
            out = fn(*args)
            self.device.synchronize()
            pending.append((current["i"], args, out))

        self.benchmark.pedantic(target, setup=setup, rounds=self.plan.bench_rounds, warmup_rounds=1)
        if pending:
            check_outputs(pending, check, "yours", "benchmark-record call")
        verify_timer("after the benchmark record")

    def check(self, module: str, target: str, m: Measurement) -> str:
        """Fail below the required tier, once confirmed; report the best tier. Returns its name."""
        from harness.impl import impl_dir

        spec = load_target(module, target, self.peaks.name, self.targets_dir)
        tiers = spec["tiers"]
        is_reference = impl_dir().resolve() == (ROOT / "reference").resolve()
        required = spec.get("reference_required" if is_reference else "required", next(iter(tiers)))
        met = tiers_met(tiers, m.metrics)
        if required not in met and m.remeasure is not None and self.plan.confirm_rounds > 0 \
                and not m.confirmed:
            confirm = [m.remeasure() for _ in range(self.plan.confirm_rounds)]
            m.rounds += confirm
            m.confirmed = True
            m.ms = _median([r.ms for r in confirm])
            m.peer_ms = {p: _median([r.peer_ms[p] for r in confirm]) for p in confirm[0].peer_ms}
            m.metrics = {k: _median([r.metrics[k] for r in confirm]) for k in confirm[0].metrics}
            met = tiers_met(tiers, m.metrics)
        verify_timer("when the check ended")
        best = met[-1] if met else "none"
        self.benchmark.extra_info.update(tier=best, rounds=len(m.rounds), ms_cuda_events=m.ms,
                                         **m.metrics)
        self.request.config._kata_perf.append(  # type: ignore[attr-defined]
            {"module": module, "target": target, "label": m.label, "tier": best, **m.metrics}
        )
        from harness import history  # per-case figures + environment for `kata.py perf-history`

        history.record_check(self, module, target, m, best)
        line = (f"{module}.{target} [{m.label}] on {self.peaks.name}: {m.describe()}; tier {best} "
                f"(copy {self.peaks.copy_bytes_per_s / 1e12:.2f} TB/s, "
                f"matmul {self.peaks.matmul_flops_per_s / 1e12:.0f} TFLOP/s measured this run)")
        if m.confirmed:
            line += (f" [first round missed {required}; judged on the median of "
                     f"{len(m.rounds) - 1} interleaved rounds]")
        rounds = "\n".join(
            f"    round {k}{' (first, not judged)' if k == 0 and m.confirmed else ''}: "
            f"{r.describe()}" for k, r in enumerate(m.rounds))
        print(line)
        if m.confirmed:  # every round, on stdout too: a failure's message may be shortened
            print(f"  every round:\n{rounds}")
        else:
            for n in m.rounds[0].notes:
                print(f"  note: {n}")
        if required not in met:
            raise AssertionError(
                f"too slow: {line}\n  {explain_shortfall(required, tiers[required], m.metrics)}"
                f"\n  every round:\n{rounds}"
                f"\n  targets: {os.path.relpath(self.targets_dir / (module + '.toml'), ROOT)} [{target}]"
            )
        return best


# The harness's own functions are guarded too (a module that swaps them is caught).
for _name, _obj in list(vars(sys.modules[__name__]).items()):
    if isinstance(_obj, types.FunctionType) and _obj.__module__ == __name__ and not _name.startswith("__"):
        _GUARDED.append(_Guarded(sys.modules[__name__], _name, _obj, f"harness.perf.{_name}", "harness"))
for _cls in (PerfChecker, CudaDevice, Device):
    for _name, _obj in list(vars(_cls).items()):
        if isinstance(_obj, types.FunctionType):
            _GUARDED.append(_Guarded(_cls, _name, _obj, f"harness.perf.{_cls.__name__}.{_name}", "harness"))
del _name, _obj, _cls
