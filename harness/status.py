"""`python -m harness status`: every kata with its state for the implementation under test.

Runs each built kata's tests once (quick hypothesis profile) and prints
not started / in progress (k of n) / done, plus the perf tier last reached on a GPU.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.katas import KATAS, ROOT, built_katas

PROGRESS = ROOT / ".kata_progress.json"  # written by the plugin after perf tests run


def perf_tiers() -> dict[str, str]:
    """module -> 'gold on NVIDIA H100 ...': the lowest tier over the module's last perf cases."""
    if not PROGRESS.is_file():
        return {}
    data = json.loads(PROGRESS.read_text())
    order = ["none", "bronze", "silver", "gold"]
    out = {}
    for module, entry in data.get("perf", {}).items():
        tiers = [case["tier"] for case in entry["cases"]]
        worst = min(tiers, key=lambda t: order.index(t) if t in order else 0)
        out[module] = f"perf {worst} on {entry['gpu']}"
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(argv or [])
    impl = os.environ.get("KATA_IMPL", "stubs")
    if "--impl" in argv:
        impl = argv[argv.index("--impl") + 1]
    numbers = built_katas()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        env = dict(os.environ, KATA_REPORT=str(report), HYPOTHESIS_PROFILE="learner")
        print(f"running the checks of {len(numbers)} katas against {impl} ...", flush=True)
        subprocess.run([sys.executable, "-m", "pytest", *[f"katas/{KATAS[n][0]}" for n in numbers],
                        "--impl", impl, "-q", "-p", "no:cacheprovider", "--benchmark-disable",
                        "--no-header", "--tb=no"], cwd=ROOT, env=env, capture_output=True)
        summary = json.loads(report.read_text())["katas"] if report.is_file() else {}
    tiers = perf_tiers()
    print(f"\n{'kata':<24}state")
    for number, (folder, module) in KATAS.items():
        if number not in numbers:
            state = "coming"
        elif number not in summary:
            state = "could not run (collection error?): try pytest katas/" + number
        else:
            s = summary[number]
            if s["passed"] == s["total"]:
                state = "done"
            elif s["passed"] == 0:
                state = "not started" if s["todo"] else f"in progress (0 of {s['total']} passing)"
            else:
                state = f"in progress ({s['passed']} of {s['total']} passing)"
            if module in tiers:
                state += f", {tiers[module]}"
        print(f"{folder:<24}{state}")
    return 0
