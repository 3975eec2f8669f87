"""A real IPython shell for tests, with the wml magics loaded and no history file."""

from __future__ import annotations

from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config


def new_shell() -> InteractiveShell:
    """A fresh IPython shell (the previous instance is discarded) after ``%load_ext wml_jupyter``."""
    config = Config()
    config.HistoryManager.enabled = False
    InteractiveShell.clear_instance()
    shell = InteractiveShell.instance(config=config)
    shell.run_line_magic("load_ext", "wml_jupyter")
    return shell
