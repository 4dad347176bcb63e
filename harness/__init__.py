"""The small harness every kata's tests share.

Public helpers (the only things a test or a learner's module may import from here):

- `load_kata_module(name)`   the module under test, from the folder chosen by ``--impl``
- `assert_close(...)`        value comparison whose failure names the worst element
- `tolerance(dtype)`         the documented (atol, rtol) for a dtype
- `Mutant`                   a planted bug, applied to the reference by the self-test
- `KATAS`                    kata number -> (folder, module name)
"""
from harness.compare import assert_close, tolerance
from harness.impl import load_kata_module
from harness.katas import KATAS
from harness.mutants import Mutant

__all__ = ["assert_close", "tolerance", "load_kata_module", "KATAS", "Mutant"]
