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


def likely_tasks(reference_source: str, find: str, test_sources: list[str]) -> list[str]:
    """The tasks whose checks call what a mutant edits: a guess that lets the self-test run
    those checks first (any task may still catch it; the self-test falls back to all).

    The edited top-level definitions, plus every definition that uses them (a private
    kernel reaches its public launcher), are matched against the `m.NAME` uses of each
    `TestTaskN` class (m = load_kata_module(...)), directly or through the test module's
    own helper functions.
    """
    import ast
    import re

    tree = ast.parse(reference_source)
    first = reference_source.count("\n", 0, reference_source.index(find)) + 1
    last = first + find.rstrip("\n").count("\n")
    defs: dict[str, set[str]] = {}  # top-level name -> names its body uses
    edited: set[str] = set()
    for node in tree.body:
        names = ([node.name] if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                 else [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)])
        used = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
        for name in names:
            defs[name] = used
            if node.lineno <= first and (node.end_lineno or node.lineno) >= last:
                edited.add(name)
    reached, changed = set(edited), True
    while changed:  # whatever uses an edited definition is edited too
        grown = {name for name, used in defs.items() if used & reached}
        changed = not grown <= reached
        reached |= grown
    public = {n for n in reached if not n.startswith("_")}
    if not public:
        return []

    def m_uses(node: ast.AST) -> set[str]:  # NAME in `m.NAME`, m = load_kata_module(...)
        return {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
                and isinstance(n.value, ast.Name) and n.value.id in module_vars}

    tasks: set[str] = set()
    for source in test_sources:
        module = ast.parse(source)
        module_vars = {t.id for n in module.body if isinstance(n, ast.Assign)
                       and isinstance(n.value, ast.Call) and getattr(n.value.func, "id", "") == "load_kata_module"
                       for t in n.targets if isinstance(t, ast.Name)}
        helpers = {n.name: n for n in module.body if isinstance(n, ast.FunctionDef)}
        helper_uses = {name: m_uses(fn) for name, fn in helpers.items()}
        for _ in range(3):  # helpers calling helpers
            for name, fn in helpers.items():
                for call in ast.walk(fn):
                    if isinstance(call, ast.Name) and call.id in helper_uses and call.id != name:
                        helper_uses[name] |= helper_uses[call.id]
        for cls in module.body:
            match = isinstance(cls, ast.ClassDef) and re.match(r"TestTask(\d+)", cls.name)
            if not match:
                continue
            uses = m_uses(cls) | {a for n in ast.walk(cls) if isinstance(n, ast.Name)
                                  and n.id in helper_uses for a in helper_uses[n.id]}
            if uses & public:
                tasks.add(match.group(1))
    return sorted(tasks, key=int)
