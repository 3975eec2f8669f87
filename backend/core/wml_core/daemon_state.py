"""The embedded backend's state file: how a running daemon says where it is.

The daemon writes ``$WML_HOME/backend/backend.json`` (pid, URL, port, executor, capacity) when it
serves; the client's launcher reads it to find the daemon without importing the server.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from wml_core.private_files import private_dir, write_private

#: How long a health check may take before the daemon counts as not running.
HEALTH_TIMEOUT_S = 2.0


def state_file(home: Path) -> Path:
    """Where a running daemon records its pid, URL and executor."""
    return home / "backend" / "backend.json"


def write_state(home: Path, info: dict[str, Any]) -> None:
    """Record a serving daemon's ``info`` (pid, url, port, executor...) for clients to find."""
    path = state_file(home)
    private_dir(path.parent)
    write_private(path, json.dumps(info))


def read_state(home: Path) -> dict[str, Any]:
    """What the last daemon recorded, or ``{}``."""
    try:
        return json.loads(state_file(home).read_text())
    except (OSError, ValueError):
        return {}


def status(home: Path) -> dict[str, Any]:
    """Whether the daemon runs, and where: ``running``, ``url``, ``pid``, ``executor``..."""
    info = read_state(home)
    if not info:
        return {"running": False, "url": None, "pid": None, "executor": None}
    info["running"] = _alive(info["pid"]) and _healthy(info["url"])
    return info


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=HEALTH_TIMEOUT_S,
                                    context=ssl.create_default_context()) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False
