"""The embedded file store: a bucket is a folder under the store's root."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Iterator, Optional

from ..errors import StorageError
from ..private import private_dir, private_open
from .base import ObjectInfo, ObjectStore, Progress, StoreConfig

_CHUNK = 1 << 20


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _copy(src: Path, dst: Path, progress: Progress) -> None:
    """Copy through a temporary name so a reader never sees half a file."""
    private_dir(dst.parent)
    tmp = dst.with_name(f".{dst.name}.part-{os.getpid()}")
    with open(src, "rb") as fin, private_open(tmp) as fout:
        while chunk := fin.read(_CHUNK):
            fout.write(chunk)
            if progress:
                progress(len(chunk))
    os.replace(tmp, dst)


class FileStore(ObjectStore):
    """Buckets are folders of ``config.root``; keys are relative paths inside them."""

    def __init__(self, config: StoreConfig):
        self.config = config
        self.root = Path(config.root)

    def _bucket(self, bucket: str) -> Path:
        if not bucket or "/" in bucket or bucket in (".", "..") or bucket.startswith("."):
            raise StorageError(f"invalid bucket name {bucket!r}")
        return self.root / bucket

    def _object(self, bucket: str, key: str) -> Path:
        base = self._bucket(bucket)
        path = (base / key).resolve()
        if not path.is_relative_to(base.resolve()) or not key:
            raise StorageError(f"invalid object key {key!r} in bucket {bucket!r}")
        return path

    def bucket_exists(self, bucket: str) -> bool:
        return self._bucket(bucket).is_dir()

    def create_bucket(self, bucket: str) -> None:
        private_dir(self._bucket(bucket))

    def check_bucket(self, bucket: str) -> None:
        if not self.bucket_exists(bucket):
            raise StorageError(f"bucket {bucket!r} does not exist in the file store at {self.root}")

    def put_file(self, bucket: str, key: str, path: Path, progress: Progress = None) -> None:
        self.create_bucket(bucket)
        _copy(Path(path), self._object(bucket, key), progress)

    def get_file(self, bucket: str, key: str, path: Path, progress: Progress = None) -> None:
        src = self._object(bucket, key)
        if not src.is_file():
            raise StorageError(f"no object {key!r} in bucket {bucket!r} at {self.root}")
        _copy(src, Path(path), progress)

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        base = self._bucket(bucket)
        if not base.is_dir():
            raise StorageError(f"bucket {bucket!r} does not exist in the file store at {self.root}")
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for name in sorted(filenames):
                if name.startswith(".") and ".part-" in name:
                    continue  # an upload in progress is not an object yet
                full = Path(dirpath) / name
                key = full.relative_to(base).as_posix()
                if key.startswith(prefix):
                    yield ObjectInfo(key, full.stat().st_size, _md5(full))

    def local_path(self, bucket: str, prefix: str = "") -> Optional[Path]:
        path = self._bucket(bucket) / prefix if prefix else self._bucket(bucket)
        return path if path.is_dir() else None

    def delete_prefix(self, bucket: str, prefix: str) -> None:
        """Remove every object under ``prefix`` (used by tests and cleanup)."""
        shutil.rmtree(self._bucket(bucket) / prefix, ignore_errors=True)
