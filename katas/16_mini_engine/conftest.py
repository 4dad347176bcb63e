"""Kata 16's shared fixtures: the tiny test model, its tokenizer and its float64 oracles."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from harness import load_kata_file

tiny = load_kata_file(Path(__file__).with_name("tiny.py"), "kata16_tiny")


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """A tiny model's ops take microseconds: a second intra-op thread only adds waiting
    (several times slower on a loaded 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    """Seeded random tiny LLaMA + tokenizer, built with transformers once into .kata_models/."""
    return tiny.ensure_tiny_model()


@pytest.fixture(scope="session")
def tokenizer(tiny_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_dir))


@pytest.fixture(scope="session")
def oracle(tiny_dir: Path) -> Any:
    """The tiny LLaMA in float64 torch (tiny.TorchOracle)."""
    return tiny.TorchOracle(tiny_dir)


@pytest.fixture(scope="session")
def hf_oracle(tiny_dir: Path) -> Any:
    """transformers' LlamaForCausalLM on the same folder, float64."""
    return tiny.Oracle(tiny_dir)
