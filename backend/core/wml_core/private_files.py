"""Files and folders under $WML_HOME are their owner's alone (0700 folders, 0600 files):
they hold tokens, credentials' whereabouts, data and results."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def private_dir(path: Path) -> Path:
    """Create ``path`` and any missing parents, each readable by its owner only."""
    path = Path(path)
    if path.is_dir():  # the usual case (a run's note, a log): one stat, not one per parent
        return path
    missing = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            continue  # made meanwhile by another process
        if stat.S_IMODE(folder.stat().st_mode) != 0o700:  # (a umask that takes the owner's bits)
            folder.chmod(0o700)
    return path


def private_open(path: Path, mode: str = "wb"):
    """Open ``path`` for writing, readable by its owner only: created so, or made so if it was
    not (a log an older version created world-readable)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    # Looked at first: a change of mode is a write to the disk's journal (in every run's path).
    if stat.S_IMODE(os.fstat(fd).st_mode) != 0o600:
        os.fchmod(fd, 0o600)
    return os.fdopen(fd, mode)


def write_private(path: Path, text: str) -> None:
    """Write a small text file only its owner can read."""
    private_dir(Path(path).parent)
    with private_open(path, "w") as f:
        f.write(text)
