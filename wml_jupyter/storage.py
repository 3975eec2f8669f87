"""The object store a client profile names (the embedded file store when none), and uploads to it.

The bytes go from here to the store; the backend only records, first, that the destination is
the account's (``Client.upload`` claims it: data belongs to accounts).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from wml_core.errors import InvalidInput
from wml_core.objectstore import ObjectStore, StoreConfig, open_store
from wml_core.objectstore.resolve import parse_destination, store_config_for, wml_home

from .config import Profile


def store_config(profile: Profile) -> StoreConfig:
    """``s3://bucket/prefix`` with the profile's endpoint, or the embedded file store."""
    return store_config_for(profile.storage, profile.endpoint, wml_home())


def client_store(profile: Profile) -> ObjectStore:
    """Open the profile's store."""
    return open_store(store_config(profile))


def upload(profile: Profile, path: str | os.PathLike, target: str, progress: Any = None):
    """Sync a local file or directory to ``target`` (``BUCKET[/PREFIX]``, claimed already); return what was sent."""
    from wml_core.objectstore.sync import upload as sync_upload
    bucket, prefix = checked_upload(path, target)
    return sync_upload(client_store(profile), Path(path), bucket, prefix, progress=progress)


def checked_upload(path: str | os.PathLike, target: str) -> tuple[str, str]:
    """The (bucket, prefix) an upload of ``path`` to ``target`` goes to, once both are checked."""
    if not Path(path).exists():
        raise InvalidInput(f"{path}: no such file or directory")
    return parse_destination(target)
