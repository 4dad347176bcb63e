"""Perf history: every timed case of a GPU run, kept with its environment, and
`python kata.py perf-history NN` to compare runs.

Recording. `PerfChecker.check` (harness/perf.py) calls `record_check` once per checked case. A
line is appended to `.kata_perf_history/<module>.jsonl` (ignored by git) with:
- the case (`target[label]`), the judged time (`ms`), the tier, the metrics;
- `samples_ms`: the per-round times of pytest-benchmark's record of the case (fresh inputs in
  every round, every output checked against the reference while timing, so a kernel that
  returns a cached answer fails rather than gets recorded); when pytest-benchmark kept no
  rounds (--benchmark-disable), the harness's own rounds (`rounds_ms`) are used;
- the environment fingerprint: GPU name, driver, CUDA, torch and triton versions, the GPU's
  maximum and application SM clocks (nvidia-smi), and, for information only, the SM clock at
  the time of recording (it moves with load and temperature, so it is not part of the key);
- the sha256 of the module file under test, and the run (one pytest session) it belongs to.
Only GPU runs of a kata's module are recorded (a CPU stand-in device is a test of the harness),
and runs with KATA_REPORT set (the self-test, `grade`, `interview --finish`) only when
KATA_PERF_HISTORY names a folder to record into. pytest-benchmark stays the store of its own
records (`pytest -m perf --benchmark-save`); this file adds what it lacks: the environment
per run and the learner's file hash, for every run.

Comparing. Per case and run: the median of the samples and a 95% confidence interval of the
median (a percentile bootstrap, 2000 resamples, fixed seed). The last run is compared with the
previous run of the same environment: "faster" or "slower" when the intervals do not overlap,
"no significant change" when they do. Runs on different environments are never compared: the
command says so and names what differs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from harness.katas import KATAS, ROOT, built_katas

SCHEMA = 1
RUN_ID = uuid.uuid4().hex[:12]  # one pytest session
# The fields of the fingerprint that must match for two runs to be compared.
ENV_KEY = ("gpu", "driver", "cuda", "torch", "triton", "sm_clock_max_mhz", "sm_clock_app_mhz")
ENV_VAR = "KATA_PERF_HISTORY"


def history_dir() -> Path:
    return Path(os.environ.get(ENV_VAR) or ROOT / ".kata_perf_history")


# -- The environment --------------------------------------------------------------------------
def _nvidia_smi(fields: str) -> list[str] | None:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        proc = subprocess.run([exe, f"--query-gpu={fields}", "--format=csv,noheader,nounits",
                               "-i", os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    return [v.strip() for v in proc.stdout.strip().splitlines()[0].split(",")]


@lru_cache(maxsize=1)
def _static_fingerprint() -> dict[str, Any]:
    env: dict[str, Any] = {"gpu": None, "driver": None, "cuda": None, "torch": None, "triton": None,
                           "sm_clock_max_mhz": None, "sm_clock_app_mhz": None}
    try:
        import torch

        env["torch"] = torch.__version__
        env["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name()
    except Exception:  # noqa: BLE001 - a fingerprint without torch is still a fingerprint
        pass
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        pass
    smi = _nvidia_smi("name,driver_version,clocks.max.sm,clocks.applications.graphics")
    if smi and len(smi) == 4:
        env["gpu"] = env["gpu"] or smi[0]
        env["driver"] = smi[1]
        env["sm_clock_max_mhz"], env["sm_clock_app_mhz"] = smi[2], smi[3]
    if env["driver"] is None and env["cuda"]:
        env["driver"] = f"cuda {env['cuda']} (no nvidia-smi)"
    return env


def fingerprint() -> dict[str, Any]:
    """This machine's environment; sm_clock_mhz (now) is informative, not part of the key."""
    env = dict(_static_fingerprint())
    now = _nvidia_smi("clocks.sm")
    env["sm_clock_mhz"] = now[0] if now else None
    return env


def env_id(env: dict[str, Any]) -> str:
    key = json.dumps({k: env.get(k) for k in ENV_KEY}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:10]


def file_sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


# -- Recording ------------------------------------------------------------------------------------
def record(module: str, entry: dict[str, Any], directory: Path | None = None) -> Path:
    """Append one case's entry to <dir>/<module>.jsonl."""
    directory = directory or history_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{module}.jsonl"
    with path.open("a") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")
    return path


def _benchmark_samples_ms(benchmark: Any) -> list[float]:
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    data = getattr(stats, "data", None)
    return [float(x) * 1e3 for x in data] if data else []


def should_record(checker: Any, module: str) -> bool:
    if module not in {m for _, m in KATAS.values()}:
        return False
    if os.environ.get(ENV_VAR):
        return True
    if os.environ.get("KATA_REPORT"):
        return False  # the self-test, grade, interview: not the learner's own history
    from harness.perf import CudaDevice

    return isinstance(checker.device, CudaDevice)


def record_check(checker: Any, module: str, target: str, m: Any, tier: str) -> None:
    """The hook in PerfChecker.check: one line per checked case. Never fails the check."""
    try:
        if not should_record(checker, module):
            return
        from harness.impl import impl_dir

        impl = impl_dir()
        samples = _benchmark_samples_ms(checker.benchmark)
        rounds = [float(r.ms) for r in m.rounds]
        env = fingerprint()
        record(module, {
            "schema": SCHEMA, "time": time.time(), "run": RUN_ID, "module": module,
            "target": target, "label": m.label, "case": f"{target}[{m.label}]", "tier": tier,
            "ms": float(m.ms), "rounds_ms": rounds,
            "samples_ms": samples or rounds,
            "samples_from": "pytest-benchmark rounds" if samples else "harness rounds",
            "metrics": {k: float(v) for k, v in m.metrics.items()},
            "env": env, "env_id": env_id(env), "impl": str(impl),
            "file_sha256": file_sha256(impl / f"{module}.py"),
        })
    except Exception as exc:  # noqa: BLE001 - the history is a record, not a judge
        print(f"perf history: not recorded ({type(exc).__name__}: {exc})")


# -- Statistics -------------------------------------------------------------------------------------
def median(values: Sequence[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def median_ci(values: Sequence[float], level: float = 0.95, resamples: int = 2000,
              seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the median (deterministic)."""
    values = list(values)
    if len(values) < 2:
        return (values[0], values[0]) if values else (float("nan"), float("nan"))
    rng = random.Random(seed)
    n = len(values)
    meds = sorted(median([values[rng.randrange(n)] for _ in range(n)]) for _ in range(resamples))
    lo = meds[int((1 - level) / 2 * resamples)]
    hi = meds[min(resamples - 1, int((1 + level) / 2 * resamples))]
    return lo, hi


def summarise(entry: dict[str, Any]) -> dict[str, Any]:
    samples = entry.get("samples_ms") or entry.get("rounds_ms") or [entry["ms"]]
    lo, hi = median_ci(samples)
    return {"median_ms": median(samples), "ci_ms": (lo, hi), "n": len(samples)}


def compare(old: dict[str, Any], new: dict[str, Any]) -> str:
    """'faster', 'slower' or 'no significant change' (95% intervals overlap)."""
    (olo, ohi), (nlo, nhi) = summarise(old)["ci_ms"], summarise(new)["ci_ms"]
    if nhi < olo:
        return "faster"
    if nlo > ohi:
        return "slower"
    return "no significant change"


def env_difference(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [f"{k} {a.get(k)!s} vs {b.get(k)!s}" for k in ENV_KEY if a.get(k) != b.get(k)]


def load(module: str, directory: Path | None = None) -> list[dict[str, Any]]:
    path = (directory or history_dir()) / f"{module}.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and "case" in entry and "ms" in entry:
            entry.setdefault("env", {})
            entry.setdefault("env_id", env_id(entry["env"]))
            out.append(entry)
    return sorted(out, key=lambda e: e.get("time", 0))


def verdict(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The last run of a case against the previous run of the same environment."""
    last = runs[-1]
    earlier = runs[:-1]
    same = [r for r in earlier if r["env_id"] == last["env_id"]]
    out: dict[str, Any] = {"last": last}
    if earlier and earlier[-1]["env_id"] != last["env_id"]:
        out["refused"] = env_difference(earlier[-1]["env"], last["env"])
    if not same:
        out["result"] = ("not compared: no earlier run on this environment"
                         + (" (the earlier runs were on a different one)" if earlier else ""))
        return out
    prev = same[-1]
    out["previous"] = prev
    result = compare(prev, last)
    if result != "no significant change":
        ratio = summarise(prev)["median_ms"] / summarise(last)["median_ms"]
        result += f" ({ratio:.2f}x the previous run's speed)"
    else:
        result += " (the 95% intervals overlap)"
    out["result"] = result
    out["file_changed"] = prev.get("file_sha256") != last.get("file_sha256")
    return out


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def report(number: str, entries: list[dict[str, Any]], *, last: int = 5,
           case_filter: str | None = None) -> list[str]:
    folder, module = KATAS[number]
    lines = []
    cases: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        if case_filter and case_filter not in e["case"]:
            continue
        cases.setdefault(e["case"], []).append(e)
    envs = {e["env_id"]: e["env"] for e in entries}
    runs = {e.get("run") for e in entries}
    lines.append(f"perf history of kata {number} ({module}): {len(runs)} run(s), "
                 f"{len(envs)} environment(s)")
    for eid, env in envs.items():
        lines.append(f"  env {eid}: {env.get('gpu')}, driver {env.get('driver')}, "
                     f"torch {env.get('torch')}, triton {env.get('triton')}, "
                     f"SM clock max {env.get('sm_clock_max_mhz')} MHz")
    for case in sorted(cases):
        rs = cases[case]
        lines.append("")
        lines.append(case)
        for r in rs[-last:]:
            s = summarise(r)
            lo, hi = s["ci_ms"]
            sha = (r.get("file_sha256") or "?")[:8]
            lines.append(f"  {_when(r.get('time', 0))}  env {r['env_id']}  file {sha}  "
                         f"median {s['median_ms']:.4g} ms  95% CI [{lo:.4g}, {hi:.4g}]  "
                         f"n={s['n']}  tier {r.get('tier', '?')}")
        v = verdict(rs)
        if "refused" in v:
            lines.append("  ! the run before the last was on a different environment ("
                         + "; ".join(v["refused"]) + "): runs of different environments are "
                         "not compared")
        tail = ""
        if "previous" in v:
            tail = "; your file changed since" if v["file_changed"] else "; same file"
        lines.append(f"  -> last run: {v['result']}{tail}")
    return lines


def _kata(value: str) -> str:
    number = value.strip().zfill(2)
    if number not in KATAS:
        raise argparse.ArgumentTypeError(f"no kata {value!r}")
    return number


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python kata.py perf-history",
        description="Per perf case of kata NN: the median and 95% confidence interval of every "
        "recorded GPU run, and whether the last run is faster, slower or not significantly "
        "different from the previous run on the same environment (GPU, driver, CUDA, torch, "
        "triton, clocks). Runs of different environments are never compared. Every "
        "`pytest katas/NN -m perf` on a GPU records into .kata_perf_history/.")
    p.add_argument("kata", type=_kata, help="kata number, e.g. 03")
    p.add_argument("--dir", type=Path, default=None,
                   help=f"history folder (default .kata_perf_history/, or ${ENV_VAR})")
    p.add_argument("--case", default=None, help="only cases whose name contains this")
    p.add_argument("--last", type=int, default=5, help="runs shown per case (default 5)")
    p.add_argument("--json", action="store_true", help="the verdicts as JSON")
    args = p.parse_args(argv)
    module = KATAS[args.kata][1]
    entries = load(module, args.dir)
    if not entries:
        where = (args.dir or history_dir()) / f"{module}.jsonl"
        extra = "" if args.kata in built_katas() else " (this kata is not built yet)"
        print(f"perf-history: nothing recorded for kata {args.kata}{extra} in {where}. "
              f"Run its perf checks on a GPU first: pytest katas/{args.kata} -m perf")
        return 1
    if args.json:
        cases: dict[str, list[dict[str, Any]]] = {}
        for e in entries:
            if not args.case or args.case in e["case"]:
                cases.setdefault(e["case"], []).append(e)
        out = {}
        for case, rs in sorted(cases.items()):
            v = verdict(rs)
            out[case] = {"runs": [{"time": r.get("time"), "env_id": r["env_id"],
                                   "file_sha256": r.get("file_sha256"), **summarise(r)}
                                  for r in rs[-args.last:]],
                         "result": v["result"], "refused": v.get("refused")}
        print(json.dumps(out, indent=1, sort_keys=True))
        return 0
    print("\n".join(report(args.kata, entries, last=args.last, case_filter=args.case)))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
