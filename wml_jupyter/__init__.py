"""wml_jupyter: run deep-learning experiments from a notebook.

``from wml_jupyter import run`` is cheap (for training code); ``Client`` and the magics load
their dependencies only when used.
"""

from __future__ import annotations

import importlib
from typing import Any

from wml_backend.errors import WmlError

__version__ = "0.1.0"
__all__ = ["Client", "WmlError", "run"]


def __getattr__(name: str) -> Any:
    if name == "Client":
        from .client import Client
        return Client
    if name == "run":
        return importlib.import_module(".run", __name__)
    raise AttributeError(name)
