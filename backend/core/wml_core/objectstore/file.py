"""The embedded file store: a bucket is a folder under the store's root."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from wml_core.errors import StorageError
from wml_core.private_files import private_dir, private_open
from wml_core.objectstore.base import ObjectInfo, ObjectStore, Progress, StoreConfig
from wml_core.objectstore.digests import DigestCache, NotRegularFile, file_stat, user_cache_path

_CHUNK = 1 << 20
#: The store's digest cache (and its journal), in the root beside the buckets: no bucket name
#: starts with ".", so it is never inside one.
DIGESTS = ".wml-digests.sqlite"
#: A digest is remembered only for a file modified at least this long before it was hashed:
#: a runner rewriting it (same size) within the file system's mtime granularity, a few ms on
#: ext4 but up to 2 s on FAT or some NFS servers, would leave the mtime the cache saw.
_SETTLE_S = 2.0


def _hidden(name: str) -> bool:
    """Whether a file in a bucket is not an object: an upload in progress, or a digest cache
    (that of a store whose root lies inside this bucket)."""
    return (name.startswith(".") and ".part-" in name) or name.startswith(DIGESTS)


def _copy(src: Path, dst: Path, progress: Progress) -> None:
    """Copy ``src`` to ``dst`` (``_write_whole``)."""
    with open(src, "rb") as fin:
        def pump(out: BinaryIO) -> None:
            while chunk := fin.read(_CHUNK):
                out.write(chunk)
                if progress:
                    progress(len(chunk))
        _write_whole(dst, pump)


def _write_whole(dst: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write ``dst`` (``write`` fills it) through a temporary name, so a reader never sees half a file."""
    private_dir(dst.parent)
    tmp = dst.with_name(f".{dst.name}.part-{os.getpid()}")
    with private_open(tmp) as out:
        write(out)
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
            raise self.missing(bucket)

    def missing(self, bucket: str) -> StorageError:
        return StorageError(f"bucket {bucket!r} does not exist in the file store at {self.root}")

    def put_file(self, bucket: str, key: str, path: Path, progress: Progress = None) -> None:
        self.create_bucket(bucket)
        _copy(Path(path), self._object(bucket, key), progress)

    def put_bytes(self, bucket: str, key: str, data: bytes) -> None:
        """As the base class says, written in place (no temporary file to copy from)."""
        self.create_bucket(bucket)
        _write_whole(self._object(bucket, key), lambda out: out.write(data))

    def get_file(self, bucket: str, key: str, path: Path, progress: Progress = None) -> None:
        src = self._object(bucket, key)
        if not src.is_file():
            raise StorageError(f"no object {key!r} in bucket {bucket!r} at {self.root}")
        _copy(src, Path(path), progress)

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        yield from self._hashed(bucket, prefix, self._keys(bucket, prefix))

    def holds_objects(self, bucket: str, prefix: str = "") -> bool:
        return self.bucket_exists(bucket) and next(self._keys(bucket, prefix), None) is not None

    def checksums(self, bucket: str, prefix: str, max_objects: int, max_bytes: int) -> tuple[dict[str, str], bool]:
        """As the base class says; it stops before a file that would take the bytes hashed past
        ``max_bytes`` (sizes are read first, contents only within the bounds)."""
        bounded = _Bounded(self._keys(bucket, prefix), max_objects, max_bytes)
        etags = {info.key: info.etag for info in self._hashed(bucket, prefix, bounded)}
        return etags, bounded.complete

    def _keys(self, bucket: str, prefix: str) -> Iterator[tuple[Path, str]]:
        """(file, key) of every object whose key starts with ``prefix``, none of them read."""
        base = self._bucket(bucket).absolute()
        if not base.is_dir():
            raise self.missing(bucket)
        for full in _files(base):
            key = full.relative_to(base).as_posix()
            if key.startswith(prefix):
                yield full, key

    def _hashed(self, bucket: str, prefix: str, files: Iterator[tuple[Path, str]]) -> Iterator[ObjectInfo]:
        """The objects ``files`` with their ETags, hashed unless the digest cache knows them."""
        cache = DigestCache(self._digests(), self._bucket(bucket).absolute() / prefix.rpartition("/")[0], _SETTLE_S)
        try:
            for full, key in files:
                if info := _info(full, key, cache):
                    yield info
        finally:  # also when the caller stops early: what was hashed is kept
            cache.save()

    def _digests(self) -> Path:
        """The digest cache: in the root, or the user's own if the root is read-only."""
        return self.root / DIGESTS if os.access(self.root, os.W_OK) else user_cache_path()

    def local_path(self, bucket: str, prefix: str = "") -> Path | None:
        path = self._bucket(bucket) / prefix if prefix else self._bucket(bucket)
        return path if path.is_dir() else None

    def delete_prefix(self, bucket: str, prefix: str) -> None:
        """Remove every object under ``prefix`` (used by tests and cleanup)."""
        shutil.rmtree(self._bucket(bucket) / prefix, ignore_errors=True)


def _files(base: Path) -> Iterator[Path]:
    """Every object file under the bucket folder ``base``, folder by folder, sorted by name: regular
    files only. A link, a FIFO or a device is no object: reading one could leave the store (a link
    to /etc) or wait for ever (a FIFO); links to folders are not followed either."""
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        yield from (Path(dirpath) / name for name in sorted(filenames)
                    if not _hidden(name) and _regular(Path(dirpath) / name))


def _regular(path: Path) -> bool:
    """Whether ``path`` itself (not what a link names) is a regular file."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


class _Bounded:
    """(file, key) pairs passed on while they are at most ``max_objects`` files of at most
    ``max_bytes`` in all; ``complete`` says whether every pair was."""

    def __init__(self, files: Iterator[tuple[Path, str]], max_objects: int, max_bytes: int):
        self.files, self.objects_left, self.bytes_left, self.complete = files, max_objects, max_bytes, True

    def __iter__(self) -> Iterator[tuple[Path, str]]:
        for full, key in self.files:
            size = _size(full)
            if self.objects_left == 0 or size > self.bytes_left:
                self.complete = False
                return
            self.objects_left, self.bytes_left = self.objects_left - 1, self.bytes_left - size
            yield full, key


def _size(path: Path) -> int:
    """The size of the file ``path`` (0 if it is gone)."""
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


def _info(path: Path, key: str, cache: DigestCache) -> ObjectInfo | None:
    """The object ``key`` stored at ``path``; None if it was deleted, or replaced by something that is
    not a regular file, while being listed."""
    try:
        stat = file_stat(path)
        return ObjectInfo(key, stat.size, cache.etag(path, stat, 0))
    except (FileNotFoundError, NotRegularFile):
        return None
