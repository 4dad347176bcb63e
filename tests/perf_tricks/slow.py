"""No trick, but four times the work of torch.softmax: honestly below a 0.5x-torch bar.
The tricks below start from this kernel, to show that their 'speed' is the trick's."""
import torch

WORK = 4


def softmax(x: torch.Tensor) -> torch.Tensor:
    for _ in range(WORK):
        out = torch.softmax(x, dim=-1)
    return out
