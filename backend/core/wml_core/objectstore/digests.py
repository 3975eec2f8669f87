"""MD5 digests (S3-style ETags) of local files, remembered while a file's metadata does not change.

``file_etag`` hashes a file; ``DigestCache`` remembers the result in a small SQLite table keyed
by (path, part size) and valid for one (size, mtime_ns, ctime_ns, inode), so an unchanged file is
read once. The change time and inode are there because a writer may restore the modification
time (``cp -p``, ``rsync -t``, ``touch -d``, a build tool): no one but the kernel sets the change
time, and a file replaced by a rename is another inode.
The cache is only a cache: one that cannot be opened, is locked too long or is not a
database never fails the caller, who at worst hashes again.
"""

from __future__ import annotations

import hashlib
import math
import os
import sqlite3
import stat
import threading
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from wml_core.private_files import private_dir, private_open

_CHUNK = 1 << 20


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


class NotRegularFile(OSError):
    """A path to hash names a FIFO, a device or a socket: reading it could wait for ever."""


def open_regular(path: Path):
    """``path`` opened for reading in binary, if it is a regular file; else ``NotRegularFile`` at
    once (the open itself does not wait for a FIFO's writer)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(f"{path}: not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def span_md5(path: Path, offset: int, length: int) -> hashlib._Hash:
    """The MD5 of ``length`` bytes of ``path`` from ``offset`` (one part of a multipart upload)."""
    with open_regular(path) as f:
        f.seek(offset)
        return _md5_of(f, length)


def file_etag(path: Path, part_size: int = 0) -> str:
    """The ETag S3 gives ``path`` stored in one PUT (``part_size`` 0) or in parts of that size."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if not part_size:
            return _md5_of(f, size).hexdigest()
        count = max(1, math.ceil(size / part_size))
        return multipart_etag([_md5_of(f, part_size).digest() for _ in range(count)])


@dataclass(frozen=True)
class FileStat:
    """What the cache keys on: a changed size, modification or change time, or inode may mean new content."""

    size: int
    mtime_ns: int
    ctime_ns: int = 0
    inode: int = 0


def file_stat(path: Path) -> FileStat:
    """The size, times and inode of ``path`` (symlinks followed)."""
    st = os.stat(path)
    return FileStat(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def user_cache_path() -> Path:
    """The per-user digest cache: ``$WML_HOME/cache/digests.sqlite`` (``~/.wml`` by default)."""
    return Path(os.environ.get("WML_HOME") or "~/.wml").expanduser() / "cache" / "digests.sqlite"


def _unchanged(path: Path, stat: FileStat) -> bool:
    try:
        return file_stat(path) == stat
    except OSError:
        return False


def _discard_if_corrupt(db: Path, err: Exception) -> bool:
    """Delete ``db`` (and its journal) if SQLite says it is not a database; whether it did."""
    # The sqlite3 module raises a plain DatabaseError, no subclass, for SQLITE_CORRUPT and
    # SQLITE_NOTADB; busy, locked, read-only or unopenable files raise OperationalError.
    if type(err) is not sqlite3.DatabaseError:
        return False
    try:
        for path in (db, db.with_name(db.name + "-journal")):
            path.unlink(missing_ok=True)
    except OSError:
        return False
    return True


class DigestCache:
    """Remembers local files' ETags by (path, part size), valid for one ``FileStat``, in SQLite.

    Only rows under ``scope`` are loaded, once; new rows are written by ``save``. A cache
    that cannot be opened (read-only home) degrades to memory only; a file that is not a
    database is deleted and started afresh. With ``settle_s``, a digest is remembered only
    for a file last modified at least that long before it was hashed: a rewrite within the
    file system's timestamp granularity would otherwise keep the same mtime.
    """

    def __init__(self, db: Path | None, scope: Path, settle_s: float = 0.0):
        self._db, self._lock = db, threading.Lock()
        self._settle_ns = int(settle_s * 1e9)
        self._rows: dict[tuple[str, int], tuple[int, int, int, int, str]] = {}
        self._new: dict[tuple[str, int], tuple[int, int, int, int, str]] = {}
        try:
            self._load(str(scope))
        except (OSError, sqlite3.Error) as err:
            if not _discard_if_corrupt(self._db, err):
                self._db = None

    def _connect(self) -> sqlite3.Connection:
        private_dir(self._db.parent)
        private_open(self._db, "ab").close()  # created private before SQLite opens it
        conn = sqlite3.connect(self._db, timeout=10)
        os.chmod(self._db, 0o600)
        conn.execute("CREATE TABLE IF NOT EXISTS file_digests (path TEXT, part INTEGER, size INTEGER,"
                     " mtime_ns INTEGER, ctime_ns INTEGER, inode INTEGER, etag TEXT, PRIMARY KEY (path, part))")
        return conn

    def _load(self, scope: str) -> None:
        if self._db is None:
            return
        below = scope.rstrip(os.sep) + os.sep
        with closing(self._connect()) as conn:
            rows = conn.execute("SELECT path, part, size, mtime_ns, ctime_ns, inode, etag FROM file_digests"
                                " WHERE path = ? OR (path >= ? AND path < ?)",
                                (scope, below, below[:-1] + chr(ord(os.sep) + 1)))
            self._rows = {row[:2]: row[2:] for row in rows}

    def known(self, path: Path, stat: FileStat, part_size: int) -> str | None:
        """The remembered ETag of ``path`` as of ``stat``, or None."""
        row = self._rows.get((str(path), part_size))
        return row[4] if row and row[:4] == (stat.size, stat.mtime_ns, stat.ctime_ns, stat.inode) else None

    def etag(self, path: Path, stat: FileStat, part_size: int) -> str:
        """The ETag of ``path`` in parts of ``part_size``, hashing only if not remembered."""
        known = self.known(path, stat, part_size)
        if known is not None:
            return known
        hashed_at = time.time_ns()
        etag = file_etag(path, part_size)
        settled = not self._settle_ns or stat.mtime_ns <= hashed_at - self._settle_ns
        if settled and _unchanged(path, stat):  # else it changed under us: hash next time too
            self.remember(path, stat, part_size, etag)
        return etag

    def remember(self, path: Path, stat: FileStat, part_size: int, etag: str) -> None:
        """Record that ``path`` as of ``stat`` has ``etag`` in parts of ``part_size``."""
        with self._lock:
            self._rows[(str(path), part_size)] = self._new[(str(path), part_size)] = \
                (stat.size, stat.mtime_ns, stat.ctime_ns, stat.inode, etag)

    def save(self) -> None:
        """Write the rows learnt since loading (best effort: it is only a cache)."""
        if self._db is None or not self._new:
            return
        rows = [(p, part, *value) for (p, part), value in self._new.items()]
        try:
            with closing(self._connect()) as conn, conn:
                conn.executemany("INSERT OR REPLACE INTO file_digests VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            self._new.clear()
        except (OSError, sqlite3.Error):
            pass
