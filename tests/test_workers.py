"""The self-test's forked workers: a session never sees what an earlier one loaded."""
from __future__ import annotations

import sys
from pathlib import Path

from harness.katas import ROOT
from harness.workers import Outcome, Session, run_jobs

ONE_CHECK = ["-k", "test_matches_meta_model"]


def _one_session(session: Session):  # type: ignore[no-untyped-def]
    outcome: Outcome = yield session
    return outcome


def test_a_mutant_never_leaks_into_the_next_session(tmp_path: Path) -> None:
    source = (ROOT / "reference" / "memory_math.py").read_text()
    mutant = source.replace("def param_count(m: ModelShape) -> int:\n",
                            "def param_count(m: ModelShape) -> int:\n    return 7\n", 1)
    assert mutant != source
    (tmp_path / "memory_math.py").write_text(mutant)
    sessions = [
        Session("katas/01", str(tmp_path), tmp_path / "logs" / "a.log", ONE_CHECK),
        Session("katas/01", "reference", tmp_path / "logs" / "b.log", ONE_CHECK),
        Session("katas/01", str(tmp_path), tmp_path / "logs" / "c.log", ONE_CHECK),
    ]
    outcomes: list[Outcome] = []
    # One worker: the three sessions run one after another from the same parent.
    run_jobs([lambda s=s: _one_session(s) for s in sessions], 1,
             lambda result, seconds: outcomes.append(result))
    codes = [o.code for o in outcomes]
    assert codes == [1, 0, 1], f"mutant, reference, mutant gave exit codes {codes}\n" + \
        "\n".join(o.output[-1500:] for o in outcomes)
    assert "memory_math" not in sys.modules, "the parent imported a kata module"
    for o in outcomes:
        assert o.data.get("katas", {}).get("01"), f"no KATA_REPORT from a session:\n{o.output[-1500:]}"
