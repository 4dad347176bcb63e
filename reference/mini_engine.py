"""A mini serving engine: continuous batching over a paged KV cache, built from the katas.

Reference solution of kata 16 (katas/16_mini_engine/README.md). It composes the other
katas' modules through `harness.compose.kata` (yours, or ours with --use-ref):
sampling (02), attention (04), flash_attention (05), transformer's rms_norm and rope (06),
paged_allocator (07), paged_attention (08), prefix_cache (09), scheduler (10).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable

import torch
from torch import Tensor

from harness.compose import kata, load_checkpoint, load_tokenizer


# -- Data types ------------------------------------------------------------------------------
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


# -- Task 1: the paged model -----------------------------------------------------------------
class PagedLlama:
    """A LLaMA decoder whose attention reads and writes a paged KV cache."""

    def __init__(self, folder: str | Path, *, num_blocks: int, block_size: int,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                 attention_backend: str = "torch") -> None:
        self.config, w = load_checkpoint(folder, dtype=dtype, device=device)
        c = self.config
        self.dtype, self.device = dtype, torch.device(device)
        self.block_size, self.num_blocks = block_size, num_blocks
        if attention_backend == "auto":
            attention_backend = "triton" if self.device.type == "cuda" else "torch"
        if attention_backend not in ("torch", "triton"):
            raise ValueError(f"attention_backend {attention_backend!r}: use 'torch' or 'triton'")
        self.attention_backend = attention_backend
        self.embed = w["model.embed_tokens.weight"]
        self.lm_head = w["lm_head.weight"]
        self.norm = w["model.norm.weight"]
        self.layers = []
        for i in range(c.num_layers):
            p = f"model.layers.{i}."
            self.layers.append({
                "in_norm": w[p + "input_layernorm.weight"],
                "post_norm": w[p + "post_attention_layernorm.weight"],
                # q, k and v in one matrix product; gate and up in another
                "qkv": torch.cat([w[p + f"self_attn.{n}_proj.weight"] for n in "qkv"]),
                "o": w[p + "self_attn.o_proj.weight"],
                "gate_up": torch.cat([w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"]]),
                "down": w[p + "mlp.down_proj.weight"],
            })
        shape = (num_blocks, block_size, c.num_kv_heads, c.head_dim)
        self.k_cache = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(c.num_layers)]
        self.v_cache = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(c.num_layers)]
        self._graphs: _DecodeGraphs | None = None

    def enable_cuda_graphs(self, max_batch: int, max_len: int) -> None:
        """Capture decode-only steps of up to max_batch sequences of up to max_len tokens in
        CUDA graphs (Task 6); forward() replays them for batches of single tokens."""
        if self.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self._graphs = _DecodeGraphs(self, max_batch, max_len)

    def _attention(self, layer: int, q: Tensor, batch: Batch, plan: dict[str, Any]) -> Tensor:
        """(N, Hq, D): every token attends to its sequence's cached tokens up to itself."""
        kc, vc = self.k_cache[layer], self.v_cache[layer]
        out = torch.empty_like(q)
        if plan["single_rows"] is not None:  # one query per sequence: paged attention
            rows, seqs = plan["single_rows"], plan["single_seqs"]
            paged = kata("paged_attention")
            fn = paged.paged_attention_triton if self.attention_backend == "triton" else paged.paged_attention
            out[rows] = fn(q[rows], kc, vc, batch.block_tables[seqs], batch.context_lens[seqs])
        c = self.config
        for start, n, slots in plan["chunks"]:  # a prefill chunk: causal, aligned bottom-right
            k = kc.view(-1, c.num_kv_heads, c.head_dim)[slots].transpose(0, 1)[None]  # (1, Hkv, ctx, D)
            v = vc.view(-1, c.num_kv_heads, c.head_dim)[slots].transpose(0, 1)[None]
            qs = q[start:start + n].transpose(0, 1)[None]  # (1, Hq, n, D)
            if self.attention_backend == "triton" and q.dtype in (torch.float16, torch.bfloat16):
                o, _ = kata("flash_attention").flash_attention(qs.contiguous(), k.contiguous(),
                                                               v.contiguous(), causal=True)
            else:
                o = kata("attention").attention(qs, k, v, causal=True)
            out[start:start + n] = o[0].transpose(0, 1)
        return out

    def _plan(self, batch: Batch) -> dict[str, Any]:
        """Which rows are single-query sequences, and the K/V slots of each longer chunk."""
        bs, dev = self.block_size, self.device
        singles, single_seqs, chunks, start = [], [], [], 0
        context = batch.context_lens.tolist()
        for b, n in enumerate(batch.query_lens):
            if n == 1:
                singles.append(start)
                single_seqs.append(b)
            else:
                pos = torch.arange(context[b], device=dev)
                table = batch.block_tables[b].long()
                chunks.append((start, n, table[pos // bs] * bs + pos % bs))
            start += n
        return {"single_rows": torch.tensor(singles, device=dev) if singles else None,
                "single_seqs": torch.tensor(single_seqs, device=dev) if singles else None,
                "chunks": chunks}

    @torch.inference_mode()
    def forward(self, batch: Batch) -> Tensor:
        """(B, vocab) float32: the logits after the last token of each sequence."""
        if self._graphs is not None and max(batch.query_lens) == 1:
            out = self._graphs.run(batch)
            if out is not None:
                return out
        return self._forward_eager(batch)

    def _forward_eager(self, batch: Batch) -> Tensor:
        c = self.config
        T = kata("transformer")
        N = batch.input_ids.shape[0]
        Hq, Hkv, D = c.num_heads, c.num_kv_heads, c.head_dim
        plan = self._plan(batch)
        positions = batch.positions
        x = self.embed[batch.input_ids]  # (N, hidden)
        for i, layer in enumerate(self.layers):
            h = T.rms_norm(x, layer["in_norm"], c.rms_norm_eps)
            q, k, v = (h @ layer["qkv"].T).split([Hq * D, Hkv * D, Hkv * D], dim=-1)
            # kata 06's rope takes (B, H, S, D): the N rows are one "sequence" of N positions
            q = T.rope(q.view(N, Hq, D).transpose(0, 1)[None], positions, c.rope_theta)[0].transpose(0, 1)
            k = T.rope(k.view(N, Hkv, D).transpose(0, 1)[None], positions, c.rope_theta)[0].transpose(0, 1)
            v = v.reshape(N, Hkv, D)
            kata("paged_attention").write_kv(self.k_cache[i], self.v_cache[i], k, v, batch.slot_mapping)
            attn = self._attention(i, q.contiguous(), batch, plan)
            x = x + attn.reshape(N, Hq * D) @ layer["o"].T
            h = T.rms_norm(x, layer["post_norm"], c.rms_norm_eps)
            gate, up = (h @ layer["gate_up"].T).chunk(2, dim=-1)
            x = x + (torch.nn.functional.silu(gate) * up) @ layer["down"].T
        last = torch.tensor(batch.query_lens, device=self.device).cumsum(0) - 1
        h = T.rms_norm(x[last], self.norm, c.rms_norm_eps)
        return (h @ self.lm_head.T).float()


class _DecodeGraphs:
    """Task 6: decode steps (one token per sequence) captured in CUDA graphs.

    A graph replays a fixed sequence of kernels on fixed addresses, so everything it reads
    lives in static buffers: token ids, positions, slots, context lengths and a block table
    as wide as the context, for the largest batch; a batch of B runs the graph captured for
    the smallest size >= B, its extra rows padded (context 0: paged attention gives zeros;
    slot: a scratch block no sequence owns). Inside the graph nothing may wait for the GPU
    or change shape: RoPE reads a cos/sin table made on the GPU (kata 06's rope builds its
    frequencies on the CPU), K/V are written with index_copy_ (kata 08's write_kv skips
    padding with a boolean mask, which synchronises), and kata 08's paged_attention_triton
    picks its splits from shapes alone. Checked against the eager path once after capture.
    """

    SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)

    def __init__(self, model: PagedLlama, max_batch: int, max_len: int) -> None:
        c, dev, bs = model.config, model.device, model.block_size
        self.model = model
        # one scratch block beyond the pool: padding rows write there
        self.scratch = model.num_blocks * bs
        for caches in (model.k_cache, model.v_cache):
            for i, t in enumerate(caches):
                caches[i] = torch.cat([t, torch.zeros_like(t[:1])])
        inv = c.rope_theta ** (-torch.arange(0, c.head_dim, 2, dtype=torch.float64) / c.head_dim)
        angles = torch.arange(max_len, dtype=torch.float64)[:, None] * inv
        self.cos = angles.cos().to(torch.float32).to(dev)
        self.sin = angles.sin().to(torch.float32).to(dev)
        self.sizes = [n for n in self.SIZES if n < max_batch] + [max_batch]
        P, W = self.sizes[-1], -(-max_len // bs)
        self.ids = torch.zeros(P, dtype=torch.long, device=dev)
        self.pos = torch.zeros(P, dtype=torch.long, device=dev)
        self.slots = torch.full((P,), self.scratch, dtype=torch.long, device=dev)
        self.ctx = torch.zeros(P, dtype=torch.int32, device=dev)
        self.tables = torch.zeros(P, W, dtype=torch.int32, device=dev)
        self.graphs: dict[int, Any] = {}
        self.outs: dict[int, Tensor] = {}
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for n in reversed(self.sizes):  # largest first: the smaller ones reuse its memory
                for _ in range(2):  # warm-up: Triton compiles and autotunes outside the capture
                    self._step(n)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=stream):
                    self.outs[n] = self._step(n)
                self.graphs[n] = graph
        torch.cuda.current_stream().wait_stream(stream)
        self._check()

    def _rope(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """kata 06's rotation, (n, H, D) with (n, D/2) tables, computed in float32."""
        half = x.shape[-1] // 2
        xf = x.float()
        x1, x2 = xf[..., :half], xf[..., half:]
        cos, sin = cos[:, None], sin[:, None]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)

    def _step(self, n: int) -> Tensor:
        m, c = self.model, self.model.config
        T, paged = kata("transformer"), kata("paged_attention")
        Hq, Hkv, D = c.num_heads, c.num_kv_heads, c.head_dim
        ids, pos, slots, ctx, tables = (self.ids[:n], self.pos[:n], self.slots[:n], self.ctx[:n],
                                        self.tables[:n])
        cos, sin = self.cos[pos], self.sin[pos]
        x = m.embed[ids]
        for i, layer in enumerate(m.layers):
            h = T.rms_norm(x, layer["in_norm"], c.rms_norm_eps)
            q, k, v = (h @ layer["qkv"].T).split([Hq * D, Hkv * D, Hkv * D], dim=-1)
            q = self._rope(q.view(n, Hq, D), cos, sin)
            k = self._rope(k.view(n, Hkv, D), cos, sin)
            m.k_cache[i].view(-1, Hkv, D).index_copy_(0, slots, k.to(m.k_cache[i].dtype))
            m.v_cache[i].view(-1, Hkv, D).index_copy_(0, slots, v.reshape(n, Hkv, D).to(m.v_cache[i].dtype))
            attn = paged.paged_attention_triton(q, m.k_cache[i], m.v_cache[i], tables, ctx)
            x = x + attn.reshape(n, Hq * D) @ layer["o"].T
            h = T.rms_norm(x, layer["post_norm"], c.rms_norm_eps)
            gate, up = (h @ layer["gate_up"].T).chunk(2, dim=-1)
            x = x + (torch.nn.functional.silu(gate) * up) @ layer["down"].T
        return (T.rms_norm(x, m.norm, c.rms_norm_eps) @ m.lm_head.T).float()

    def run(self, batch: Batch) -> Tensor | None:
        """Replay the graph for this decode batch (None: too large or too wide a table)."""
        B, width = len(batch.query_lens), batch.block_tables.shape[1]
        if B > self.sizes[-1] or width > self.tables.shape[1]:
            return None
        n = next(size for size in self.sizes if size >= B)
        self.ids[:B].copy_(batch.input_ids)
        self.pos[:B].copy_(batch.positions)
        self.slots[:B].copy_(batch.slot_mapping)
        self.ctx[:B].copy_(batch.context_lens)
        self.tables[:B, :width].copy_(batch.block_tables)
        if n > B:  # padding rows: nothing to read, a scratch slot to write
            self.ctx[B:n].zero_()
            self.slots[B:n].fill_(self.scratch)
            self.pos[B:n].zero_()
        self.graphs[n].replay()
        return self.outs[n][:B]

    def _check(self) -> None:
        """The graphed decode step must give the eager path's logits (blocks 0.. of the
        still empty pool serve as two short sequences)."""
        m = self.model
        bs, dev = m.block_size, m.device
        k = min(2, self.sizes[-1])  # a graph set for one sequence checks one
        lens = [3, bs + 2][-k:]  # tokens after the decode step; all but the last are prefilled first
        tables = torch.tensor([[0, 0], [1, 2]][-k:], dtype=torch.int32, device=dev)
        ids, pos, slots = [], [], []
        for b, n in enumerate(lens):
            for p in range(n - 1):
                ids.append(5 + p)
                pos.append(p)
                slots.append(int(tables[b, p // bs]) * bs + p % bs)
        m._forward_eager(Batch(torch.tensor(ids, device=dev), torch.tensor(pos, device=dev),
                               torch.tensor(slots, device=dev), [n - 1 for n in lens],
                               torch.tensor([n - 1 for n in lens], dtype=torch.int32, device=dev),
                               tables))
        last = [n - 1 for n in lens]
        batch = Batch(torch.tensor([7, 9][-k:], device=dev), torch.tensor(last, device=dev),
                      torch.tensor([int(tables[b, p // bs]) * bs + p % bs for b, p in enumerate(last)], device=dev),
                      [1] * k, torch.tensor(lens, dtype=torch.int32, device=dev), tables)
        graphed = self.run(batch).clone()
        eager = m._forward_eager(batch)
        tol = 1e-3 if m.dtype == torch.float32 else 0.1
        err = (graphed - eager).abs().max().item()
        if not err <= tol * max(1.0, eager.abs().max().item()):
            raise RuntimeError(f"CUDA-graph decode disagrees with the eager path: max |diff| {err:.3g}")


# -- Task 2: KV blocks and the prefix cache -------------------------------------------------
class KVCacheManager:
    """Each request's KV blocks (kata 07's allocator) and the prefix cache (kata 09's radix
    tree over token ids, whose values are KV slots).

    The allocator holds num_blocks + num_cache_blocks blocks. A request's own blocks hold its
    tokens after its cached prefix; the scheduler keeps their sum within num_blocks. A finished
    request's full blocks can stay behind as prefix cache, at most num_cache_blocks in all.
    """

    def __init__(self, num_blocks: int, block_size: int, num_cache_blocks: int = 0) -> None:
        if num_blocks < 1 or block_size < 1 or num_cache_blocks < 0:
            raise ValueError(f"num_blocks {num_blocks} and block_size {block_size} must be >= 1, "
                             f"num_cache_blocks {num_cache_blocks} >= 0")
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.num_cache_blocks = num_cache_blocks
        self.allocator = kata("paged_allocator").BlockAllocator(num_blocks + num_cache_blocks, block_size)
        self.cache = kata("prefix_cache").RadixCache()
        self._seq: dict[Hashable, int] = {}  # request -> its allocator sequence id
        self._cached: dict[Hashable, tuple[list[int], list[int]]] = {}  # request -> (prefix tokens, their blocks)
        self._own: dict[Hashable, int] = {}  # request -> tokens in its own blocks
        self._next_seq = 0
        self._kept: dict[int, int] = {}  # allocator sequence kept as cache -> its tokens still cached
        self._kept_blocks = 0  # blocks held by kept sequences
        self._owner: dict[int, int] = {}  # block of a kept sequence -> that sequence

    @property
    def num_free_blocks(self) -> int:
        return self.allocator.num_free_blocks

    @property
    def num_cached_blocks(self) -> int:
        """Blocks held by the prefix cache (finished requests' KV kept for reuse)."""
        return self._kept_blocks

    def add(self, request_id: Hashable, prompt: list[int]) -> int:
        """Register a request; returns how many leading prompt tokens the cache already holds
        (whole blocks, fewer than len(prompt)). Those stay pinned until finish()."""
        if request_id in self._seq:
            raise ValueError(f"request {request_id!r} is already registered")
        if not prompt:
            raise ValueError("empty prompt")
        self._seq[request_id] = self._next_seq
        self._next_seq += 1
        self._own[request_id] = 0
        bs, usable = self.block_size, 0
        if self.num_cache_blocks:
            values = self.cache.match(prompt)
            limit = min(len(values), len(prompt) - 1) // bs * bs  # at least one token to compute
            for j in range(0, limit, bs):  # whole blocks only: one physical block, in order
                first = values[j]
                if first % bs or values[j:j + bs] != list(range(first, first + bs)):
                    break
                usable = j + bs
            if usable:
                self.cache.lock(prompt[:usable])
            blocks = [values[j] // bs for j in range(0, usable, bs)]
        else:
            blocks = []
        self._cached[request_id] = (list(prompt[:usable]), blocks)
        return usable

    def grow(self, request_id: Hashable, num_tokens: int) -> None:
        """Make room for num_tokens more tokens of the request (after those it holds)."""
        seq = self._seq[request_id]
        if self._own[request_id] == 0:
            self.allocator.allocate(seq, num_tokens)
        else:
            copies = self.allocator.append(seq, num_tokens)
            assert not copies, "a request's own blocks are never shared"
        self._own[request_id] += num_tokens

    def block_table(self, request_id: Hashable) -> list[int]:
        """Physical blocks of the request's positions 0, block_size, 2 block_size, ..."""
        own = self.allocator.block_table(self._seq[request_id]) if self._own[request_id] else []
        return self._cached[request_id][1] + own

    def slot_mapping(self, request_id: Hashable, start: int, end: int) -> list[int]:
        """KV slots of the request's positions start .. end - 1."""
        table, bs = self.block_table(request_id), self.block_size
        return [table[p // bs] * bs + p % bs for p in range(start, end)]

    def preempt(self, request_id: Hashable) -> None:
        """Preempted by recompute: the own blocks go back; the cached prefix stays pinned."""
        if self._own[request_id]:
            self.allocator.free(self._seq[request_id])
            self._seq[request_id] = self._next_seq  # a fresh sequence when it runs again
            self._next_seq += 1
        self._own[request_id] = 0

    def _evict_until(self, free_wanted: int) -> None:
        """Evict least recently used cache entries until the cache holds at most
        num_cache_blocks - free_wanted blocks, or nothing evictable is left."""
        while self._kept_blocks + free_wanted > self.num_cache_blocks and self.cache.num_evictable:
            for slot in self.cache.evict(self.block_size):
                seq = self._owner[slot // self.block_size]
                self._kept[seq] -= 1
                if self._kept[seq] == 0:  # none of its tokens is cached any more
                    blocks = self.allocator.block_table(seq)
                    for b in blocks:
                        del self._owner[b]
                    self._kept_blocks -= len(blocks)
                    del self._kept[seq]
                    self.allocator.free(seq)

    def finish(self, request_id: Hashable, tokens: list[int]) -> None:
        """The request is done; `tokens` are those whose K/V it wrote (its positions 0 ..
        len(tokens) - 1). Its whole blocks become prefix cache (when there is room) and the
        rest is freed; its pin on the cached prefix goes."""
        prefix, prefix_blocks = self._cached.pop(request_id)
        seq, own = self._seq.pop(request_id), self._own.pop(request_id)
        if len(tokens) != len(prefix) + own:
            raise ValueError(f"finish({request_id!r}): {len(tokens)} tokens, but it holds "
                             f"{len(prefix)} cached + {own} own")
        kept = False
        whole = len(tokens) // self.block_size * self.block_size
        if own and whole > len(prefix) and self.num_cache_blocks:
            blocks = self.allocator.block_table(seq)
            self._evict_until(len(blocks))
            if self._kept_blocks + len(blocks) <= self.num_cache_blocks:
                table, bs = prefix_blocks + blocks, self.block_size
                values = [table[p // bs] * bs + p % bs for p in range(whole)]
                new = whole - self.cache.insert(tokens[:whole], values)
                if new > 0:
                    kept = True
                    self._kept[seq] = new
                    self._kept_blocks += len(blocks)
                    for b in blocks:
                        self._owner[b] = seq
        if prefix:
            self.cache.unlock(prefix)
        if own and not kept:
            self.allocator.free(seq)


# -- Task 4: stop strings --------------------------------------------------------------------
def find_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """(the part of `text` that may be sent now, whether a stop string occurs).

    With a stop string in `text`: the text before the earliest one, True. Without: the text
    less its longest ending that could still grow into a stop string, False."""
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    if hits:
        return text[:min(hits)], True
    hold = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), hold, -1):  # longest first
            if text.endswith(s[:k]):
                hold = k
                break
    return text[:len(text) - hold], False


# -- Task 3 (and 4): the engine --------------------------------------------------------------
@dataclass
class _Request:
    id: Hashable
    prompt: list[int]
    params: SamplingParams
    cached: int = 0  # prompt tokens from the prefix cache
    computed: int = 0  # tokens after the cached prefix whose K/V is written
    generated: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None
    done: bool = False  # finished for the client; the scheduler may still hold it (a ghost)
    # detokenizer state
    text: str = ""  # the decoded output so far
    sent: int = 0  # characters of text already sent
    prefix_offset: int = 0
    read_offset: int = 0

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.generated


class Engine:
    """Continuous batching: each step the scheduler picks the tokens to run, the model runs
    them in one batch over the paged KV cache, and every request whose known tokens are all
    processed samples its next token."""

    def __init__(self, model_dir: str | Path, config: EngineConfig | None = None, *,
                 tokenizer: Any = None) -> None:
        self.config = cfg = config or EngineConfig()
        self.model = PagedLlama(model_dir, num_blocks=cfg.num_blocks + cfg.num_cache_blocks,
                                block_size=cfg.block_size, dtype=cfg.dtype, device=cfg.device,
                                attention_backend=cfg.attention_backend)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_dir)
        self.max_model_len = self.model.config.max_position_embeddings
        self.kv = KVCacheManager(cfg.num_blocks, cfg.block_size, cfg.num_cache_blocks)
        self.scheduler = kata("scheduler").Scheduler(
            max_num_seqs=cfg.max_num_seqs, max_num_batched_tokens=cfg.max_num_batched_tokens,
            num_blocks=cfg.num_blocks, block_size=cfg.block_size)
        if cfg.cuda_graphs:
            self.model.enable_cuda_graphs(cfg.max_num_seqs, self.max_model_len)
        self.requests: dict[Hashable, _Request] = {}
        self.generator = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
        eos = set(self.model.config.eos_token_ids)
        if getattr(self.tokenizer, "eos_token_id", None) is not None:
            eos.add(self.tokenizer.eos_token_id)
        self.eos_token_ids = eos

    # -- the interface harness/serve.py uses ----------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return self.kv.num_free_blocks

    @property
    def num_total_blocks(self) -> int:
        return self.config.num_blocks + self.config.num_cache_blocks

    @property
    def num_cached_blocks(self) -> int:
        return self.kv.num_cached_blocks

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def add_request(self, request_id: Hashable, prompt_token_ids: list[int],
                    params: SamplingParams | None = None) -> None:
        params = params or SamplingParams()
        prompt = [int(t) for t in prompt_token_ids]
        vocab = self.model.config.vocab_size
        if request_id in self.requests:
            raise ValueError(f"request {request_id!r} exists already")
        if not prompt:
            raise ValueError("the prompt is empty")
        if any(not 0 <= t < vocab for t in prompt):
            raise ValueError(f"a prompt token id is outside the vocabulary [0, {vocab})")
        if params.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {params.max_tokens}")
        if len(prompt) + params.max_tokens > self.max_model_len:
            raise ValueError(f"the prompt ({len(prompt)} tokens) plus max_tokens "
                             f"({params.max_tokens}) exceeds the context of {self.max_model_len} tokens")
        need = -(-(len(prompt) + params.max_tokens - 1) // self.config.block_size)
        if need > self.config.num_blocks:
            raise ValueError(f"the request needs {need} KV blocks and the pool has "
                             f"{self.config.num_blocks}")
        if params.temperature < 0 or params.top_k < 0 or not 0 < params.top_p <= 1 \
                or not 0 <= params.min_p <= 1 or params.repetition_penalty < 1:
            raise ValueError(f"invalid sampling parameters: {params}")
        req = _Request(request_id, prompt, params)
        if params.seed is not None:
            req.generator = torch.Generator(device=self.config.device).manual_seed(params.seed)
        req.cached = self.kv.add(request_id, prompt)
        self.scheduler.add_request(request_id, len(prompt) - req.cached, params.max_tokens)
        self.requests[request_id] = req

    def abort(self, request_id: Hashable) -> None:
        """Stop a request now and free its blocks; no further output. Unknown or finished
        requests are ignored."""
        req = self.requests.get(request_id)
        if req is None or req.done:
            return
        self._retire(req)

    def step(self) -> list[RequestOutput]:
        sched = self.scheduler.schedule()
        for rid in sched.preempted:
            req = self.requests[rid]
            if not req.done:
                self.kv.preempt(rid)
                req.computed = 0
        # Build the batch: each scheduled request runs its next n unprocessed tokens.
        run: list[tuple[_Request, int, int]] = []  # (request, first position, n)
        for rid, n in sched.num_tokens.items():
            req = self.requests[rid]
            if req.done:
                continue  # a ghost: finished early, the scheduler does not know (see _retire)
            start = req.cached + req.computed
            self.kv.grow(rid, n)
            run.append((req, start, n))
        emitting: list[_Request] = []
        if run:
            logits = self._forward(run)
            rows = []
            for i, (req, start, n) in enumerate(run):
                req.computed += n
                if start + n == len(req.tokens):  # all known tokens processed: emit one
                    rows.append(i)
                    emitting.append(req)
            if rows:
                tokens = self._sample(logits[rows], emitting)
                for req, token in zip(emitting, tokens):
                    req.generated.append(token)
        finished = set(self.scheduler.update(sched))
        outputs = [self._output(req, req.id in finished) for req in emitting]
        for rid in finished:  # the scheduler has let go of them (ghosts included)
            req = self.requests.pop(rid)
            if not req.done:
                raise RuntimeError(f"the scheduler finished request {rid!r} after "
                                   f"{len(req.generated)} of its {req.params.max_tokens} tokens")
        return outputs

    # -- internals ------------------------------------------------------------------------
    def _forward(self, run: list[tuple[_Request, int, int]]) -> Tensor:
        ids, pos, slots, lens, ctx, tables = [], [], [], [], [], []
        for req, start, n in run:
            ids += req.tokens[start:start + n]
            pos += range(start, start + n)
            slots += self.kv.slot_mapping(req.id, start, start + n)
            lens.append(n)
            ctx.append(start + n)
            tables.append(self.kv.block_table(req.id))
        width = max(len(t) for t in tables)
        dev = self.model.device
        batch = Batch(
            input_ids=torch.tensor(ids, dtype=torch.long, device=dev),
            positions=torch.tensor(pos, dtype=torch.long, device=dev),
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev),
            query_lens=lens,
            context_lens=torch.tensor(ctx, dtype=torch.int32, device=dev),
            block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables],
                                      dtype=torch.int32, device=dev))
        return self.model.forward(batch)

    def _sample(self, logits: Tensor, reqs: list[_Request]) -> list[int]:
        S = kata("sampling")
        dev = logits.device
        penalties = [r.params.repetition_penalty for r in reqs]
        if any(p != 1.0 for p in penalties):
            seen = [r.tokens for r in reqs]
            width = max(len(s) for s in seen)
            prev = torch.tensor([s + [-1] * (width - len(s)) for s in seen], device=dev)
            logits = S.apply_repetition_penalty(logits, prev, torch.tensor(penalties, device=dev))
        out = [0] * len(reqs)
        greedy = [i for i, r in enumerate(reqs) if r.params.temperature == 0]
        if greedy:  # the fast path: an argmax needs no probabilities (kata 02's rule for T = 0)
            for i, t in zip(greedy, logits[greedy].argmax(dim=-1).tolist()):
                out[i] = t
        sampled = [i for i, r in enumerate(reqs) if r.params.temperature != 0]
        shared = [i for i in sampled if reqs[i].generator is None]
        groups = [(shared, self.generator)] + [([i], reqs[i].generator) for i in sampled
                                                 if reqs[i].generator is not None]
        for rows, gen in groups:
            if not rows:
                continue
            ps = [reqs[i].params for i in rows]
            tokens = S.sample(
                logits[rows],
                temperature=torch.tensor([p.temperature for p in ps], device=dev),
                top_k=torch.tensor([p.top_k for p in ps], device=dev),
                top_p=torch.tensor([p.top_p for p in ps], device=dev),
                min_p=torch.tensor([p.min_p for p in ps], device=dev),
                generator=gen)
            for i, t in zip(rows, tokens.tolist()):
                out[i] = t
        return out

    def _detokenize(self, req: _Request, final: bool = False) -> None:
        """Append the text of the newest token(s) to req.text. Incremental: only the tokens
        since the last complete character are decoded again; text waits while a UTF-8
        character is incomplete (the decode ends in U+FFFD), unless this is the final call."""
        ids = req.generated
        prefix = self.tokenizer.decode(ids[req.prefix_offset:req.read_offset], skip_special_tokens=True)
        full = self.tokenizer.decode(ids[req.prefix_offset:], skip_special_tokens=True)
        if len(full) > len(prefix) and (final or not full.endswith("\ufffd")):
            req.text += full[len(prefix):]
            req.prefix_offset, req.read_offset = req.read_offset, len(ids)

    def _output(self, req: _Request, scheduler_done: bool) -> RequestOutput:
        token = req.generated[-1]
        p = req.params
        reason = None
        if (token in self.eos_token_ids and not p.ignore_eos) or token in p.stop_token_ids:
            reason = "stop"
        elif len(req.generated) >= p.max_tokens:
            reason = "length"
        self._detokenize(req, final=reason is not None)
        visible, hit = find_stop(req.text, p.stop)
        if hit:
            reason = "stop"
        elif reason is not None:
            visible = req.text  # the end: nothing more can complete a stop string
        new_text = visible[req.sent:]
        req.sent = max(req.sent, len(visible))
        out = RequestOutput(req.id, [token], new_text, finished=reason is not None,
                            finish_reason=reason, prompt_tokens=len(req.prompt),
                            completion_tokens=len(req.generated), cached_tokens=req.cached)
        if reason is not None:
            self._retire(req, scheduler_done)
        return out

    def _retire(self, req: _Request, scheduler_done: bool = False) -> None:
        """The request is over for its client: its KV goes to the prefix cache or back to the
        pool now. A scheduler with kata 10's optional `abort` (Task 6) drops it at once; with
        one that has none (abort is beyond kata 10's contract), a request that stopped before
        max_tokens stays there as a ghost: it is scheduled (its tokens are skipped, not
        computed) until the scheduler finishes it."""
        req.done = True
        self.kv.finish(req.id, req.tokens[:req.cached + req.computed])
        abort = getattr(self.scheduler, "abort", None)
        if not scheduler_done and abort is not None:  # not in kata 10's contract: optional
            abort(req.id)
            del self.requests[req.id]
