"""Things reached by name ("module:attribute"), imported only when asked for: the toy world's translator and data
source are found this way, so the real pipeline never imports the toy world."""

from __future__ import annotations

import importlib
from typing import Any


def resolve(name: str) -> Any:
    """The object named "package.module:attribute"."""
    module, _, attribute = name.partition(":")
    return getattr(importlib.import_module(module), attribute)
