"""The perf check cannot be gamed, and fails only a confirmed miss (harness/perf.py).

Each trick seen on leaderboards is planted in a module of tests/perf_tricks/ (a `softmax(x)`
as a learner would write it) and timed through the real PerfChecker against torch.softmax,
with a target whose bronze bar is 0.5x torch. On CPU the timing core runs with a pluggable
device: SimDevice (perf_tricks/simdevice.py: time is the work done, per stream, side streams
run on threads; deterministic on a loaded machine), harness.perf.Device (the real host clock,
where only the guards' verdicts are asserted) or a scripted clock (the confirmation logic).
The same tricks run on a GPU, with real CUDA streams and events, in the tests marked gpu.
"""
from __future__ import annotations

import importlib.util
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import pytest
import torch

from harness import perf
from harness.katas import ROOT
from harness.perf import Device, DevicePeaks, PerfChecker, PerfGuardError, Plan, TimerTampered

from perf_tricks import simdevice
from perf_tricks.simdevice import FakeBenchmark, FakeRequest, SimDevice

TRICKS = Path(__file__).parent / "perf_tricks"
_fresh = itertools.count()

TARGET = """
[softmax]
description = "a test target: bronze is half torch.softmax's speed"
required = "bronze"
reference_required = "bronze"
[softmax.tiers.bronze]
vs_torch = 0.5
[softmax.tiers.gold]
vs_torch = 1.0

[plumbing]
description = "for the real host clock on a loaded CI machine: any speed passes"
required = "bronze"
reference_required = "bronze"
[plumbing.tiers.bronze]
vs_torch = 0.0
"""
CPU_PLAN = Plan(warmup=2, batches=3, batch_size=3, confirm_rounds=3, bench_rounds=2)


# -- helpers ----------------------------------------------------------------------------
@pytest.fixture
def targets(tmp_path: Path) -> Path:
    (tmp_path / "guard.toml").write_text(TARGET)
    return tmp_path


@pytest.fixture
def restore_timers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every attribute the guard watches is put back after the test, whatever a trick did."""
    for g in perf._GUARDED:
        try:
            monkeypatch.setattr(g.owner, g.attr, getattr(g.owner, g.attr))
        except TypeError:  # a C type (torch._C._CudaEventBase on CUDA builds): nobody can patch it
            pass


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> SimDevice:
    """A SimDevice, with torch.softmax charging its work to the calling thread's stream."""
    dev = SimDevice()
    real = torch.softmax

    def softmax(x, dim=None, *args, **kwargs):
        out = real(x, dim, *args, **kwargs)
        dev.charge(x.numel())
        return out

    monkeypatch.setattr(torch, "softmax", softmax)
    return dev


def load_trick(name: str) -> ModuleType:
    """A fresh copy of tests/perf_tricks/<name>.py, as a learner's module would be loaded."""
    spec = importlib.util.spec_from_file_location(f"perf_trick_{name}_{next(_fresh)}",
                                                  TRICKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def checker(targets: Path, device: Device, plan: Plan = CPU_PLAN, peaks_name: str = "cpu",
            benchmark: Any = None) -> PerfChecker:
    peaks = DevicePeaks(name=peaks_name, copy_bytes_per_s=1e11, matmul_flops_per_s=1e12)
    return PerfChecker(FakeRequest(), peaks, benchmark or FakeBenchmark(), device=device,
                       plan=plan, targets_dir=targets)


def cpu_inputs(i: int) -> tuple[torch.Tensor]:
    gen = torch.Generator().manual_seed(i)
    return (3 * torch.randn(256, 512, generator=gen),)


def check_softmax(args: tuple[torch.Tensor], out: torch.Tensor) -> None:
    (x,) = args
    assert out.shape == x.shape, f"shape {tuple(out.shape)}, expected {tuple(x.shape)}"
    ref = x.float().softmax(dim=-1)  # the Tensor method: not charged on a SimDevice
    err = ((out.float() - ref).norm() / ref.norm()).item()
    assert err <= 1e-3, f"relative error {err:.3g} against torch.softmax"


def run_check(pc: PerfChecker, fn: Callable, make_inputs: Callable = cpu_inputs,
              target: str = "softmax") -> perf.Measurement:
    m = pc.measure(fn, make_inputs=make_inputs, check=check_softmax, label="trick",
                   peers={"torch": lambda x: torch.softmax(x, dim=-1)})
    pc.check("guard", target, m)
    return m


def naive_ms(device: Device, fn: Callable[[], Any], rep: int = 9) -> float:
    """How a naive harness times: one fixed input, per-call events, median. No guards."""
    for _ in range(2):
        fn()
    device.synchronize()
    evs = [(device.event(), device.event()) for _ in range(rep)]
    for s, e in evs:
        device.record(s)
        fn()
        device.record(e)
    device.synchronize()
    return perf._median([device.elapsed_ms(s, e) for s, e in evs])


# -- the honest baseline passes, on fresh inputs, every output checked -----------------------
def test_an_honest_kernel_passes_with_every_output_checked_on_inputs_never_seen(targets, sim, capsys):
    seen_indices: list[int] = []
    seen_inputs: set[int] = set()
    checked: list[int] = []

    def make_inputs(i: int):
        seen_indices.append(i)
        return cpu_inputs(i)

    def fn(x):
        seen_inputs.add(hash(x[0, :8].numpy().tobytes()))
        return torch.softmax(x, dim=-1)

    def check(args, out):
        checked.append(1)
        check_softmax(args, out)

    pc = checker(targets, sim)
    m = pc.measure(fn, make_inputs=make_inputs, check=check, label="honest",
                   peers={"torch": lambda x: torch.softmax(x, dim=-1)})
    assert pc.check("guard", "softmax", m) == "gold" and m.metrics["vs_torch"] == pytest.approx(1.0)
    assert len(seen_indices) == len(set(seen_indices)), "an input index was reused"
    calls = CPU_PLAN.warmup + CPU_PLAN.batches * CPU_PLAN.batch_size
    bench = CPU_PLAN.bench_rounds + 1
    assert len(seen_inputs) == calls + bench, "a timed call saw values it had seen before"
    assert len(checked) == calls + bench, "not every output was checked"
    assert not any(r.notes for r in m.rounds)  # events and the synchronized clock agree
    assert "guard.softmax [honest] on cpu: " in capsys.readouterr().out


def test_reporting_keeps_benchmark_extra_info_and_kata_perf_entries(targets, benchmark):
    """With pytest-benchmark's real fixture (its pedantic with a setup giving fresh inputs).
    A stand-in request: entries in the real config._kata_perf make the plugin write
    .kata_progress.json for a GPU at the end of the run."""
    request = FakeRequest()
    peaks = DevicePeaks(name="cpu", copy_bytes_per_s=1e11, matmul_flops_per_s=1e12)
    pc = PerfChecker(request, peaks, benchmark, device=Device(), plan=CPU_PLAN, targets_dir=targets)
    m = pc.measure(lambda x: torch.softmax(x, dim=-1),
                   make_inputs=cpu_inputs, check=check_softmax, label="record", bytes_moved=1e6,
                   peers={"torch": lambda x: torch.softmax(x, dim=-1)})
    tier = pc.check("guard", "plumbing", m)
    assert benchmark.extra_info["label"] == "record" and benchmark.extra_info["tier"] == tier
    assert {"vs_torch", "copy_fraction", "tbps", "ms_cuda_events"} <= set(benchmark.extra_info)
    entry = request.config._kata_perf[-1]
    assert entry["module"] == "guard" and entry["target"] == "plumbing" and entry["tier"] == tier


def test_a_closure_over_fixed_tensors_is_refused_with_the_new_api_named(targets):
    x = cpu_inputs(0)[0]
    with pytest.raises(TypeError, match="make_inputs=.*check="):
        checker(targets, Device()).measure(lambda: torch.softmax(x, -1), label="old")


# -- a patched timer ------------------------------------------------------------------------
@pytest.mark.parametrize("trick, replaced", [
    ("patched_perf_counter", "time.perf_counter"),
    ("patched_cuda_event", "torch.cuda.Event.elapsed_time"),
    ("patched_synchronize", "torch.cuda.synchronize"),
    ("patch_on_first_call", "torch.cuda.Event.record"),
])
def test_a_patched_timer_fails_the_check_naming_what_was_replaced(targets, restore_timers,
                                                                  trick, replaced):
    module = load_trick(trick)
    with pytest.raises(TimerTampered) as exc:
        run_check(checker(targets, Device()), module.softmax, target="plumbing")
    message = str(exc.value)
    assert f"{replaced} was replaced" in message and f"{trick}.py" in message, message


def test_a_timer_patched_before_the_harness_was_imported_is_caught_too():
    """The originals are checked to be genuine (torch's / builtin, right name) at import."""
    code = ("import importlib.util, sys; sys.path.insert(0, 'tests');"
            "spec = importlib.util.spec_from_file_location('t', 'tests/perf_tricks/patched_cuda_event.py');"
            "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod);"
            "import harness.perf as p; p.verify_timer('at import')")
    env = {k: v for k, v in os.environ.items() if k != "KATA_IMPL"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "torch.cuda.Event.elapsed_time was replaced before the harness was imported" in proc.stderr
    assert "patched_cuda_event.py" in proc.stderr


def test_the_harness_times_with_its_own_clock_even_while_a_patch_is_in_place(restore_timers):
    load_trick("patched_perf_counter")
    t0 = Device().wall()
    time.sleep(0.02)
    assert Device().wall() - t0 >= 0.015  # the patched clock would say 0.002


# -- batch-and-skip, deferred work, cached outputs --------------------------------------------
@pytest.mark.parametrize("trick", ["batch_and_skip", "deferred", "cached"])
def test_skipped_deferred_or_cached_work_fails_on_the_output_check(targets, sim, trick):
    module = load_trick(trick)
    # Caught on the first call whose output is wrong: a warm-up call (cached: its second
    # call) or a timed one (the tricks that behave for their first calls).
    with pytest.raises(PerfGuardError, match="(warm-up|timed) call .* returned a wrong result"):
        run_check(checker(targets, sim), module.softmax)


@pytest.mark.parametrize("trick", ["batch_and_skip", "cached"])
def test_these_tricks_are_real_on_a_fixed_input_and_the_guard_removes_them(targets, sim, trick):
    """On one fixed tensor (a naive timer) the trick beats torch 4:1; the guard fails it."""
    x = cpu_inputs(0)[0]
    module = load_trick(trick)
    fooled = naive_ms(sim, lambda: module.softmax(x), rep=25)
    assert fooled <= naive_ms(sim, lambda: torch.softmax(x, -1)) / 4
    with pytest.raises(PerfGuardError, match="returned a wrong result"):
        run_check(checker(targets, sim), load_trick(trick).softmax)


def test_the_same_kernel_without_its_trick_is_honestly_too_slow(targets, sim):
    with pytest.raises(AssertionError, match="too slow") as exc:
        run_check(checker(targets, sim), load_trick("slow").softmax)
    assert "every round" in str(exc.value) and "vs_torch 0.25" in str(exc.value)


# -- work left on a side stream or a thread ---------------------------------------------------
def test_work_on_a_side_stream_is_timed_by_the_synchronized_clock_and_fails(targets, sim):
    """CPU simulation: the trick queues 4x torch's work on its own stream and returns."""
    module = load_trick("side_stream_sim")
    x = cpu_inputs(0)[0]
    assert naive_ms(sim, lambda: module.softmax(x)) == 0.0  # events on the caller's stream are fooled
    with pytest.raises(AssertionError, match="too slow") as exc:
        run_check(checker(targets, sim), module.softmax)
    message = str(exc.value)
    assert "outside the timed stream" in message and "vs_torch 0.25" in message, message
    simdevice.STREAMS.remove(module.SIDE)


def test_an_honest_kernel_on_the_simulated_device_is_not_flagged(targets, sim):
    m = run_check(checker(targets, sim), load_trick("honest").softmax)
    assert not any(r.notes for r in m.rounds) and m.metrics["vs_torch"] == pytest.approx(1.0)


def test_work_left_on_a_host_thread_fails(targets):
    with pytest.raises(PerfGuardError, match="thread that was still running|wrong result"):
        run_check(checker(targets, Device()), load_trick("rogue_thread").softmax, target="plumbing")


def test_an_output_buffer_shared_by_calls_fails_with_a_clear_message(targets):
    with pytest.raises(PerfGuardError, match="returned the same memory for timed calls"):
        run_check(checker(targets, Device()), load_trick("reused_output").softmax,
                  target="plumbing")


def test_a_tensor_subclass_result_is_refused(targets):
    class Lazy(torch.Tensor):
        pass

    with pytest.raises(PerfGuardError, match="tensor subclass"):
        run_check(checker(targets, Device()),
                  lambda x: torch.softmax(x, dim=-1).as_subclass(Lazy), target="plumbing")


# -- a miss is confirmed before it fails (a scripted clock: deterministic) ---------------------
class ScriptedDevice(Device):
    """Time passes only when a scripted function says so: cost ms per call."""

    name = "scripted"

    def __init__(self) -> None:
        self.now_ms = 0.0

    def record(self, event):
        event[0] = self.now_ms

    def elapsed_ms(self, start, end):
        return end[0] - start[0]

    def wall(self):
        return self.now_ms / 1e3


def scripted_check(targets: Path, first: float, confirm: list[float]):
    """Ours costs `first` ms in the first round, then confirm[k] in confirmation round k;
    torch costs 1 ms. Returns (measurement or exception, the order of calls)."""
    dev = ScriptedDevice()
    state = {"cost": first}
    order: list[str] = []

    def ours(x):
        dev.now_ms += state["cost"]
        order.append("ours")
        return torch.softmax(x, dim=-1)

    def peer(x):
        dev.now_ms += 1.0
        order.append("torch")
        return torch.softmax(x, dim=-1)

    pc = checker(targets, dev)
    m = pc.measure(ours, make_inputs=cpu_inputs, check=check_softmax, label="scripted",
                   peers={"torch": peer})
    costs = iter(confirm)
    plain = m.remeasure

    def remeasure():
        state["cost"] = next(costs)
        order.append("|")
        return plain()

    m.remeasure = remeasure
    try:
        pc.check("guard", "softmax", m)
    except AssertionError as exc:
        return m, exc, order
    return m, None, order


def test_a_first_round_that_meets_the_bar_is_not_remeasured(targets):
    m, exc, order = scripted_check(targets, first=1.0, confirm=[])
    assert exc is None and len(m.rounds) == 1 and not m.confirmed and "|" not in order


def test_a_transient_miss_is_remeasured_and_passes(targets, capsys):
    m, exc, order = scripted_check(targets, first=3.0, confirm=[1.0, 1.0, 1.0])
    assert exc is None and m.confirmed and len(m.rounds) == 4
    assert m.metrics["vs_torch"] == pytest.approx(1.0)
    assert "first round missed bronze; judged on the median of 3 interleaved rounds" in \
        capsys.readouterr().out


def test_confirmation_rounds_interleave_ours_and_the_peer(targets):
    _, _, order = scripted_check(targets, first=3.0, confirm=[1.0, 1.0, 1.0])
    rounds = " ".join(order).split("|")[1:]
    for r in rounds:  # each round: all of ours' calls, then all of the peer's
        calls = r.split()
        assert calls and calls[0] == "ours" and calls[-1] == "torch"
        assert calls == sorted(calls, key=lambda c: c != "ours")


@pytest.mark.parametrize("confirm, fails", [
    ([3.0, 3.0, 3.0], True),
    ([3.0, 1.0, 3.0], True),   # 2 of 3 miss: the median misses
    ([3.0, 1.0, 1.0], False),  # 1 of 3 misses: the median meets the bar
])
def test_the_median_of_the_confirmation_rounds_decides(targets, confirm, fails):
    m, exc, _ = scripted_check(targets, first=3.0, confirm=confirm)
    assert (exc is not None) == fails
    if fails:
        message = str(exc)
        assert "too slow" in message and "median of 3 interleaved rounds" in message
        for k in range(4):  # every round printed, the first marked as not judged
            assert f"round {k}" in message
        assert "round 0 (first, not judged)" in message
        assert message.count("vs_torch 0.333") == 1 + confirm.count(3.0)


# -- GPU variants: the same tricks with real CUDA streams and events -----------------------------
GPU_PLAN = Plan(warmup=2, batches=4, batch_size=4, confirm_rounds=3, bench_rounds=2)


def gpu_inputs(i: int) -> tuple[torch.Tensor]:
    gen = torch.Generator(device="cuda").manual_seed(i)
    return (3 * torch.randn(32768, 1024, device="cuda", generator=gen),)


def gpu_checker(targets: Path) -> PerfChecker:
    return checker(targets, perf.CudaDevice(), plan=GPU_PLAN,
                   peaks_name=torch.cuda.get_device_name())


@pytest.mark.gpu
def test_gpu_honest_kernel_passes_and_events_agree_with_the_synchronized_clock(targets, capsys):
    pc = gpu_checker(targets)
    m = pc.measure(load_trick("honest").softmax, make_inputs=gpu_inputs, check=check_softmax,
                   label="honest", peers={"torch": lambda x: torch.softmax(x, dim=-1)})
    t = perf.time_calls(pc.device, lambda x: torch.softmax(x, dim=-1),
                        perf.FreshInputs(gpu_inputs, 10_000), GPU_PLAN)
    print(f"honest torch.softmax 32768x1024 fp32: events {t.event_ms:.4f} ms, "
          f"synchronized wall {t.wall_ms:.4f} ms per call")
    assert pc.check("guard", "softmax", m) in ("bronze", "gold")
    assert not t.outside and not any(r.notes for r in m.rounds)
    print(capsys.readouterr().out)


@pytest.mark.gpu
def test_gpu_side_stream_work_is_counted_and_fails(targets):
    module = load_trick("side_stream_cuda")
    x = gpu_inputs(0)[0]
    fooled = perf.cuda_median_ms(lambda: module.softmax(x))
    torch_ms = perf.cuda_median_ms(lambda: torch.softmax(x, dim=-1))
    print(f"naive events: side-stream trick {fooled:.4f} ms, torch {torch_ms:.4f} ms")
    assert fooled < torch_ms / 2  # the trick fools events on the caller's stream
    with pytest.raises(AssertionError, match="too slow") as exc:
        run_check(gpu_checker(targets), module.softmax, gpu_inputs)
    print(exc.value)
    assert "outside the timed stream" in str(exc.value)


@pytest.mark.gpu
@pytest.mark.parametrize("trick", ["batch_and_skip", "deferred", "cached"])
def test_gpu_skipped_deferred_or_cached_work_fails(targets, trick):
    with pytest.raises(PerfGuardError, match="returned a wrong result"):
        run_check(gpu_checker(targets), load_trick(trick).softmax, gpu_inputs)


@pytest.mark.gpu
@pytest.mark.parametrize("trick, replaced", [
    ("patched_cuda_event", "torch.cuda.Event.elapsed_time"),
    ("patched_synchronize", "torch.cuda.synchronize"),
    ("patch_on_first_call", "torch.cuda.Event.record"),
])
def test_gpu_patched_timer_fails(targets, restore_timers, trick, replaced):
    module = load_trick(trick)
    with pytest.raises(TimerTampered, match=f"{replaced} was replaced"):
        run_check(gpu_checker(targets), module.softmax, gpu_inputs)


def test_spin_covers_twice_the_launch_cost_within_bounds() -> None:
    """The spin before each timed call hides the host's launch (twice its warm-up median,
    the first warm-up call left out: it may compile), never under 0.1 ms nor over 1 ms."""
    from harness.perf import MAX_SPIN_MS, MIN_SPIN_MS, spin_for

    assert spin_for([]) == MIN_SPIN_MS
    assert spin_for([900.0, 0.01, 0.02, 0.01]) == MIN_SPIN_MS  # the compile call is ignored
    assert spin_for([5.0, 0.21, 0.22, 0.2]) == pytest.approx(0.45)  # 2 x 0.21, rounded up to 0.05
    assert spin_for([5.0, 40.0, 40.0]) == MAX_SPIN_MS  # a slow launcher pays for itself
