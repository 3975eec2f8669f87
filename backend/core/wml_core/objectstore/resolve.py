"""The one rule that says which object store a configuration means.

A storage URL ``s3://bucket/prefix`` (with an optional endpoint) means S3; no URL means the
embedded file store under ``$WML_HOME/storage``. The client's profiles and the backend's
settings both ask this module, so they always agree.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from wml_core.errors import InvalidInput, quoted
from wml_core.objectstore.base import StoreConfig


def wml_home() -> Path:
    """``$WML_HOME`` or ``~/.wml``: configuration and the embedded backend's state."""
    return Path(os.environ.get("WML_HOME") or Path.home() / ".wml")


def parse_storage_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` as (bucket, prefix); ``InvalidInput`` for anything else."""
    if not url.startswith("s3://") or not url[5:].split("/", 1)[0]:
        raise InvalidInput(f"storage: {url!r} is not an s3://bucket[/prefix] URL")
    bucket, _, prefix = url[5:].partition("/")
    return bucket, prefix.strip("/")


def parse_destination(target: str) -> tuple[str, str]:
    """``BUCKET[/PREFIX]`` (where ``wml upload`` sends) as (bucket, prefix), refusing what would land
    outside the bucket."""
    bucket, _, prefix = target.partition("/")
    if not bucket or bucket.startswith(".") or "\\" in target:
        raise InvalidInput(f"bucket: {quoted(target)} is not BUCKET[/PREFIX] (a bucket name, then an optional prefix)")
    if {".", ".."} & set(prefix.split("/")):
        raise InvalidInput(f"bucket: {quoted(target)}: the prefix must not contain . or .. segments")
    return bucket, prefix


def store_config_for(storage_url: Optional[str], endpoint: Optional[str], home: Path) -> StoreConfig:
    """The store that a storage URL and endpoint mean: S3, or the file store under ``home``."""
    if storage_url:
        parse_storage_url(storage_url)
        return StoreConfig(kind="s3", endpoint=endpoint)
    return StoreConfig(kind="file", root=str(home / "storage"))
