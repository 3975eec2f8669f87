"""The shape of an operator's command that works on the run store directly (``rotate_key``,
``admin_token``): ``--database``, the backend's settings, one line out, one-line errors."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional

from wml_backend.settings import Settings
from wml_core.errors import InvalidInput, WmlError


def store_command(module: str, doc: str, action: Callable[[Settings], str], argv: Optional[list[str]] = None) -> None:
    """Run ``action`` on the settings that ``python -m module [--database URL]`` means and print what
    it returns; a failure is one line on standard error, exit 2 (bad input) or 1."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.splitlines()[0])
    parser.add_argument("--database", help="the run store: postgresql://... (default: $WML_DATABASE, "
                                           "else SQLite under $WML_HOME)")
    args = parser.parse_args(argv)
    name = module.rsplit(".", 1)[-1]
    try:
        settings = Settings(**({"database_url": args.database} if args.database else {}))
        print(action(settings))
    except WmlError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        sys.exit(2 if isinstance(exc, InvalidInput) else 1)
