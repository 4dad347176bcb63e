"""The capstone (kata 16) composes the other katas' modules: this file hands them out.

`kata("sampling")` returns the sampling module that kata 16 should use: yours, from the
folder under test (``--impl``, default stubs/), or ours, from reference/, when the kata's
number is listed in ``--use-ref`` (pytest option and `python3 kata.py serve` flag; the
environment variable KATA_USE_REF carries it). So a learner reaches the capstone before
every part is done: ``pytest katas/16 --use-ref 04,07`` runs our attention and allocator
beside the learner's other modules. A module missing from the folder under test comes from
reference/ too (a scratch folder holding only mini_engine.py, as the self-test's mutants do).

A composed module's unimplemented function does not raise NotImplementedError (that would
read as a TODO of kata 16): it raises `KataNotDone`, whose message names the kata, the file
and the `--use-ref` flag that skips it.

Also here, because kata 16 is about serving and not about parsing checkpoints:
`ModelConfig` and `load_checkpoint(folder)`, a LLaMA-family Hugging Face folder's resolved
configuration and tensors.
"""
from __future__ import annotations

import functools
import importlib.util
import inspect
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from harness.impl import ENV_VAR as IMPL_ENV_VAR
from harness.impl import resolve_impl_dir
from harness.katas import KATAS, ROOT

USE_REF_ENV = "KATA_USE_REF"
REFERENCE = ROOT / "reference"
# What kata 16 composes: kata number -> module name.
COMPOSED = {n: KATAS[n][1] for n in ("02", "04", "05", "06", "07", "08", "09", "10")}
_BY_NAME = {module: number for number, (_, module) in KATAS.items()}


class KataNotDone(RuntimeError):
    """A composed kata's function is still a stub."""


def parse_use_ref(value: str | None) -> set[str]:
    """'4,07' -> {'04', '07'}; 'all' -> every kata; '' or None -> none. ValueError otherwise."""
    if not value or not value.strip():
        return set()
    if value.strip().lower() == "all":
        return set(KATAS)
    numbers = set()
    for part in value.replace(" ", ",").split(","):
        if not part:
            continue
        number = part.strip().zfill(2)
        if not part.strip().isdigit() or number not in KATAS:
            raise ValueError(f"--use-ref {value!r}: {part!r} is not a kata number (give e.g. "
                             f"--use-ref 04,07, or --use-ref all)")
        numbers.add(number)
    return numbers


def use_ref() -> set[str]:
    """The katas whose reference kata 16 uses in this process (from KATA_USE_REF)."""
    return parse_use_ref(os.environ.get(USE_REF_ENV))


def set_use_ref(value: str | None) -> set[str]:
    """Validate `value` and make it this process's --use-ref (returns the numbers)."""
    numbers = parse_use_ref(value)
    os.environ[USE_REF_ENV] = ",".join(sorted(numbers))
    return numbers


def source_of(name: str) -> Path:
    """The file module `name` is loaded from: reference/ when its kata is in --use-ref or
    the folder under test lacks it, else the folder under test."""
    number = _BY_NAME.get(name)
    if number is None:
        raise KeyError(f"{name!r} is no kata's module (modules: {sorted(_BY_NAME)})")
    impl = resolve_impl_dir(os.environ.get(IMPL_ENV_VAR))
    if number in use_ref():
        return REFERENCE / f"{name}.py"
    path = impl / f"{name}.py"
    return path if path.is_file() else REFERENCE / f"{name}.py"


def describe() -> list[str]:
    """One line per composed kata: where its module comes from."""
    lines = []
    for number, name in COMPOSED.items():
        path = source_of(name)
        try:
            shown = path.relative_to(ROOT)
        except ValueError:
            shown = path
        ref = " (--use-ref)" if number in use_ref() else ""
        lines.append(f"kata {number} {name}: {shown}{ref}")
    return lines


def _not_done(number: str, path: Path, fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NotImplementedError as exc:
            try:
                shown = path.relative_to(ROOT)
            except ValueError:
                shown = path
            if number == "16":
                raise KataNotDone(f"{shown}: {fn.__qualname__}() is not implemented yet ({exc}). "
                                  "Finish kata 16's tasks, or run ours with --use-ref 16.") from None
            raise KataNotDone(
                f"kata 16 uses your kata {number} ({shown}), and {fn.__qualname__}() there is "
                f"not implemented yet ({exc}). Finish kata {number}, or run with "
                f"--use-ref {number} to use ours meanwhile.") from None
    return wrapper


def _wrap(module: ModuleType, number: str, path: Path) -> None:
    for attr, obj in list(vars(module).items()):
        if inspect.isfunction(obj) and obj.__module__ == module.__name__:
            setattr(module, attr, _not_done(number, path, obj))
        elif inspect.isclass(obj) and obj.__module__ == module.__name__:
            for name, member in list(vars(obj).items()):
                if inspect.isfunction(member):
                    setattr(obj, name, _not_done(number, path, member))
                elif isinstance(member, property) and member.fget is not None:
                    setattr(obj, name, property(_not_done(number, path, member.fget),
                                                member.fset, member.fdel, member.__doc__))


@functools.lru_cache(maxsize=None)
def _load(path: Path, number: str) -> ModuleType:
    unique = f"_kata16_{path.stem}_{abs(hash(str(path))):x}"
    spec = importlib.util.spec_from_file_location(unique, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"could not import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[unique] = module  # dataclasses look their module up while being built
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[unique]
        raise ImportError(f"kata 16 could not import kata {number}'s module {path}: "
                          f"{type(exc).__name__}: {exc}. Fix it, or run with --use-ref {number}."
                          ) from exc
    if path.parent != REFERENCE:
        _wrap(module, number, path)
    return module


def kata(name: str) -> ModuleType:
    """The module of another kata that kata 16 uses (see the file's docstring)."""
    return _kata(name, os.environ.get(IMPL_ENV_VAR), os.environ.get(USE_REF_ENV))


@functools.lru_cache(maxsize=None)
def _kata(name: str, impl: str | None, refs: str | None) -> ModuleType:
    path = source_of(name).resolve()
    if not path.is_file():
        number = _BY_NAME[name]
        raise ImportError(f"kata 16 needs kata {number}'s module {name}.py, and neither the "
                          f"folder under test nor reference/ has it ({path})")
    return _load(path, _BY_NAME[name])


# -- The checkpoint: kata 06 parsed it; here it is given ---------------------------------
@dataclass(frozen=True)
class ModelConfig:
    """A LLaMA-family model's shape, resolved from its config.json."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    eos_token_ids: tuple[int, ...]


def read_config(folder: str | Path) -> ModelConfig:
    raw = json.loads((Path(folder) / "config.json").read_text())
    rope = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in (None, "default"):
        raise ValueError(f"{folder}: RoPE scaling {rope_type!r} is not supported by kata 16 "
                         "(kata 06's rope takes a plain theta)")
    theta = float(rope.get("rope_theta", raw.get("rope_theta", 10000.0)))
    eos = raw.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
    return ModelConfig(
        vocab_size=raw["vocab_size"], hidden_size=raw["hidden_size"],
        intermediate_size=raw["intermediate_size"], num_layers=raw["num_hidden_layers"],
        num_heads=raw["num_attention_heads"],
        num_kv_heads=raw.get("num_key_value_heads") or raw["num_attention_heads"],
        head_dim=raw.get("head_dim") or raw["hidden_size"] // raw["num_attention_heads"],
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)), rope_theta=theta,
        max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)), eos_token_ids=eos_ids)


def load_checkpoint(folder: str | Path, *, dtype: Any = None,
                    device: Any = None) -> tuple[ModelConfig, dict[str, Any]]:
    """(config, tensors) of a Hugging Face LLaMA folder, tensors cast to `dtype` on `device`.

    The tensors keep transformers' names; `lm_head.weight` is always present (the embedding
    when the head is tied)."""
    import torch
    from safetensors.torch import load_file

    config = read_config(folder)
    dtype = dtype or torch.float32
    tensors = load_file(str(Path(folder) / "model.safetensors"), device="cpu")
    out = {k: v.to(device=device, dtype=dtype) for k, v in tensors.items()}
    if "lm_head.weight" not in out:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return config, out


def load_tokenizer(folder: str | Path) -> Any:
    """The folder's tokenizer (transformers' AutoTokenizer, offline), with its chat template."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
