"""Credentials at rest: what the run store keeps of them is encrypted, with a key kept apart.

The key is a Fernet key (AES-128-CBC with an HMAC-SHA256, from the ``cryptography`` package) in a
file only the backend's user can read, beside the SQLite database under ``$WML_HOME`` (or, for
a shared PostgreSQL install, a file every replica is given, e.g. from a Kubernetes Secret). A
dump or backup of the database alone holds no usable credential.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from wml_core.errors import InvalidInput, WmlError
from wml_core.private_files import private_dir


class SecretBox:
    """Seals JSON payloads for storage and opens them again.

    The key file holds one key a line: the first seals, any of them opens. While a key is
    rotated it holds the new key then the old one (``python -m wml_backend.rotate_key``)."""

    def __init__(self, key_file: Optional[Path]):
        """The keys in ``key_file`` (one created, 0600, if missing); None: a key of this process
        only (an in-memory database)."""
        self.key_file = key_file
        self._fernet = fernet(load_or_create_key(key_file) if key_file else Fernet.generate_key(), key_file)

    def reseal(self, sealed: str) -> str:
        """What ``seal`` made with any key of the file, sealed again with the first."""
        try:
            return self._fernet.rotate(sealed.encode("ascii")).decode("ascii")
        except (InvalidToken, ValueError):
            raise self._unreadable() from None

    def seal(self, payload: dict) -> str:
        """``payload`` as JSON, encrypted: text that says nothing without the key."""
        return self._fernet.encrypt(json.dumps(payload).encode()).decode("ascii")

    def open(self, sealed: str) -> dict:
        """The payload ``seal`` encrypted; a clear error if this key did not seal it."""
        try:
            return json.loads(self._fernet.decrypt(sealed.encode("ascii")))
        except (InvalidToken, ValueError):
            raise self._unreadable() from None

    def _unreadable(self) -> WmlError:
        return WmlError(f"stored credentials cannot be decrypted with the key in {self.key_file}: "
                        "was the key file replaced?")


def fernet(keys: bytes, where: Optional[Path]) -> MultiFernet:
    """The cipher of ``keys`` (one a line, read from ``where``: the first seals, any opens); a
    one-line error if one is no Fernet key."""
    try:
        return MultiFernet([Fernet(key) for key in keys.split()])
    except ValueError:
        raise InvalidInput(f"the key in {where} is not a Fernet key (32 url-safe base64-encoded bytes: "
                           "docs/operations.md says how to make one)") from None


def load_or_create_key(path: Path) -> bytes:
    """The key in ``path``; a new one if there is none, written so that only its owner may read it.

    A new key is written whole to a file of its own, then linked into place: of backends starting
    together on one database, one places its key and the others read that one.
    """
    path = Path(path)
    private_dir(path.parent)
    if not path.exists():
        draft = path.with_name(f".{path.name}.{os.getpid()}")
        with os.fdopen(os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(Fernet.generate_key())
            os.fsync(f.fileno())
        try:
            os.link(draft, path)
        except FileExistsError:
            pass  # another backend placed its key first: use that one
        finally:
            draft.unlink()
    try:
        os.chmod(path, 0o600)  # a copy someone made readable is made private again
    except OSError:
        pass  # a read-only mount (a Kubernetes Secret's volume): its mode is the cluster's to set
    return path.read_bytes().strip()
