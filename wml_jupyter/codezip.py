"""Packaging training code for submission: a directory or a zip becomes zip bytes."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Optional

from wml_core.errors import InvalidInput

#: Folders never worth sending with the code.
SKIP_DIRS = {".git", "__pycache__", ".ipynb_checkpoints", ".venv", "node_modules"}


def zip_directory(path: Path) -> bytes:
    """The files under ``path`` as a zip (relative names, executable bits kept)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
            for name in sorted(filenames):
                full = Path(dirpath) / name
                if full.exists() and not full.is_file():  # a FIFO would block the zip forever
                    raise InvalidInput(f"{full}: not a regular file (a pipe, socket or device)")
                zf.write(full, full.relative_to(path).as_posix())
    return buffer.getvalue()


def zip_files(files: dict[str, bytes]) -> bytes:
    """A zip of in-memory files (name → content)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in sorted(files.items()):
            zf.writestr(name, content)
    return buffer.getvalue()


def package(model: Optional[str | os.PathLike], manifest_path: Optional[Path] = None) -> bytes:
    """Zip bytes for ``model`` (a directory or a .zip); default: the manifest's directory."""
    if model is None:
        if manifest_path is None:
            raise InvalidInput("model: no model directory or zip given")
        model = Path(manifest_path).parent
    path = Path(model)
    if path.is_dir():
        return zip_directory(path)
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise InvalidInput(f"{path}: not a zip archive or a directory")
        return path.read_bytes()
    raise InvalidInput(f"{path}: no such file or directory")
