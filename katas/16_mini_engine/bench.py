"""Kata 16's benchmark: the engine against transformers' generate on the same prompts.

    python katas/16_mini_engine/bench.py                      # GPU: SmolLM2-135M, bf16, 1 and 32 streams
    python katas/16_mini_engine/bench.py --cuda-graphs        # ... decode steps in CUDA graphs
    python katas/16_mini_engine/bench.py --impl reference     # our engine (default: yours, stubs/)
    python katas/16_mini_engine/bench.py --device cpu --quick # CPU: float32, shorter
    python katas/16_mini_engine/bench.py --random-weights     # SmolLM2's exact config, seeded random weights

Every stream is a prompt of `--prompt-tokens` random token ids (seeded) and exactly
`--new-tokens` greedy tokens (ignore_eos; transformers: min_new_tokens = max_new_tokens), all
streams submitted at once. Printed as a markdown table: tokens/s, TTFT and TPOT p50/p95, the
engine's median decode step, and one bare forward pass of the same decode batch
(transformers' model, a KV cache of the same length).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# SmolLM2-135M-Instruct's config.json (for --random-weights when its weights are absent)
SMOLLM2_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152,
    "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
    "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "hidden_act": "silu",
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
    "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
    "attention_bias": False, "mlp_bias": False,
}


class NullTokenizer:
    """For random weights without SmolLM2's tokenizer: text is not measured."""

    eos_token_id = None

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return ""


def model_folder(random_weights: bool, dtype: Any) -> tuple[Path, Any]:
    """(folder, tokenizer or None): SmolLM2 if available (and wanted), else seeded random
    weights of its exact shapes written to a temporary folder."""
    if not random_weights:
        try:
            from harness.smollm2 import ensure_smollm2

            folder = ensure_smollm2()
            return folder, None
        except Exception as exc:  # noqa: BLE001 - no weights here: random ones
            print(f"bench: SmolLM2's weights unavailable ({exc}); using seeded random weights")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(tempfile.mkdtemp(prefix="kata16_bench_"))
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**SMOLLM2_CONFIG)).to(dtype).save_pretrained(str(folder))
    tokenizer = None
    try:
        from harness.smollm2 import load_tokenizer

        tokenizer = load_tokenizer()
    except Exception:  # noqa: BLE001
        tokenizer = NullTokenizer()
    return folder, tokenizer


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))] if s else float("nan")


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_engine(me: Any, folder: Path, tokenizer: Any, prompts: list[list[int]], new_tokens: int,
                 args: Any, dtype: Any) -> dict[str, float]:
    streams = len(prompts)
    tokens_per_seq = len(prompts[0]) + new_tokens
    blocks = streams * (-(-tokens_per_seq // 16)) + 16
    engine = me.Engine(folder, me.EngineConfig(
        block_size=16, num_blocks=blocks, num_cache_blocks=0, max_num_seqs=max(streams, 1),
        max_num_batched_tokens=max(2048, len(prompts[0]) * streams), dtype=dtype, device=args.device,
        cuda_graphs=args.cuda_graphs), tokenizer=tokenizer)

    def run(prompt_list: list[list[int]], n: int, tag: str) -> dict[str, Any]:
        params = me.SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
        sync(args.device)
        t0 = time.perf_counter()
        for i, p in enumerate(prompt_list):
            engine.add_request(f"{tag}{i}", p, params)
        first: dict[str, float] = {}
        last: dict[str, float] = {}
        count: dict[str, int] = {}
        steps: list[tuple[float, bool]] = []
        while engine.has_unfinished():
            s0 = time.perf_counter()
            outs = engine.step()
            now = time.perf_counter()
            decode_only = all(k in first for k in (f"{tag}{i}" for i in range(len(prompt_list))))
            steps.append((now - s0, decode_only))
            for o in outs:
                first.setdefault(o.request_id, now)
                last[o.request_id] = now
                count[o.request_id] = count.get(o.request_id, 0) + len(o.new_token_ids)
        wall = time.perf_counter() - t0
        assert all(c == n for c in count.values()) and len(count) == len(prompt_list), \
            f"the engine gave {sorted(count.values())} tokens, expected {n} for each of {len(prompt_list)}"
        return {"wall": wall, "ttft": [first[k] - t0 for k in first],
                "tpot": [(last[k] - first[k]) / (n - 1) for k in first if n > 1],
                "decode_steps": [d for d, only in steps if only]}

    # warm-up on the same prompts (the prefill's kernels compile for these lengths), 2 tokens each
    run(prompts, 2, "warm")
    r = run(prompts, new_tokens, "run")
    return {"tok_s": streams * new_tokens / r["wall"], "ttft50": pct(r["ttft"], .5), "ttft95": pct(r["ttft"], .95),
            "tpot50": pct(r["tpot"], .5), "tpot95": pct(r["tpot"], .95),
            "step": statistics.median(r["decode_steps"]) if r["decode_steps"] else float("nan")}


def bench_transformers(folder: Path, prompts: list[list[int]], new_tokens: int, device: str,
                       dtype: Any) -> dict[str, float]:
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(folder), dtype=dtype).to(device).eval()
    ids = torch.tensor(prompts, device=device)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        model.generate(ids[:, :8], attention_mask=mask[:, :8], max_new_tokens=4, min_new_tokens=4,
                       do_sample=False, pad_token_id=0)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        sync(device)
        wall = time.perf_counter() - t0
        assert out.shape[1] == ids.shape[1] + new_tokens
        # one bare decode forward of this batch, with a KV cache of prompt + new_tokens / 2
        ctx = ids.shape[1] + new_tokens // 2
        full = torch.cat([ids, ids[:, : ctx - ids.shape[1]]], dim=1)
        pre = model(full[:, :-1], use_cache=True)
        times = []
        for _ in range(10):
            cache = pre.cache if hasattr(pre, "cache") else pre.past_key_values
            sync(device)
            s0 = time.perf_counter()
            model(full[:, -1:], cache=cache, use_cache=True)
            sync(device)
            times.append(time.perf_counter() - s0)
            if hasattr(cache, "crop"):
                cache.crop(-1)  # drop the token just added (transformers 5: a negative count)
    return {"tok_s": len(prompts) * new_tokens / wall, "step": wall / new_tokens,
            "forward": statistics.median(times)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cuda (default when present) or cpu")
    p.add_argument("--impl", default=None, help="whose engine: stubs (default), reference, or a folder")
    p.add_argument("--use-ref", default=None, metavar="NN[,MM]", help="our reference for these katas")
    p.add_argument("--streams", default="1,32", help="concurrent streams to measure (default 1,32)")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--quick", action="store_true", help="16-token prompts, 32 new tokens, streams 1,8")
    p.add_argument("--cuda-graphs", action="store_true", help="EngineConfig(cuda_graphs=True)")
    p.add_argument("--random-weights", action="store_true", help="seeded random weights, SmolLM2's shapes")
    p.add_argument("--skip-transformers", action="store_true", help="only the engine")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    p.add_argument("--threads", type=int, default=None, help="CPU: torch threads (default: torch's choice)")
    args = p.parse_args(argv)

    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.quick:
        args.prompt_tokens, args.new_tokens, args.streams = 16, 32, "1,8"
    if args.device == "cpu":
        torch.set_num_threads(args.threads or torch.get_num_threads())
    from harness import compose
    from harness.impl import ENV_VAR, resolve_impl_dir

    os.environ[ENV_VAR] = str(resolve_impl_dir(args.impl))
    compose.set_use_ref(args.use_ref)
    me = compose.kata("mini_engine")
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    folder, tokenizer = model_folder(args.random_weights, dtype)
    g = torch.Generator().manual_seed(0)
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    streams = [int(s) for s in args.streams.split(",")]
    all_prompts = torch.randint(3, vocab, (max(streams), args.prompt_tokens), generator=g).tolist()

    rows = []
    results: dict[str, Any] = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
                               "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens}
    for n in streams:
        prompts = all_prompts[:n]
        hf = None if args.skip_transformers else bench_transformers(folder, prompts, args.new_tokens, args.device, dtype)
        eng = bench_engine(me, folder, tokenizer, prompts, args.new_tokens, args, dtype)
        results[f"streams_{n}"] = {"engine": eng, "transformers": hf}
        ms = 1000.0
        if hf:
            rows.append(f"| transformers generate | {n} | {hf['tok_s']:.0f} | | | {hf['step'] * ms:.1f} | {hf['forward'] * ms:.2f} |")
        ratio = f" ({eng['tok_s'] / hf['tok_s']:.1f}x)" if hf else ""
        rows.append(f"| engine{' + CUDA graphs' if args.cuda_graphs else ''} | {n} | {eng['tok_s']:.0f}{ratio} | "
                    f"{eng['ttft50'] * ms:.0f} / {eng['ttft95'] * ms:.0f} | {eng['tpot50'] * ms:.1f} / "
                    f"{eng['tpot95'] * ms:.1f} | {eng['step'] * ms:.1f} | |")
        print(rows[-1], flush=True)
    print(f"\n{results['device']}, {dtype}, {args.prompt_tokens}-token prompts, {args.new_tokens} new tokens, "
          f"greedy, fixed length; engine: {compose.source_of('mini_engine').relative_to(ROOT) if compose.source_of('mini_engine').is_relative_to(ROOT) else compose.source_of('mini_engine')}\n")
    print("| | streams | tokens/s | TTFT p50 / p95 (ms) | TPOT p50 / p95 (ms) | decode step (ms) | bare forward (ms) |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
