"""The small harness every kata's tests share.

Public helpers (the only things a test or a learner's module may import from here):

- `load_kata_module(name)`   the module under test, from the folder chosen by ``--impl``
- `assert_close(...)`        value comparison whose failure names the worst element
- `tolerance(dtype)`         the documented (atol, rtol) for a dtype
- `Mutant`                   a planted bug, applied to the reference by the self-test
- `KATAS`                    kata number -> (folder, module name)
- `max_examples(n)`          a hypothesis example count that scales with the profile
- `count_triton_launches()`  context manager counting Triton kernel launches inside it
- `assert_triton_ran(l, c)`  fail unless those launches include one (no torch fallback)
- `assert_raises(E, what)`   like pytest.raises, with a message naming the call and the error
- `load_kata_file(path, n)`  import a kata folder's own helper file (shadow.py, simulate.py)
"""
from typing import Any

# Imported on first use (PEP 562), so that `python kata.py status` starts without torch.
_EXPORTS = {
    "assert_close": "harness.compare", "tolerance": "harness.compare",
    "load_kata_module": "harness.impl", "KATAS": "harness.katas", "Mutant": "harness.mutants",
    "max_examples": "harness.profiles", "count_triton_launches": "harness.triton_probe",
    "assert_triton_ran": "harness.triton_probe", "assert_raises": "harness.helpers",
    "load_kata_file": "harness.helpers",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
