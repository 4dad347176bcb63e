"""What a learner sees when their module hangs or does not import (one line per check)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from harness.katas import ROOT

REFERENCE = (ROOT / "reference" / "memory_math.py").read_text()


def _run_kata_01(impl: Path, *extra: str) -> str:
    env = dict(os.environ, HYPOTHESIS_PROFILE="ci")
    env.pop("KATA_IMPL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "katas/01", f"--impl={impl}", "-q", "-p", "no:cacheprovider",
         "-k", "test_matches_meta_model", *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    return proc.stdout + proc.stderr


def test_a_hang_inside_a_hypothesis_test_is_stopped_with_a_message(tmp_path: Path) -> None:
    hanging = REFERENCE.replace("def param_count(m: ModelShape) -> int:\n",
                                "def param_count(m: ModelShape) -> int:\n    while True:\n        pass\n", 1)
    assert hanging != REFERENCE
    (tmp_path / "memory_math.py").write_text(hanging)
    out = _run_kata_01(tmp_path, "-o", "kata_timeout=2")
    assert "TIMEOUT: the check ran over 2s" in out, out[-3000:]
    assert "probably hangs" in out and "memory_math.py" in out


def test_an_import_error_is_one_line_naming_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "memory_math.py").write_text(REFERENCE + "\ndef broken(:\n")
    out = _run_kata_01(tmp_path)
    assert "IMPORT ERROR: could not import" in out and "SyntaxError at line" in out, out[-3000:]
    assert "Traceback" not in out
