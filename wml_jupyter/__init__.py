"""wml_jupyter: run deep-learning experiments from a notebook.

``from wml_jupyter import run`` is cheap (for training code); ``Client`` and the magics load
their dependencies only when used.
"""

from __future__ import annotations

import importlib
from typing import Any

from wml_core.errors import WmlError

__version__ = "0.1.0"
__all__ = ["Client", "WmlError", "run"]


def __getattr__(name: str) -> Any:
    if name == "Client":
        from .client import Client
        return Client
    if name == "run":
        return importlib.import_module(".run", __name__)
    if name in _JUPYTER_DISCOVERY:  # Jupyter finds the server and lab extensions through these
        return getattr(importlib.import_module(".serverext", __name__), name)
    raise AttributeError(name)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext wml_jupyter``: register the ``%wml`` magics."""
    from .magics import load
    load(ipython)


#: Functions Jupyter looks up on the package; ``wml_jupyter.serverext`` defines them (cheaply).
_JUPYTER_DISCOVERY = ("_jupyter_server_extension_points", "_jupyter_labextension_paths")
