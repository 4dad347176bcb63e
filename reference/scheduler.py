"""Continuous batching: a token budget per step, chunked prefill, running requests first,
first-come-first-served admission, preemption by recompute.

Reference solution of kata 10 (katas/10_scheduler/README.md).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Hashable


@dataclass
class ScheduleOutput:
    """One step: how many tokens each request runs, and who was preempted to make room."""

    num_tokens: dict[Hashable, int] = field(default_factory=dict)
    preempted: list[Hashable] = field(default_factory=list)


@dataclass
class _Request:
    id: Hashable
    prompt_len: int
    max_new_tokens: int
    generated: int = 0  # tokens emitted so far; they survive a preemption
    processed: int = 0  # tokens whose K/V is in the cache; back to 0 after a preemption
    blocks: int = 0  # KV blocks held

    @property
    def known(self) -> int:
        """Prompt plus generated tokens: what the model must have processed to emit the next."""
        return self.prompt_len + self.generated


class Scheduler:
    """Decides, step by step, which requests run and how many tokens each."""

    def __init__(self, *, max_num_seqs: int, max_num_batched_tokens: int, num_blocks: int,
                 block_size: int) -> None:
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.block_size = block_size
        self.free_blocks = num_blocks
        self.requests: dict[Hashable, _Request] = {}  # every unfinished request
        self.waiting: deque[_Request] = deque()  # first come, first served
        self.running: list[_Request] = []  # in admission order: the oldest first

    def add_request(self, request_id: Hashable, prompt_len: int, max_new_tokens: int) -> None:
        if request_id in self.requests:
            raise ValueError(f"request {request_id!r} already exists")
        if prompt_len < 1 or max_new_tokens < 1:
            raise ValueError(f"prompt_len and max_new_tokens must be >= 1, got "
                             f"{prompt_len} and {max_new_tokens}")
        request = _Request(request_id, prompt_len, max_new_tokens)
        self.requests[request_id] = request
        self.waiting.append(request)

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    # -- KV blocks -----------------------------------------------------------------------
    def _blocks_short(self, req: _Request, n: int) -> int:
        """How many more blocks req needs to hold its processed tokens plus n new ones."""
        need = -(-(req.processed + n) // self.block_size)  # ceil
        return need - req.blocks

    def _grow(self, req: _Request, n: int, out: ScheduleOutput) -> None:
        """Schedule n tokens of req; the blocks for them are taken now, at schedule time."""
        short = self._blocks_short(req, n)
        if short > 0:
            self.free_blocks -= short
            req.blocks += short
        out.num_tokens[req.id] = n

    def _preempt(self, req: _Request, out: ScheduleOutput) -> None:
        """Recompute: drop the KV cache; the generated tokens stay and will be re-processed."""
        self.free_blocks += req.blocks
        req.blocks = 0
        req.processed = 0
        self.waiting.appendleft(req)  # back to the FRONT of the queue
        out.preempted.append(req.id)

    def _make_room(self, req: _Request, n: int, out: ScheduleOutput) -> bool:
        """Preempt the youngest running requests until req fits; False if req itself went."""
        while self._blocks_short(req, n) > self.free_blocks:
            victim = self.running.pop()  # the youngest: the oldest always keeps going
            self._preempt(victim, out)
            if victim is req:
                return False
        return True

    # -- one step ------------------------------------------------------------------------
    def schedule(self) -> ScheduleOutput:
        out = ScheduleOutput()
        budget = self.max_num_batched_tokens

        # 1. Running requests first (a decode needs 1 token, an unfinished prefill a chunk),
        #    oldest first. Victims are taken from the end, so the ones already scheduled stay.
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.known - req.processed, budget)  # the chunk: what is left, or the budget
            if self._blocks_short(req, n) > self.free_blocks and not self._make_room(req, n, out):
                break  # req preempted itself: nobody younger is left
            self._grow(req, n, out)
            budget -= n
            i += 1

        # 2. Admit waiting requests in order. Not after a preemption: memory is short.
        while (self.waiting and budget > 0 and len(self.running) < self.max_num_seqs
               and not out.preempted):
            req = self.waiting[0]
            n = min(req.known - req.processed, budget)  # a chunk of prompt (+ generated)
            if self._blocks_short(req, n) > self.free_blocks:
                break  # first come, first served: nobody overtakes the head of the queue
            del self.waiting[0]
            self.running.append(req)
            self._grow(req, n, out)
            budget -= n
        return out

    def update(self, output: ScheduleOutput) -> list[Hashable]:
        finished = []
        for request_id, n in output.num_tokens.items():
            req = self.requests.get(request_id)
            if req is None:
                continue  # aborted after this step was scheduled: it emits nothing
            req.processed += n
            if req.processed == req.known:  # its last known token ran: the model emits one
                req.generated += 1
                if req.generated == req.max_new_tokens:
                    finished.append(request_id)
        if finished:
            for request_id in finished:
                self.free_blocks += self.requests.pop(request_id).blocks
            done = set(finished)
            self.running = [r for r in self.running if r.id not in done]
        return finished

    # -- optional, beyond the contract (README, Task 6) -----------------------------------
    def abort(self, request_id: Hashable) -> None:
        """Drop a request now (its client left, or it hit eos or a stop string before
        max_new_tokens): its blocks come back at once, it is never scheduled again, and
        update() never returns it. Unknown, finished or aborted ids are ignored. Safe between
        schedule() and update(): update() skips it."""
        req = self.requests.pop(request_id, None)
        if req is None:
            return  # unknown, finished, or aborted already: nothing to do
        self.free_blocks += req.blocks  # back to the pool now (a waiting request holds none)
        req.blocks = 0
        # O(n), but once per aborted request, not per request per step.
        self.running = [r for r in self.running if r is not req]
        self.waiting = deque(r for r in self.waiting if r is not req)
