"""Comparing tensors, with failure messages that teach.

Tolerances per dtype (one place, used by every kata unless its README says otherwise).
They allow a few units in the last place of one rounding of the result, not more:

    dtype      atol     rtol     why
    float64    1e-10    1e-8     exact math, different summation order
    float32    1e-5     1e-5     ~100 ulp of float32: reductions in another order
    float16    1e-3     2e-3     one fp16 rounding is 4.9e-4 relative; plus fp32 accumulation order
    bfloat16   8e-3     1.6e-2   one bf16 rounding is 3.9e-3 relative; two roundings in a row

A kata that needs other numbers (a long fp16 reduction, attention over 8k keys) passes
`atol`/`rtol` explicitly and documents why in its README.
"""
from __future__ import annotations

import math
import os
from typing import Any

import torch

from harness import triton_probe

_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-8),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 2e-3),
    torch.bfloat16: (8e-3, 1.6e-2),
}

INTERPRETER_BF16_HINT = (
    "Triton is running under its CPU interpreter (TRITON_INTERPRET=1). The interpreter loads "
    "bf16/fp16 correctly but computes garbage with them (NaN, 1e10): cast to "
    "float32 right after every tl.load, e.g. `x = tl.load(ptr + offs, mask=m).to(tl.float32)`, "
    "and cast back only in tl.store."
)


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(atol, rtol) for comparing a result of this dtype; see the table above."""
    if dtype not in _TOLERANCES:
        raise ValueError(f"no documented tolerance for {dtype}")
    return _TOLERANCES[dtype]


def describe(**inputs: Any) -> str:
    """'x (4, 1000) float32, seed=3': a one-line description of a test's inputs."""
    parts = []
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor):
            parts.append(f"{name} {tuple(value.shape)} {str(value.dtype).replace('torch.', '')}")
        else:
            parts.append(f"{name}={value!r}")
    return ", ".join(parts)


_launches_at_last_look = [0]  # Triton launches counted when the last comparison (or check) began


def new_check() -> None:
    """Called by the plugin as each check starts."""
    _launches_at_last_look[0] = triton_probe.total_launches()


def _triton_ran_since_last_look() -> bool:
    """Did the code under test launch a Triton kernel since the previous comparison? The
    interpreter's bf16 hint makes sense only then, not for plain torch code."""
    now = triton_probe.total_launches()
    ran = now > _launches_at_last_look[0]
    _launches_at_last_look[0] = now
    return ran


def _interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def assert_close(
    actual: Any,
    expected: torch.Tensor,
    *,
    what: str = "result",
    inputs: str | dict[str, Any] = "",
    atol: float | None = None,
    rtol: float | None = None,
    hint: str = "",
    check_dtype: bool = True,
) -> None:
    """Fail with a teaching message unless `actual` matches `expected` within tolerance.

    The check is |actual - expected| <= atol + rtol * |expected| elementwise, in float64.
    NaN matches only NaN, +-inf only the same infinity. Default tolerances come from
    `tolerance(expected.dtype)`.
    """
    __tracebackhide__ = True  # a failure shows the test's line, not this helper's insides
    triton_ran = _triton_ran_since_last_look()
    inputs_text = describe(**inputs) if isinstance(inputs, dict) else inputs
    head = f"{what}: " if what else ""
    where = f"\n  inputs: {inputs_text}" if inputs_text else ""
    if not isinstance(actual, torch.Tensor):
        raise AssertionError(f"{head}expected a torch.Tensor, got {type(actual).__name__}{where}")
    if tuple(actual.shape) != tuple(expected.shape):
        raise AssertionError(
            f"{head}wrong shape {tuple(actual.shape)}, expected {tuple(expected.shape)}{where}"
        )
    if check_dtype and actual.dtype != expected.dtype:
        raise AssertionError(f"{head}wrong dtype {actual.dtype}, expected {expected.dtype}{where}")
    d_atol, d_rtol = tolerance(expected.dtype) if expected.dtype in _TOLERANCES else (0.0, 0.0)
    atol = d_atol if atol is None else atol
    rtol = d_rtol if rtol is None else rtol

    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    both_nan = torch.isnan(a) & torch.isnan(e)
    same_inf = torch.isinf(a) & torch.isinf(e) & (a == e)
    err = (a - e).abs()
    # An expected +-inf (or NaN) is matched only exactly; rtol * inf must not excuse a finite value.
    within = torch.isfinite(e) & (err <= atol + rtol * e.abs())  # NaN in err is never within
    bad = ~(both_nan | same_inf | within)
    if not bool(bad.any()):
        return

    n_bad, n = int(bad.sum()), bad.numel()
    excess = torch.where(bad, torch.nan_to_num(err - rtol * e.abs(), nan=math.inf, posinf=math.inf), -math.inf)
    flat = int(torch.argmax(excess.reshape(-1)))
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), bad.shape)) if bad.dim() else ()
    finite = ~(both_nan | same_inf)
    max_abs = float(torch.nan_to_num(err[finite], nan=math.inf).max()) if finite.any() else math.nan
    # Relative error only where the expected value is not 0 (against 0 it means nothing).
    nonzero = finite & (e != 0)
    rel = err / e.abs().clamp_min(1e-300)
    max_rel = float(torch.nan_to_num(rel[nonzero], nan=math.inf).max()) if nonzero.any() else math.nan
    errors = f"max abs error {max_abs:.3g}"
    if not math.isnan(max_rel):
        errors += f", max rel error {max_rel:.3g} (where the expected value is not 0)"
    if bool((bad & (e == 0)).any()):
        errors += "; some expected values are exactly 0, judged by atol"
    lines = [
        f"{head}{n_bad} of {n} elements ({100.0 * n_bad / n:.3g}%) differ from the expected values",
        f"  inputs: {inputs_text}" if inputs_text else "",
        f"  worst element at index {idx}: got {float(a[idx]) if idx or a.dim() == 0 else float(a):.6g}, "
        f"expected {float(e[idx]) if idx or e.dim() == 0 else float(e):.6g}",
        f"  {errors}",
        f"  tolerance: atol={atol:g} rtol={rtol:g} for {str(expected.dtype).replace('torch.', '')} "
        f"(see harness/compare.py)",
    ]
    if int(torch.isnan(a).sum()) > int(torch.isnan(e).sum()):
        lines.append(f"  the result has {int(torch.isnan(a).sum())} NaN where the expected values have none")
    if hint:
        lines.append(f"  hint: {hint}")
    if triton_ran and _interpreter_on() and actual.dtype in (torch.bfloat16, torch.float16) and (
        bool((~torch.isfinite(a) & torch.isfinite(e)).any()) or max_abs > 1e3 * (1 + float(e.abs().max()))
    ):  # NaN/inf, or errors far beyond the data's own scale: the interpreter's bf16 garbage
        lines.append(f"  hint: {INTERPRETER_BF16_HINT}")
    raise AssertionError("\n".join(line for line in lines if line))
