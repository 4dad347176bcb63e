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
"""
from harness.compare import assert_close, tolerance
from harness.impl import load_kata_module
from harness.katas import KATAS
from harness.mutants import Mutant
from harness.profiles import max_examples
from harness.triton_probe import assert_triton_ran, count_triton_launches

__all__ = ["assert_close", "tolerance", "load_kata_module", "KATAS", "Mutant", "max_examples",
           "count_triton_launches", "assert_triton_ran"]
