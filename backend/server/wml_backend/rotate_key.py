"""Rotate the key that encrypts the credentials kept in the run store.

``python -m wml_backend.rotate_key [--database URL]`` seals every stored secret again with the
first key of the backend's key file, in one transaction. The key file holds one key a line (the
first seals, any opens), so a rotation never leaves a replica unable to read what another sealed:

1. give every replica the key file ``NEW`` then ``OLD`` (two lines), and restart them;
2. run this (with the same database and key file as the backend: ``WML_DATABASE``,
   ``WML_SECRETS_KEY_FILE``, ``WML_HOME``);
3. give every replica ``NEW`` alone, and restart them.

docs/operations.md says the same for a Kubernetes deploy.
"""

from __future__ import annotations

from typing import Optional

from wml_core.errors import InvalidInput
from wml_backend.rundb import connect
from wml_backend.settings import Settings
from wml_backend.store_command import store_command


def rotate(settings: Settings) -> int:
    """Seal every secret of the settings' run store again with the first key of its key file; how many."""
    if not settings.secrets_key_file.exists():  # else a new key would be made, which opens nothing stored
        raise InvalidInput(f"no key file at {settings.secrets_key_file} (WML_SECRETS_KEY_FILE)")
    store = connect(settings.database, settings.secrets_key_file)
    try:
        return store.reseal_secrets()
    finally:
        store.close()


def _rotated(settings: Settings) -> str:
    return f"{rotate(settings)} stored secrets sealed again with the first key of {settings.secrets_key_file}"


def main(argv: Optional[list[str]] = None) -> None:
    """Rotate, and say how many secrets were sealed again."""
    store_command("wml_backend.rotate_key", __doc__, _rotated, argv)


if __name__ == "__main__":
    main()
