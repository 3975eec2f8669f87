"""Object storage: one small interface (``ObjectStore``), a file store and an S3 store."""

from .base import ObjectInfo, ObjectStore, StoreConfig, SyncSummary
from .factory import open_store

__all__ = ["ObjectInfo", "ObjectStore", "StoreConfig", "SyncSummary", "open_store"]
