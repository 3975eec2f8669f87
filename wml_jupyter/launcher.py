"""The client's one door to the server's code: it starts the embedded backend as a process.

Everything else in ``wml_jupyter`` talks to a backend over HTTP. This module runs the server's
own command line (``python -m wml_backend.daemon``, ``python -m wml_backend.dry_run``) in a
subprocess and reads what it prints, so the client never imports the server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Optional, Sequence

from wml_core import daemon_state
from wml_core.errors import BackendUnavailable, InvalidInput
from wml_core.objectstore.resolve import wml_home

from .config import Profile

DAEMON = (sys.executable, "-m", "wml_backend.daemon")
DRY_RUN = (sys.executable, "-m", "wml_backend.dry_run")


def status() -> dict:
    """Whether the embedded backend runs, and where (``running``, ``url``, ``pid``, ``executor``)."""
    return daemon_state.status(wml_home())


def daemon(action: str, flags: Sequence[str] = ()) -> dict:
    """``wml-backend start|stop|status FLAGS``: the daemon's status afterwards, as it printed it."""
    return json.loads(_run([*DAEMON, action, *flags]))


def serve(flags: Sequence[str]) -> None:
    """Become the backend in the foreground (``wml backend serve``)."""
    os.execv(sys.executable, [*DAEMON, "serve", *flags])


def profile_flags(profile: Profile) -> list[str]:
    """The daemon flags that give it the profile's default object store."""
    flags = []
    if profile.storage:
        flags += ["--storage", profile.storage]
    if profile.endpoint:
        flags += ["--endpoint", profile.endpoint]
    return flags


def embedded_backend(profile: Profile) -> dict:
    """The running embedded backend's status, started (with the profile's store) if needed."""
    info = status()
    return info if info["running"] else daemon("start", profile_flags(profile))


def kubernetes_plan(request_json: str, profile: Profile) -> str:
    """The Kubernetes objects each run of an experiment request would create, as a YAML stream."""
    return _run([*DRY_RUN, *profile_flags(profile)], stdin=request_json)


def _run(argv: list[str], stdin: Optional[str] = None) -> str:
    """Run a server command; its one-line error becomes the matching ``WmlError``."""
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if done.returncode == 0:
        return done.stdout
    lines = done.stderr.strip().splitlines() or [f"exited with code {done.returncode}"]
    message = lines[-1].removeprefix("wml-backend: ")
    raise (InvalidInput if done.returncode == 2 else BackendUnavailable)(message)
