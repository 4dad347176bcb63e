"""Persistent variants of kata 15's two TMA expert kernels (reference/moe.py), timed against
the reference's moe_forward_triton on a Mixtral layer (d 4096, d_ff 14336, E 8, top 2, bf16).

The reference launches one program per (tile, column block): each program fills its TMA
pipeline, runs its K loop, then does its epilogue (silu * up, masked stores) while nothing of
its own overlaps it, and only 1 CTA fits an SM (~144 KB of shared memory). Here each kernel
runs a grid of NUM_PROGRAMS (the SM count times a small factor) programs that walk the work
units (valid tile x column block, GROUP_M tiles down each column block) with
    for work in tl.range(pid, total, NUM_PROGRAMS, flatten=FLATTEN)
as Triton's persistent TMA matmul tutorial does, so that the compiler can start the next
unit's loads while the previous unit's epilogue runs (FLATTEN=True flattens the two loops
into one software-pipelined loop). The epilogue finds its tile again from a separate counter.
`total` is the number of VALID tiles (the tile table puts the unused tiles at its end) times
the number of column blocks, read from a 1-element device tensor: no host synchronisation.

    # CPU, Triton interpreter, tiny shapes against reference.moe_forward (the torch path):
    TRITON_INTERPRET=1 python scripts/moe_persistent.py --check
    # compile both kernels for sm_90 on any machine (no GPU): shared memory, registers, spills
    python scripts/moe_persistent.py --compile-sm90
    # GPU (Hopper): reference vs persistent candidates, one line each; default T = 4096 8192
    python scripts/moe_persistent.py [T ...] [--json PATH]

Each GPU line: T, the config, ms, TFLOP/s (2 * T * top_k * 3 * d * d_ff / s) and the
fraction of the dense bf16 matmul rate measured by harness.perf.measure_device_peaks().

Measured 2026-11-30 on an H200 (dense 793 TFLOP/s; 13 candidates): none beats the reference.
Best at T = 4096: 0.815x dense against the reference's 0.817x in the same run; at T = 8192
0.773x against 0.784x. Flattened loops were slower (0.61-0.74x): ptxas serialises the gate/up
kernel's wgmmas (warning C7515, the flattened loop re-zeroes the accumulators with a select),
and flattening costs ~32 KB of shared memory for the epilogue, so still one CTA per SM.
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_spec = importlib.util.spec_from_file_location("ref_moe", ROOT / "reference" / "moe.py")
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)  # type: ignore[union-attr]


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


# ------------------------------------------------------------------------------ kernels
@triton.jit
def _unit_tile(work, num_pid_n, num_valid, GROUP_M: tl.constexpr):
    """Work unit -> (tile, column block) over the valid tiles only: GROUP_M tiles down each
    column block, so that units running at the same time share weight columns in the L2."""
    in_group = GROUP_M * num_pid_n
    first_m = (work // in_group) * GROUP_M
    size_m = tl.minimum(num_valid - first_m, GROUP_M)
    local = work % in_group
    return first_m + local % size_m, local // size_m


@triton.jit
def _column_halves(acc, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(BLOCK_M, BLOCK_N) -> its left and right (BLOCK_M, BLOCK_N // 2) halves."""
    both = tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1))
    return tl.split(both)


@triton.jit
def _gate_up_persistent_kernel(xs_desc, wg_desc, wu_desc, H, TileExpert, TileRow, TileEnd, NumValid,
                               N, K, stride_hm,
                               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                               GROUP_M: tl.constexpr, NUM_PROGRAMS: tl.constexpr, FLATTEN: tl.constexpr,
                               EPILOGUE_SUBTILE: tl.constexpr, PRECISION: tl.constexpr):
    """H[rows] = silu(xs[rows] @ w_gate[e].T) * (xs[rows] @ w_up[e].T) for every valid
    (tile, column block); xs is x in expert order, the weights are viewed (E * N, K)."""
    start = tl.program_id(0)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    num_valid = tl.load(NumValid)
    total = num_valid * num_pid_n
    work_c = start - NUM_PROGRAMS  # the epilogue's own counter (one unit behind, as it were)
    for work in tl.range(start, total, NUM_PROGRAMS, flatten=FLATTEN):
        pid_m, pid_n = _unit_tile(work, num_pid_n, num_valid, GROUP_M)
        e = tl.load(TileExpert + pid_m)
        row0 = tl.load(TileRow + pid_m)
        w_row = e * N + pid_n * BLOCK_N
        acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for ki in range(k_tiles):
            k0 = ki * BLOCK_K
            a = xs_desc.load([row0, k0])  # rows past the tile's expert: computed, never stored
            g = wg_desc.load([w_row, k0])
            u = wu_desc.load([w_row, k0])
            acc_g = tl.dot(a, g.T, acc_g, input_precision=PRECISION)
            acc_u = tl.dot(a, u.T, acc_u, input_precision=PRECISION)

        work_c += NUM_PROGRAMS
        pid_mc, pid_nc = _unit_tile(work_c, num_pid_n, num_valid, GROUP_M)
        rows = tl.load(TileRow + pid_mc) + tl.arange(0, BLOCK_M)
        rmask = rows < tl.load(TileEnd + pid_mc)
        h_rows = H + rows.to(tl.int64)[:, None] * stride_hm
        n0 = pid_nc * BLOCK_N
        if EPILOGUE_SUBTILE:  # two half-width stores: fewer live registers in the epilogue
            HALF: tl.constexpr = BLOCK_N // 2
            g0, g1 = _column_halves(acc_g, BLOCK_M, BLOCK_N)
            u0, u1 = _column_halves(acc_u, BLOCK_M, BLOCK_N)
            offs0 = n0 + tl.arange(0, HALF)
            h0 = g0 / (1.0 + tl.exp(-g0)) * u0
            tl.store(h_rows + offs0[None, :], h0.to(H.dtype.element_ty),
                     mask=rmask[:, None] & (offs0 < N)[None, :])
            offs1 = offs0 + HALF
            h1 = g1 / (1.0 + tl.exp(-g1)) * u1
            tl.store(h_rows + offs1[None, :], h1.to(H.dtype.element_ty),
                     mask=rmask[:, None] & (offs1 < N)[None, :])
        else:
            offs_n = n0 + tl.arange(0, BLOCK_N)
            h = acc_g / (1.0 + tl.exp(-acc_g)) * acc_u  # silu(gate) * up
            tl.store(h_rows + offs_n[None, :], h.to(H.dtype.element_ty),
                     mask=rmask[:, None] & (offs_n < N)[None, :])


@triton.jit
def _down_persistent_kernel(h_desc, wd_desc, Order, Weights, TileExpert, TileRow, TileEnd, NumValid, Y,
                            N, K, stride_ym,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                            GROUP_M: tl.constexpr, NUM_PROGRAMS: tl.constexpr, FLATTEN: tl.constexpr,
                            EPILOGUE_SUBTILE: tl.constexpr, PRECISION: tl.constexpr):
    """Y[Order[row]] = Weights[Order[row]] * (H[row] @ w_down[e].T) for every valid
    (tile, column block); w_down viewed (E * N, K)."""
    start = tl.program_id(0)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    num_valid = tl.load(NumValid)
    total = num_valid * num_pid_n
    work_c = start - NUM_PROGRAMS
    for work in tl.range(start, total, NUM_PROGRAMS, flatten=FLATTEN):
        pid_m, pid_n = _unit_tile(work, num_pid_n, num_valid, GROUP_M)
        e = tl.load(TileExpert + pid_m)
        row0 = tl.load(TileRow + pid_m)
        w_row = e * N + pid_n * BLOCK_N
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for ki in range(k_tiles):
            k0 = ki * BLOCK_K
            a = h_desc.load([row0, k0])
            b = wd_desc.load([w_row, k0])
            acc = tl.dot(a, b.T, acc, input_precision=PRECISION)

        work_c += NUM_PROGRAMS
        pid_mc, pid_nc = _unit_tile(work_c, num_pid_n, num_valid, GROUP_M)
        rows = tl.load(TileRow + pid_mc) + tl.arange(0, BLOCK_M)
        rmask = rows < tl.load(TileEnd + pid_mc)
        flat = tl.load(Order + rows, mask=rmask, other=0)  # t * top_k + slot of each row
        w = tl.load(Weights + flat, mask=rmask, other=0.0)
        y_rows = Y + flat.to(tl.int64)[:, None] * stride_ym
        n0 = pid_nc * BLOCK_N
        if EPILOGUE_SUBTILE:
            HALF: tl.constexpr = BLOCK_N // 2
            a0, a1 = _column_halves(acc, BLOCK_M, BLOCK_N)
            offs0 = n0 + tl.arange(0, HALF)
            tl.store(y_rows + offs0[None, :], (a0 * w[:, None]).to(Y.dtype.element_ty),
                     mask=rmask[:, None] & (offs0 < N)[None, :])
            offs1 = offs0 + HALF
            tl.store(y_rows + offs1[None, :], (a1 * w[:, None]).to(Y.dtype.element_ty),
                     mask=rmask[:, None] & (offs1 < N)[None, :])
        else:
            offs_n = n0 + tl.arange(0, BLOCK_N)
            tl.store(y_rows + offs_n[None, :], (acc * w[:, None]).to(Y.dtype.element_ty),
                     mask=rmask[:, None] & (offs_n < N)[None, :])


# ------------------------------------------------------------------------------ host side
# One kernel's launch options; cfg = {"BLOCK_M": ..., "programs_per_sm": ..., "num_sms": None
# (None: the GPU's SM count), "gate_up": {...}, "down": {...}} with these keys per kernel.
KERNEL_DEFAULTS = dict(BLOCK_N=128, BLOCK_K=64, GROUP_M=16, num_warps=8, num_stages=3,
                       FLATTEN=True, EPILOGUE_SUBTILE=False)
DEFAULT_CFG = dict(BLOCK_M=128, programs_per_sm=1, num_sms=None,
                   gate_up=dict(KERNEL_DEFAULTS),
                   down=dict(KERNEL_DEFAULTS, BLOCK_N=256))


def _from_tma_config(tma_config) -> dict:
    """reference._TMA_CONFIG's ((BLOCK_N, BLOCK_K, warps, stages, GROUP_M) gate/up, down) as a cfg."""
    keys = ("BLOCK_N", "BLOCK_K", "num_warps", "num_stages", "GROUP_M")
    return dict(BLOCK_M=128, gate_up=dict(zip(keys, tma_config[0])), down=dict(zip(keys, tma_config[1])))


REFERENCE_LIKE = _from_tma_config(ref._TMA_CONFIG)  # the reference's tile shapes


def _full_cfg(cfg: dict | None) -> dict:
    cfg = dict(cfg or {})
    out = {**DEFAULT_CFG, **{k: v for k, v in cfg.items() if k not in ("gate_up", "down")}}
    for kern in ("gate_up", "down"):
        out[kern] = {**DEFAULT_CFG[kern], **cfg.get(kern, {})}
    return out


def route_and_tile(x, router_weight, top_k: int, block_m: int):
    """The reference's routing launches (route + top-k, tile table, scatter) and the number of
    valid tiles as a 1-element int32 device tensor; no host synchronisation.
    Returns (weights, order, tile_expert, tile_row, tile_end, num_valid)."""
    logits = x @ router_weight.t()  # (T, E) in x's dtype, as the reference computes them
    weights, order, tile_expert, tile_row, tile_end, _ = ref._route_and_tile(logits, top_k, block_m)
    # the invalid tiles (expert -1) are all at the end of the table: count the valid ones
    num_valid = (tile_expert >= 0).sum(dtype=torch.int32).reshape(1)
    return weights, order, tile_expert, tile_row, tile_end, num_valid


@functools.lru_cache(maxsize=None)
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the interpreter: a few programs, each taking several work units


def moe_forward_persistent(x: torch.Tensor, router_weight: torch.Tensor, w_gate: torch.Tensor,
                           w_up: torch.Tensor, w_down: torch.Tensor, top_k: int,
                           cfg: dict | None = None) -> torch.Tensor:
    """reference.moe_forward_triton's TMA prefill path with the two expert products as
    persistent kernels; cfg: launch options (see DEFAULT_CFG), missing keys take defaults."""
    ref._check_block(x, router_weight, w_gate, w_up, w_down, top_k)
    c = _full_cfg(cfg)
    gu, dn = c["gate_up"], c["down"]
    T, d = x.shape
    E, d_ff, _ = w_gate.shape
    block_m = c["BLOCK_M"]
    n_rows = T * top_k
    weights, order, tile_expert, tile_row, tile_end, num_valid = route_and_tile(
        x, router_weight, top_k, block_m)
    h = torch.empty(n_rows, d_ff, dtype=x.dtype, device=x.device)
    y = torch.empty(n_rows, d, dtype=x.dtype, device=x.device)
    if n_rows > 0:
        num_tiles = tile_expert.numel()
        sms = c["num_sms"] or _num_sms(x.device)
        precision = "ieee" if x.dtype == torch.float32 else "tf32"  # no effect on 16-bit inputs
        xs = x[(order // top_k).long()]  # (n_rows, d): x in expert order, contiguous
        # a grid of NUM_PROGRAMS programs, the stride of their loop: never more than the most
        # work units there can be (known on the host from shapes alone)
        p1 = max(1, min(sms * c["programs_per_sm"], num_tiles * triton.cdiv(d_ff, gu["BLOCK_N"])))
        _gate_up_persistent_kernel[(p1,)](
            TensorDescriptor.from_tensor(xs, [block_m, gu["BLOCK_K"]]),
            TensorDescriptor.from_tensor(w_gate.view(E * d_ff, d), [gu["BLOCK_N"], gu["BLOCK_K"]]),
            TensorDescriptor.from_tensor(w_up.view(E * d_ff, d), [gu["BLOCK_N"], gu["BLOCK_K"]]),
            h, tile_expert, tile_row, tile_end, num_valid, d_ff, d, h.stride(0),
            BLOCK_M=block_m, BLOCK_N=gu["BLOCK_N"], BLOCK_K=gu["BLOCK_K"], GROUP_M=gu["GROUP_M"],
            NUM_PROGRAMS=p1, FLATTEN=gu["FLATTEN"], EPILOGUE_SUBTILE=gu["EPILOGUE_SUBTILE"],
            PRECISION=precision, num_warps=gu["num_warps"], num_stages=gu["num_stages"])
        p2 = max(1, min(sms * c["programs_per_sm"], num_tiles * triton.cdiv(d, dn["BLOCK_N"])))
        _down_persistent_kernel[(p2,)](
            TensorDescriptor.from_tensor(h, [block_m, dn["BLOCK_K"]]),
            TensorDescriptor.from_tensor(w_down.view(E * d, d_ff), [dn["BLOCK_N"], dn["BLOCK_K"]]),
            order, weights, tile_expert, tile_row, tile_end, num_valid, y, d, d_ff, y.stride(0),
            BLOCK_M=block_m, BLOCK_N=dn["BLOCK_N"], BLOCK_K=dn["BLOCK_K"], GROUP_M=dn["GROUP_M"],
            NUM_PROGRAMS=p2, FLATTEN=dn["FLATTEN"], EPILOGUE_SUBTILE=dn["EPILOGUE_SUBTILE"],
            PRECISION=precision, num_warps=dn["num_warps"], num_stages=dn["num_stages"])
    # the unpermute: each token's top_k weighted rows sit next to each other in y
    return y.view(T, top_k, d).sum(dim=1)


# ------------------------------------------------------------------------------ --check
def _check_case(name, T, d, d_ff, E, top_k, cfg, dead_experts=(), seed=0):
    """One tiny case under the interpreter against reference.moe_forward in float64.
    dead_experts: experts that no token picks (a constant feature of x drives their logit to -30)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, d, generator=g)
    rw = torch.randn(E, d, generator=g) * 0.5
    if dead_experts:
        x[:, 0] = 1.0
        rw[:, 0] = 0.0
        for e in dead_experts:
            rw[e] = 0.0
            rw[e, 0] = -30.0
    wg = torch.randn(E, d_ff, d, generator=g) / math.sqrt(d)
    wu = torch.randn(E, d_ff, d, generator=g) / math.sqrt(d)
    wd = torch.randn(E, d, d_ff, generator=g) / math.sqrt(d_ff)
    full = _full_cfg(cfg)
    _, _, tile_expert, tile_row, tile_end, num_valid = route_and_tile(x, rw, top_k, full["BLOCK_M"])
    counts = torch.bincount(ref.route(x @ rw.t(), top_k)[1].reshape(-1), minlength=E).tolist()
    partial = sum(1 for c in counts if c % full["BLOCK_M"])
    out = moe_forward_persistent(x, rw, wg, wu, wd, top_k, cfg)
    want = ref.moe_forward(x.double(), rw.double(), wg.double(), wu.double(), wd.double(), top_k)
    err = (out.double() - want).abs().max().item()
    scale = want.abs().max().item()
    ok = err <= 1e-5 * max(scale, 1.0) and bool(torch.isfinite(out).all())
    print(f"{'PASS' if ok else 'FAIL'} {name}: T={T} d={d} d_ff={d_ff} E={E} top_k={top_k} "
          f"counts={counts} partial_tiles={partial} valid_tiles={int(num_valid)}/{tile_expert.numel()} "
          f"max|err|={err:.2e} (max|ref|={scale:.2f})", flush=True)
    return ok


def check() -> bool:
    if not _interpreting():
        raise SystemExit("run --check under the interpreter: "
                         "TRITON_INTERPRET=1 python scripts/moe_persistent.py --check")
    small = dict(BLOCK_M=16, num_sms=3,
                 gate_up=dict(BLOCK_N=32, BLOCK_K=32, GROUP_M=2),
                 down=dict(BLOCK_N=32, BLOCK_K=32, GROUP_M=2))
    cases = [
        ("random routing", dict(T=40, d=64, d_ff=96, E=4, top_k=2, cfg=small)),
        ("expert 3 gets 0 tokens", dict(T=40, d=64, d_ff=96, E=4, top_k=2, cfg=small, dead_experts=(3,))),
        ("expert 0 gets 0 tokens, no flatten, subtiled epilogues",
         dict(T=40, d=64, d_ff=96, E=4, top_k=2, dead_experts=(0,),
              cfg=dict(small, gate_up=dict(small["gate_up"], FLATTEN=False, EPILOGUE_SUBTILE=True),
                       down=dict(small["down"], FLATTEN=False, EPILOGUE_SUBTILE=True)))),
        ("partial tiles everywhere, partial column and K blocks, GROUP_M 8",
         dict(T=37, d=64, d_ff=96, E=4, top_k=2, seed=3,
              cfg=dict(small, num_sms=5, gate_up=dict(BLOCK_N=64, BLOCK_K=32, GROUP_M=8),
                       down=dict(BLOCK_N=32, BLOCK_K=64, GROUP_M=8, EPILOGUE_SUBTILE=True)))),
        ("top 1, experts 0 2 3 get 0 tokens, more programs than work",
         dict(T=21, d=64, d_ff=96, E=4, top_k=1, dead_experts=(0, 2, 3),
              cfg=dict(small, num_sms=64, gate_up=dict(small["gate_up"], GROUP_M=1)))),
        ("one program does all the work", dict(T=24, d=64, d_ff=96, E=4, top_k=2, seed=5,
                                               cfg=dict(small, num_sms=1))),
    ]
    results = [_check_case(name, **kw) for name, kw in cases]
    print(f"{'PASS' if all(results) else 'FAIL'}: {sum(results)}/{len(results)} cases")
    return all(results)


# ------------------------------------------------------------------------------ --compile-sm90
def compile_sm90(cfg: dict | None = None, reference: bool = False) -> list[dict]:
    """Compile both kernels for sm_90 (Hopper) ahead of time, on any machine; the descriptors
    are built on small CPU bf16 tensors only for their types. reference=True: the reference's
    _gate_up_tma_kernel and _down_tma_kernel with cfg's tile options instead (for comparison)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import mangle_type
    c = _full_cfg(cfg)
    bm = c["BLOCK_M"]
    kernels = ((("gate_up", ref._gate_up_tma_kernel), ("down", ref._down_tma_kernel)) if reference else
               (("gate_up", _gate_up_persistent_kernel), ("down", _down_persistent_kernel)))
    rows = []
    for kern, fn in kernels:
        o = c[kern]
        w = torch.empty(512, 512, dtype=torch.bfloat16)
        i32 = torch.empty(1, dtype=torch.int32)
        a_desc = TensorDescriptor.from_tensor(w, [bm, o["BLOCK_K"]])
        b_desc = TensorDescriptor.from_tensor(w, [o["BLOCK_N"], o["BLOCK_K"]])
        args = dict(xs_desc=a_desc, wg_desc=b_desc, wu_desc=b_desc, h_desc=a_desc, wd_desc=b_desc,
                    H=w, Y=w, Order=i32, Weights=torch.empty(1), TileExpert=i32, TileRow=i32,
                    TileEnd=i32, NumValid=i32, N=14336 if kern == "gate_up" else 4096,
                    K=4096 if kern == "gate_up" else 14336, num_tiles=80, stride_hm=14336, stride_ym=4096)
        consts = dict(BLOCK_M=bm, BLOCK_N=o["BLOCK_N"], BLOCK_K=o["BLOCK_K"], GROUP_M=o["GROUP_M"],
                      NUM_PROGRAMS=132 * c["programs_per_sm"], FLATTEN=o["FLATTEN"],
                      EPILOGUE_SUBTILE=o["EPILOGUE_SUBTILE"], PRECISION="tf32")
        consts = {k: v for k, v in consts.items() if k in fn.arg_names}
        sig = {}
        for name in fn.arg_names:
            if name in consts:
                sig[name] = "constexpr"
            elif isinstance(args[name], int):
                sig[name] = "i32"
            else:
                sig[name] = mangle_type(args[name])
        # what the launcher would specialise: the integer arguments here are multiples of 16
        attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]]
                 for n in ("N", "K", "stride_hm", "stride_ym") if n in fn.arg_names}
        row = {"kernel": ("reference " if reference else "") + kern, **o, "BLOCK_M": bm,
               "programs_per_sm": c["programs_per_sm"]}
        if reference:
            row.pop("FLATTEN"), row.pop("EPILOGUE_SUBTILE"), row.pop("programs_per_sm")
        try:
            k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                               target=GPUTarget("cuda", 90, 32),
                               options={"num_warps": o["num_warps"], "num_stages": o["num_stages"]})
            ptx = k.asm["ptx"]
            row.update(ok=True, shared=k.metadata.shared,
                       wgmma="wgmma.mma_async" in ptx, tma="cp.async.bulk.tensor" in ptx)
            try:  # registers and spills from Triton's bundled ptxas (k.n_regs needs a GPU)
                row["ptxas"] = _ptxas_report(ptx)
            except Exception as exc:  # noqa: BLE001
                row["ptxas"] = f"{type(exc).__name__}: {exc}"[:200]
        except Exception as exc:  # noqa: BLE001 - the error is the report
            row.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:1500])
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _ptxas_report(ptx: str) -> str:
    import subprocess
    import tempfile
    bins = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        err = ""
        for ptxas in (bins / "ptxas", bins / "ptxas-blackwell"):
            if not ptxas.exists():
                continue
            run = subprocess.run([str(ptxas), "-v", "--gpu-name", "sm_90a", str(src), "-o",
                                  str(Path(tmp) / "k.cubin")], capture_output=True, text=True)
            if run.returncode == 0:
                return " ".join(line.split(":", 1)[-1].strip() for line in run.stderr.splitlines()
                                if "registers" in line or "spill" in line)
            err = run.stderr.strip()[:300]
        return f"ptxas failed: {err}"


# ------------------------------------------------------------------------------ GPU sweep
def _k(bn, bk, warps, stages, group_m, flatten, subtile=False):
    return dict(BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages, GROUP_M=group_m,
                FLATTEN=flatten, EPILOGUE_SUBTILE=subtile)


def candidates() -> list[dict]:
    """Persistent configs to time (BLOCK_M 128, one program per SM). Offline sm_90 compiles
    (--compile-sm90) say: FLATTEN=True costs ~32 KB more shared memory (the epilogue's layout
    conversion buffer can no longer reuse the pipeline's) and, for gate/up (two accumulators),
    ptxas warns that it serialises the wgmmas (C7515: the flattened loop re-zeroes the
    accumulators with a select); down at BLOCK_N 256 spills a little (the reference's more);
    gate/up at BLOCK_N 256 needs 2 stages to fit and spills."""
    out = []
    for fl in (True, False):
        out += [
            dict(gate_up=_k(128, 64, 8, 3, 16, fl), down=_k(256, 64, 8, 3, 16, fl)),  # the reference's tiles
            dict(gate_up=_k(128, 64, 8, 4, 16, fl), down=_k(256, 64, 8, 4, 16, fl)),
            dict(gate_up=_k(128, 64, 8, 3, 8, fl), down=_k(128, 64, 8, 4, 8, fl)),
            dict(gate_up=_k(128, 64, 8, 3, 16, fl, True), down=_k(128, 64, 8, 4, 16, fl)),
            dict(gate_up=_k(128, 64, 8, 4, 16, fl, True), down=_k(256, 64, 8, 3, 16, fl, True)),
        ]
    out += [  # each kernel flattened or not on its own
        dict(gate_up=_k(128, 64, 8, 4, 16, False), down=_k(128, 64, 8, 4, 16, True)),
        dict(gate_up=_k(128, 64, 8, 3, 16, False), down=_k(256, 64, 8, 3, 16, True)),
        dict(gate_up=_k(256, 64, 8, 2, 16, True), down=_k(256, 64, 8, 3, 8, True)),
    ]
    return out


def _label(c: dict) -> str:
    def one(o):
        return (f"N{o['BLOCK_N']}/K{o['BLOCK_K']}/w{o['num_warps']}/s{o['num_stages']}/g{o['GROUP_M']}"
                f"{'/F' if o['FLATTEN'] else '/nF'}{'/sub' if o['EPILOGUE_SUBTILE'] else ''}")
    f = _full_cfg(c)
    return f"gu {one(f['gate_up'])} dn {one(f['down'])} x{f['programs_per_sm']}"


def sweep(tokens: list[int], json_path: str | None) -> None:
    from harness.perf import cuda_median_ms, measure_device_peaks
    peaks = measure_device_peaks()
    dense = peaks.matmul_flops_per_s
    d, d_ff, E, k = 4096, 14336, 8, 2
    g = torch.Generator(device="cuda").manual_seed(0)
    mk = lambda *s: (torch.randn(*s, device="cuda", generator=g) * 0.02).to(torch.bfloat16)  # noqa: E731
    wr, wg, wu, wd = mk(E, d), mk(E, d_ff, d), mk(E, d_ff, d), mk(E, d, d_ff)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"GPU {peaks.name}: {sms} SMs, dense bf16 matmul {dense / 1e12:.0f} TFLOP/s", flush=True)
    results = []

    def report(T, name, cfg, fn, want=None):
        flops = 2 * T * k * 3 * d * d_ff
        row = {"T": T, "name": name, "cfg": cfg}
        try:
            err = None
            if want is not None:
                out = fn()
                err = ((out.float() - want.float()).norm() / want.float().norm()).item()
                row["rel_err"] = err
            ms = cuda_median_ms(fn, warmup=3, rep=10)
        except Exception as exc:  # noqa: BLE001 - out of shared memory etc.
            msg = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:160]
            row["error"] = msg
            print(f"T={T} {name}: {msg}", flush=True)
            results.append(row)
            return None
        tf = flops / ms / 1e9
        row.update(ms=ms, tflops=tf, frac_dense=tf * 1e12 / dense)
        bad = err is not None and not err < 2e-2
        if bad:
            row["mismatch"] = True
        print(f"T={T} {name}: {ms:.3f} ms {tf:.0f} TFLOP/s {tf * 1e12 / dense:.3f}x dense"
              + (f" err {err:.1e}" if err is not None else "") + (" MISMATCH" if bad else ""), flush=True)
        results.append(row)
        return ms

    for T in tokens:
        x = mk(T, d)
        want = ref.moe_forward_triton(x, wr, wg, wu, wd, k)
        report(T, "reference moe_forward_triton", None, lambda: ref.moe_forward_triton(x, wr, wg, wu, wd, k))
        for cand in candidates():
            report(T, _label(cand), cand,
                   lambda cand=cand: moe_forward_persistent(x, wr, wg, wu, wd, k, cand), want)
        del x, want
    if json_path:
        Path(json_path).write_text(json.dumps({"gpu": peaks.name, "sms": sms, "dense_flops": dense,
                                               "results": results}, indent=1))
        print(f"wrote {json_path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tokens", nargs="*", type=int, help="token counts T (default 4096 8192)")
    parser.add_argument("--check", action="store_true", help="tiny shapes under TRITON_INTERPRET=1")
    parser.add_argument("--compile-sm90", action="store_true", help="compile both kernels for sm_90, no GPU")
    parser.add_argument("--json", metavar="PATH", help="write the sweep's results here")
    args = parser.parse_args()
    if args.check:
        sys.exit(0 if check() else 1)
    if args.compile_sm90:
        if _interpreting():
            raise SystemExit("unset TRITON_INTERPRET for --compile-sm90")
        rows = compile_sm90(REFERENCE_LIKE, reference=True)
        for c in [None] + candidates():
            rows += compile_sm90(c)
        sys.exit(0 if all(r["ok"] for r in rows) else 1)
    sweep(args.tokens or [4096, 8192], args.json)


if __name__ == "__main__":
    main()
