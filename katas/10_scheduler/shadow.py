"""The scheduler's rules, checked from its outputs alone (README, "API").

A `Shadow` follows every request through the steps using nothing but what a scheduler
returns (`num_tokens`, `preempted`, the finished list of `update`), so any implementation,
whatever its internals, chunking policy or order within the budget, can be checked:

    shadow = Shadow(max_num_seqs=..., max_num_batched_tokens=..., num_blocks=..., block_size=...)
    shadow.add(rid, prompt_len, max_new_tokens)        # beside scheduler.add_request
    shadow.check_schedule(out)                         # after scheduler.schedule()
    shadow.check_update(finished)                      # after scheduler.update(out)
    shadow.abort(rid)                                  # beside scheduler.abort (optional, Task 6)

Any broken rule raises `RuleBroken` (an AssertionError) naming the rule, the step, the
request, and `where` (the workload's seed, set by the caller).

The model of a request: `known` = prompt_len + generated tokens; `processed` = tokens
whose K/V is cached (0 after a preemption). A step may run at most known - processed
tokens of it; when a step ends with processed == known, it emits one token
(generated += 1), and at max_new_tokens it is finished.
"""
from __future__ import annotations

import numbers
import textwrap
from dataclasses import dataclass, field
from typing import Any, Hashable


class RuleBroken(AssertionError):
    pass


@dataclass
class Req:
    id: Hashable
    prompt_len: int
    max_new_tokens: int
    added_step: int
    generated: int = 0
    processed: int = 0  # since the last preemption
    state: str = "waiting"  # waiting | running | finished | aborted
    preemptions: int = 0
    token_steps: list[int] = field(default_factory=list)  # the step of each emitted token

    @property
    def known(self) -> int:
        return self.prompt_len + self.generated

    def describe(self) -> str:
        preempted = f", preempted {self.preemptions}x" if self.preemptions else ""
        return (f"prompt_len={self.prompt_len}, max_new_tokens={self.max_new_tokens}, "
                f"generated={self.generated}, processed={self.processed} (tokens with K/V "
                f"since its last preemption), {self.state}{preempted}")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class Shadow:
    def __init__(self, *, max_num_seqs: int, max_num_batched_tokens: int, num_blocks: int,
                 block_size: int, where: str = "") -> None:
        self.max_num_seqs = max_num_seqs
        self.budget = max_num_batched_tokens
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.where = where
        self.step = 0  # the step being scheduled / updated
        self.reqs: dict[Hashable, Req] = {}
        self.running: dict[Hashable, Req] = {}  # insertion order = admission order
        # The waiting queue as groups: a request preempted in step t joins a group at the
        # front with the others preempted in t (their order among themselves is free).
        self.queue: list[list[Hashable]] = []
        self.unfinished = 0
        self._pending: dict[Hashable, int] | None = None  # the last schedule's num_tokens
        self.max_blocks_used = 0
        self.total_preemptions = 0

    # -- failures ---------------------------------------------------------------------
    def fail(self, rule: str, detail: str, rid: Any = None) -> None:
        __tracebackhide__ = True
        who = f", request {rid!r}" if rid is not None else ""
        req = self.reqs.get(rid) if rid is not None else None
        lines = [f"{rule} (step {self.step}{who})", _wrap(detail)]
        if req is not None:
            lines.append(_wrap(f"that request: {req.describe()}"))
        if self.where:
            lines.append(self.where)
        raise RuleBroken("\n  ".join(lines))

    # -- the three calls, and the optional abort ---------------------------------------
    def add(self, rid: Hashable, prompt_len: int, max_new_tokens: int) -> None:
        self.reqs[rid] = Req(rid, prompt_len, max_new_tokens, self.step)
        self.queue.append([rid])
        self.unfinished += 1

    def abort(self, rid: Hashable) -> None:
        """The request leaves now, from the queue or the running set: it holds no blocks, is
        never scheduled again, emits nothing more and is never returned by update, even when
        aborted between schedule() and update(). Unknown, finished or aborted ids: no-op."""
        req = self.reqs.get(rid)
        if req is None or req.state in ("finished", "aborted"):
            return
        if req.state == "running":
            del self.running[rid]
        else:
            self.queue = [kept for group in self.queue if (kept := [r for r in group if r != rid])]
        req.state = "aborted"
        self.unfinished -= 1

    def check_schedule(self, out: Any) -> dict[Hashable, int]:
        """Validate one ScheduleOutput and apply its preemptions and admissions."""
        __tracebackhide__ = True
        if self._pending is not None:
            self.fail("call order", "schedule() was called twice without update() between")
        num_tokens = getattr(out, "num_tokens", None)
        preempted = getattr(out, "preempted", None)
        if not isinstance(num_tokens, dict):
            self.fail("ScheduleOutput", f"num_tokens must be a dict, got {type(num_tokens).__name__}")
        if not isinstance(preempted, (list, tuple)):
            self.fail("ScheduleOutput", f"preempted must be a list, got {type(preempted).__name__}")

        # Preemptions first: each frees its blocks and restarts from zero processed tokens.
        if len(set(preempted)) != len(preempted):
            self.fail("preempted list", f"a request appears twice in preempted={list(preempted)}")
        both = sorted(set(preempted) & set(num_tokens), key=str)
        if both:  # rule 5: a preempted request waits at least one step
            self.fail("preemption", f"{both[0]!r} is both preempted and scheduled in this step: a "
                      "request you preempt frees its blocks and waits (rule 5); scheduling it again "
                      "in the same step usually means it chose itself as the victim", both[0])
        group = []
        for rid in preempted:
            req = self.reqs.get(rid)
            if req is None or req.state != "running":
                self.fail("preemption", f"preempted {rid!r}, which was not running "
                          f"({'unknown' if req is None else req.state})", rid if req else None)
            req.state, req.processed = "waiting", 0
            req.preemptions += 1
            self.total_preemptions += 1
            del self.running[rid]
            group.append(rid)
        if group:
            self.queue.insert(0, group)  # back to the FRONT of the waiting queue

        # What runs: known requests, whole positive token counts, none beyond its unprocessed.
        for rid, n in num_tokens.items():
            req = self.reqs.get(rid)
            if req is None:
                self.fail("num_tokens", f"schedules {rid!r}, which was never added")
            if req.state == "finished":
                self.fail("num_tokens", "schedules a request that already finished", rid)
            if req.state == "aborted":
                self.fail("an aborted request is never scheduled again", "num_tokens schedules "
                          "it after abort() (abort must take it out of the waiting queue and the "
                          "running requests)", rid)
            if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 1:
                self.fail("num_tokens", f"each value must be an int >= 1 (a request that does "
                          f"not run is left out), got {n!r}", rid)
            if n > req.known - req.processed:
                restarted = ("\nIt was preempted: it restarts from 0 processed tokens, reprocesses "
                             "its prompt + generated tokens,\nand emits its next token only once "
                             "all of them are processed." if req.preemptions else "")
                self.fail("no request runs more tokens than it has unprocessed",
                          f"scheduled {n} tokens, but only known - processed = {req.known} - "
                          f"{req.processed} = {req.known - req.processed} are unprocessed.{restarted}", rid)
        total = sum(num_tokens.values())
        if total > self.budget:
            self.fail("token budget", f"the step runs {total} tokens > max_num_batched_tokens="
                      f"{self.budget} (num_tokens={_short(num_tokens)})")

        # Admissions: requests that were waiting and run now.
        admitted = [rid for rid in num_tokens if self.reqs[rid].state == "waiting"]
        if admitted:
            skipped = [rid for rid in self.running if rid not in num_tokens]
            if skipped:
                self.fail("running requests are served before new ones are admitted",
                          f"admitted {admitted} while running {skipped} got no token this step "
                          f"(num_tokens={_short(num_tokens)})", skipped[0])
            self._check_fcfs(set(admitted))
            for rid in admitted:
                self.reqs[rid].state = "running"
                self.running[rid] = self.reqs[rid]
        if len(self.running) > self.max_num_seqs:
            self.fail("max_num_seqs", f"{len(self.running)} requests are running (admitted, not "
                      f"finished or preempted) > max_num_seqs={self.max_num_seqs}: "
                      f"{_short(list(self.running))}")

        # KV blocks: a request scheduled for n tokens holds ceil((processed + n) / block_size).
        used = 0
        for rid, req in self.running.items():
            used += _cdiv(req.processed + num_tokens.get(rid, 0), self.block_size)
        self.max_blocks_used = max(self.max_blocks_used, used)
        if used > self.num_blocks:
            self.fail("KV blocks", f"the running requests need {used} blocks > num_blocks="
                      f"{self.num_blocks} (each holds ceil((processed + tokens this step) / "
                      f"block_size={self.block_size})): someone should have been preempted, or "
                      f"not admitted. num_tokens={_short(num_tokens)}")
        self._pending = dict(num_tokens)
        return self._pending

    def _check_fcfs(self, admitted: set) -> None:
        """The admitted requests must be a prefix of the waiting queue (the last group may
        be partly admitted: its order is free)."""
        __tracebackhide__ = True
        seen = 0
        keep: list[list[Hashable]] = []
        blocked_by = None
        for g, group in enumerate(self.queue):
            inside = [rid for rid in group if rid in admitted]
            seen += len(inside)
            rest = [rid for rid in group if rid not in admitted]
            if rest:
                if seen < len(admitted):
                    blocked_by = rest[0]
                    break
                keep.append(rest)
                keep.extend(self.queue[g + 1:])
                break
        else:
            keep = []
        if blocked_by is not None:
            jumped = [rid for grp in self.queue for rid in grp if rid in admitted]
            self.fail("first come, first served",
                      f"admitted {jumped[-1]!r} while {blocked_by!r}, ahead of it in the waiting "
                      f"queue, stays waiting (queue front: {_short([r for grp in self.queue for r in grp])}"
                      f"; a preempted request goes back to the FRONT)", blocked_by)
        self.queue = keep

    def check_update(self, finished: Any) -> list[Hashable]:
        """Apply the pending step; check update's finished list. Returns who emitted a token."""
        __tracebackhide__ = True
        if self._pending is None:
            self.fail("call order", "update() was called without a schedule() before it")
        if not isinstance(finished, (list, tuple)):
            self.fail("update", f"must return a list of request ids, got {type(finished).__name__}")
        emitted, expected = [], []
        for rid, n in self._pending.items():
            req = self.reqs[rid]
            if req.state == "aborted":
                continue  # aborted between schedule() and update(): it emits nothing
            req.processed += n
            if req.processed == req.known:
                req.generated += 1
                req.token_steps.append(self.step)
                emitted.append(rid)
                if req.generated == req.max_new_tokens:
                    expected.append(rid)
        got = list(finished)
        if len(set(got)) != len(got):
            self.fail("update", f"a request appears twice in the finished list {got}")
        for rid in got:
            if rid not in self.reqs:
                self.fail("update", f"returned {rid!r} as finished, which was never added")
            if self.reqs[rid].state == "aborted":
                self.fail("an aborted request is never returned by update", "update returned it "
                          "as finished after abort() (aborted after this step's schedule() or "
                          "before it); it left with abort and emits nothing more", rid)
            if rid not in expected:
                req = self.reqs[rid]
                self.fail("each request finishes with exactly max_new_tokens",
                          f"update returned it as finished, but it has emitted {req.generated} of "
                          f"{req.max_new_tokens} tokens (a request emits one token in each step "
                          f"that ends with its prompt + generated tokens all processed)", rid)
        for rid in expected:
            if rid not in got:
                self.fail("each request finishes with exactly max_new_tokens",
                          f"this step it emitted token {self.reqs[rid].generated} of "
                          f"max_new_tokens={self.reqs[rid].max_new_tokens}, but update did not "
                          f"return it as finished", rid)
        for rid in expected:
            req = self.reqs[rid]
            req.state = "finished"
            del self.running[rid]
            self.unfinished -= 1
        self._pending = None
        self.step += 1
        return emitted


def _wrap(text: str, width: int = 200) -> str:
    """Lines short enough for the harness's failure report (it clips lines at 240)."""
    return "\n    ".join(part for line in text.split("\n")
                         for part in (textwrap.wrap(line, width) if len(line) > width else [line]))


def _short(x: Any, limit: int = 12) -> str:
    """A dict or list for a message, cut after `limit` items."""
    if isinstance(x, dict):
        items = [f"{k!r}: {v}" for k, v in x.items()]
        ends = "{}"
    else:
        items = [repr(k) for k in x]
        ends = "[]"
    more = f", ... ({len(items)} in all)" if len(items) > limit else ""
    return ends[0] + ", ".join(items[:limit]) + more + ends[1]
