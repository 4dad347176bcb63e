"""The suite's own checks: stubs and reference agree, mutants apply, targets are sane."""
from __future__ import annotations

import importlib.util
import inspect
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from harness import assert_close
from harness.katas import KATAS, KATAS_DIR, ROOT, built_katas
from harness.mutants import Mutant
from harness.perf import TARGETS_DIR, load_target, tiers_met, tomllib
from harness.plugin import _rewrite_kata_args
from harness.selftest import load_mutants

BUILT = built_katas()


def _import(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def _public_api(module: ModuleType) -> dict[str, str]:
    """name -> signature text, for the module's own public functions, classes and methods."""
    api = {}
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj) or hasattr(obj, "fn"):  # plain or @triton.jit
            fn = getattr(obj, "fn", obj)
            api[name] = str(inspect.signature(fn))
        elif inspect.isclass(obj):
            api[name] = str(inspect.signature(obj)) if not issubclass(obj, tuple) else str(obj._fields)
            for attr, member in vars(obj).items():
                if not attr.startswith("_") and (inspect.isfunction(member) or isinstance(member, property)):
                    target = member.fget if isinstance(member, property) else member
                    api[f"{name}.{attr}"] = str(inspect.signature(target))
    return api


@pytest.mark.parametrize("number", BUILT)
def test_stub_and_reference_have_identical_public_api(number: str) -> None:
    module = KATAS[number][1]
    stub = _public_api(_import(ROOT / "stubs" / f"{module}.py", f"_stub_{module}"))
    ref = _public_api(_import(ROOT / "reference" / f"{module}.py", f"_ref_{module}"))
    extra = sorted(set(stub) - set(ref))
    # The reference may keep extra helpers (kernels, launchers); the stub's API must be in it.
    assert not extra, f"stubs/{module}.py defines {extra}, which reference/{module}.py lacks"
    differ = {k: (stub[k], ref[k]) for k in stub if stub[k] != ref[k]}
    assert not differ, f"stubs/{module}.py and reference/{module}.py disagree on signatures: {differ}"
    assert stub, f"stubs/{module}.py has no public functions"


@pytest.mark.parametrize("number", BUILT)
def test_every_mutant_applies_to_the_reference(number: str) -> None:
    module = KATAS[number][1]
    source = (ROOT / "reference" / f"{module}.py").read_text()
    mutants = load_mutants(number)
    names = [m.name for m in mutants]
    assert len(names) == len(set(names)), f"duplicate mutant names in kata {number}"
    for mutant in mutants:
        assert re.fullmatch(r"[a-z0-9_]+", mutant.name), f"mutant name {mutant.name!r}: use a-z, 0-9, _"
        mutant.apply(source)  # raises with a clear message when its text is gone


@pytest.mark.parametrize("number", BUILT)
def test_readme_has_every_section(number: str) -> None:
    text = (KATAS_DIR / KATAS[number][0] / "README.md").read_text().lower()
    for section in ("## task 1", "hint", "pitfall", "further reading"):
        assert section in text, f"katas/{KATAS[number][0]}/README.md lacks a '{section}' section"


@pytest.mark.parametrize("path", sorted(TARGETS_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_perf_targets_are_well_formed(path: Path) -> None:
    for target, spec in tomllib.loads(path.read_text()).items():
        tiers = spec["tiers"]
        assert list(tiers)[:1] == ["bronze"], f"{path.name} [{target}]: tiers start at bronze"
        for key in ("required", "reference_required"):
            if key in spec:
                assert spec[key] in tiers, f"{path.name} [{target}]: {key} names no tier"
        previous: dict[str, float] = {}
        for name, conditions in tiers.items():
            for metric, value in conditions.items():
                assert re.fullmatch(r"copy_fraction|matmul_fraction|vs_\w+", metric), metric
                assert value >= previous.get(metric, 0), f"{path.name} [{target}] {name}.{metric} drops"
            previous.update(conditions)
        merged = load_target(path.stem, target, "NVIDIA H100 80GB HBM3")
        assert set(merged["tiers"]) == set(tiers)


def test_tiers_met_needs_every_condition() -> None:
    tiers = {"bronze": {"vs_torch": 1.0}, "silver": {"vs_torch": 1.0, "copy_fraction": 0.8}}
    assert tiers_met(tiers, {"vs_torch": 1.1, "copy_fraction": 0.5}) == ["bronze"]
    assert tiers_met(tiers, {"vs_torch": 1.1, "copy_fraction": 0.9}) == ["bronze", "silver"]
    assert tiers_met(tiers, {"vs_torch": 0.9, "copy_fraction": 0.9}) == []
    with pytest.raises(KeyError):
        tiers_met(tiers, {"vs_torch": 1.0})


@pytest.mark.parametrize("number", BUILT)
def test_kata_number_placeholder_exists(number: str) -> None:
    """`pytest katas/NN --impl /elsewhere` roots the run here only if katas/NN exists."""
    assert (KATAS_DIR / number).is_file(), f"add the placeholder file katas/{number}"


def test_kata_number_selects_the_folder() -> None:
    assert _rewrite_kata_args(["katas/03"]) == [str(Path("katas") / KATAS["03"][0])]
    assert _rewrite_kata_args(["3", "-x"]) == [str(Path("katas") / KATAS["03"][0]), "-x"]
    assert _rewrite_kata_args(["katas/03/test_x.py::t"]) == [
        str(Path("katas") / KATAS["03"][0] / "test_x.py::t")]
    assert _rewrite_kata_args(["tests"]) == ["tests"]
    absolute = str(KATAS_DIR / "3")
    assert _rewrite_kata_args([absolute]) == [str(KATAS_DIR / KATAS["03"][0])]
    assert _rewrite_kata_args([str(KATAS_DIR / KATAS["03"][0])]) == [str(KATAS_DIR / KATAS["03"][0])]


def test_assert_close_message_names_the_worst_element() -> None:
    expected = torch.zeros(3, 4)
    actual = expected.clone()
    actual[2, 1] = 0.5
    with pytest.raises(AssertionError) as info:
        assert_close(actual, expected, what="f(x)", inputs=dict(x=expected, seed=7))
    text = str(info.value)
    for part in ("f(x)", "1 of 12", "(2, 1)", "got 0.5", "seed=7", "x (3, 4) float32"):
        assert part in text, f"{part!r} missing from:\n{text}"


def test_assert_close_rejects_nan_wrong_shape_and_dtype() -> None:
    expected = torch.ones(2)
    with pytest.raises(AssertionError, match="NaN"):
        assert_close(torch.tensor([1.0, float("nan")]), expected)
    with pytest.raises(AssertionError, match="wrong shape"):
        assert_close(torch.ones(3), expected)
    with pytest.raises(AssertionError, match="wrong dtype"):
        assert_close(torch.ones(2, dtype=torch.float64), expected)
    assert_close(torch.tensor([1.0, float("-inf")]), torch.tensor([1.0, float("-inf")]))
    assert_close(expected + 1e-6, expected)


def test_mutant_apply_refuses_stale_text() -> None:
    mutant = Mutant("demo", "a bug", find="a + b", replace="a - b")
    assert mutant.apply("return a + b") == "return a - b"
    with pytest.raises(ValueError, match="found 0"):
        mutant.apply("return a * b")


def test_assert_close_matches_infinity_only_exactly() -> None:
    expected = torch.tensor([float("-inf"), 1.0])
    with pytest.raises(AssertionError, match="1 of 2"):
        assert_close(torch.tensor([0.0, 1.0]), expected)  # 0 is not close to -inf
    with pytest.raises(AssertionError):
        assert_close(torch.tensor([float("inf"), 1.0]), expected)


CONTRACT = ROOT / "docs" / "CONTRACT.md"


def _contract_section(module: str) -> str:
    text = CONTRACT.read_text()
    found = re.search(rf"\n### {module}( \(.*\))?\n", text)  # e.g. '### mini_engine (the capstone)'
    assert found, f"docs/CONTRACT.md has no '### {module}' section"
    start = found.start()
    end = text.find("\n### ", start + 1)
    return text[start: end if end > 0 else None]


@pytest.mark.parametrize("number", built_katas())
def test_readme_api_agrees_with_the_contract(number: str) -> None:
    """Every function and class the contract names for a kata appears in its README."""
    folder, module = KATAS[number]
    names = set(re.findall(r"`(?:\w+\.)?(\w+)\(", _contract_section(module)))
    readme = (KATAS_DIR / folder / "README.md").read_text()
    missing = sorted(n for n in names if n not in readme)
    assert not missing, f"katas/{folder}/README.md never names {missing} from docs/CONTRACT.md"


def test_nothing_points_outside_the_repository() -> None:
    """Learners have only this repository: no link to the maintainers' ../shared folder."""
    offenders = []
    for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *KATAS_DIR.glob("*/*.md"),
                 *KATAS_DIR.glob("*/*.py"), *(ROOT / "harness").glob("*.py"),
                 *(ROOT / "stubs").glob("*.py"), *(ROOT / "reference").glob("*.py")]:
        text = path.read_text()
        if "../shared" in text or "shared/KATAS" in text:
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"these files point outside the repository: {offenders}"


def test_likely_tasks_follows_the_edit_to_the_checks_that_call_it() -> None:
    """The self-test runs a mutant's likely tasks first: a private helper's edit reaches the
    public function that uses it, and that function's task classes."""
    from harness.mutants import likely_tasks

    reference = "def _helper(x):\n    return x + 1\n\n\ndef public(x):\n    return _helper(x)\n\n\ndef other(x):\n    return x\n"
    tests = ("m = load_kata_module('mod')\n\n\ndef call(x):\n    return m.public(x)\n\n\n"
             "class TestTask1Other:\n    def test_a(self):\n        assert m.other(1) == 1\n\n\n"
             "class TestTask2Public:\n    def test_b(self):\n        assert call(1) == 2\n")
    assert likely_tasks(reference, "return x + 1", [tests]) == ["2"]
    assert likely_tasks(reference, "    return x\n", [tests]) == ["1"]


def test_test_file_names_are_unique_across_katas() -> None:
    """pytest imports a test file of a folder without __init__.py by its base name: two katas
    with the same test file name cannot be collected in one run (`pytest katas`, tox)."""
    seen: dict[str, Path] = {}
    for path in sorted(KATAS_DIR.glob("*/test_*.py")):
        assert path.name not in seen, (
            f"{path.relative_to(ROOT)} and {seen[path.name].relative_to(ROOT)} share a file name: "
            "'pytest katas' stops at collection (import file mismatch); rename one")
        seen[path.name] = path
