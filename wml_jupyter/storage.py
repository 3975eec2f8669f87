"""The object store a client profile names (the embedded file store when none)."""

from __future__ import annotations

from wml_backend.settings import parse_storage_url, wml_home
from wml_backend.storage import ObjectStore, StoreConfig, open_store

from .config import Profile


def store_config(profile: Profile) -> StoreConfig:
    """``s3://bucket/prefix`` with the profile's endpoint, or the embedded file store."""
    if not profile.storage:
        return StoreConfig(kind="file", root=str(wml_home() / "storage"))
    parse_storage_url(profile.storage)
    return StoreConfig(kind="s3", endpoint=profile.endpoint)


def client_store(profile: Profile) -> ObjectStore:
    """Open the profile's store."""
    return open_store(store_config(profile))
