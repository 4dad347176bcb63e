"""Kata 10's serving simulator: your scheduler in the loop of a simulated H200.

    python katas/10_scheduler/simulate.py                    # your stubs/scheduler.py
    python katas/10_scheduler/simulate.py --impl reference   # ours
    python katas/10_scheduler/simulate.py --quick            # fewer rates, a smaller trace
    python katas/10_scheduler/simulate.py --bench            # scheduler cost per step only

A discrete-event simulation: requests of a seeded synthetic trace arrive (Poisson), the
scheduler under test decides each step, a cost model says how long the step takes on the
GPU, and the clock advances. Printed: throughput, TTFT and TPOT percentiles per request
rate and policy; written: a PNG of throughput and p95 TTFT against the rate for static
batching and for your scheduler with and without chunked prefill. README.md, "Task 5",
states every constant below and where it comes from.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
if str(ROOT) not in sys.path:  # run as a script: the harness lives at the top of the repo
    sys.path.insert(0, str(ROOT))
from harness import load_kata_file, load_kata_module  # noqa: E402


def _sibling(name: str) -> Any:
    """katas/10_scheduler/<name>.py, imported once under a name no other kata uses."""
    return load_kata_file(HERE / f"{name}.py", f"kata10_{name}")


Shadow = _sibling("shadow").Shadow

# -- The model: LLaMA-3-8B in bf16, sized with kata 01's formulas ----------------------
VOCAB, HIDDEN, INTER, LAYERS, HEADS, KV_HEADS, HEAD_DIM = 128256, 4096, 14336, 32, 32, 8, 128
PARAMS = (2 * VOCAB * HIDDEN  # embedding and lm_head (untied)
          + LAYERS * (2 * HIDDEN * HEADS * HEAD_DIM + 2 * HIDDEN * KV_HEADS * HEAD_DIM  # q,o,k,v
                      + 3 * HIDDEN * INTER + 2 * HIDDEN)  # SwiGLU MLP, two RMSNorms
          + HIDDEN)  # final norm: param_count = 8,030,261,248
WEIGHT_BYTES = 2 * PARAMS  # bf16: 16.06 GB
KV_BYTES_PER_TOKEN = 2 * LAYERS * KV_HEADS * HEAD_DIM * 2  # K and V, bf16: 131,072 B = 128 KiB

# -- The GPU: one H200 (measured copy bandwidth and bf16 matmul rate) --------------------
COPY_BYTES_PER_S = 4.25e12
MATMUL_FLOPS = 790e12
HBM_BYTES = 141e9
GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default share of HBM for weights + KV cache
STEP_OVERHEAD_S = 1.0e-3  # per step: launch, sampling, the scheduler, host <-> device
BLOCK_SIZE = 16
NUM_BLOCKS = int((HBM_BYTES * GPU_MEMORY_UTILIZATION - WEIGHT_BYTES)
                 // (KV_BYTES_PER_TOKEN * BLOCK_SIZE))  # 52,852 blocks: 845,632 tokens


def step_seconds(chunks: list[tuple[int, int]]) -> float:
    """Time of one forward step running `chunks`: (context already cached, new tokens) per
    request. Fixed overhead + the larger of compute and memory time (a roofline):
      FLOPs = 2 * PARAMS per token (every matmul) + attention, 4 * LAYERS * HEADS * HEAD_DIM
              per (query, key) pair, keys = the cached context and the causal part of the chunk
      bytes = the weights once + the K/V of every request's context and new tokens
    """
    tokens = pairs = kv_tokens = 0
    for ctx, n in chunks:
        tokens += n
        pairs += n * ctx + n * (n + 1) // 2
        kv_tokens += ctx + n
    return _seconds(tokens, pairs, kv_tokens)


def _seconds(tokens: int, pairs: int, kv_tokens: int) -> float:
    flops = 2 * PARAMS * tokens + 4 * LAYERS * HEADS * HEAD_DIM * pairs
    moved = WEIGHT_BYTES + KV_BYTES_PER_TOKEN * kv_tokens
    return STEP_OVERHEAD_S + max(flops / MATMUL_FLOPS, moved / COPY_BYTES_PER_S)


# -- The trace -----------------------------------------------------------------------------
PROMPT_MEAN, OUTPUT_MEAN, SIGMA = 161.3, 338.0, 1.0  # ShareGPT (vLLM paper): 161 in, 338 out
TRACE_SEED, TRACE_REQUESTS = 0, 500


@dataclass(frozen=True)
class Trace:
    arrivals: np.ndarray  # seconds, sorted
    prompt_lens: np.ndarray
    output_lens: np.ndarray


def make_trace(rate: float, num_requests: int = TRACE_REQUESTS, seed: int = TRACE_SEED,
               prompt_scale: int = 1) -> Trace:
    """Poisson arrivals at `rate` requests/s (inf: all at t = 0); lengths lognormal with
    ShareGPT's means and sigma 1, clipped to vLLM's benchmark filter (4 <= prompt <= 1024,
    4 <= output, prompt + output <= 2048). The lengths depend on the seed only, not on the
    rate. prompt_scale multiplies every prompt afterwards (8: RAG-like prompts up to 8192)."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0, num_requests)  # unit-rate gaps, scaled below
    mu_p, mu_o = math.log(PROMPT_MEAN) - SIGMA ** 2 / 2, math.log(OUTPUT_MEAN) - SIGMA ** 2 / 2
    prompts = np.clip(np.rint(rng.lognormal(mu_p, SIGMA, num_requests)), 4, 1024).astype(int)
    outputs = np.clip(np.rint(rng.lognormal(mu_o, SIGMA, num_requests)), 4, 2048 - prompts).astype(int)
    arrivals = np.zeros(num_requests) if math.isinf(rate) else np.cumsum(gaps) / rate
    return Trace(arrivals, prompts * prompt_scale, outputs)


# -- Metrics ------------------------------------------------------------------------------
@dataclass
class Result:
    policy: str
    rate: float
    throughput: float  # output tokens / s, first arrival to last token
    ttft: np.ndarray  # s, per request
    tpot: np.ndarray  # s, per request with more than one output token
    steps: int
    preemptions: int = 0

    def pct(self, what: str, q: float) -> float:
        return float(np.percentile(getattr(self, what), q))

    def line(self) -> str:
        rate = "  inf" if math.isinf(self.rate) else f"{self.rate:5.1f}"
        ms = lambda what, q: f"{1e3 * self.pct(what, q):8.0f}"  # noqa: E731
        return (f"{self.policy:<26}{rate}{self.throughput:9.0f}"
                + "".join(ms("ttft", q) for q in (50, 95, 99))
                + "".join(ms("tpot", q) for q in (50, 95, 99)) + f"{self.steps:8d}{self.preemptions:6d}")


HEADER = (f"{'policy':<26}{'rate':>5}{'tok/s':>9}{'TTFT p50':>9}{'p95':>8}{'p99':>8}"
          f"{'TPOT p50':>9}{'p95':>8}{'p99':>8}{'steps':>8}{'preem':>6}   (ms)")


def _result(policy: str, rate: float, trace: Trace, first: np.ndarray, last: np.ndarray,
            steps: int, preemptions: int = 0) -> Result:
    out = trace.output_lens
    multi = out > 1
    span = float(last.max() - trace.arrivals.min())
    return Result(policy, rate, float(out.sum()) / span, first - trace.arrivals,
                  (last[multi] - first[multi]) / (out[multi] - 1), steps, preemptions)


# -- Continuous batching: the scheduler under test in the loop ----------------------------
@dataclass(frozen=True)
class Config:
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 512
    num_blocks: int = NUM_BLOCKS
    block_size: int = BLOCK_SIZE


CHUNKED = Config(max_num_batched_tokens=512)  # Sarathi-Serve-sized chunks
UNCHUNKED = Config(max_num_batched_tokens=8192)  # 8 x the longest prompt: prompts are rarely split


def run_continuous(scheduler_cls: Callable[..., Any], trace: Trace, config: Config,
                   *, policy: str = "continuous", rate: float = float("nan"),
                   max_idle_steps: int = 1000) -> Result:
    """Drive `scheduler_cls` through the trace; every step is checked by a Shadow."""
    cfg = dict(max_num_seqs=config.max_num_seqs, max_num_batched_tokens=config.max_num_batched_tokens,
               num_blocks=config.num_blocks, block_size=config.block_size)
    sched = scheduler_cls(**cfg)
    shadow = Shadow(**cfg, where=f"simulator, {policy} at rate {rate}")
    n = len(trace.arrivals)
    first, last = np.full(n, np.nan), np.full(n, np.nan)
    clock, nxt, idle = 0.0, 0, 0
    while nxt < n or shadow.unfinished:
        while nxt < n and trace.arrivals[nxt] <= clock:  # everything that has arrived by now
            sched.add_request(nxt, int(trace.prompt_lens[nxt]), int(trace.output_lens[nxt]))
            shadow.add(nxt, int(trace.prompt_lens[nxt]), int(trace.output_lens[nxt]))
            nxt += 1
        if not shadow.unfinished:
            clock = float(trace.arrivals[nxt])  # idle GPU: jump to the next arrival
            continue
        out = sched.schedule()
        num_tokens = shadow.check_schedule(out)
        if num_tokens:
            idle = 0
            clock += step_seconds([(shadow.reqs[r].processed, k) for r, k in num_tokens.items()])
        else:
            idle += 1
            if idle > max_idle_steps:
                raise RuntimeError(f"{policy}: {idle} steps in a row scheduled nothing while "
                                   f"{shadow.unfinished} requests are unfinished")
            clock += STEP_OVERHEAD_S
        for rid in shadow.check_update(sched.update(out)):
            if np.isnan(first[rid]):
                first[rid] = clock
            last[rid] = clock
    return _result(policy, rate, trace, first, last, shadow.step, shadow.total_preemptions)


# -- Static batching: the baseline ------------------------------------------------------------
def run_static(trace: Trace, config: Config = CHUNKED, *, rate: float = float("nan")) -> Result:
    """Static batching (a `generate()` call per batch): when the GPU is free, the waiting
    requests (up to max_num_seqs, and as many as fit in the KV cache padded to the batch's
    longest prompt + longest output) form a batch; its prompts run in one padded step, then
    it decodes until its longest output is done. Finished rows keep their slot (padding);
    no request joins a running batch."""
    n = len(trace.arrivals)
    first, last = np.full(n, np.nan), np.full(n, np.nan)
    capacity = config.num_blocks * config.block_size
    clock, nxt, steps = 0.0, 0, 0
    while nxt < n:
        clock = max(clock, float(trace.arrivals[nxt]))
        end = nxt
        while (end < n and end - nxt < config.max_num_seqs and trace.arrivals[end] <= clock
               and (end - nxt + 1) * (trace.prompt_lens[nxt:end + 1].max()
                                      + trace.output_lens[nxt:end + 1].max()) <= capacity):
            end += 1
        B, P, O = end - nxt, int(trace.prompt_lens[nxt:end].max()), int(trace.output_lens[nxt:end].max())
        clock += _seconds(B * P, B * P * (P + 1) // 2, B * P)  # padded prefill: first tokens
        steps += 1
        first[nxt:end] = clock
        done = trace.output_lens[nxt:end]
        for k in range(1, O):  # decode step k emits token k + 1 of every row that wants one
            clock += _seconds(B, B * (P + k), B * (P + k))  # B rows, context P + k - 1, 1 new
            steps += 1
            last[nxt:end][done == k + 1] = clock
        last[nxt:end][done == 1] = first[nxt:end][done == 1]
        nxt = end
    return _result("static", rate, trace, first, last, steps)


# -- The sweep and the plot ----------------------------------------------------------------
RATES = [2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 60.0, 90.0, float("inf")]
QUICK_RATES = [5.0, 20.0, float("inf")]


def sweep(scheduler_cls: Callable[..., Any], rates: list[float], num_requests: int,
          echo: Callable[[str], None] = print, prompt_scale: int = 1) -> dict[str, list[Result]]:
    runs: dict[str, list[Result]] = {"static": [], "continuous, chunked (512)": [],
                                     "continuous, unchunked": []}
    echo(HEADER)
    for rate in rates:
        trace = make_trace(rate, num_requests, prompt_scale=prompt_scale)
        unchunked = Config(max_num_batched_tokens=max(UNCHUNKED.max_num_batched_tokens,
                                                      int(trace.prompt_lens.max())))
        for policy in runs:
            if policy == "static":
                result = run_static(trace, CHUNKED, rate=rate)
            else:
                config = CHUNKED if "chunked (" in policy else unchunked
                result = run_continuous(scheduler_cls, trace, config, policy=policy, rate=rate)
            runs[policy].append(result)
            echo(result.line())
    return runs


def plot(runs: dict[str, list[Result]], path: Path, title: str) -> None:
    """Throughput, p95 TTFT and p99 TPOT against the rate; 'all at t = 0' plotted last."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot (python3 kata.py installs it)")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [r.rate for r in next(iter(runs.values()))]
    finite = [r for r in rates if not math.isinf(r)]
    top = max(finite) * 1.25 if finite else 1.0  # where "all at t = 0" goes on the x axis
    xs = [top if math.isinf(r) else r for r in rates]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=72)
    panels = [("output tokens / s", lambda r: r.throughput, "throughput", "linear"),
              ("p95 TTFT (s)", lambda r: r.pct("ttft", 95), "p95 time to first token", "log"),
              ("p99 TPOT (ms)", lambda r: 1e3 * r.pct("tpot", 99), "p99 time per output token", "log")]
    for ax, (ylabel, value, title_, yscale) in zip(axes, panels):
        for policy, results in runs.items():
            ax.plot(xs, [value(r) for r in results], marker="o", markersize=4, label=policy)
        ticks = [x for x in ax.get_xticks() if 0 <= x < max(finite, default=0) * 1.1]
        ax.set_xticks(ticks + ([top] if top not in ticks and any(map(math.isinf, rates)) else []))
        ax.set_xticklabels([f"{t:g}" for t in ticks] + (["all\nat 0"] if any(map(math.isinf, rates)) else []))
        ax.set(xlabel="request rate (req/s)", ylabel=ylabel, title=title_, yscale=yscale)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# -- Scheduler cost per step -----------------------------------------------------------------
def step_cost(scheduler_cls: Callable[..., Any], running: int, *, steps: int = 60) -> float:
    """Seconds of one schedule() + update() with `running` requests all decoding: the fastest
    of `steps` steps, each timed alone (a short timing that another process did not
    interrupt; the minimum is what the code costs). Raises if not every request ran."""
    max_new = steps + 8  # nobody finishes while timed; room reserved for all of it
    sched = scheduler_cls(max_num_seqs=running, max_num_batched_tokens=16 * running,
                          num_blocks=running * -(-(16 + max_new - 1) // 16), block_size=16)
    for i in range(running):
        sched.add_request(i, 16, max_new)
    for _ in range(2):  # prefill every prompt, then one warm-up decode step
        sched.update(sched.schedule())
    best = float("inf")
    for _ in range(steps):
        start = time.perf_counter()
        out = sched.schedule()
        sched.update(out)
        best = min(best, time.perf_counter() - start)
        if len(out.num_tokens) != running:
            raise AssertionError(f"{running} requests decoding, but a step ran "
                                 f"{len(out.num_tokens)} of them (max_num_seqs={running}, "
                                 f"budget {16 * running} tokens, blocks to spare)")
    return best


def load_scheduler(impl: str | None) -> Any:
    """The Scheduler class of the chosen implementation (stubs, reference or a folder)."""
    if impl:
        os.environ["KATA_IMPL"] = impl
    return load_kata_module("scheduler").Scheduler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="simulate.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", default=None, help="stubs (default), reference, or a folder")
    parser.add_argument("--out", default=None, help="PNG path (default, in this folder: simulate.png for "
                        "--impl reference without --quick, simulate_yours.png for stubs, else simulate_<folder>.png)")
    parser.add_argument("--quick", action="store_true", help="3 rates, 300 requests: a minute less")
    parser.add_argument("--requests", type=int, default=None, help="requests per trace")
    parser.add_argument("--bench", action="store_true", help="only the scheduler's cost per step")
    parser.add_argument("--prompt-scale", type=int, default=1,
                        help="multiply every prompt (8: RAG-like, up to 8192 tokens)")
    args = parser.parse_args(argv)
    impl = args.impl or os.environ.get("KATA_IMPL") or "stubs"
    try:
        scheduler_cls = load_scheduler(impl)
        cost = step_cost(scheduler_cls, 256)
        print(f"scheduler cost: {cost * 1e3:.3f} ms per schedule() + update() with 256 requests "
              f"running (goal: under 1 ms; the GPU step it plans takes ~{step_seconds([(400, 1)] * 256) * 1e3:.0f} ms)")
        if args.bench:
            return 0
        num = args.requests or (300 if args.quick else TRACE_REQUESTS)
        rates = QUICK_RATES if args.quick else RATES
        print(f"trace: {num} requests, seed {TRACE_SEED}, prompts x{args.prompt_scale}; LLaMA-3-8B "
              f"bf16 on one H200 ({NUM_BLOCKS} KV blocks of {BLOCK_SIZE} tokens)")
        runs = sweep(scheduler_cls, rates, num, prompt_scale=args.prompt_scale)
    except BaseException as exc:  # the stub's TODO (KataTodo is a BaseException)
        if isinstance(exc, NotImplementedError) or type(exc).__name__ == "KataTodo":
            print(f"TODO: the scheduler is not implemented yet ({exc}). Read katas/10_scheduler/README.md.")
            return 1
        raise
    if args.out:
        path = Path(args.out)
    elif impl == "reference" and not args.quick:  # the committed plot: the full sweep only
        path = HERE / "simulate.png"
    elif impl == "reference":
        path = HERE / "simulate_reference_quick.png"
    else:  # ignored by git (katas/10_scheduler/.gitignore)
        path = HERE / f"simulate_{'yours' if impl == 'stubs' else Path(impl).name}.png"
    scale = f", prompts x{args.prompt_scale}" if args.prompt_scale != 1 else ""
    plot(runs, path, f"LLaMA-3-8B on one H200, {num} requests of a ShareGPT-like trace{scale}, "
         f"scheduler: {impl}")
    print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
