#!/usr/bin/env python3
"""One entry point that also does the set-up: `python3 kata.py check 03`.

On first use it creates .venv/ beside this file and installs the pinned dependencies
(pyproject.toml) into it; later it reinstalls only when pyproject.toml changed. Then it
runs the command inside that environment. Needs only Python 3.10+.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
STAMP = VENV / ".katas-installed"


def _no_deps_packages() -> list[str]:
    """[tool.katas] no_deps in pyproject.toml: packages installed without their dependencies."""
    in_table, packages = False, []
    for line in (ROOT / "pyproject.toml").read_text().splitlines():
        if line.startswith("["):
            in_table = line.strip() == "[tool.katas]"
        elif in_table and line.split("=")[0].strip() == "no_deps":
            packages = [p.strip().strip('"') for p in line.split("=", 1)[1].strip(" []").split(",") if p.strip()]
    return packages


def ensure_environment() -> None:
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.is_file() and STAMP.read_text() == wanted and PYTHON.is_file():
        return
    if not PYTHON.is_file():
        print(f"kata: creating the environment in {VENV} (first use only) ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("kata: installing the pinned dependencies (torch, triton, pytest, hypothesis, ...)",
          flush=True)
    subprocess.check_call([str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           "-e", str(ROOT)])
    no_deps = _no_deps_packages()
    if no_deps:
        subprocess.check_call([str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                               "--no-deps", *no_deps])
    STAMP.write_text(wanted)
    activate = r".venv\Scripts\activate" if os.name == "nt" else "source .venv/bin/activate"
    print(f"kata: ready. To run pytest directly: {activate}  then  pytest katas/03", flush=True)


def main() -> int:
    if sys.version_info < (3, 10):
        print("kata: needs Python 3.10 or newer")
        return 2
    ensure_environment()
    return subprocess.call([str(PYTHON), "-m", "harness", *sys.argv[1:]], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())
