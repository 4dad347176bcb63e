"""Trick: work left on a side stream (a real CUDA stream). The kernel runs four times
torch's work on its own stream and returns without making the caller's stream wait: CUDA
events on the caller's stream see only the launch."""
import torch

_side = None


def softmax(x: torch.Tensor) -> torch.Tensor:
    global _side
    if _side is None:
        _side = torch.cuda.Stream()
    _side.wait_stream(torch.cuda.current_stream())  # x is ready
    with torch.cuda.stream(_side):
        for _ in range(4):
            out = torch.softmax(x, dim=-1)
    return out
