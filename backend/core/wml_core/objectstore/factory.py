"""Build the object store a configuration names."""

from __future__ import annotations

from wml_core.errors import InvalidInput
from wml_core.objectstore.base import ObjectStore, StoreConfig


def open_store(config: StoreConfig) -> ObjectStore:
    """The ``ObjectStore`` for ``config.kind`` (``file`` or ``s3``)."""
    if config.kind == "file":
        from wml_core.objectstore.file import FileStore
        return FileStore(config)
    if config.kind == "s3":
        from wml_core.objectstore.s3 import S3Store
        return S3Store(config)
    raise InvalidInput(f"unknown storage kind {config.kind!r}; expected 'file' or 's3'")
