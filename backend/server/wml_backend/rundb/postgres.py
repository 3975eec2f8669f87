"""The run store on PostgreSQL: a shared install's state, safe for several backend replicas.

Import this module only where PostgreSQL is configured: it needs psycopg 3
(``pip install 'wml-backend[postgres]'``), which the embedded backend does not.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

try:
    import psycopg
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("the PostgreSQL run store needs psycopg: "
                      "pip install 'wml-backend[postgres]'") from exc

from psycopg.types.json import set_json_loads
from pydantic_core import from_json

from wml_core.errors import BackendFull
from wml_backend.rundb.secretbox import SecretBox
from wml_backend.rundb.sql import _RUN_COLUMNS, SqlRunStore
from wml_core.states import RunState

#: PostgreSQL's column types for the shared schema. JSON keeps the text as written (key order
#: included), as SQLite does; ``rowid`` orders rows by insertion, as SQLite's implicit one.
#: ``bytewise``: the collation that compares text by code point, whatever the database's.
BYTEWISE = ' COLLATE "C"'
TYPES = {"json": "JSON", "real": "DOUBLE PRECISION", "blob": "BYTEA", "bigint": "BIGINT",
         "serial": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
         "rowid": "rowid BIGINT GENERATED ALWAYS AS IDENTITY, ", "bytewise": BYTEWISE}

#: The advisory lock (an arbitrary constant key) that replicas starting together take while
#: they create the schema: concurrent ``CREATE TABLE IF NOT EXISTS`` can otherwise collide.
SCHEMA_LOCK = 0x776D6C5F736368  # "wml_sch"
#: The advisory lock that the replica admitting runs holds (``admission_lock``).
ADMISSION_LOCK = 0x776D6C5F61646D  # "wml_adm"
#: The advisory lock that event writers hold from drawing a seq to their commit, so that seqs
#: become visible in order (``SqlCoordination._serialize_events``).
EVENTS_LOCK = 0x776D6C5F657674  # "wml_evt"
#: The advisory lock a data claim holds from looking for other owners to its commit.
CLAIMS_LOCK = 0x776D6C5F636C6D  # "wml_clm"


# JSON columns parsed as ``json.loads`` would, several times faster (most of reading many runs).
set_json_loads(from_json)


def _pg(sql: str) -> str:
    """The shared ``?`` placeholders as psycopg's ``%s`` (the shared SQL has no ``%`` nor ``?`` literals)."""
    return sql.replace("?", "%s")


class _Tx:
    """One psycopg transaction seen through the shared SQL's DB-API calls."""

    def __init__(self, conn: "psycopg.Connection"):
        self._conn = conn

    def execute(self, sql: str, args: Sequence[Any] = ()) -> "psycopg.Cursor":
        """Run one statement; the cursor holds its rows and rowcount."""
        return self._conn.execute(_pg(sql), tuple(args))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement for each row of arguments."""
        with self._conn.cursor() as cursor:
            cursor.executemany(_pg(sql), list(rows))


class PostgresRunStore(SqlRunStore):
    """All state in one PostgreSQL database, shared by every backend replica.

    Each store holds one connection, which its threads take in turn; a call after the server
    dropped it (a restart, a failover) reconnects.
    Reads that decide writes take ``SELECT ... FOR UPDATE`` row locks, so a run's transition
    is checked and written atomically however many replicas race for it.
    """

    LOCK_ROW = " FOR UPDATE"
    BYTEWISE = BYTEWISE

    def __init__(self, conninfo: str, key_file: Path):
        """Connect with a libpq connection string or URL (``postgresql://user@host/db``); stored
        credentials are sealed with the key in ``key_file``, which every replica must share."""
        self.conninfo = conninfo
        self.box = SecretBox(Path(key_file))
        self._lock = threading.RLock()
        self._admitting = threading.Lock()
        self._admitter: "psycopg.Connection | None" = None
        self._closed = False
        self._db = psycopg.connect(conninfo, autocommit=True)
        with self._tx() as db:
            db.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))
            self.migrate(db, TYPES, lambda table: {row[0] for row in db.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name=? "
                "AND table_schema=current_schema()", (table,)).fetchall()})

    def _conn(self) -> "psycopg.Connection":
        """The connection, reopened if it broke."""
        if self._db.broken and not self._closed:
            self._db = psycopg.connect(self.conninfo, autocommit=True)
        return self._db

    @contextmanager
    def _tx(self) -> Iterator[_Tx]:
        with self._lock:
            conn = self._conn()
            try:
                with conn.transaction():
                    yield _Tx(conn)
            except psycopg.errors.DiskFull:
                raise BackendFull("the database server's disk is full: nothing was saved; "
                                  "free some space and try again") from None

    def _query(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._conn().execute(_pg(sql), tuple(args)).fetchall()

    def _heads_read(self, chunk: list[tuple[str, int]]) -> tuple[str, list]:
        """The queues' heads as one LATERAL join over two arrays: PostgreSQL plans a union of a
        hundred LIMITs in tens of milliseconds, this in a fraction of one, and the statement's text
        is the same for any accounts (psycopg prepares it once)."""
        columns = ",".join(f"r.{column}" for column in _RUN_COLUMNS)
        return (f"SELECT {columns}, NULL FROM unnest(CAST(? AS TEXT[]), CAST(? AS BIGINT[])) AS w(account, n) "
                "CROSS JOIN LATERAL (SELECT * FROM runs WHERE state=? AND account=w.account ORDER BY seq LIMIT w.n) AS r",
                [[account for account, _ in chunk], [n for _, n in chunk], RunState.QUEUED.value])

    def _clock(self, db: _Tx) -> float:
        """The database server's clock, which every replica shares whatever its host's says."""
        return float(db.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())").fetchone()[0])

    def _session(self) -> str:
        """The server process of this store's connection: it ends when the connection does."""
        return str(self._conn().info.backend_pid)

    def _session_alive(self, db: _Tx, session: str) -> bool:
        """Whether the server still has the session ``_session`` named (a replica killed outright
        closes its connection, and its server process ends with it)."""
        return db.execute("SELECT 1 FROM pg_stat_activity WHERE pid=?", (int(session),)).fetchone() is not None

    def _serialize_events(self, db: _Tx) -> None:
        db.execute("SELECT pg_advisory_xact_lock(?)", (EVENTS_LOCK,))

    def _serialize_claims(self, db: _Tx) -> None:
        db.execute("SELECT pg_advisory_xact_lock(?)", (CLAIMS_LOCK,))

    @contextmanager
    def admission_lock(self) -> Iterator[None]:
        """This store's threads wait on a lock; replicas on a session advisory lock, taken on a
        connection of its own (kept for the next pass) and given back when the block ends, or
        when that connection dies with its holder."""
        with self._admitting:
            if self._admitter is None or self._admitter.broken:
                self._admitter = psycopg.connect(self.conninfo, autocommit=True)
            self._admitter.execute("SELECT pg_advisory_lock(%s)", (ADMISSION_LOCK,))
            try:
                yield
            finally:
                try:
                    self._admitter.execute("SELECT pg_advisory_unlock(%s)", (ADMISSION_LOCK,))
                except psycopg.Error:  # the connection broke: the server has let the lock go with it
                    self._admitter.close()

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._closed = True
            self._db.close()
        with self._admitting:
            if self._admitter is not None:
                self._admitter.close()
