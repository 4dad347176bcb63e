"""Trick: work left on a side stream (CPU simulation, see simdevice.py). The kernel queues
four times torch's work on its own stream and returns the output buffer at once: events on
the caller's stream see nothing; the output is complete once the device is synchronized."""
import torch

from perf_tricks.simdevice import SimStream

SIDE = SimStream()


def softmax(x: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(x)

    def work() -> None:
        for _ in range(4):
            out.copy_(torch.softmax(x, dim=-1))

    SIDE.submit(work)
    return out
