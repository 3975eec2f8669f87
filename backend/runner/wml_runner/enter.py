"""``wml-enter`` (``enter.c``): the program that starts a run's command in its sandbox.

A runner starting its command through it spawns it with ``vfork``, where a ``preexec_fn`` makes
Python fork the whole runner (~45 MB of page tables to copy, the interpreter's after-fork work in
the child, copy-on-write faults on both sides until the exec): ~7 ms more per run, on the path
from one run to the next. It is compiled on the host, once per version of its source, by the local
executor as it starts (``build``); where it cannot be (no C compiler), commands are started with
``Sandbox.preexec``, which does the same steps.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Optional

#: Set by the executor to the built helper: runners start their commands through it.
ENTER_ENV = "WML_ENTER"
SOURCE = Path(__file__).with_name("enter.c")
#: Static: its start loads no shared library (and so reads no ``LD_*`` variable of anyone's).
FLAGS = ("-O2", "-static", "-Wall")


def built_path() -> Path:
    """Where the helper of this source and these flags is built (beside its source)."""
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode()).hexdigest()[:16]
    return SOURCE.parent / "build" / f"wml-enter-{digest}"


def build() -> tuple[Optional[Path], Optional[str]]:
    """The helper, built now unless it was; or None and why it cannot be used."""
    path = built_path()
    if not path.exists():
        why = _compile(path)
        if why:
            return None, why
    unsafe = _unsafe(path)
    return (None, unsafe) if unsafe else (path, None)


def _compile(path: Path) -> Optional[str]:
    """Compile the helper to ``path`` (whole, or not at all); why it failed."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return "this host has no C compiler (cc)"
    try:
        path.parent.mkdir(mode=0o755, exist_ok=True)
    except OSError as exc:
        return f"cannot create {path.parent}: {exc.strerror}"
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    done = subprocess.run([compiler, *FLAGS, "-o", str(partial), str(SOURCE)], capture_output=True, text=True)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        errors = [line for line in done.stderr.splitlines() if "error" in line] or [f"exit code {done.returncode}"]
        return f"{compiler} could not build {errors[0]}"
    os.replace(partial, path)  # a runner never finds it half-written
    return None


def _unsafe(path: Path) -> Optional[str]:
    """Why root must not run ``path`` (someone else could have changed it), if so."""
    for each in (path, path.parent):
        info = each.lstat()
        if info.st_uid != os.geteuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return f"{each} is writable by others than its owner, or not this user's"
    return None
