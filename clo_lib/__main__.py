"""`python -m clo_lib COMMAND ...`: the same as `clo COMMAND ...` (clo_lib.cli)."""

import sys

from clo_lib.cli import main

sys.exit(main())
