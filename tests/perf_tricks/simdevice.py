"""A CPU stand-in for a GPU with streams, so that the timing core's guards run in CI,
deterministically even on a loaded machine.

Time on a SimDevice is the work done, not the host clock: a torch.softmax of n elements costs
n * NS_PER_ELEMENT ns on the stream that runs it (the `work_clock` fixture of
tests/test_perf_guard.py wraps torch.softmax to charge it). Each stream has its own timeline,
as on a GPU: the default stream runs work in the caller, and events recorded by the caller
read the default stream's timeline. A SimStream runs submitted work on its own worker thread
(the caller returns at once) and charges its own timeline. SimDevice.synchronize() waits for
every SimStream and brings every timeline to the latest, as torch.cuda.synchronize() waits for
every stream of the device; the host clock (`wall`) then reads that time.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable

from harness.perf import Device

NS_PER_ELEMENT = 1.0
STREAMS: list["SimStream"] = []
_local = threading.local()  # .stream: the SimStream whose worker runs on this thread


class SimStream:
    def __init__(self) -> None:
        self.clock_ms = 0.0
        self._work: queue.Queue[Callable[[], Any]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="sim-stream", daemon=True)
        self._thread.start()  # created with the stream, as a CUDA stream is
        STREAMS.append(self)

    def _run(self) -> None:
        _local.stream = self
        while True:
            job = self._work.get()
            try:
                job()
            finally:
                self._work.task_done()

    def submit(self, job: Callable[[], Any]) -> None:
        self._work.put(job)

    def synchronize(self) -> None:
        self._work.join()


class SimDevice(Device):
    name = "sim-gpu"

    def __init__(self) -> None:
        self.clock_ms = 0.0  # the default stream's timeline

    def charge(self, n_elements: int) -> None:
        """Work of n elements done now, on the stream of the calling thread."""
        ms = n_elements * NS_PER_ELEMENT * 1e-6
        stream = getattr(_local, "stream", None)
        if stream is not None:
            stream.clock_ms += ms
        else:
            self.clock_ms += ms

    def synchronize(self) -> None:
        for stream in list(STREAMS):
            stream.synchronize()
        latest = max([self.clock_ms] + [s.clock_ms for s in STREAMS])
        self.clock_ms = latest
        for stream in STREAMS:
            stream.clock_ms = latest

    def record(self, event: Any) -> None:
        event[0] = self.clock_ms

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return end[0] - start[0]

    def wall(self) -> float:
        return self.clock_ms / 1e3


class FakeBenchmark:
    """What PerfChecker needs of pytest-benchmark's fixture (no stats: nothing was timed by it)."""

    def __init__(self) -> None:
        self.extra_info: dict = {}
        self.stats = None

    def pedantic(self, target, args=(), kwargs=None, setup=None, rounds=1, warmup_rounds=0,
                 iterations=1):
        for _ in range(warmup_rounds + rounds):
            a, kw = setup() if setup else (args, kwargs or {})
            target(*a, **kw)


class FakeRequest:
    """What PerfChecker needs of pytest's request: the config's list of perf records."""

    class config:  # noqa: N801 - stands in for pytest's config object
        _kata_perf: list = []
