"""User errors: bad input, a missing file, an unreachable service. Every one the kit raises is a CloError, so the
command line (clo_lib.cli) prints it as one line and exits 2, while anything else (a bug) stays a traceback."""

from __future__ import annotations


class CloError(Exception):
    """Something the user can fix, said in one sentence naming the file, the field and what was expected."""


class InputError(CloError, ValueError):
    """A value or file content that is not what was expected."""


class MissingInputError(CloError, FileNotFoundError):
    """A file or folder that is not there."""
