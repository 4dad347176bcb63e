"""Kata 16: a mini serving engine. Read katas/16_mini_engine/README.md first.

Your engine composes your modules of the other katas. Get them with `kata(name)`:

    kata("sampling").sample(...)                      # kata 02
    kata("attention").attention(...)                  # kata 04
    kata("flash_attention").flash_attention(...)      # kata 05 (GPU, fp16/bf16)
    kata("transformer").rms_norm(...), .rope(...)     # kata 06
    kata("paged_allocator").BlockAllocator(...)       # kata 07
    kata("paged_attention").write_kv(...), .paged_attention(...), .paged_attention_triton(...)  # kata 08
    kata("prefix_cache").RadixCache()                 # kata 09
    kata("scheduler").Scheduler(...)                  # kata 10

`pytest katas/16 --use-ref 04,07` (and `python3 kata.py serve --use-ref 04,07`) hands you
our reference for the katas you list, so you can build the engine before every part is done.
`load_checkpoint(folder, dtype=..., device=...)` returns (ModelConfig, tensors by
transformers' names); `load_tokenizer(folder)` the folder's tokenizer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable

import torch
from torch import Tensor

from harness.compose import kata, load_checkpoint, load_tokenizer  # noqa: F401


# -- Data types (complete: use them as they are) ------------------------------------------
@dataclass
class SamplingParams:
    """One request's generation settings (OpenAI's names; top_k, min_p and
    repetition_penalty as vLLM accepts them)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    seed: int | None = None


@dataclass
class EngineConfig:
    block_size: int = 16
    num_blocks: int = 512  # KV blocks for running requests: the scheduler's pool
    num_cache_blocks: int = 128  # further blocks the prefix cache may hold (0: no prefix caching)
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 512
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    attention_backend: str = "auto"  # "torch" (katas 04, 08), "triton" (05, 08's kernel); auto: triton on CUDA
    cuda_graphs: bool = False  # capture decode-only steps in CUDA graphs (CUDA only)
    seed: int = 0  # the generator of requests without a seed of their own


@dataclass
class Batch:
    """One forward step over several sequences, their tokens flattened into N rows.

    Sequence b's tokens are rows sum(query_lens[:b]) .. sum(query_lens[:b + 1]) - 1, in order.
    """

    input_ids: Tensor  # (N,) long
    positions: Tensor  # (N,) long: each token's position in its sequence
    slot_mapping: Tensor  # (N,) long: the KV slot each token's K and V are written to
    query_lens: list[int]  # (B,) tokens of each sequence in this step, each >= 1
    context_lens: Tensor  # (B,) int32: each sequence's tokens in the cache once this step's are written
    block_tables: Tensor  # (B, max_blocks) int32, rows padded with any block id


@dataclass
class RequestOutput:
    """What one step produced for one request."""

    request_id: Hashable
    new_token_ids: list[int]
    new_text: str
    finished: bool = False
    finish_reason: str | None = None  # "stop" (eos, stop token or string) or "length"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose K/V came from the prefix cache


# -- Task 1: the paged model ----------------------------------------------------------------
class PagedLlama:
    """A LLaMA decoder whose attention reads and writes a paged KV cache.

    Attributes the checks read: `config` (harness.compose.ModelConfig), `num_blocks`,
    `block_size`, `device`, and `k_cache`, `v_cache`: one tensor per layer, each
    (num_blocks, block_size, num_kv_heads, head_dim) in `dtype`.
    """

    def __init__(self, folder: str | Path, *, num_blocks: int, block_size: int,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                 attention_backend: str = "torch") -> None:
        raise NotImplementedError("Task 1: load the weights (load_checkpoint) and allocate the paged K/V caches")

    def forward(self, batch: Batch) -> Tensor:
        """(B, vocab) float32: the logits after the last token of each sequence."""
        raise NotImplementedError("Task 1: the forward pass over a flattened batch, attention through the paged cache")


# -- Task 2: KV blocks and the prefix cache -------------------------------------------------
class KVCacheManager:
    """Each request's KV blocks (kata 07's allocator) and the prefix cache (kata 09's radix
    tree over token ids, whose values are KV slots).

    The allocator holds num_blocks + num_cache_blocks blocks. A request's own blocks hold its
    tokens after its cached prefix; the scheduler keeps their sum within num_blocks. A finished
    request's full blocks can stay behind as prefix cache, at most num_cache_blocks in all.
    """

    def __init__(self, num_blocks: int, block_size: int, num_cache_blocks: int = 0) -> None:
        raise NotImplementedError("Task 2: an allocator of num_blocks + num_cache_blocks blocks and a RadixCache")

    @property
    def num_free_blocks(self) -> int:
        raise NotImplementedError("Task 2: free blocks of the allocator")

    @property
    def num_cached_blocks(self) -> int:
        """Blocks held by the prefix cache (finished requests' KV kept for reuse)."""
        raise NotImplementedError("Task 2: blocks the prefix cache holds")

    def add(self, request_id: Hashable, prompt: list[int]) -> int:
        """Register a request; returns how many leading prompt tokens the cache already holds
        (whole blocks, fewer than len(prompt)). Those stay pinned until finish()."""
        raise NotImplementedError("Task 2: match the prompt in the prefix cache, whole blocks only, and pin them")

    def grow(self, request_id: Hashable, num_tokens: int) -> None:
        """Make room for num_tokens more tokens of the request (after those it holds)."""
        raise NotImplementedError("Task 2: allocate (first time) or append blocks for the request")

    def block_table(self, request_id: Hashable) -> list[int]:
        """Physical blocks of the request's positions 0, block_size, 2 block_size, ..."""
        raise NotImplementedError("Task 2: the cached prefix's blocks, then the request's own")

    def slot_mapping(self, request_id: Hashable, start: int, end: int) -> list[int]:
        """KV slots of the request's positions start .. end - 1."""
        raise NotImplementedError("Task 2: slot = block_table[p // block_size] * block_size + p % block_size")

    def preempt(self, request_id: Hashable) -> None:
        """Preempted by recompute: the own blocks go back; the cached prefix stays pinned."""
        raise NotImplementedError("Task 2: free the request's own blocks, keep its pinned prefix")

    def finish(self, request_id: Hashable, tokens: list[int]) -> None:
        """The request is done; `tokens` are those whose K/V it wrote (its positions 0 ..
        len(tokens) - 1). Its whole blocks become prefix cache (when there is room) and the
        rest is freed; its pin on the cached prefix goes."""
        raise NotImplementedError("Task 2: insert whole blocks into the prefix cache (evicting LRU), unpin, free the rest")


# -- Task 4: stop strings ---------------------------------------------------------------------
def find_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """(the part of `text` that may be sent now, whether a stop string occurs).

    With a stop string in `text`: the text before the earliest one, True. Without: the text
    less its longest ending that could still grow into a stop string, False."""
    raise NotImplementedError("Task 4: cut at the earliest stop string, or hold back a possible start of one")


# -- Tasks 3 and 4: the engine -------------------------------------------------------------
class Engine:
    """Continuous batching: each step the scheduler picks the tokens to run, the model runs
    them in one batch over the paged KV cache, and every request whose known tokens are all
    processed samples its next token.

    Attributes harness/serve.py and the checks read: `tokenizer`, `max_model_len` (the
    model's context, config.max_position_embeddings).
    """

    def __init__(self, model_dir: str | Path, config: EngineConfig | None = None, *,
                 tokenizer: Any = None) -> None:
        raise NotImplementedError("Task 3: the model, the KV cache manager, the scheduler, the tokenizer")

    @property
    def num_free_blocks(self) -> int:
        raise NotImplementedError("Task 3: free KV blocks")

    @property
    def num_total_blocks(self) -> int:
        raise NotImplementedError("Task 3: num_blocks + num_cache_blocks")

    @property
    def num_cached_blocks(self) -> int:
        raise NotImplementedError("Task 3: blocks held by the prefix cache")

    def has_unfinished(self) -> bool:
        raise NotImplementedError("Task 3: is there anything left to step?")

    def add_request(self, request_id: Hashable, prompt_token_ids: list[int],
                    params: SamplingParams | None = None) -> None:
        raise NotImplementedError("Task 3: check the request (ValueError), match its prefix, hand it to the scheduler")

    def abort(self, request_id: Hashable) -> None:
        """Stop a request now and free its blocks; no further output. Unknown or finished
        requests are ignored."""
        raise NotImplementedError("Task 3: drop the request and free its blocks now")

    def step(self) -> list[RequestOutput]:
        raise NotImplementedError("Task 3: schedule, run the batch, sample, emit outputs")
