"""`python kata.py doctor`: is this environment ready for the katas, and what runs where?

It checks, in order: Python, the installed versions against the pins in pyproject.toml,
that torch and triton import, and the GPU. Then, per kata: the backend its checks run on
here (a CUDA GPU, the Triton interpreter on the CPU, plain torch on the CPU), what skips
and why, and the known pitfalls that apply. On a GPU it measures the copy bandwidth and
the bf16 matmul rate now (what the perf tiers are judged against; --quick skips that).

Exit status 0 when the katas can run (notes and warnings aside), 1 with a `fix:` line
for each problem when the environment is broken.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from harness.katas import KATAS, ROOT, built_katas

REINSTALL = ("reinstall the pinned versions: `rm -f .venv/.katas-installed && python3 kata.py doctor` "
             "(or, inside the environment, `python -m pip install -e .`)")
BF16_PITFALL = ("Triton interpreter: cast bf16/fp16 to float32 right after tl.load (it computes "
                "garbage with bf16 values; its bf16 stores round toward zero)")


# -- Pins ------------------------------------------------------------------------------------
def _load_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib  # type: ignore[import-not-found]
    except ModuleNotFoundError:
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            return {}
    return tomllib.loads(path.read_text(encoding="utf-8"))


def pinned_dependencies(path: Path | None = None) -> list[str]:
    """The `[project] dependencies` strings of pyproject.toml."""
    path = path or ROOT / "pyproject.toml"
    deps = _load_toml(path).get("project", {}).get("dependencies")
    if deps is None:  # no TOML parser here: read the list by hand
        block = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", path.read_text(encoding="utf-8"),
                          re.MULTILINE | re.DOTALL)
        deps = re.findall(r'"([^"]+)"', block.group(1)) if block else []
    return list(deps)


def _marker_applies(marker: str) -> bool:
    marker = marker.strip()
    if not marker:
        return True
    try:
        from packaging.markers import Marker

        return Marker(marker).evaluate()
    except ImportError:
        pass
    match = re.fullmatch(r"(\w+)\s*(==|!=|<=|>=|<|>)\s*['\"]([^'\"]+)['\"]", marker)
    if not match:
        return True
    var, op, want = match.groups()
    if var == "platform_system":
        have: Any = platform.system()
    elif var == "sys_platform":
        have = sys.platform
    elif var == "python_version":
        have, want = sys.version_info[:2], tuple(int(x) for x in want.split("."))
    else:
        return True
    return {"==": have == want, "!=": have != want, "<": have < want, "<=": have <= want,
            ">": have > want, ">=": have >= want}[op]


def check_pins(deps: list[str]) -> list[dict[str, Any]]:
    """One row per pin that applies here: name, pinned, installed, ok."""
    rows = []
    for dep in deps:
        spec, _, marker = dep.partition(";")
        if not _marker_applies(marker):
            continue
        match = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s,;]+)", spec)
        if not match:
            continue
        name, pinned = match.groups()
        try:
            installed: str | None = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        ok = installed is not None and installed.split("+")[0] == pinned.split("+")[0]
        rows.append({"name": name, "pinned": pinned, "installed": installed, "ok": ok})
    return rows


# -- Imports and the GPU ------------------------------------------------------------------------
def try_import(name: str) -> tuple[Any, str]:
    try:
        return importlib.import_module(name), ""
    except Exception as exc:  # noqa: BLE001 - any failure to import is the finding
        return None, f"{type(exc).__name__}: {exc}"


def _uses_triton(module: str) -> bool:
    path = ROOT / "reference" / f"{module}.py"
    return path.is_file() and re.search(r"^\s*import triton", path.read_text(encoding="utf-8"),
                                        re.MULTILINE) is not None


def _test_text(folder: str) -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "katas" / folder).glob("test_*.py"))


def kata_rows(gpu_name: str | None, triton_ok: bool) -> list[dict[str, Any]]:
    rows = []
    for number in built_katas():
        folder, module = KATAS[number]
        triton, tests = _uses_triton(module), _test_text(folder)
        gpu_checks = re.search(r"mark\.(gpu|perf)\b", tests) is not None
        uses_gpu = triton or gpu_checks or "cuda" in tests
        skips, pitfalls = [], []
        if not uses_gpu:
            backend = "CPU (torch); its checks never need a GPU"
        elif gpu_name:
            backend = f"GPU {gpu_name}" + (" (Triton kernels compiled for it)" if triton else "")
        elif triton:
            backend = "Triton interpreter on the CPU (TRITON_INTERPRET=1, small shapes)"
            pitfalls.append(BF16_PITFALL)
        else:
            backend = "CPU (torch)"
        if triton and not triton_ok:
            backend += "; triton does not import here, so its kernel checks fail"
        if gpu_checks and not gpu_name:
            skips.append("the gpu (large shapes) and perf (speed) checks: they need a CUDA GPU")
        rows.append({"kata": number, "module": module, "triton": triton, "backend": backend,
                     "skips": skips, "pitfalls": pitfalls})
    return rows


def diagnose(measure: bool = True) -> dict[str, Any]:
    """Everything doctor found, as one JSON-able dict; `problems` lists (problem, fix)."""
    problems: list[dict[str, str]] = []
    warnings: list[str] = []
    report: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                              "executable": sys.executable, "root": str(ROOT)}
    if sys.version_info < (3, 10):
        problems.append({"problem": f"Python {report['python']} is too old",
                         "fix": "use Python 3.10 or newer: python3.11 kata.py doctor"})
    try:
        pins = check_pins(pinned_dependencies())
    except (OSError, ValueError) as exc:
        pins = []
        problems.append({"problem": f"cannot read pyproject.toml: {exc}",
                         "fix": "restore it: git checkout pyproject.toml"})
    report["versions"] = pins
    for row in pins:
        if row["installed"] is None:
            problems.append({"problem": f"{row['name']} is not installed (pinned {row['pinned']})",
                             "fix": REINSTALL})
        elif not row["ok"]:
            problems.append({"problem": f"{row['name']} {row['installed']} is installed, the pin "
                                        f"is {row['pinned']}", "fix": REINSTALL})
    torch, torch_error = try_import("torch")
    need_triton = platform.system() == "Linux"
    triton, triton_error = try_import("triton") if need_triton else (None, "not Linux")
    report["imports"] = {"torch": torch_error or "ok", "triton": triton_error or "ok"}
    if torch is None:
        problems.append({"problem": f"torch does not import ({torch_error})", "fix": REINSTALL})
    if need_triton and triton is None:
        problems.append({"problem": f"triton does not import ({triton_error})", "fix": REINSTALL})
    elif not need_triton:
        warnings.append("Triton needs Linux: the Triton katas (03 Task 5, 05) cannot run here; "
                        "use Linux or WSL2")
    gpu_name = None
    report["gpu"] = None
    if torch is not None and torch.cuda.is_available():
        gpu_name = torch.cuda.get_device_name()
        major, minor = torch.cuda.get_device_capability()
        report["gpu"] = {"name": gpu_name, "capability": f"{major}.{minor}",
                         "cuda": torch.version.cuda}
        if major < 8:
            warnings.append(f"{gpu_name} (sm_{major}{minor}) has no native bf16: the bf16 checks "
                            "and tl.dot in bf16 need an Ampere (sm_80) or newer GPU")
        if os.environ.get("TRITON_INTERPRET") == "1":
            warnings.append("TRITON_INTERPRET=1 is set: Triton kernels run under the interpreter "
                            "even on this GPU (slow); unset it")
    elif torch is not None:
        cuda_build = torch.version.cuda
        if shutil.which("nvidia-smi"):
            warnings.append(f"nvidia-smi is here but torch {torch.__version__} "
                            + ("cannot use the GPU (driver too old?)" if cuda_build else
                               "is a CPU-only build") + ": the GPU checks will skip")
    if os.environ.get("KATA_IMPL"):
        warnings.append(f"KATA_IMPL={os.environ['KATA_IMPL']} is set: pytest tests that folder, "
                        "not stubs/")
    report["katas"] = kata_rows(gpu_name, triton is not None or not need_triton)
    report["peaks"] = None
    if gpu_name and measure and not problems:
        try:
            from harness.perf import measure_device_peaks

            peaks = measure_device_peaks()
            report["peaks"] = {"copy_GB_per_s": peaks.copy_bytes_per_s / 1e9,
                               "bf16_matmul_TFLOP_per_s": peaks.matmul_flops_per_s / 1e12}
        except Exception as exc:  # noqa: BLE001 - a failed measurement is a finding
            problems.append({"problem": f"measuring the GPU failed ({type(exc).__name__}: {exc})",
                             "fix": "check the GPU with nvidia-smi; is another process using it?"})
    report["warnings"], report["problems"] = warnings, problems
    report["ok"] = not problems
    return report


def print_report(report: dict[str, Any]) -> None:
    print(f"Python {report['python']} ({report['executable']}) on {report['platform']}")
    print("\nversions (installed vs pinned in pyproject.toml):")
    for row in report["versions"]:
        mark = "ok" if row["ok"] else "MISMATCH"
        print(f"  {row['name']:<16} {row['installed'] or 'not installed':<18} "
              f"pin {row['pinned']:<10} {mark}")
    print("\nimports: " + ", ".join(f"{k} {v}" for k, v in report["imports"].items()))
    gpu = report["gpu"]
    print("GPU: " + (f"{gpu['name']} (compute capability {gpu['capability']}, CUDA {gpu['cuda']})"
                     if gpu else "none (no CUDA): Triton kernels run under the interpreter"))
    if report["peaks"]:
        p = report["peaks"]
        print(f"  measured now: copy {p['copy_GB_per_s']:.0f} GB/s (read + write), "
              f"bf16 matmul {p['bf16_matmul_TFLOP_per_s']:.0f} TFLOP/s")
    print("\nper kata:")
    for row in report["katas"]:
        print(f"  {row['kata']} {row['module']:<18} {row['backend']}")
        for line in row["skips"]:
            print(f"  {'':<21} skips: {line}")
        for line in row["pitfalls"]:
            print(f"  {'':<21} pitfall: {line}")
    for line in report["warnings"]:
        print(f"\nwarning: {line}")
    if report["problems"]:
        print("\nthe environment is BROKEN:")
        for p in report["problems"]:
            print(f"  problem: {p['problem']}\n  fix: {p['fix']}")
    else:
        print("\nready: python3 kata.py check 01")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python kata.py doctor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.add_argument("--quick", action="store_true",
                        help="on a GPU, skip measuring the copy bandwidth and matmul rate")
    args = parser.parse_args(argv)
    report = diagnose(measure=not args.quick)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_report(report)
    return 0 if report["ok"] else 1
