"""Planted bugs ("mutants"): each kata's tests must catch every one.

A mutant is a small textual edit of the reference solution: `find` must occur in
reference/<module>.py exactly `count` times, and is replaced by `replace`. The
self-test writes the edited module into a scratch folder and runs the kata's tests
against it with ``--impl``; at least one test must fail, and where `expect` is set
the failure output must contain it (this proves a diagnostic hint names the bug). Keeping mutants as edits
(not copies) means they always track the reference and stay one bug each.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    name: str  # short id, e.g. "merge_forgets_rescale"
    bug: str  # the classic mistake it plants, in one sentence
    find: str  # exact text in the reference module
    replace: str  # what it becomes
    count: int = 1  # how many times `find` occurs (all are replaced)
    expect: str = ""  # text the failing run's output must contain (a diagnostic hint), if any

    def apply(self, source: str) -> str:
        found = source.count(self.find)
        if found != self.count:
            raise ValueError(
                f"mutant {self.name!r}: expected {self.count} occurrence(s) of its text in the "
                f"reference, found {found}; update katas/*/mutants.py after editing the reference"
            )
        mutated = source.replace(self.find, self.replace)
        if mutated == source:
            raise ValueError(f"mutant {self.name!r} does not change the reference")
        return mutated
