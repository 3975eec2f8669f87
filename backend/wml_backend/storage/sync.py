"""Sync a local file or directory tree to and from any ``ObjectStore``, skipping unchanged files.

A sync lists the remote prefix once and compares each file's size and MD5-style ETag (a plain
MD5, or for multipart objects the MD5 of the part MD5s followed by ``-N``) with the listing.
Local digests are remembered in a small SQLite cache keyed by (path, size, mtime_ns), so an
unchanged file is hashed once, not on every sync. Files move in parallel on a thread pool.

Stores may offer optional methods, used when present:
``put_file_etag(bucket, key, path, progress) -> str`` (a put that returns the ETag it
computed, so a sent file need not be hashed again), ``part_size(size) -> int`` (the
multipart part size the store uses for a file of ``size`` bytes, 0 for a single PUT) and
``list_range(bucket, prefix, after, until, page_size)`` (objects with ``after < key <= until``,
so a big prefix is listed as key ranges in parallel).
"""

from __future__ import annotations

import hashlib
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import StorageError
from ..private import private_dir
from .base import ObjectInfo, ObjectStore, SyncSummary

_CHUNK = 1 << 20
_MIB = 1 << 20
#: Keys per parallel LIST range; below this many per worker one LIST is as fast.
_LIST_CHUNK = 250
#: Part size the AWS CLI and most SDKs use; tried when a multipart ETag is not ours.
_COMMON_PART = 8 * _MIB


class SyncProgress:
    """Receives a sync's progress; the base class ignores it. Calls never overlap."""

    def start(self, total_files: int, total_bytes: int) -> None:
        """The sync considers ``total_files`` files of ``total_bytes`` bytes in all."""

    def advance(self, nbytes: int) -> None:
        """``nbytes`` more bytes were sent, or found unchanged and skipped."""

    def file_done(self, skipped: bool) -> None:
        """One more file was transferred, or skipped as unchanged."""

    def close(self) -> None:
        """The sync ended (successfully or not)."""


class _Serialized(SyncProgress):
    """Forwards to another ``SyncProgress`` one call at a time (workers are threads)."""

    def __init__(self, inner: SyncProgress):
        self._inner, self._lock = inner, threading.Lock()

    def start(self, total_files: int, total_bytes: int) -> None:
        with self._lock:
            self._inner.start(total_files, total_bytes)

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self._inner.advance(nbytes)

    def file_done(self, skipped: bool) -> None:
        with self._lock:
            self._inner.file_done(skipped)

    def close(self) -> None:
        with self._lock:
            self._inner.close()


class _TqdmProgress(SyncProgress):
    """Two tqdm bars: bytes, and files (with the number skipped as unchanged)."""

    def __init__(self, desc: str, options: dict):
        self._desc, self._options = desc, options
        self._bytes = self._files = None
        self._skipped = 0

    def start(self, total_files: int, total_bytes: int) -> None:
        from tqdm import tqdm
        self._bytes = tqdm(total=total_bytes, desc=self._desc, unit="B", unit_scale=True,
                           unit_divisor=1024, position=0, **self._options)
        self._files = tqdm(total=total_files, desc="files", unit="file", position=1,
                           **self._options)

    def advance(self, nbytes: int) -> None:
        self._bytes.update(nbytes)

    def file_done(self, skipped: bool) -> None:
        self._skipped += skipped
        self._files.set_postfix(skipped=self._skipped, refresh=False)
        self._files.update(1)

    def close(self) -> None:
        for bar in (self._files, self._bytes):
            if bar is not None:
                bar.close()


def tqdm_progress(desc: str = "sync", **options) -> SyncProgress:
    """A ``SyncProgress`` drawn as tqdm bars (``options`` go to ``tqdm``, e.g. ``disable``)."""
    return _TqdmProgress(desc, options)


# -- digests --------------------------------------------------------------------------------

def multipart_etag(part_md5s: list[bytes]) -> str:
    """S3's ETag of a multipart object: MD5 of the concatenated part MD5s, then ``-N``."""
    return f"{hashlib.md5(b''.join(part_md5s), usedforsecurity=False).hexdigest()}-{len(part_md5s)}"


def _md5_of(f, length: int) -> hashlib._Hash:
    """The MD5 of the next ``length`` bytes of the open file ``f`` (fewer at its end)."""
    digest = hashlib.md5(usedforsecurity=False)
    while length > 0 and (chunk := f.read(min(_CHUNK, length))):
        digest.update(chunk)
        length -= len(chunk)
    return digest


def file_etag(path: Path, part_size: int = 0) -> str:
    """The ETag S3 gives ``path`` stored in one PUT (``part_size`` 0) or in parts of that size."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if not part_size:
            return _md5_of(f, size).hexdigest()
        count = max(1, math.ceil(size / part_size))
        return multipart_etag([_md5_of(f, part_size).digest() for _ in range(count)])


def _store_part(store: ObjectStore, size: int) -> int:
    """The part size ``store`` uploads ``size`` bytes with (0: one PUT, or no parts at all)."""
    return getattr(store, "part_size", lambda n: 0)(size)


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


@dataclass(frozen=True)
class _Stat:
    """What the cache keys on: a changed size or modification time means new content."""

    size: int
    mtime_ns: int


def _stat(path: Path) -> _Stat:
    st = path.stat()
    return _Stat(st.st_size, st.st_mtime_ns)


class DigestCache:
    """Remembers local files' ETags by (path, size, mtime_ns, part size) in SQLite.

    Only rows under ``scope`` are loaded, once; new rows are written by ``save``. A cache
    that cannot be opened (read-only home) degrades to memory only.
    """

    def __init__(self, db: Path | None, scope: Path):
        self._db, self._lock = db, threading.Lock()
        self._rows: dict[tuple[str, int], tuple[int, int, str]] = {}
        self._new: dict[tuple[str, int], tuple[int, int, str]] = {}
        try:
            self._load(str(scope))
        except (OSError, sqlite3.Error):
            self._db = None

    def _connect(self) -> sqlite3.Connection:
        private_dir(self._db.parent)
        conn = sqlite3.connect(self._db, timeout=10)
        os.chmod(self._db, 0o600)
        conn.execute("CREATE TABLE IF NOT EXISTS digests (path TEXT, part INTEGER, size INTEGER,"
                     " mtime_ns INTEGER, etag TEXT, PRIMARY KEY (path, part))")
        return conn

    def _load(self, scope: str) -> None:
        if self._db is None:
            return
        below = scope.rstrip(os.sep) + os.sep
        with closing(self._connect()) as conn:
            rows = conn.execute("SELECT * FROM digests WHERE path = ? OR (path >= ? AND path < ?)",
                                (scope, below, below[:-1] + chr(ord(os.sep) + 1)))
            self._rows = {(p, part): (size, mtime, etag) for p, part, size, mtime, etag in rows}

    def known(self, path: Path, stat: _Stat, part_size: int) -> str | None:
        """The remembered ETag of ``path`` as of ``stat``, or None."""
        row = self._rows.get((str(path), part_size))
        return row[2] if row and row[:2] == (stat.size, stat.mtime_ns) else None

    def etag(self, path: Path, stat: _Stat, part_size: int) -> str:
        """The ETag of ``path`` in parts of ``part_size``, hashing only if not remembered."""
        known = self.known(path, stat, part_size)
        if known is not None:
            return known
        etag = file_etag(path, part_size)
        self.remember(path, stat, part_size, etag)
        return etag

    def remember(self, path: Path, stat: _Stat, part_size: int, etag: str) -> None:
        """Record that ``path`` as of ``stat`` has ``etag`` in parts of ``part_size``."""
        with self._lock:
            self._rows[(str(path), part_size)] = self._new[(str(path), part_size)] = \
                (stat.size, stat.mtime_ns, etag)

    def save(self) -> None:
        """Write the rows learnt since loading (best effort: it is only a cache)."""
        if self._db is None or not self._new:
            return
        rows = [(p, part, *value) for (p, part), value in self._new.items()]
        try:
            with closing(self._connect()) as conn, conn:
                conn.executemany("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?)", rows)
            self._new.clear()
        except sqlite3.Error:
            pass


def cache_path(store: ObjectStore) -> Path:
    """Where digests are cached: the store's ``cache_dir`` if it has one, else ``$WML_HOME/cache``."""
    base = getattr(store, "cache_dir", None) or \
        Path(os.environ.get("WML_HOME") or "~/.wml").expanduser() / "cache"
    return Path(base) / "digests.sqlite"


def _matches(store: ObjectStore, item: _Item, digest: Callable[..., str | None]) -> bool:
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

    path: Path
    key: str
    stat: _Stat | None
    remote: ObjectInfo | None
    size: int


def _remote_index(store: ObjectStore, bucket: str, prefix: str, keys: list[str],
                  workers: int) -> dict[str, ObjectInfo]:
    """The objects under ``prefix``: one LIST, or ranges split at our own keys, in parallel."""
    ranged = getattr(store, "list_range", None)
    size = max(_LIST_CHUNK, math.ceil(len(keys) / max(1, workers)))
    if ranged is None or len(keys) <= size:
        return {o.key: o for o in store.list(bucket, prefix)}
    ends = sorted(keys)[size - 1::size]  # code-point order is S3's UTF-8 byte order
    spans = list(zip([None] + ends, ends + [None]))
    page = min(1000, size + 16)
    with ThreadPoolExecutor(min(workers, len(spans)), thread_name_prefix="wml-list") as pool:
        found = pool.map(lambda span: list(ranged(bucket, prefix, *span, page)), spans)
        return {o.key: o for objects in found for o in objects}


def _join(prefix: str, rel: str) -> str:
    return "/".join(p for p in (prefix.strip("/"), rel) if p)


def _walk(root: Path) -> Iterable[tuple[Path, str]]:
    """Every regular file under ``root`` (symlinked files followed, symlinked dirs not)."""
    with os.scandir(root) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.is_dir(follow_symlinks=False):
                yield from ((p, f"{entry.name}/{rel}") for p, rel in _walk(Path(entry.path)))
            elif entry.is_file():
                yield Path(entry.path), entry.name


def _local_items(root: Path, prefix: str) -> list[tuple[Path, str]]:
    if root.is_file():
        return [(root, _join(prefix, root.name))]
    if not root.is_dir():
        raise StorageError(f"nothing to upload at {root}")
    return [(path, _join(prefix, rel)) for path, rel in _walk(root)]


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
        summary.bytes += nbytes


def _sync(store: ObjectStore, items: list[_Item], scope: Path, task, progress, workers,
          started: float) -> SyncSummary:
    """Drive one sync: settle what the cache proves unchanged, run ``task`` on the rest."""
    summary = SyncSummary()
    report = _Serialized(progress or SyncProgress())
    cache = DigestCache(cache_path(store), scope)
    try:
        report.start(len(items), sum(item.size for item in items))
        pending = []
        for item in items:
            if _matches(store, item, cache.known):
                _skipped(report, item.size)
                summary.skipped += 1
            else:
                pending.append(item)
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
    if not store.bucket_exists(bucket):
        store.create_bucket(bucket)
    listed = _join(prefix, root.name) if root.is_file() else (_join(prefix, "") + "/").lstrip("/")
    remote = _remote_index(store, bucket, listed, [key for _, key in files], workers)
    items = []
    for path, key in files:
        stat = _stat(path)
        items.append(_Item(path, key, stat, remote.get(key), stat.size))

    def send(item: _Item, cache: DigestCache, report: SyncProgress) -> tuple[bool, int]:
        if _matches(store, item, cache.etag):
            return _skipped(report, item.size)
        put_etag = getattr(store, "put_file_etag", None)
        if put_etag:
            etag = put_etag(bucket, item.key, item.path, report.advance)
            cache.remember(item.path, item.stat, _store_part(store, item.stat.size), etag)
        else:
            store.put_file(bucket, item.key, item.path, report.advance)
        report.file_done(False)
        return True, item.stat.size

    return _sync(store, items, root, send, progress, workers, started)


def download(store: ObjectStore, bucket: str, prefix: str, dest,
             progress: SyncProgress | None = None, workers: int = 8) -> SyncSummary:
    """Sync the objects under ``bucket/prefix`` into the directory ``dest``, skipping unchanged."""
    started, dest = time.monotonic(), Path(dest).absolute()
    items = []
    for info in store.list(bucket, prefix.strip("/")):
        path = _remote_dest(dest, prefix, info.key)
        if path is not None:
            stat = _stat(path) if path.is_file() else None
            items.append(_Item(path, info.key, stat, info, info.size))

    def fetch(item: _Item, cache: DigestCache, report: SyncProgress) -> tuple[bool, int]:
        if _matches(store, item, cache.etag):
            return _skipped(report, item.size)
        store.get_file(bucket, item.key, item.path, report.advance)
        parts = _part_sizes(store, item.remote.size, item.remote.etag)
        if parts:
            cache.remember(item.path, _stat(item.path), parts[0], item.remote.etag)
        report.file_done(False)
        return True, item.remote.size

    return _sync(store, items, dest, fetch, progress, workers, started)


def _skipped(report: SyncProgress, size: int) -> tuple[bool, int]:
    """Report a file found unchanged; the task result of a skip."""
    report.advance(size)
    report.file_done(True)
    return False, 0
