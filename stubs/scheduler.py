"""Kata 10: a continuous-batching scheduler. Read katas/10_scheduler/README.md, then fill in
the `Scheduler` class. Run `pytest katas/10` to see how far you got, and
`python katas/10_scheduler/simulate.py` to watch it serve a trace.

Words: a request's `known` tokens are its prompt plus the tokens it generated so far; its
`processed` tokens are those whose K/V is in the cache. A step runs some unprocessed tokens
of some requests; a request whose known tokens are then all processed emits one token.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable


@dataclass
class ScheduleOutput:
    """One step: how many tokens each request runs, and who was preempted to make room.

    num_tokens: request id -> tokens it runs this step (>= 1; a request that does not run
        is left out). A prefill may be chunked: fewer tokens than its prompt.
    preempted: the requests preempted during this schedule() call (their blocks are free
        and their processed tokens are forgotten; they wait at the front of the queue).
    """

    num_tokens: dict[Hashable, int] = field(default_factory=dict)
    preempted: list[Hashable] = field(default_factory=list)


class Scheduler:
    """Decides, step by step, which requests run and how many tokens each.

    Rules (README, "API"): at most max_num_batched_tokens tokens per step and at most
    max_num_seqs running requests; running requests are served before waiting ones are
    admitted; admission is first come, first served; a request scheduled for n tokens holds
    ceil((processed + n) / block_size) KV blocks after schedule(), never more than num_blocks
    in all; when blocks run out, preempt by recompute (free the blocks, forget the processed
    tokens, keep the generated ones, back to the FRONT of the waiting queue).
    """

    def __init__(self, *, max_num_seqs: int, max_num_batched_tokens: int, num_blocks: int,
                 block_size: int) -> None:
        raise NotImplementedError("Task 1: keep the limits, a waiting queue and the running requests")

    def add_request(self, request_id: Hashable, prompt_len: int, max_new_tokens: int) -> None:
        """Queue a new request. ValueError for a known request_id, or a length below 1."""
        raise NotImplementedError("Task 1: add_request")

    def has_unfinished(self) -> bool:
        """True while some added request has not finished."""
        raise NotImplementedError("Task 1: has_unfinished")

    def schedule(self) -> ScheduleOutput:
        """Plan one step: running requests first, then admit waiting ones in order.

        Task 1: whole prompts and decodes within the budget and max_num_seqs.
        Task 2: chunked prefill. Task 3: KV blocks and preemption by recompute.
        """
        raise NotImplementedError("Task 1: schedule (Task 2 chunks it, Task 3 adds blocks)")

    def update(self, output: ScheduleOutput) -> list[Hashable]:
        """After the model ran `output`: every scheduled request adds its tokens to its
        processed ones; one whose known tokens are now all processed emits a token. Returns
        the requests that reached max_new_tokens; they leave and free their blocks."""
        raise NotImplementedError("Task 1: update")

    # Task 6 (optional, beyond the contract): drop a request early.
    #
    #     def abort(self, request_id: Hashable) -> None:
    #         """Remove the request wherever it is (waiting or running) and free its blocks
    #         now; it is never scheduled again and update() never returns it (also when it
    #         comes between schedule() and update()). Unknown or finished ids: ignored."""
    #
    # Left out on purpose, not a NotImplementedError: kata 16's engine looks it up with
    # getattr(scheduler, "abort", None) and uses it only when it exists. Write it in to do
    # Task 6; its checks skip until then.
