"""Files and folders under $WML_HOME are their owner's alone (0700 folders, 0600 files):
they hold tokens, credentials' whereabouts, data and results."""

from __future__ import annotations

import os
from pathlib import Path


def private_dir(path: Path) -> Path:
    """Create ``path`` and any missing parents, each readable by its owner only."""
    path = Path(path)
    if path.is_dir():  # the usual case (a run's note, a log): one stat, not one per parent
        return path
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            continue  # made meanwhile by another process
        folder.chmod(0o700)
    return path


def private_open(path: Path, mode: str = "wb"):
    """Open ``path`` for writing, readable by its owner only: created so, or made so if it was
    not (a log an older version created world-readable)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, mode)


def write_private(path: Path, text: str) -> None:
    """Write a small text file only its owner can read."""
    private_dir(Path(path).parent)
    with private_open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
