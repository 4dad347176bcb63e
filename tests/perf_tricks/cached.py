"""Trick: cached outputs. A result is kept per input shape and dtype and returned whenever
that shape comes again: a timer that calls the kernel on one fixed tensor sees only the
first call do any work. The uncached path is four times torch's work. (Keyed on the data
pointer too, the trick would hit or miss as the allocator happens to reuse addresses: the
guard then fails it as wrong or as too slow, but not always the same way.)"""
import torch

_cache: dict = {}


def softmax(x: torch.Tensor) -> torch.Tensor:
    key = (tuple(x.shape), x.dtype)
    if key not in _cache:
        for _ in range(4):
            out = torch.softmax(x, dim=-1)
        _cache[key] = out
    return _cache[key].clone()
