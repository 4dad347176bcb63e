"""`python -m harness COMMAND`: see harness/cli.py."""
import os
import sys

from harness.cli import main

try:
    sys.exit(main())
except BrokenPipeError:  # `python kata.py solution 04 | head`: the reader left, not an error
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(0)
