"""The run store on SQLite in WAL mode: the embedded backend's durable state."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import psutil

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: one process per database file anyway
    fcntl = None

from wml_core.errors import BackendFull
from wml_core.private_files import private_open
from wml_backend.rundb.secretbox import SecretBox
from wml_backend.rundb.sql import SqlRunStore

#: Idle reader connections kept warm for the next reads (about the API server's worker threads);
#: a reader returned beyond these is closed.
IDLE_READERS = 32

#: The key file that seals stored credentials, beside the database unless told otherwise.
KEY_FILE = "secrets.key"

#: SQLite's column types for the shared schema (``rowid`` is SQLite's own).
TYPES = {"json": "TEXT", "real": "REAL", "blob": "BLOB", "bigint": "INTEGER",
         "serial": "INTEGER PRIMARY KEY AUTOINCREMENT", "rowid": "", "bytewise": ""}


@contextmanager
def _disk_full_is_an_error(path: str) -> Iterator[None]:
    """SQLite's "database or disk is full" as the one-line ``BackendFull`` (the transaction is undone)."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if "full" not in str(exc):
            raise
        raise BackendFull(f"the backend's disk is full ({Path(path).parent}): nothing was saved; "
                          "free some space and try again") from None


class SqliteRunStore(SqlRunStore):
    """All state in one SQLite file (WAL, so readers never wait for the writer).

    Every write transaction is ``BEGIN IMMEDIATE``: it holds the file's write lock from its
    first read, so the read that decides a write (a transition's legality) cannot go stale,
    whether the other writer is a thread, another connection or another process.
    """

    def __init__(self, path: str | Path, key_file: Optional[Path] = None):
        """The database at ``path``; stored credentials are sealed with the key in ``key_file``
        (default: ``secrets.key`` beside the database)."""
        self.path = str(path)
        memory = self.path == ":memory:"
        self.box = SecretBox(None if memory else Path(key_file or Path(self.path).parent / KEY_FILE))
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            Path(self.path).touch(mode=0o600, exist_ok=True)
            os.chmod(self.path, 0o600)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.RLock()
        self._admitting = threading.Lock()
        self._pool_lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._closed = False
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute("PRAGMA secure_delete=ON")  # what is overwritten (a secret sealed at open) is gone
        with self._tx() as db:
            self.migrate(db, TYPES, lambda table: {row[1] for row in db.execute(f"PRAGMA table_info({table})")})

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, _disk_full_is_an_error(self.path):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _query(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        """Reads run on a reader connection of their own, in parallel with other readers."""
        if self.path == ":memory:":
            with self._lock:
                return self._db.execute(sql, tuple(args)).fetchall()
        with self._reader() as reader:
            return reader.execute(sql, tuple(args)).fetchall()

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        """An idle reader, or a new one; afterwards it waits for the next read, or is closed."""
        # Pooled rather than one per thread: the executor starts a thread per run, and a
        # connection per thread that ever read would live (and hold its cache) forever.
        with self._pool_lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("PRAGMA query_only=ON")
        try:
            yield conn
        finally:
            with self._pool_lock:
                keep = not self._closed and len(self._idle) < IDLE_READERS
                if keep:
                    self._idle.append(conn)
            if not keep:
                conn.close()

    def _clock(self, db: sqlite3.Connection) -> float:
        """This host's clock: every process on a SQLite file shares it."""
        return time.time()

    def _session(self) -> str:
        """This process, as ``pid:start time`` (a pid alone may be reused)."""
        return f"{os.getpid()}:{psutil.Process().create_time()!r}"

    def _session_alive(self, db: sqlite3.Connection, session: str) -> bool:
        """Whether the process ``_session`` named still runs (on this host, as the file is)."""
        pid, _, started = session.partition(":")
        try:
            process = psutil.Process(int(pid))
            return process.create_time() == float(started) and process.status() != psutil.STATUS_ZOMBIE
        except (ValueError, psutil.Error):
            return False

    @contextmanager
    def admission_lock(self) -> Iterator[None]:
        """This store's threads wait on a lock; other connections and processes on an
        exclusive ``flock`` of ``<database>.admission``, released when its file is closed."""
        with self._admitting:
            if fcntl is None or self.path == ":memory:":
                yield
                return
            with private_open(Path(self.path + ".admission"), "a") as held:
                fcntl.flock(held, fcntl.LOCK_EX)
                yield

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            with self._pool_lock:
                self._closed = True
                idle, self._idle = self._idle, []
            for reader in idle:
                reader.close()
            self._db.close()
