"""Sync a local file or directory tree to and from any ``ObjectStore``, skipping unchanged files.

A sync lists the remote prefix once and compares each file's size and MD5-style ETag (a plain
MD5, or for multipart objects the MD5 of the part MD5s followed by ``-N``) with the listing.
Local digests are remembered by ``digests.DigestCache``, so an unchanged file is hashed
once, not on every sync. Files move in parallel on a thread pool.

Sync uses what ``ObjectStore`` declares for it: ``put_file_etag`` (a put that returns the ETag
it computed, so a sent file need not be hashed again), ``part_size`` (which multipart ETag the
store gives a file), ``list_range`` with ``ranged_listing`` (a big prefix listed as key ranges
in parallel) and ``cache_dir`` (where the local digests are kept).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from wml_core.errors import StorageError
from wml_core.objectstore.base import ObjectInfo, ObjectStore, SyncSummary
from wml_core.objectstore.digests import DigestCache, FileStat, file_stat, user_cache_path
from wml_core.objectstore.progress import SerializedProgress, SyncProgress, tqdm_progress

#: The sync API; the progress classes live in ``.progress`` and are imported from here too.
__all__ = ["SyncProgress", "download", "tqdm_progress", "upload"]

_MIB = 1 << 20
#: Keys per parallel LIST range; below this many per worker one LIST is as fast.
_LIST_CHUNK = 250
#: Part size the AWS CLI and most SDKs use; tried when a multipart ETag is not ours.
_COMMON_PART = 8 * _MIB


# -- comparing ------------------------------------------------------------------------------

def _store_part(store: ObjectStore, size: int) -> int:
    """The part size ``store`` uploads ``size`` bytes with (0: one PUT, or no parts at all)."""
    return store.part_size(size)


def _part_sizes(store: ObjectStore, size: int, etag: str) -> list[int]:
    """Part sizes that could have produced ``etag`` for ``size`` bytes (0: a single PUT)."""
    if "-" not in etag:
        return [0]
    try:
        count = int(etag.rsplit("-", 1)[1])
    except ValueError:
        return []
    ours = _store_part(store, size)
    guess = math.ceil(size / count / _MIB) * _MIB
    sizes = dict.fromkeys(p for p in (ours, _COMMON_PART, guess) if p)
    return [p for p in sizes if math.ceil(size / p) == count]


def cache_path(store: ObjectStore) -> Path:
    """Where digests are cached: the store's ``cache_dir`` if it has one, else ``$WML_HOME/cache``."""
    base = store.cache_dir()
    return Path(base) / "digests.sqlite" if base else user_cache_path()


def _matches(store: ObjectStore, item: _Item, digest: Callable[[Path, FileStat, int], str | None]) -> bool:
    """Whether the local file has the remote object's size and ETag, per ``digest``

    (``DigestCache.known`` to ask the cache only, ``DigestCache.etag`` to hash if need be).
    """
    remote = item.remote
    if item.stat is None or remote is None or remote.size != item.stat.size:
        return False
    return any(digest(item.path, item.stat, part) == remote.etag
               for part in _part_sizes(store, remote.size, remote.etag))


# -- trees ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Item:
    """One file to sync: local path and stat (if it exists), key, remote object, bytes to move."""

    path: str | Path
    key: str
    stat: FileStat | None
    remote: ObjectInfo | None
    size: int


def _remote_index(store: ObjectStore, bucket: str, prefix: str, keys: list[str],
                  workers: int) -> dict[str, ObjectInfo]:
    """The objects under ``prefix``: one LIST, or ranges split at our own keys, in parallel."""
    size = max(_LIST_CHUNK, math.ceil(len(keys) / max(1, workers)))
    if not store.ranged_listing or len(keys) <= size:
        return {o.key: o for o in store.list(bucket, prefix)}
    ends = sorted(keys)[size - 1::size]  # code-point order is S3's UTF-8 byte order
    spans = list(zip([None] + ends, ends + [None]))
    page = min(1000, size + 16)
    with ThreadPoolExecutor(min(workers, len(spans)), thread_name_prefix="wml-list") as pool:
        found = pool.map(lambda span: list(store.list_range(bucket, prefix, *span, page)), spans)
        return {o.key: o for objects in found for o in objects}


def _bucket_index(store: ObjectStore, bucket: str, prefix: str, keys: list[str],
                  workers: int) -> dict[str, ObjectInfo]:
    """``_remote_index`` of ``bucket``, created first if it does not exist."""
    if not store.bucket_exists(bucket):
        store.create_bucket(bucket)
    return _remote_index(store, bucket, prefix, keys, workers)


def _join(prefix: str, rel: str) -> str:
    return "/".join(p for p in (prefix.strip("/"), rel) if p)


def _walk(root: str, rel: str = "") -> list[tuple[str, str]]:
    """(path, path relative to the walk's root) of every regular file under ``root``, in name
    order (symlinked files followed, symlinked dirs not). Strings, not ``Path``: a tree may hold
    many files."""
    with os.scandir(root) as found:
        entries = sorted(found, key=lambda e: e.name)
    files = []
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            files += _walk(entry.path, f"{rel}{entry.name}/")
        elif entry.is_file():
            files.append((entry.path, rel + entry.name))
    return files


def _local_items(root: Path, prefix: str) -> list[tuple[str | Path, str]]:
    if root.is_file():
        return [(root, _join(prefix, root.name))]
    if not root.is_dir():
        raise StorageError(f"nothing to upload at {root}")
    base = _join(prefix, "")
    return [(path, f"{base}/{rel}" if base else rel) for path, rel in _walk(str(root))]


def _remote_dest(dest: Path, prefix: str, key: str) -> Path | None:
    """Where object ``key`` goes under ``dest``; None for keys outside the prefix or unsafe."""
    base = prefix.strip("/")
    if key == base:
        rel = PurePosixPath(key).name
    elif not base or key.startswith(base + "/"):
        rel = key[len(base):].lstrip("/")
    else:
        return None
    parts = PurePosixPath(rel).parts
    if not parts or key.endswith("/") or any(p in ("..", ".") for p in parts):
        return None
    return dest.joinpath(*parts)


# -- running --------------------------------------------------------------------------------

def _parallel(task: Callable[[_Item], tuple[bool, int]], items: list[_Item], workers: int,
              summary: SyncSummary) -> None:
    """Run ``task`` on every item; stop at the first error and raise it."""
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="wml-sync") as pool:
        futures = [pool.submit(task, item) for item in items]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
        finally:  # an error or Ctrl-C: drop what has not started
            for future in futures:
                future.cancel()
    for future in futures:
        if not future.cancelled() and future.exception():
            raise future.exception()
    for future in futures:
        sent, nbytes = future.result()
        summary.sent += sent
        summary.skipped += not sent
        summary.bytes += nbytes if sent else 0
        summary.skipped_bytes += 0 if sent else nbytes


def _sync(store: ObjectStore, items: list[_Item], cache: DigestCache, task, progress, workers,
          started: float) -> SyncSummary:
    """Drive one sync: settle what the cache proves unchanged, run ``task`` on the rest."""
    summary = SyncSummary()
    report = SerializedProgress(progress or SyncProgress())
    try:
        report.start(len(items), sum(item.size for item in items))
        pending = []
        for item in items:
            if _matches(store, item, cache.known):
                summary.skipped += 1
                summary.skipped_bytes += item.size
            else:
                pending.append(item)
        if summary.skipped:
            report.skip(summary.skipped_bytes, summary.skipped)
        _parallel(lambda item: task(item, cache, report), pending, workers, summary)
    finally:
        cache.save()
        report.close()
    summary.seconds = time.monotonic() - started
    return summary


def upload(store: ObjectStore, local_path, bucket: str, prefix: str = "",
           progress: SyncProgress | None = None, workers: int = 8) -> SyncSummary:
    """Sync a file or directory to ``bucket/prefix``, creating the bucket, skipping unchanged."""
    started, root = time.monotonic(), Path(local_path).absolute()
    files = _local_items(root, prefix)
    listed = _join(prefix, root.name) if root.is_file() else (_join(prefix, "") + "/").lstrip("/")
    with ThreadPoolExecutor(1, thread_name_prefix="wml-list") as lister:  # local work while it waits on S3
        found = lister.submit(_bucket_index, store, bucket, listed, [key for _, key in files], workers)
        stats = [file_stat(path) for path, _ in files]
        cache = DigestCache(cache_path(store), root)
        remote = found.result()
    items = [_Item(path, key, stat, remote.get(key), stat.size) for (path, key), stat in zip(files, stats)]

    def send(item: _Item, cache: DigestCache, report: SyncProgress) -> tuple[bool, int]:
        if _matches(store, item, cache.etag):
            return _skipped(report, item.size)
        etag = store.put_file_etag(bucket, item.key, item.path, report.advance)
        if etag:
            cache.remember(item.path, item.stat, _store_part(store, item.stat.size), etag)
        report.file_done(False)
        return True, item.stat.size

    return _sync(store, items, cache, send, progress, workers, started)


def download(store: ObjectStore, bucket: str, prefix: str, dest,
             progress: SyncProgress | None = None, workers: int = 8) -> SyncSummary:
    """Sync the objects under ``bucket/prefix`` into the directory ``dest``, skipping unchanged."""
    started, dest = time.monotonic(), Path(dest).absolute()
    items = []
    for info in store.list(bucket, prefix.strip("/")):
        path = _remote_dest(dest, prefix, info.key)
        if path is not None:
            stat = file_stat(path) if path.is_file() else None
            items.append(_Item(path, info.key, stat, info, info.size))

    def fetch(item: _Item, cache: DigestCache, report: SyncProgress) -> tuple[bool, int]:
        if _matches(store, item, cache.etag):
            return _skipped(report, item.size)
        store.get_file(bucket, item.key, item.path, report.advance)
        parts = _part_sizes(store, item.remote.size, item.remote.etag)
        if parts:
            cache.remember(item.path, file_stat(item.path), parts[0], item.remote.etag)
        report.file_done(False)
        return True, item.remote.size

    return _sync(store, items, DigestCache(cache_path(store), dest), fetch, progress, workers, started)


def _skipped(report: SyncProgress, size: int) -> tuple[bool, int]:
    """Report a file found unchanged; the task result of a skip (not sent, ``size`` bytes)."""
    report.skip(size)
    return False, size
