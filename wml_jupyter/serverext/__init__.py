"""The Jupyter server extension behind the JupyterLab sidebar (routes under ``/wml/``).

Importing this package is cheap: ``jupyter_server`` is imported only when Jupyter loads the
extension. ``wml_jupyter`` re-exports the two discovery functions lazily.
"""

from __future__ import annotations

from typing import Any

#: Where the prebuilt JupyterLab extension is, inside the package, and its npm name.
LABEXTENSION_SRC = "labextension"
LABEXTENSION_NAME = "wml-jupyter"


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """Tell Jupyter which module loads the server extension."""
    return [{"module": "wml_jupyter.serverext"}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Tell JupyterLab where the prebuilt sidebar extension lives in the package."""
    return [{"src": LABEXTENSION_SRC, "dest": LABEXTENSION_NAME}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Create the manager and register the ``/wml/`` routes on the Jupyter server."""
    from .handlers import setup_handlers
    from .manager import WmlManager

    manager = WmlManager(parent=serverapp, log=serverapp.log)
    setup_handlers(serverapp.web_app, manager)
    serverapp.log.info("wml_jupyter: sidebar routes under %swml/", serverapp.base_url)
