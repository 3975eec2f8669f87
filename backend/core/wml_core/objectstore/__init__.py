"""Object storage: one small interface (``ObjectStore``), a file store and an S3 store."""

from wml_core.objectstore.base import SCOPED_STORE, ObjectInfo, ObjectStore, StoreConfig, SyncSummary
from wml_core.objectstore.factory import open_store

__all__ = ["SCOPED_STORE", "ObjectInfo", "ObjectStore", "StoreConfig", "SyncSummary", "open_store"]
