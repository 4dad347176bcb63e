"""Kata 06: a LLaMA-style decoder. Tasks as in README.md (Task 7, SmolLM2, is in test_smollm2.py).

Expected values never come from the module under test:
- rms_norm and rope: float64 formulas written out here;
- the model: transformers' LlamaForCausalLM (the oracle) on seeded random tiny models, saved
  with its own save_pretrained into a temporary folder and loaded from there by both sides;
- the cache and generate: the oracle's full forward pass (argmax of it, for generate).

Tiny models (built once per run, seeded): GQA with a tied head, an untied head with
head_dim != hidden_size / heads and theta 500000, MQA with llama3 RoPE scaling (its
frequencies fall in all three bands), and plain MHA with three layers.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import assert_close, assert_raises, load_kata_module, max_examples, tolerance

m = load_kata_module("transformer")

seeds = st.integers(0, 2**31 - 1)


# ---------------------------------------------------------------- float64 formulas
def expected_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x64, w64 = x.double(), weight.double()
    return w64 * x64 / torch.sqrt((x64 * x64).mean(-1, keepdim=True) + eps)


def expected_rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Pairs (i, i + D/2) rotated by the angle position * theta^(-2i/D), in float64."""
    x64 = x.double()
    D = x.shape[-1]
    i = torch.arange(D // 2, dtype=torch.float64)
    angle = positions.double()[..., None] * theta ** (-2 * i / D)  # (S, D/2) or (B, S, D/2)
    if angle.dim() == 3:
        angle = angle[:, None]  # broadcast over heads
    a, b = x64[..., : D // 2], x64[..., D // 2:]
    return torch.cat([a * angle.cos() - b * angle.sin(), b * angle.cos() + a * angle.sin()], -1)


# ---------------------------------------------------------------- tiny models and the oracle
CONFIGS: dict[str, dict[str, Any]] = {
    "gqa_tied": dict(vocab_size=96, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                     num_attention_heads=6, num_key_value_heads=2, rms_norm_eps=1e-5,
                     rope_parameters=dict(rope_type="default", rope_theta=10000.0),
                     max_position_embeddings=256, tie_word_embeddings=True),
    "untied_head_dim16": dict(vocab_size=101, hidden_size=40, intermediate_size=72,
                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                              head_dim=16, rms_norm_eps=1e-6,
                              rope_parameters=dict(rope_type="default", rope_theta=500000.0),
                              max_position_embeddings=256, tie_word_embeddings=False),
    "mqa_llama3": dict(vocab_size=89, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=1, head_dim=32, rms_norm_eps=1e-5,
                       rope_parameters=dict(rope_type="llama3", rope_theta=10000.0, factor=8.0,
                                            low_freq_factor=1.0, high_freq_factor=4.0,
                                            original_max_position_embeddings=1024),
                       max_position_embeddings=4096, tie_word_embeddings=False),
    "mha_3_layers": dict(vocab_size=64, hidden_size=36, intermediate_size=60, num_hidden_layers=3,
                         num_attention_heads=3, num_key_value_heads=3, rms_norm_eps=1e-6,
                         rope_parameters=dict(rope_type="default", rope_theta=1000.0),
                         max_position_embeddings=256, tie_word_embeddings=True),
}
SEED = {name: 600 + i for i, name in enumerate(CONFIGS)}


def _quiet_transformers() -> Any:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


class TinyModels:
    """Builds each tiny model once: random weights, saved with save_pretrained."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.folders: dict[str, Path] = {}
        self.oracles: dict[str, Any] = {}

    def folder(self, name: str) -> Path:
        if name not in self.folders:
            transformers = _quiet_transformers()
            gen = torch.Generator().manual_seed(SEED[name])
            try:
                model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIGS[name]))
            except Exception as exc:  # noqa: BLE001 - a shape this transformers refuses
                pytest.skip(f"transformers {transformers.__version__} does not build {name}: {exc}")
            with torch.no_grad():  # O(1) activations: embeddings ~1, weights ~1/sqrt(fan_in)
                for pname, p in model.named_parameters():
                    if p.dim() == 1:  # norm weights near 1, never exactly 1
                        p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
                    elif "embed_tokens" in pname:
                        p.copy_(torch.randn(p.shape, generator=gen))
                    else:
                        p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))
            folder = self.root / name
            model.save_pretrained(folder)
            self.folders[name] = folder
        return self.folders[name]

    def oracle(self, name: str) -> Any:
        """transformers' LlamaForCausalLM loaded from the saved folder (eager attention)."""
        if name not in self.oracles:
            transformers = _quiet_transformers()
            model = transformers.LlamaForCausalLM.from_pretrained(
                self.folder(name), attn_implementation="eager", dtype=torch.float32)
            self.oracles[name] = model.eval()
        return self.oracles[name]

    def logits(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.oracle(name)(ids).logits.float()

    def variant(self, name: str, tag: str, edit: Any) -> Path:
        """A copy of the folder whose config.json dict went through edit(dict)."""
        folder = self.root / f"{name}-{tag}"
        if not folder.exists():
            shutil.copytree(self.folder(name), folder)
            path = folder / "config.json"
            config = json.loads(path.read_text())
            edit(config)
            path.write_text(json.dumps(config, indent=2))
        return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    return TinyModels(tmp_path_factory.mktemp("tiny_llamas"))


def token_ids(name: str, batch: int, length: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, CONFIGS[name]["vocab_size"], (batch, length), generator=gen)


def to_4x_style(config: dict, type_key: str = "rope_type") -> None:
    """rope_parameters -> rope_theta + rope_scaling (null for the default RoPE), as 4.x writes."""
    params = dict(config.pop("rope_parameters"))
    config["rope_theta"] = params.pop("rope_theta")
    kind = params.pop("rope_type")
    config["rope_scaling"] = None if kind == "default" else {type_key: kind, **params}


# Logits of the tiny models reach ~10; a correct float32 implementation differs from the
# oracle by rounding only (a few 1e-6: matmul order, RoPE angles in float32 or float64).
LOGIT_TOL = dict(atol=3e-5, rtol=1e-5)


# =================================================================================== Task 1
class TestTask1RmsNorm:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
    def test_shape_dtype_and_inputs_unmodified(self, dtype: torch.dtype) -> None:
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(2, 3, 8, generator=gen).to(dtype)
        w = (1 + torch.randn(8, generator=gen)).to(dtype)
        x0, w0 = x.clone(), w.clone()
        out = m.rms_norm(x, w, 1e-6)
        assert isinstance(out, torch.Tensor), f"rms_norm must return a tensor, got {type(out).__name__}"
        assert out.shape == x.shape and out.dtype == dtype, (
            f"rms_norm(x {tuple(x.shape)} {dtype}, weight {dtype}): expected shape {tuple(x.shape)} "
            f"and dtype {dtype}, got {tuple(out.shape)} {out.dtype}")
        assert torch.equal(x, x0) and torch.equal(w, w0), "rms_norm modified x or weight in place"

    def test_zero_row_gives_zeros(self) -> None:
        """eps keeps 0 / sqrt(0) away: an all-zero row normalises to zeros, not NaN."""
        x = torch.zeros(1, 4, 16)
        out = m.rms_norm(x, torch.ones(16), 1e-5)
        assert_close(out, torch.zeros(1, 4, 16), what="rms_norm of all-zero rows",
                     inputs=dict(x=x, eps=1e-5), hint="add eps inside the square root: "
                     "rsqrt(mean(x^2) + eps); without it 0 * inf = NaN")

    def test_eps_matters_for_small_rows(self) -> None:
        gen = torch.Generator().manual_seed(2)
        x = 1e-3 * torch.randn(3, 32, generator=gen)  # mean(x^2) ~ 1e-6, eps 1e-5 dominates
        w = 1 + 0.3 * torch.randn(32, generator=gen)
        assert_close(m.rms_norm(x, w, 1e-5), expected_rms_norm(x, w, 1e-5).float(),
                     what="rms_norm of small values", inputs=dict(x=x, eps=1e-5, seed=2),
                     hint="eps goes inside: x / sqrt(mean(x^2) + eps), not x / (rms + eps)")

    @settings(max_examples=max_examples(30))
    @given(seed=seeds, rows=st.integers(1, 5), hidden=st.integers(1, 96),
           eps=st.sampled_from([1e-6, 1e-5, 1e-2]), scale=st.sampled_from([1e-2, 1.0, 100.0]))
    def test_matches_float64_formula(self, seed: int, rows: int, hidden: int, eps: float,
                                     scale: float) -> None:
        gen = torch.Generator().manual_seed(seed)
        x = scale * torch.randn(rows, hidden, generator=gen)
        w = 1 + 0.5 * torch.randn(hidden, generator=gen)
        assert_close(m.rms_norm(x, w, eps), expected_rms_norm(x, w, eps).float(),
                     what="rms_norm(x, weight, eps)", inputs=dict(x=x, weight=w, eps=eps, seed=seed),
                     hint="weight * x / sqrt(mean(x^2 over the last dim) + eps)")

    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
    def test_half_precision_computed_in_float32(self, dtype: torch.dtype) -> None:
        """Values up to ~1000: their squares overflow fp16 (max 65504) unless upcast first."""
        gen = torch.Generator().manual_seed(3)
        x = (300 * torch.randn(4, 64, generator=gen)).to(dtype)
        w = (1 + 0.3 * torch.randn(64, generator=gen)).to(dtype)
        expected = expected_rms_norm(x, w, 1e-6).to(dtype)
        assert_close(m.rms_norm(x, w, 1e-6), expected, what=f"rms_norm in {dtype}",
                     inputs=dict(x=x, weight=w, seed=3),
                     hint="compute mean(x^2) in float32 (x.float()), round to x's dtype, then "
                     "multiply by weight; x*x in fp16 overflows past 256")

    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
    def test_half_precision_rounded_once(self, dtype: torch.dtype) -> None:
        """The contract's result is weight * (the float32 value rounded once to x's dtype),
        the product rounded once: it equals that computed from the float64 formula, bar a
        float32 error landing on a rounding boundary (chance ~1e-4 per element). Squares, mean
        or rsqrt in x's dtype, or weight applied before the rounding, round differently."""
        gen = torch.Generator().manual_seed(4)
        x = torch.randn(8, 64, generator=gen).to(dtype)
        w = (1 + 0.3 * torch.randn(64, generator=gen)).to(dtype)
        out = m.rms_norm(x, w, 1e-6)
        x64 = x.double()
        normed = (x64 / torch.sqrt((x64 * x64).mean(-1, keepdim=True) + 1e-6)).to(dtype)
        expected = (w.double() * normed.double()).to(dtype)
        wrong = int((out != expected).sum())
        assert wrong <= 3, (
            f"rms_norm(x (8, 64) {dtype}, weight, seed 4): {wrong} of 512 elements differ from "
            f"weight * (x / rms(x)).to({dtype}) (at most 3 may, by rounding): compute x^2, its "
            "mean and rsqrt in float32 (x.float()), round to x's dtype, then multiply by weight")


# =================================================================================== Task 2
class TestTask2Rope:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
    def test_shape_dtype_and_inputs_unmodified(self, dtype: torch.dtype) -> None:
        gen = torch.Generator().manual_seed(4)
        x = torch.randn(2, 3, 5, 8, generator=gen).to(dtype)
        pos = torch.arange(5)
        x0 = x.clone()
        out = m.rope(x, pos, 10000.0)
        assert isinstance(out, torch.Tensor), f"rope must return a tensor, got {type(out).__name__}"
        assert out.shape == x.shape and out.dtype == dtype, (
            f"rope(x {tuple(x.shape)} {dtype}): expected the same shape and dtype, "
            f"got {tuple(out.shape)} {out.dtype}")
        assert torch.equal(x, x0), "rope modified x in place"

    def test_position_zero_is_identity(self) -> None:
        x = torch.randn(1, 2, 1, 16, generator=torch.Generator().manual_seed(5))
        assert_close(m.rope(x, torch.zeros(1, dtype=torch.long), 10000.0), x,
                     what="rope at position 0", inputs=dict(x=x), hint="angle 0: cos 1, sin 0")

    def test_pairs_are_i_and_i_plus_half(self) -> None:
        """x = e_0 at position 1 rotates into dims 0 and D/2 only (half-split, not interleaved)."""
        D, theta = 8, 10000.0
        x = torch.zeros(1, 1, 1, D, dtype=torch.float64)
        x[..., 0] = 1.0
        out = m.rope(x, torch.ones(1, dtype=torch.long), theta)
        expected = torch.zeros_like(x)
        expected[..., 0], expected[..., D // 2] = math.cos(1.0), math.sin(1.0)
        assert_close(out, expected, what="rope(e_0, position 1)", inputs=dict(x=x, theta=theta),
                     hint="Hugging Face's Llama pairs dim i with dim i + D/2 (rotate_half), not "
                     "dim 2i with 2i + 1; dim 0 has frequency theta^0 = 1")

    @settings(max_examples=max_examples(30))
    @given(seed=seeds, B=st.integers(1, 2), H=st.integers(1, 3), S=st.integers(1, 9),
           half=st.integers(1, 16), theta=st.sampled_from([10000.0, 500000.0, 100.0]),
           offset=st.integers(0, 48))
    def test_matches_float64_formula(self, seed: int, B: int, H: int, S: int, half: int,
                                     theta: float, offset: int) -> None:
        """float32 x at positions < 64: the angle may be computed in float32 (error ~1e-5)."""
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(B, H, S, 2 * half, generator=gen)
        pos = offset + torch.randperm(S, generator=gen)  # any order: positions are data
        assert_close(m.rope(x, pos, theta), expected_rope(x, pos, theta).float(),
                     atol=5e-5, rtol=1e-5,  # float32 angles up to 64 rad: ~64 * 2^-24 each
                     what="rope(x, positions, theta)", inputs=dict(x=x, positions=pos, theta=theta, seed=seed),
                     hint="out = [a cos - b sin, b cos + a sin] with a = x[..., :D/2], "
                     "b = x[..., D/2:], angle = position * theta^(-2i/D)")

    def test_float64_far_positions(self) -> None:
        """float64 x is computed in float64: angles up to 8000 rad keep 1e-10 accuracy."""
        gen = torch.Generator().manual_seed(6)
        x = torch.randn(1, 2, 6, 64, generator=gen, dtype=torch.float64)
        pos = torch.tensor([0, 1, 7, 1000, 4096, 8000])
        assert_close(m.rope(x, pos, 100000.0), expected_rope(x, pos, 100000.0),
                     what="rope in float64", inputs=dict(x=x, positions=pos, theta=100000.0),
                     hint="compute the angles in float64 for float64 inputs")

    def test_bfloat16(self) -> None:
        gen = torch.Generator().manual_seed(7)
        x = torch.randn(2, 2, 7, 32, generator=gen).to(torch.bfloat16)
        pos = torch.arange(3, 10)
        assert_close(m.rope(x, pos, 10000.0), expected_rope(x, pos, 10000.0).to(torch.bfloat16),
                     what="rope in bfloat16", inputs=dict(x=x, positions=pos, seed=7))

    def test_batched_positions(self) -> None:
        """positions (B, S): row b uses its own positions."""
        gen = torch.Generator().manual_seed(8)
        x = torch.randn(3, 2, 4, 16, generator=gen)
        pos = torch.tensor([[0, 1, 2, 3], [10, 11, 12, 13], [5, 0, 9, 2]])
        assert_close(m.rope(x, pos, 10000.0), expected_rope(x, pos, 10000.0).float(), atol=5e-5,
                     rtol=1e-5, what="rope with (B, S) positions", inputs=dict(x=x, positions=pos),
                     hint="positions (B, S) broadcast to (B, 1, S, D/2): one set per batch row")

    @settings(max_examples=max_examples(20))
    @given(seed=seeds, m_pos=st.integers(0, 40), n_pos=st.integers(0, 40), shift=st.integers(0, 40))
    def test_scores_depend_on_distance_only(self, seed: int, m_pos: int, n_pos: int, shift: int) -> None:
        """<rope(q, m), rope(k, n)> = <rope(q, m + s), rope(k, n + s)>: why RoPE is relative."""
        gen = torch.Generator().manual_seed(seed)
        q = torch.randn(1, 1, 1, 16, generator=gen, dtype=torch.float64)
        k = torch.randn(1, 1, 1, 16, generator=gen, dtype=torch.float64)

        def score(a: int, b: int) -> torch.Tensor:
            return (m.rope(q, torch.tensor([a]), 10000.0) * m.rope(k, torch.tensor([b]), 10000.0)).sum()

        assert_close(score(m_pos + shift, n_pos + shift), score(m_pos, n_pos),
                     what=f"q.k at positions ({m_pos + shift}, {n_pos + shift}) vs ({m_pos}, {n_pos})",
                     inputs=dict(seed=seed), atol=1e-9, rtol=1e-9,  # float64 sums of 16 terms
                     hint="q and k must rotate by the same rule; the score then depends on m - n")


# =================================================================================== Task 3
CONFIG_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads", "rms_norm_eps", "tie_word_embeddings")


class TestTask3Load:
    @pytest.mark.parametrize("name", ["untied_head_dim16", "gqa_tied"])
    def test_config_fields(self, tiny: TinyModels, name: str) -> None:
        model = m.Transformer.from_pretrained(tiny.folder(name))
        spec = CONFIGS[name]
        expected = {f: spec[f] for f in CONFIG_FIELDS if f in spec}
        expected["head_dim"] = spec.get("head_dim", spec["hidden_size"] // spec["num_attention_heads"])
        expected["rope_theta"] = spec["rope_parameters"]["rope_theta"]
        got = {f: getattr(model.config, f, "<missing>") for f in expected}
        assert got == expected, (f"model.config of tiny model {name!r}: expected attributes "
                                 f"{expected}, got {got}")

    @pytest.mark.parametrize("type_key", ["rope_type", "type"])
    def test_4x_style_config(self, tiny: TinyModels, type_key: str) -> None:
        """rope_theta at the top and rope_scaling beside it (null or a dict), as 4.x writes."""
        for name in ("untied_head_dim16", "mqa_llama3"):
            folder = tiny.variant(name, f"4x-{type_key}", lambda c: to_4x_style(c, type_key))
            model = m.Transformer.from_pretrained(folder)
            theta = CONFIGS[name]["rope_parameters"]["rope_theta"]
            assert model.config.rope_theta == theta, (
                f"{name} with a 4.x config.json ({type_key!r} key): config.rope_theta should be "
                f"{theta}, got {getattr(model.config, 'rope_theta', '<missing>')}")

    def test_head_dim_defaults_to_hidden_over_heads(self, tiny: TinyModels) -> None:
        def drop(c: dict) -> None:
            c.pop("head_dim", None)

        folder = tiny.variant("gqa_tied", "no-head-dim", drop)
        model = m.Transformer.from_pretrained(folder)
        assert model.config.head_dim == 48 // 6, (
            f"config.json without head_dim (hidden 48, 6 heads): config.head_dim should be 8, "
            f"got {getattr(model.config, 'head_dim', '<missing>')}")

    @pytest.mark.parametrize("style", ["5.x", "4.x", "4.x legacy 'type'"])
    def test_unknown_rope_type_raises_naming_it(self, tiny: TinyModels, style: str) -> None:
        m.Transformer.from_pretrained(tiny.folder("gqa_tied"))  # a good folder loads first

        def yarn(c: dict) -> None:
            c["rope_parameters"] = dict(rope_type="yarn", rope_theta=10000.0, factor=4.0,
                                        original_max_position_embeddings=64)
            if style != "5.x":
                to_4x_style(c, "type" if "legacy" in style else "rope_type")

        folder = tiny.variant("gqa_tied", f"yarn-{style.replace(' ', '_')}", yarn)
        message = None
        try:
            m.Transformer.from_pretrained(folder)
        except NotImplementedError as exc:
            message = str(exc)
        except Exception as exc:  # noqa: BLE001 - named in the failure
            message = f"<{type(exc).__name__}: {exc}>"
        assert message is not None and not message.startswith("<"), (
            f"from_pretrained of a {style} config with RoPE type 'yarn' must raise "
            f"NotImplementedError, got {message or 'no error'}")
        assert "yarn" in message, (f"the NotImplementedError for RoPE type 'yarn' ({style} config) "
                                   f"must name it; its message was {message!r}")


# =================================================================================== Task 4
class TestTask4Forward:
    def test_logits_shape_dtype_and_input_unmodified(self, tiny: TinyModels) -> None:
        model = m.Transformer.from_pretrained(tiny.folder("gqa_tied"))
        ids = token_ids("gqa_tied", 2, 5, seed=9)
        ids0 = ids.clone()
        out = model(ids)
        assert isinstance(out, torch.Tensor), f"model(input_ids) must return a tensor, got {type(out).__name__}"
        assert out.shape == (2, 5, 96) and out.dtype == torch.float32, (
            f"model(input_ids (2, 5)): expected logits (2, 5, 96) float32, got "
            f"{tuple(out.shape)} {out.dtype}")
        assert torch.equal(ids, ids0), "model(input_ids) modified input_ids"

    @pytest.mark.parametrize("name", list(CONFIGS))
    def test_matches_transformers(self, tiny: TinyModels, name: str) -> None:
        model = m.Transformer.from_pretrained(tiny.folder(name))
        ids = token_ids(name, 2, 40, seed=10)
        spec = CONFIGS[name]
        assert_close(model(ids), tiny.logits(name, ids), **LOGIT_TOL,
                     what=f"logits of tiny model {name!r}", inputs=dict(input_ids=ids, seed=SEED[name]),
                     hint=f"config: {spec}. Walk one layer: rms_norm, q/k/v projections, rope on "
                     "q and k, causal GQA attention (head h reads kv head h // (Hq // Hkv)), "
                     "o_proj + residual, rms_norm, down(silu(gate) * up) + residual; final norm; "
                     "lm_head.weight if the file has it, else the embedding")

    def test_one_token(self, tiny: TinyModels) -> None:
        model = m.Transformer.from_pretrained(tiny.folder("mqa_llama3"))
        ids = token_ids("mqa_llama3", 3, 1, seed=11)
        assert_close(model(ids), tiny.logits("mqa_llama3", ids), **LOGIT_TOL,
                     what="logits of one-token sequences", inputs=dict(input_ids=ids))

    @pytest.mark.parametrize("style", ["4.x", "4.x legacy 'type'", "4.x no original_max",
                                       "5.x no original_max"])
    def test_llama3_config_styles(self, tiny: TinyModels, style: str) -> None:
        """The same llama3 scaling read from each way of writing it; without
        original_max_position_embeddings, max_position_embeddings (4096) stands in."""
        def edit(c: dict) -> None:
            if "no original_max" in style:
                c["rope_parameters"].pop("original_max_position_embeddings")
            if style.startswith("4.x"):
                to_4x_style(c, "type" if "legacy" in style else "rope_type")

        folder = tiny.variant("mqa_llama3", style.replace(" ", "_").replace("'", ""), edit)
        oracle = _quiet_transformers().LlamaForCausalLM.from_pretrained(
            folder, attn_implementation="eager", dtype=torch.float32).eval()
        ids = token_ids("mqa_llama3", 1, 60, seed=12)
        with torch.no_grad():
            expected = oracle(ids).logits.float()
        assert_close(m.Transformer.from_pretrained(folder)(ids), expected, **LOGIT_TOL,
                     what=f"logits with a {style} llama3 config.json",
                     inputs=dict(input_ids=ids, config=json.loads((folder / "config.json").read_text())),
                     hint="4.x: rope_theta + rope_scaling {'rope_type' or legacy 'type': 'llama3', ...}; "
                     "5.x: rope_parameters; original_max_position_embeddings falls back to "
                     "max_position_embeddings")

    def test_bfloat16_weights(self, tiny: TinyModels) -> None:
        """dtype=torch.bfloat16: float32 logits near the float32 model's. Two layers of bf16
        rounding move them by ~0.7% of the largest logit (transformers' own bf16 model too);
        the check allows 2%."""
        folder = tiny.folder("gqa_tied")
        model = m.Transformer.from_pretrained(folder, dtype=torch.bfloat16)
        ids = token_ids("gqa_tied", 1, 12, seed=13)
        out = model(ids)
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float32, (
            f"a bfloat16 model must still return float32 logits, got "
            f"{getattr(out, 'dtype', type(out).__name__)}")
        expected = tiny.logits("gqa_tied", ids)
        assert_close(out, expected, atol=0.02 * float(expected.abs().max()), rtol=0.0,
                     what="logits of the model loaded with dtype=torch.bfloat16",
                     inputs=dict(input_ids=ids))

    def test_bfloat16_weights_are_rounded(self, tiny: TinyModels) -> None:
        """dtype=torch.bfloat16 must store the weights in bfloat16: their rounding moves the
        logits by ~0.7% of the largest (see above), far more than the 0.1% allowed here; a
        model that ignores dtype gives the float32 logits."""
        folder = tiny.folder("gqa_tied")
        ids = token_ids("gqa_tied", 1, 12, seed=13)
        out = m.Transformer.from_pretrained(folder, dtype=torch.bfloat16)(ids)
        full = m.Transformer.from_pretrained(folder)(ids)
        moved = float((out.float() - full.float()).abs().max())
        assert moved > 1e-3 * float(full.abs().max()), (
            f"logits with dtype=torch.bfloat16 differ from the float32 model's by at most "
            f"{moved:.3g} (largest logit {float(full.abs().max()):.3g}; input (1, 12), seed 13): "
            "the weights were not converted to bfloat16; from_pretrained must apply dtype")

    @pytest.mark.gpu
    def test_on_gpu(self, tiny: TinyModels) -> None:
        model = m.Transformer.from_pretrained(tiny.folder("mqa_llama3"), device="cuda")
        ids = token_ids("mqa_llama3", 2, 40, seed=14)
        out = model(ids.cuda())
        assert out.device.type == "cuda", f"logits of a model on cuda are on {out.device}"
        assert_close(out.cpu(), tiny.logits("mqa_llama3", ids), atol=2e-3, rtol=2e-3,  # TF32 may be on
                     what="logits on the GPU", inputs=dict(input_ids=ids))


# =================================================================================== Task 5
def run_chunks(model: Any, cache: Any, ids: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Feed ids through the cache chunk by chunk; the logits of all chunks, concatenated.
    Checks cache.length after every step."""
    outs, at = [], 0
    for size in sizes:
        out = model(ids[:, at:at + size], cache)
        at += size
        assert cache.length == at, (f"after feeding chunks {sizes[:len(outs) + 1]} of a "
                                    f"{tuple(ids.shape)} input, cache.length should be {at}, "
                                    f"got {cache.length}")
        outs.append(out)
    return torch.cat(outs, dim=1)


class TestTask5Cache:
    def test_new_cache_is_empty(self, tiny: TinyModels) -> None:
        model = m.Transformer.from_pretrained(tiny.folder("gqa_tied"))
        cache = model.new_cache(2, 16)
        assert cache.length == 0, f"new_cache(2, 16).length should be 0, got {cache.length}"
        assert isinstance(cache.length, int), f"cache.length must be an int, got {type(cache.length)}"

    @pytest.mark.parametrize("name", ["mqa_llama3", "gqa_tied"])
    def test_prefill_then_decode_equals_full(self, tiny: TinyModels, name: str) -> None:
        model = m.Transformer.from_pretrained(tiny.folder(name))
        ids = token_ids(name, 2, 24, seed=15)
        cache = model.new_cache(2, 32)  # room to spare: slots past the length are never read
        sizes = [16] + [1] * 8
        assert_close(run_chunks(model, cache, ids, sizes), tiny.logits(name, ids), **LOGIT_TOL,
                     what=f"prefill 16 tokens, then 8 single-token decode steps ({name})",
                     inputs=dict(input_ids=ids, max_len=32),
                     hint="token t sits at position L + t (L = cache.length before the call); it "
                     "attends to every cached key and to the new ones up to itself; only the "
                     "first cache.length slots hold keys")

    @pytest.mark.parametrize("sizes", [[5, 7, 4, 8], [1, 23], [12, 12]], ids=str)
    def test_chunked_prefill_equals_full(self, tiny: TinyModels, sizes: list[int]) -> None:
        name = "untied_head_dim16"
        model = m.Transformer.from_pretrained(tiny.folder(name))
        ids = token_ids(name, 2, 24, seed=16)
        cache = model.new_cache(2, 30)
        assert_close(run_chunks(model, cache, ids, sizes), tiny.logits(name, ids), **LOGIT_TOL,
                     what=f"chunked prefill {sizes}", inputs=dict(input_ids=ids),
                     hint="a chunk of S new tokens after L cached ones: query i sees keys "
                     "j <= L + i (bottom-right causal), not j <= i")

    def test_past_max_len_raises_and_leaves_cache(self, tiny: TinyModels) -> None:
        name = "mha_3_layers"
        model = m.Transformer.from_pretrained(tiny.folder(name))
        ids = token_ids(name, 2, 11, seed=17)
        expected = tiny.logits(name, ids[:, :10])
        cache = model.new_cache(2, 10)
        first = model(ids[:, :6], cache)
        with assert_raises(ValueError, "model(5 tokens) with a cache of max_len 10 holding 6"):
            model(ids[:, 6:11], cache)
        assert cache.length == 6, f"a call that raised changed cache.length from 6 to {cache.length}"
        rest = model(ids[:, 6:10], cache)  # exactly fills the cache: allowed
        assert cache.length == 10, f"after filling max_len 10, cache.length is {cache.length}"
        assert_close(torch.cat([first, rest], 1), expected, **LOGIT_TOL,
                     what="logits after a refused call, then a chunk that fills the cache exactly",
                     inputs=dict(input_ids=ids[:, :10], max_len=10))
        with assert_raises(ValueError, "model(1 token) with a full cache (10 of 10)"):
            model(ids[:, 10:11], cache)
        assert cache.length == 10, f"a call that raised changed cache.length from 10 to {cache.length}"


# =================================================================================== Task 6
def oracle_greedy(tiny: TinyModels, name: str, prompt: list[int], n: int) -> list[int]:
    """argmax of full forward passes of the oracle, one token at a time."""
    seq = list(prompt)
    for _ in range(n):
        logits = tiny.logits(name, torch.tensor([seq]))[0, -1]
        top2 = logits.topk(2).values
        assert top2[0] - top2[1] > 1e-3, "test setup: a near tie in the oracle's greedy path"
        seq.append(int(logits.argmax()))
    return seq[len(prompt):]


class TestTask6Generate:
    def test_zero_tokens_and_types(self, tiny: TinyModels) -> None:
        model = m.Transformer.from_pretrained(tiny.folder("gqa_tied"))
        prompt = [3, 14, 15, 92, 6]
        before = list(prompt)
        assert m.generate(model, prompt, 0) == [], "generate(..., max_new_tokens=0) must return []"
        out = m.generate(model, prompt, 3)
        assert isinstance(out, list) and len(out) == 3 and all(
            isinstance(t, int) and not isinstance(t, bool) for t in out), (
            f"generate(model, prompt, 3) must return a list of 3 Python ints, got {out!r}")
        assert prompt == before, f"generate modified prompt_ids: {before} -> {prompt}"

    # Prompts whose greedy path has no near tie (top-2 gap > 0.03 at every step); the tied
    # tiny models just repeat one token, which would test little.
    @pytest.mark.parametrize("name,seed", [("mqa_llama3", 21), ("untied_head_dim16", 23)])
    def test_greedy_equals_argmax_of_full_forwards(self, tiny: TinyModels, name: str, seed: int) -> None:
        model = m.Transformer.from_pretrained(tiny.folder(name))
        prompt = token_ids(name, 1, 7, seed=seed)[0].tolist()
        expected = oracle_greedy(tiny, name, prompt, 12)
        got = m.generate(model, prompt, 12)
        assert got == expected, (
            f"generate({name}, prompt {prompt}, 12): expected {expected} (argmax of the full "
            f"forward after each token), got {got}; first difference at new token "
            f"{next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))}")

    def test_stops_after_eos_included(self, tiny: TinyModels) -> None:
        name = "mqa_llama3"
        model = m.Transformer.from_pretrained(tiny.folder(name))
        prompt = token_ids(name, 1, 5, seed=19)[0].tolist()
        path = oracle_greedy(tiny, name, prompt, 10)
        eos = path[4]
        stop = path.index(eos)  # its first appearance
        expected = path[: stop + 1]
        got = m.generate(model, prompt, 10, eos_id=eos)
        assert got == expected, (f"generate(prompt {prompt}, 10, eos_id={eos}): the greedy path is "
                                 f"{path}, so it must stop right after the first {eos}: expected "
                                 f"{expected}, got {got}")
        assert m.generate(model, prompt, 10, eos_id=-1) == path, (
            "generate with an eos_id the model never produces must run all 10 tokens")

    def test_eos_as_first_new_token(self, tiny: TinyModels) -> None:
        name = "mqa_llama3"
        model = m.Transformer.from_pretrained(tiny.folder(name))
        prompt = token_ids(name, 1, 5, seed=19)[0].tolist()
        first = oracle_greedy(tiny, name, prompt, 1)[0]
        got = m.generate(model, prompt, 10, eos_id=first)
        assert got == [first], (
            f"generate(prompt {prompt}, 10, eos_id={first}): the first greedy token is the eos "
            f"({first}), so the result must be [{first}], got {got}; the prefill's token is "
            "checked for eos like every other")
