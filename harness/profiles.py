"""Hypothesis profiles, the same in every kata (HYPOTHESIS_PROFILE picks one).

    learner   (default) 30 examples a property, randomised; failing examples are kept in
              .hypothesis/ and replayed first on the next run
    ci        30 examples, derandomised (the same inputs every run), no database: the self-test
    thorough  400 examples a property, randomised

A test that needs fewer examples than the profile (an interpreter-bound kernel, say) asks
for `max_examples(12)`: 12 under learner and ci, scaled up in the same proportion under
thorough, so every profile means the same thing in every kata.
"""
from __future__ import annotations

import os
import tempfile

PROFILE_EXAMPLES = {"learner": 30, "ci": 30, "thorough": 400}
BASELINE = 30  # what a test's own count is relative to


def active_profile() -> str:
    name = os.environ.get("HYPOTHESIS_PROFILE", "learner")
    return name if name in PROFILE_EXAMPLES else "learner"


def max_examples(n: int) -> int:
    """A test's example count under the active profile (n under learner and ci)."""
    scale = PROFILE_EXAMPLES[active_profile()] / BASELINE
    return max(n, round(n * scale))


def register() -> None:
    """Register and load the profiles (called once by the plugin)."""
    from hypothesis import HealthCheck, Phase, settings

    from harness.katas import ROOT

    profile = active_profile()
    if "HYPOTHESIS_STORAGE_DIRECTORY" not in os.environ:
        # ci keeps no database, so nothing of hypothesis's belongs in the learner's tree; the
        # other profiles replay failures from ROOT/.hypothesis (ignored by git), whatever the cwd.
        where = (os.path.join(tempfile.gettempdir(), "inference-katas-hypothesis")
                 if profile == "ci" else str(ROOT / ".hypothesis"))
        os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = where
    # No "explain" phase: its coverage notes point into the harness, not at the bug.
    # print_blob=False: no "@reproduce_failure" line, which asks the learner to edit a test.
    phases = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)
    common = dict(deadline=None, print_blob=False, phases=phases,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    settings.register_profile("learner", max_examples=PROFILE_EXAMPLES["learner"], **common)
    settings.register_profile("ci", max_examples=PROFILE_EXAMPLES["ci"], derandomize=True,
                              database=None, **common)
    settings.register_profile("thorough", max_examples=PROFILE_EXAMPLES["thorough"], **common)
    settings.load_profile(profile)
