"""Kata 14's process groups: a pool of worker processes that the tests send jobs to.

The pytest process (the parent) starts `Pool(size, backend)`'s workers once per test module:
`python spawn.py --worker ...` processes that import torch and the module under test (from
the folder --impl chose: KATA_IMPL, as harness.load_kata_module reads it) and then wait for
jobs on a pipe. `pool.run(world, "ring", cases)` makes ranks 0 .. world-1 members of a default
process group of `world` ranks (re-initialised only when the world size changes, or after a
failure; a few milliseconds), runs the job function `job_ring(ctx, cases)` of this file on each
of them, and returns their results in rank order. The checks themselves run in the parent.

Nothing can hang a test run:
- every process group has a timeout (GLOO_TIMEOUT_S): a receive that never gets its message
  raises in the rank that waits;
- the parent waits for each job at most `timeout` seconds; a rank that has not answered by
  then is reported by rank, with the line of the learner's code where it was (sent SIGUSR1,
  the rank writes its stack to its log with faulthandler), and the pool is killed and
  restarted on next use; after one rank failed, the others get GRACE_S more seconds;
- a rank that raises is reported with its exception and the learner's lines it went through;
  a rank that calls an unimplemented stub function becomes the usual one-line TODO.

Failures are raised as BaseException subclasses (like the harness's KataTodo), so that
hypothesis does not replay (shrink) an example that would only hang or fail again.

Child side: the `job_*` functions (what each rank does) and the hooks that count the bytes a
rank sends (dist.send / dist.isend, also through dist.batch_isend_irecv) and the collectives
it calls (dist.all_reduce, reduce_scatter, all_gather, broadcast, ...; forbidden inside
`ring_all_reduce`). The hooks are installed before the learner's module is imported, so
`from torch.distributed import isend` is hooked too.

bench.py imports this file for its timing functions (`time_ring_and_nccl`, `time_mlp`), so
that the README's table and the perf tests measure the same way.
"""
from __future__ import annotations

import functools
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[2]
MODULE = "tensor_parallel"
GLOO_TIMEOUT_S = 10.0  # a receive that waits longer raises (a deadlock, or a peer that died)
JOB_TIMEOUT_S = 30.0  # the parent's limit for one job, unless the caller gives another
START_TIMEOUT_S = 180.0  # importing torch in `size` processes on a busy 2-core machine
GRACE_S = 3.0  # after one rank failed: how long the others get to finish before they are killed


# ------------------------------------------------------------------------------------------
# Inputs: the same tensors in the parent (expected values) and in every rank (seeded).
# ------------------------------------------------------------------------------------------
def dtype_of(name: str) -> torch.dtype:
    return getattr(torch, name)


def rank_tensor(seed: int, rank: int, shape: tuple[int, ...], dtype: str) -> torch.Tensor:
    """Rank `rank`'s input to an all-reduce: N(0, 1) floats or integers in [-1000, 1000)."""
    gen = torch.Generator().manual_seed(1_000_003 * seed + 7919 * rank + 1)
    dt = dtype_of(dtype)
    if dt.is_floating_point:
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dt)
    return torch.randint(-1000, 1000, shape, generator=gen, dtype=dt)


def full_linear(seed: int, in_f: int, out_f: int, bias: bool, dtype: str
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The unsharded weight (out_f, in_f) and bias (out_f,), the same on every rank."""
    gen = torch.Generator().manual_seed(2_000_003 * seed + 17)
    w = torch.randn(out_f, in_f, generator=gen, dtype=torch.float64) / in_f ** 0.5
    b = torch.randn(out_f, generator=gen, dtype=torch.float64) if bias else None
    return w.to(dtype_of(dtype)), None if b is None else b.to(dtype_of(dtype))


def activations(seed: int, shape: tuple[int, ...], dtype: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3_000_003 * seed + 29)
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype_of(dtype))


def chunk_slice(size: int, world: int, rank: int) -> slice:
    """Rank `rank`'s contiguous, equal slice of `size` (size divisible by world)."""
    k = size // world
    return slice(rank * k, (rank + 1) * k)


# ------------------------------------------------------------------------------------------
# Parent side
# ------------------------------------------------------------------------------------------
class RankFailed(BaseException):
    """A rank raised, hung or died during a job."""


class RankTodo(BaseException):
    """A rank called a function of the stub that is not implemented yet (one TODO line)."""


def _raise_todo(message: str, filename: str, lineno: int, func: str) -> None:
    """Raise the stub's NotImplementedError from a frame that points at the stub's own line
    (filename, lineno, func), so that the harness prints its usual one-line TODO."""
    if func.isidentifier() and lineno >= 2:
        source = "\n" * (lineno - 2) + f"def {func}():\n    raise NotImplementedError(__message__)\n"
    else:
        source = "\n" * max(lineno - 1, 0) + "raise NotImplementedError(__message__)\n"
    scope: dict[str, Any] = {"__message__": message}
    try:
        exec(compile(source, filename, "exec"), scope)  # noqa: S102 - our own two lines
        if func.isidentifier() and lineno >= 2:
            scope[func]()
    except NotImplementedError as exc:
        raise RankTodo(message) from exc


_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<func>\S+)')


class Pool:
    """`size` worker processes; `run(world, job, ...)` runs a job on ranks 0 .. world-1."""

    def __init__(self, size: int, backend: str = "gloo", timeout_s: float = JOB_TIMEOUT_S,
                 impl: str | None = None) -> None:
        self.size, self.backend, self.timeout_s = size, backend, timeout_s
        self.impl = impl or os.environ.get("KATA_IMPL") or str(ROOT / "stubs")
        self.procs: list[subprocess.Popen] = []
        self.to_rank: list[Connection] = []
        self.from_rank: list[Connection] = []
        self.world = 0  # ranks in the current default group (0: none yet, or to re-initialise)
        self.generation = 0
        self.tmp: Path | None = None
        self.starts = 0  # how many times the processes were started (tests may look)

    # -- processes ---------------------------------------------------------------------------
    def _start(self) -> None:
        self.close()
        self.starts += 1
        self.tmp = Path(tempfile.mkdtemp(prefix="kata14-"))
        env = dict(os.environ, KATA_IMPL=self.impl, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                   PYTHONFAULTHANDLER="1")
        if self.backend == "nccl":
            env.setdefault("NCCL_NVLS_ENABLE", "0")  # NVLink multicast stays off (machine note)
        for rank in range(self.size):
            down_r, down_w = os.pipe()
            up_r, up_w = os.pipe()
            log = open(self.tmp / f"rank{rank}.log", "wb")  # noqa: SIM115 - the child owns it
            proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--worker", str(rank),
                 str(down_r), str(up_w), self.backend, str(self.tmp)],
                pass_fds=(down_r, up_w), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
            log.close()
            os.close(down_r)
            os.close(up_w)
            self.procs.append(proc)
            self.to_rank.append(Connection(down_w, readable=False))
            self.from_rank.append(Connection(up_r, writable=False))
        answers = self._collect(list(range(self.size)), START_TIMEOUT_S, "starting the worker processes")
        bad = [(r, a) for r, a in enumerate(answers) if a[0] != "ready"]
        if bad:
            self.close()
            raise RankFailed(f"worker process of rank {bad[0][0]} could not start: {bad[0][1]}")

    def close(self) -> None:
        """Stop the workers (politely, then by force) and remove their scratch folder."""
        for conn in self.to_rank:
            try:
                conn.send_bytes(pickle.dumps(("exit",)))
            except OSError:
                pass
        deadline = time.monotonic() + 5
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for conn in self.to_rank + self.from_rank:
            conn.close()
        self.procs, self.to_rank, self.from_rank, self.world = [], [], [], 0
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        self.close()

    def _alive(self) -> bool:
        return bool(self.procs) and all(p.poll() is None for p in self.procs)

    # -- messages ----------------------------------------------------------------------------
    def _send(self, rank: int, message: tuple) -> None:
        self.to_rank[rank].send_bytes(pickle.dumps(message))

    def _collect(self, ranks: list[int], timeout: float, what: str) -> list[tuple]:
        """Each rank's answer, in rank order; a rank that did not answer in time gets
        ("hung",) and one that died ("died", exit code)."""
        answers: dict[int, tuple] = {}
        waiting = {self.from_rank[r]: r for r in ranks}
        deadline = time.monotonic() + timeout
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for conn in wait(list(waiting), timeout=left):
                rank = waiting.pop(conn)
                try:
                    answers[rank] = pickle.loads(conn.recv_bytes())
                except (EOFError, OSError):
                    proc = self.procs[rank]
                    try:
                        code = proc.wait(timeout=2)
                    except subprocess.TimeoutExpired:
                        code = None
                    answers[rank] = ("died", code, self._log_tail(rank))
            if any(a[0] not in ("ok", "ready") for a in answers.values()) and \
                    deadline - time.monotonic() > GRACE_S:
                deadline = time.monotonic() + GRACE_S  # one failed: the others get a short grace
        hung = list(waiting.values())
        for rank in hung:  # each writes its stack to its log (faulthandler, registered on SIGUSR1)
            try:
                self.procs[rank].send_signal(signal.SIGUSR1)
            except OSError:
                pass
        if hung:
            time.sleep(0.5)
        cut = any(a[0] not in ("ok", "ready") for a in answers.values())  # by the grace period
        for rank in hung:
            answers[rank] = ("hung", self._where(rank), cut)
        return [answers[r] for r in ranks]

    def _log(self, rank: int) -> str:
        if self.tmp is None:
            return ""
        try:
            return (self.tmp / f"rank{rank}.log").read_text(errors="replace")
        except OSError:
            return ""

    def _log_tail(self, rank: int, lines: int = 8) -> str:
        text = self._log(rank).rsplit("=== job ", 1)[-1].splitlines()[1:]
        return "\n".join(text[-lines:])

    def _where(self, rank: int) -> str:
        """Where a hung rank was: the learner's innermost line in its faulthandler dump."""
        dump = self._log(rank).rsplit("=== job ", 1)[-1]
        for match in _FRAME.finditer(dump):  # most recent call first
            path = Path(match["file"])
            if path.parent.resolve() == Path(self.impl).resolve():
                line = _source_line(path, int(match["line"]))
                return f"{_short(path)}:{match['line']} {match['func']}(){': ' + line if line else ''}"
        return "a line outside your module (none of its frames was on the stack)"

    # -- jobs --------------------------------------------------------------------------------
    def _init(self, world: int) -> None:
        self.generation += 1
        assert self.tmp is not None
        store = str(self.tmp / f"store{self.generation}")
        for rank in range(self.size):
            self._send(rank, ("init", world, store))
        answers = self._collect(list(range(self.size)), START_TIMEOUT_S / 2,
                                f"initialising a process group of {world} ranks")
        if any(a[0] != "ok" for a in answers):
            self.kill()
            raise RankFailed(f"could not initialise a {self.backend} process group of {world} "
                             f"ranks: {answers}")
        self.world = world

    def run(self, world: int, job: str, *args: Any, timeout: float | None = None,
            what: str = "") -> list[Any]:
        """Run job_<job>(ctx, *args) on ranks 0 .. world-1; their results in rank order."""
        if world > self.size:
            raise ValueError(f"a pool of {self.size} processes cannot run {world} ranks")
        if not self._alive():
            self._start()
        if self.world != world:
            self._init(world)
        timeout = timeout or self.timeout_s
        what = what or f"job {job}"
        finished = False
        try:
            for rank in range(world):
                self._send(rank, ("job", job, args, timeout))
            answers = self._collect(list(range(world)), timeout, what)
            finished = True
        finally:
            if not finished:  # interrupted (the harness's time limit, ^C): state unknown
                self.kill()
        kinds = [a[0] for a in answers]
        if all(k == "ok" for k in kinds):
            return [a[1] for a in answers]
        answers = [a[:5] + (" | ".join(self._log_tail(r, 3).splitlines()),) if a[0] == "error" else a
                   for r, a in enumerate(answers)]  # what a failing rank printed last
        message = self._describe(answers, world, what, timeout)
        if any(k in ("hung", "died") for k in kinds):
            self.kill()  # restarted on next use
        elif not all(k == "todo" for k in kinds):  # (every rank stopped at a stub: nothing in flight)
            self.world = 0  # a failed job may leave messages in flight: a fresh group next time
        todo = [a for a in answers if a[0] == "todo"]
        if todo and all(a[0] in ("todo", "ok") or _gave_up(a) for a in answers):
            _, text, filename, lineno, func = todo[0]  # the others only waited for the stub's rank
            _raise_todo(text, filename, lineno, func)
        raise RankFailed(message)

    def _describe(self, answers: list[tuple], world: int, what: str, timeout: float) -> str:
        """One message for a failed job: the root cause first (an exception in the learner's
        code, rather than the receive timeouts and closed connections it caused in the peers),
        then one line per rank, each under the harness's 240 characters."""
        comm = _gave_up

        def at(frames: list[str]) -> str:
            return f", at {frames[-1]}" if frames else ""

        lines: list[str] = []
        for rank in range(world):
            a, head = answers[rank], f"rank {rank} of {world}"
            if a[0] == "ok":
                lines.append(f"{head} finished")
            elif a[0] == "hung":
                lines.append(f"{head} " + ("was still running when the others had failed" if a[2]
                                           else f"did not finish within {timeout:g} s") + f", at {a[1]}")
            elif a[0] == "died":
                tail = a[2].strip().splitlines()[-1:] if a[2] else []
                lines.append(f"{head} died (exit code {a[1]})" + (f"; its last output: {tail[0]}" if tail else ""))
            elif a[0] == "todo":
                lines.append(f"{head} reached a stub function: {a[1]}")
            elif comm(a):
                timed_out = "Timed out" in a[2]
                lines.append(f"{head} " + (f"waited {GLOO_TIMEOUT_S:g} s for a message that never came"
                                           if timed_out else "was waiting when a peer gave up "
                                           "(connection closed)") + at(a[3]))
            else:
                lines.append(f"{head} raised {a[1]}: {_clean(a[2])}")
                lines += [f"    in your code, {f}" for f in a[3][-3:]]
                if a[5]:
                    lines.append(f"    its last output: {a[5]}")
        roots = [r for r in range(world) if answers[r][0] not in ("ok",) and not comm(answers[r])]
        if roots:  # an exception (or a death) caused the rest: it goes first
            first = roots[0]
            order = [first] + [r for r in range(world) if r != first]
            body = _group_lines(lines, order)
            return "\n".join([f"{what}: {body[0]}", *[f"  {ln}" for ln in body[1:]]])

        def names(rs: list[int]) -> str:
            return ("rank " if len(rs) == 1 else "ranks ") + ", ".join(map(str, rs))

        waiting = [r for r in range(world) if answers[r][0] == "error"]  # gave up on a message
        running = [r for r in range(world) if answers[r][0] == "hung"]
        if waiting and running:
            head = (f"{what}: {names(running)} still running (see where) while {names(waiting)} "
                    "waited for messages that never came")
        elif running:
            head = f"{what}: {names(running)} did not finish (an endless loop, or a deadlock?)"
        else:
            head = (f"{what}: {'no rank' if len(waiting) == world else 'not every rank'} finished: "
                    f"{names(waiting)} waited for messages that never came (a deadlock?)")
        advice = ["A blocking recv waits until the peer's send arrives: if every rank receives first "
                  "(or, on NCCL, sends first), nobody gets past it.",
                  "Post each step's send and receive together (dist.batch_isend_irecv, or isend + "
                  "irecv, then wait on both); every send needs a receive of the same size on its peer."]
        return "\n".join([head, *[f"  {ln}" for ln in lines + advice]])


def _gave_up(answer: tuple) -> bool:
    """A rank that was still waiting (hung), or gave up waiting for a message (a receive's
    timeout, a connection its peer closed): a consequence, rarely the cause, of a failure."""
    return answer[0] == "hung" or (answer[0] == "error" and bool(answer[4]))


def _group_lines(lines: list[str], order: list[int]) -> list[str]:
    """The per-rank lines (each rank's line with its indented lines after it), ranks in `order`."""
    blocks: dict[int, list[str]] = {}
    current = -1
    for line in lines:
        if line.startswith("rank "):
            current = int(line.split()[1])
            blocks[current] = [line]
        else:
            blocks[current].append(line)
    return [ln for r in order for ln in blocks.get(r, [])]


def _clean(message: str) -> str:
    """An exception's text on one line, without gloo's '[/path/file.cc:78] ' prefix."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", message.strip()).replace("\n", " ")
    return text if len(text) <= 160 else text[:150] + " ..."


def _short(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _source_line(path: Path, lineno: int) -> str:
    try:
        return path.read_text().splitlines()[lineno - 1].strip()
    except (OSError, IndexError):
        return ""


# ------------------------------------------------------------------------------------------
# Child side: hooks on torch.distributed, counting what a rank sends and which collectives it calls
# ------------------------------------------------------------------------------------------
SENDS = ("send", "isend")
COLLECTIVES = ("all_reduce", "all_reduce_coalesced", "reduce", "broadcast", "all_gather",
               "all_gather_into_tensor", "all_gather_coalesced", "all_gather_object",
               "reduce_scatter", "reduce_scatter_tensor", "all_to_all", "all_to_all_single",
               "scatter", "gather", "broadcast_object_list", "gather_object",
               "scatter_object_list", "_reduce_scatter_base", "_all_gather_base")


class Recorder:
    """What the learner's code did inside `with recording(...)`."""

    def __init__(self) -> None:
        self.active = False
        self.forbid = False  # collectives raise (inside ring_all_reduce)
        self.depth = 0  # inside a hooked call: nested calls (send -> isend) are not counted again
        self.reset()

    def reset(self) -> None:
        self.sent_bytes = 0
        self.sends = 0
        self.collectives: Counter = Counter()
        self.ring_calls = 0


REC = Recorder()


def _hook_send(orig: Callable) -> Callable:
    @functools.wraps(orig)
    def hooked(*args: Any, **kwargs: Any) -> Any:
        if REC.active and not REC.depth:
            tensor = args[0] if args else kwargs.get("tensor")
            REC.sends += 1
            REC.sent_bytes += tensor.numel() * tensor.element_size()
        REC.depth += 1
        try:
            return orig(*args, **kwargs)
        finally:
            REC.depth -= 1
    return hooked


def _hook_collective(orig: Callable, name: str) -> Callable:
    @functools.wraps(orig)
    def hooked(*args: Any, **kwargs: Any) -> Any:
        if REC.active and not REC.depth:
            REC.collectives[name] += 1
            if REC.forbid:
                raise RuntimeError(
                    f"ring_all_reduce called torch.distributed.{name}: it must use point-to-point "
                    "messages only (send/recv/isend/irecv, batch_isend_irecv)")
        REC.depth += 1
        try:
            return orig(*args, **kwargs)
        finally:
            REC.depth -= 1
    return hooked


def install_hooks() -> None:
    import torch.distributed as dist
    import torch.distributed.distributed_c10d as c10d

    for name in SENDS + COLLECTIVES:
        orig = getattr(c10d, name, None)
        if orig is None:
            continue
        hooked = _hook_send(orig) if name in SENDS else _hook_collective(orig, name)
        setattr(c10d, name, hooked)  # P2POp and batch_isend_irecv compare ops with c10d.isend
        if getattr(dist, name, None) is orig:
            setattr(dist, name, hooked)


class recording:
    """Count sends and collectives (and calls of the module's ring_all_reduce, `count_ring`)."""

    def __init__(self, m: Any, forbid: bool = False, count_ring: bool = False) -> None:
        self.m, self.forbid, self.count_ring = m, forbid, count_ring

    def __enter__(self) -> Recorder:
        REC.reset()
        REC.active, REC.forbid = True, self.forbid
        if self.count_ring:
            self.orig = self.m.ring_all_reduce

            @functools.wraps(self.orig)
            def counted(*args: Any, **kwargs: Any) -> Any:
                if not REC.depth:
                    REC.ring_calls += 1
                REC.depth += 1
                try:
                    return self.orig(*args, **kwargs)
                finally:
                    REC.depth -= 1
            self.m.ring_all_reduce = counted
        return REC

    def __exit__(self, *exc: Any) -> None:
        REC.active = REC.forbid = False
        if self.count_ring:
            self.m.ring_all_reduce = self.orig

    def counts(self) -> dict[str, Any]:
        return {"sent_bytes": REC.sent_bytes, "sends": REC.sends,
                "collectives": dict(REC.collectives), "ring_calls": REC.ring_calls}


class Ctx:
    """What a job function gets: this rank, the default group's size, the module, the device."""

    def __init__(self, rank: int, backend: str) -> None:
        self.rank, self.backend = rank, backend
        self.world = 0
        self.device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
        self.m: Any = None
        self.groups: dict[tuple[int, ...], Any] = {}

    def group(self, ranks: tuple[int, ...]) -> Any:
        """dist.new_group(ranks), made once per process group generation. Every rank of the
        default group must ask for the same groups in the same order."""
        import torch.distributed as dist

        if ranks not in self.groups:
            self.groups[ranks] = dist.new_group(list(ranks))
        return self.groups[ranks]


def _cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu").clone()
    if value is None:
        return None
    return f"<not a tensor: {type(value).__name__}>"


# ------------------------------------------------------------------------------------------
# Jobs: job_<name>(ctx, *args), run on every rank of the current group
# ------------------------------------------------------------------------------------------
def job_ring(ctx: Ctx, cases: list[dict]) -> list[dict]:
    """ring_all_reduce of each case's rank_tensor, collectives forbidden, sends counted.
    A case: seed, shape, dtype, and optionally groups (a list of rank tuples: every rank
    makes them all, then reduces within the one it belongs to; ranks in none sit out)."""
    out = []
    for case in cases:
        group = None
        if case.get("groups"):
            mine = [g for g in case["groups"] if ctx.rank in g]
            made = [ctx.group(tuple(g)) for g in case["groups"]]
            if not mine:
                out.append(None)
                continue
            group = made[case["groups"].index(mine[0])]
        t = rank_tensor(case["seed"], ctx.rank, tuple(case["shape"]), case["dtype"]).to(ctx.device)
        rec = recording(ctx.m, forbid=True)
        with rec:
            returned = ctx.m.ring_all_reduce(t) if group is None else ctx.m.ring_all_reduce(t, group)
        out.append({"value": _cpu(t), "returned": None if returned is None else type(returned).__name__,
                    **rec.counts()})
    return out


def _build(ctx: Ctx, kind: str, case: dict) -> Any:
    dt = dtype_of(case["dtype"])
    if kind == "column":
        layer = ctx.m.ColumnParallelLinear(case["in_f"], case["out_f"], bias=case["bias"],
                                           gather_output=case.get("gather", False))
    elif kind == "row":
        layer = ctx.m.RowParallelLinear(case["in_f"], case["out_f"], bias=case["bias"],
                                        input_is_parallel=case.get("parallel_input", True))
    else:
        layer = ctx.m.ParallelMLP(case["d_model"], case["d_ff"])
    return layer.to(device=ctx.device, dtype=dt)


def job_linear(ctx: Ctx, kind: str, cases: list[dict]) -> list[dict]:
    """Build a column or row layer, load the full weights, run forward on the case's input.
    Row layers with parallel_input get this rank's contiguous slice of x's last dim."""
    out = []
    for case in cases:
        w, b = full_linear(case["seed"], case["in_f"], case["out_f"], case["bias"], case["dtype"])
        w, b = w.to(ctx.device), None if b is None else b.to(ctx.device)
        x = activations(case["seed"], tuple(case["x_shape"]), case["dtype"]).to(ctx.device)
        if kind == "row" and case.get("parallel_input", True):
            x = x[..., chunk_slice(case["in_f"], ctx.world, ctx.rank)].contiguous()
        layer = _build(ctx, kind, case)
        w0, b0, x0 = w.clone(), None if b is None else b.clone(), x.clone()
        layer.load_full_weight(w, b)
        rec = recording(ctx.m, count_ring=True)  # a row layer may reduce with the module's own ring
        with rec, torch.no_grad():
            y = layer(x)
        out.append({"weight": _cpu(getattr(layer, "weight", None)),
                    "bias": _cpu(getattr(layer, "bias", None)),
                    "has_bias": getattr(layer, "bias", None) is not None,
                    "y": _cpu(y), "x_same": torch.equal(x, x0), "w_same": torch.equal(w, w0)
                    and (b is None or torch.equal(b, b0)), **rec.counts()})
    return out


def job_mlp(ctx: Ctx, cases: list[dict]) -> list[dict]:
    """ParallelMLP on the case's input, `forwards` times, counting all-reduces per forward."""
    out = []
    for case in cases:
        w_up, _ = full_linear(case["seed"], case["d_model"], case["d_ff"], False, case["dtype"])
        w_down, _ = full_linear(case["seed"] + 1, case["d_ff"], case["d_model"], False, case["dtype"])
        x = activations(case["seed"], tuple(case["x_shape"]), case["dtype"]).to(ctx.device)
        mlp = _build(ctx, "mlp", case)
        mlp.load_full_weights(w_up.to(ctx.device), w_down.to(ctx.device))
        x0 = x.clone()
        counts = []
        for _ in range(case.get("forwards", 1)):
            rec = recording(ctx.m, count_ring=True)
            with rec, torch.no_grad():
                y = mlp(x)
            counts.append(rec.counts())
        out.append({"y": _cpu(y), "x_same": torch.equal(x, x0), "counts": counts})
    return out


def job_errors(ctx: Ctx, cases: list[dict]) -> list[str]:
    """Each case's call, and what came of it: 'ValueError', another error, or 'returned'."""
    out = []
    for case in cases:
        try:
            if case["call"] == "build":
                _build(ctx, case["kind"], case)
            else:  # load weights of the wrong shape
                layer = _build(ctx, case["kind"], case)
                w = torch.zeros(case["w_shape"], dtype=dtype_of(case["dtype"]), device=ctx.device)
                if case["kind"] == "mlp":
                    w2 = torch.zeros(case["w2_shape"], dtype=w.dtype, device=ctx.device)
                    layer.load_full_weights(w, w2)
                else:
                    layer.load_full_weight(w, None)
            out.append("returned normally")
        except ValueError:
            out.append("ValueError")
        except Exception as exc:  # noqa: BLE001 - reported by the parent (a stub's TODO is not an Exception)
            out.append(f"{type(exc).__name__}: {exc}")
    return out


# -- GPU timing (used by the perf tests and by bench.py) ------------------------------------
def _timed_ms(fn: Callable[[], Any], iters: int) -> float:
    """Mean ms of fn() over `iters` back-to-back calls, between two CUDA events, after a
    barrier (so that the ranks start together). Every rank measures; the caller takes the max."""
    import torch.distributed as dist

    torch.cuda.synchronize()
    dist.barrier()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


def iters_for(nbytes: int) -> int:
    """Back-to-back calls per timed round: about 8 GiB moved, between 8 and 100 calls (100
    in-place all-reduces of ones by 2 ranks reach 2^100, exact in float32)."""
    return max(8, min(100, (8 << 30) // max(nbytes, 1)))


def time_ring_and_nccl(m: Any, nbytes: int, device: torch.device, rounds: int = 3,
                       warmup: int = 2) -> dict:
    """ring_all_reduce and NCCL's dist.all_reduce on the same float32 buffer of `nbytes`,
    in `rounds` interleaved rounds of iters_for(nbytes) calls each. Each round starts from a
    buffer of ones, so after k calls every element must be world^k (checked after each round)."""
    import torch.distributed as dist

    world = dist.get_world_size()
    buf = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    iters = iters_for(nbytes)
    fns = {"ring": lambda: m.ring_all_reduce(buf), "nccl": lambda: dist.all_reduce(buf)}
    for fn in fns.values():
        for _ in range(warmup):
            buf.fill_(1.0)
            fn()
    ms: dict[str, list[float]] = {k: [] for k in fns}
    wrong: dict[str, float] = {k: 0.0 for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            buf.fill_(1.0)
            ms[name].append(_timed_ms(fn, iters))
            expected = float(world) ** iters
            err = ((buf - expected).abs().max() / expected).item()
            wrong[name] = max(wrong[name], err)
    return {"ms": ms, "iters": iters, "rel_err": wrong}


def time_mlp(m: Any, tokens: int, d_model: int, d_ff: int, device: torch.device,
             dtype: torch.dtype = torch.bfloat16, iters: int = 20, rounds: int = 3) -> dict:
    """ParallelMLP over the ranks against the unsharded MLP on this rank's GPU alone
    (every rank times both; the TP time counts the all-reduce). Also the relative error of the
    TP output against the one-GPU output."""
    import torch.nn.functional as F

    gen = torch.Generator(device=device).manual_seed(1234)
    w_up = (torch.randn(d_ff, d_model, device=device, generator=gen) / d_model ** 0.5).to(dtype)
    w_down = (torch.randn(d_model, d_ff, device=device, generator=gen) / d_ff ** 0.5).to(dtype)
    x = torch.randn(tokens, d_model, device=device, generator=gen).to(dtype)
    mlp = m.ParallelMLP(d_model, d_ff).to(device=device, dtype=dtype)
    mlp.load_full_weights(w_up, w_down)
    fns = {"tp": lambda: mlp(x), "one_gpu": lambda: F.linear(F.gelu(F.linear(x, w_up)), w_down)}
    with torch.no_grad():
        ref = fns["one_gpu"]().float()
        err = ((fns["tp"]().float() - ref).norm() / ref.norm()).item()
        for fn in fns.values():
            fn()
        ms: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(rounds):
            for name, fn in fns.items():
                ms[name].append(_timed_ms(fn, iters))
    del mlp, w_up, w_down, x
    return {"ms": ms, "rel_err": err}


def job_bench_ring(ctx: Ctx, sizes: list[int], rounds: int) -> list[dict]:
    return [time_ring_and_nccl(ctx.m, nbytes, ctx.device, rounds=rounds) for nbytes in sizes]


def job_bench_mlp(ctx: Ctx, cases: list[dict]) -> list[dict]:
    return [time_mlp(ctx.m, device=ctx.device, **case) for case in cases]


JOBS = {name[len("job_"):]: fn for name, fn in list(globals().items()) if name.startswith("job_")}


# ------------------------------------------------------------------------------------------
# The worker process
# ------------------------------------------------------------------------------------------
def _describe_exception(exc: BaseException, impl: Path) -> tuple:
    """('todo', message, file, line, func) for a stub's NotImplementedError, else
    ('error', type, message, learner frames, is it a communication error, last output)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, NotImplementedError):
            frames = [f for f in traceback.extract_tb(cause.__traceback__)
                      if Path(f.filename).parent.resolve() == impl]
            f = frames[-1] if frames else None
            return ("todo", str(cause), f.filename if f else str(impl / f"{MODULE}.py"),
                    f.lineno if f else 1, f.name if f else "<module>")
        cause = cause.__cause__ or cause.__context__
    frames = [f"{_short(Path(f.filename))}:{f.lineno} {f.name}(){': ' + f.line if f.line else ''}"
              for f in traceback.extract_tb(exc.__traceback__)
              if Path(f.filename).parent.resolve() == impl]
    text = str(exc)
    comm = any(s in text for s in ("Timed out waiting", "timeout caused pair closure",
                                   "Connection closed by peer", "Connection reset by peer",
                                   "Broken pipe"))
    if len(text) > 1500:
        text = text[:1500] + " ..."
    return ("error", type(exc).__name__, text, frames, comm, "")


def _worker(rank: int, down_fd: int, up_fd: int, backend: str) -> None:
    from datetime import timedelta
    import faulthandler

    inbox, outbox = Connection(down_fd, writable=False), Connection(up_fd, readable=False)

    def answer(message: tuple) -> None:
        sys.stdout.flush()
        outbox.send_bytes(pickle.dumps(message))

    try:
        sys.path.insert(0, str(ROOT))
        torch.set_num_threads(1)
        import torch.distributed as dist

        install_hooks()  # before the learner's module imports anything from torch.distributed
        from harness import load_kata_module

        ctx = Ctx(rank, backend)
        ctx.m = load_kata_module(MODULE)
        if backend == "nccl":
            torch.cuda.set_device(ctx.device)
        # A rank the parent finds hung gets SIGUSR1 and writes its stack to its log, which the
        # parent reads to name the line it was waiting at.
        faulthandler.register(signal.SIGUSR1, file=sys.stdout, all_threads=True)
        impl = Path(os.environ["KATA_IMPL"]).resolve()
        answer(("ready",))
    except BaseException as exc:  # noqa: BLE001
        answer(("error", type(exc).__name__, str(exc), [], False, traceback.format_exc()))
        os._exit(1)

    while True:
        try:
            message = pickle.loads(inbox.recv_bytes())
        except (EOFError, OSError):  # the parent went away
            break
        if message[0] == "exit":
            break
        if message[0] == "init":
            _, world, store_path = message
            try:
                if dist.is_initialized():
                    dist.destroy_process_group()
                ctx.groups, ctx.world = {}, world
                if rank < world:
                    kwargs = {"device_id": ctx.device} if backend == "nccl" else {}
                    dist.init_process_group(backend, store=dist.FileStore(store_path, world),
                                            rank=rank, world_size=world,
                                            timeout=timedelta(seconds=GLOO_TIMEOUT_S
                                                              if backend == "gloo" else 300),
                                            **kwargs)
                answer(("ok", None))
            except BaseException as exc:  # noqa: BLE001
                answer(("error", type(exc).__name__, str(exc), [], False, traceback.format_exc()))
            continue
        _, job, args, timeout = message
        print(f"=== job {job}", flush=True)
        try:
            result = ("ok", JOBS[job](ctx, *args))
        except BaseException as exc:  # noqa: BLE001 - every failure goes to the parent
            result = _describe_exception(exc, impl)
            if result[0] == "error":
                sys.stdout.flush()
        try:
            answer(result)
        except Exception as exc:  # noqa: BLE001 - e.g. a result that cannot be pickled
            answer(("error", type(exc).__name__, f"could not send the result back: {exc}", [],
                    False, ""))
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--worker":
    _worker(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
