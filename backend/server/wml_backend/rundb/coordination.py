"""What backend replicas share besides runs, in SQL both databases speak: the event log behind
``/v1/events``, the replicas' heartbeats with the leader's lease, and the census behind ``/metrics``.

``SqlCoordination`` is a mixin of ``SqlRunStore``: it uses its transactions (``_tx``), reads
(``_query``) and ``LOCK_ROW``; a database supplies its clock, what names this process's
session, and whether a session is still alive.
"""

from __future__ import annotations

import json
import time
from abc import abstractmethod
from typing import Any, ContextManager, Iterable, Optional

from wml_core.states import RunState
from wml_backend.rundb.base import Replica, StateCount

#: Tables added for replicas, by name; each is one version of the schema (``sql.SCHEMA_VERSION``).
TABLES = {
    "events": """
CREATE TABLE IF NOT EXISTS events (seq {serial}, account TEXT NOT NULL, time {real} NOT NULL,
  payload {json} NOT NULL);
CREATE INDEX IF NOT EXISTS events_account ON events(account, seq);
CREATE INDEX IF NOT EXISTS events_time ON events(time)""",
    "replicas": """
CREATE TABLE IF NOT EXISTS replicas (id TEXT PRIMARY KEY, url TEXT NOT NULL, host TEXT NOT NULL,
  pid INTEGER NOT NULL, version TEXT NOT NULL, session TEXT NOT NULL, started {real} NOT NULL,
  seen {real} NOT NULL)""",
    "leader": """
CREATE TABLE IF NOT EXISTS leader (id INTEGER PRIMARY KEY, holder TEXT, expires {real} NOT NULL DEFAULT 0);
INSERT INTO leader (id) VALUES (1) ON CONFLICT DO NOTHING""",
}

#: Seconds after its last heartbeat that a replica that vanished (killed, its host gone) is forgotten.
FORGET_S = 600.0
_REPLICA_COLUMNS = ("id", "url", "host", "pid", "version", "session", "started", "seen")


class SqlCoordination:
    """Events, heartbeats, the leader's lease and the census over a ``SqlRunStore``'s connection."""

    LOCK_ROW: str

    @abstractmethod
    def _tx(self) -> ContextManager[Any]:
        """A transaction (``SqlRunStore._tx``)."""

    @abstractmethod
    def _query(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        """The rows of one read (``SqlRunStore._query``)."""

    @abstractmethod
    def _clock(self, db: Any) -> float:
        """Now, in UNIX seconds, by the clock every replica shares (the database server's)."""

    @abstractmethod
    def _session(self) -> str:
        """What names this store's hold on the database, for ``_session_alive``."""

    @abstractmethod
    def _session_alive(self, db: Any, session: str) -> bool:
        """Whether the session ``_session`` named (this or another replica's) still lives."""

    def _serialize_events(self, db: Any) -> None:
        """Make seqs grow in commit order: hold, until the commit, a lock every event writer takes
        before drawing its seq (nothing where a write transaction locks the whole database)."""

    # -- events ----------------------------------------------------------------------------
    def _record_event(self, db: Any, account: str, event: dict) -> None:
        """Append ``event`` in transaction ``db``."""
        self._record_events(db, [(account, event)])

    def _record_events(self, db: Any, events: list[tuple[str, dict]]) -> None:
        """Append (account, event) pairs in transaction ``db``, in order."""
        if not events:
            return
        self._serialize_events(db)
        now = time.time()
        db.executemany("INSERT INTO events (account, time, payload) VALUES (?, ?, ?)",
                       [(account, now, json.dumps(event, default=str)) for account, event in events])

    def add_event(self, account: str, event: dict) -> int:
        with self._tx() as db:
            self._record_event(db, account, event)
            return db.execute("SELECT MAX(seq) FROM events").fetchone()[0]  # ours: event writers take turns

    def events(self, after: int, account: Optional[str] = None, limit: int = 500) -> list[tuple[int, dict]]:
        where, args = ("seq > ? AND account = ?", (after, account)) if account else ("seq > ?", (after,))
        rows = self._query(f"SELECT seq, payload FROM events WHERE {where} ORDER BY seq LIMIT {int(limit)}", args)
        return [(seq, _payload(payload)) for seq, payload in rows]

    def event_log(self, after: int, limit: int = 500) -> list[tuple[int, str, dict]]:
        rows = self._query(f"SELECT seq, account, payload FROM events WHERE seq > ? ORDER BY seq LIMIT {int(limit)}",
                           (after,))
        return [(seq, account, _payload(payload)) for seq, account, payload in rows]

    def latest_event(self) -> int:
        return self._query("SELECT COALESCE(MAX(seq), 0) FROM events")[0][0]

    def prune_events(self, before: float) -> int:
        with self._tx() as db:
            return db.execute("DELETE FROM events WHERE time < ?", (before,)).rowcount

    # -- replicas and their leader --------------------------------------------------------------
    def heartbeat(self, replica: Replica, ttl_s: float) -> bool:
        with self._tx() as db:
            now = self._clock(db)
            db.execute("DELETE FROM replicas WHERE seen < ?", (now - FORGET_S,))
            self._upsert_replica(db, replica, now)
            holder, expires = db.execute(f"SELECT holder, expires FROM leader WHERE id=1{self.LOCK_ROW}").fetchone()
            if holder not in (None, replica.id) and expires >= now and self._holder_alive(db, holder):
                return False
            db.execute("UPDATE leader SET holder=?, expires=? WHERE id=1", (replica.id, now + ttl_s))
            return True

    def _upsert_replica(self, db: Any, replica: Replica, now: float) -> None:
        """Insert ``replica`` as seen ``now``, or mark it seen again (with its current session)."""
        values = (replica.id, replica.url, replica.host, replica.pid, replica.version, self._session(), now, now)
        db.execute(f"INSERT INTO replicas ({','.join(_REPLICA_COLUMNS)}) VALUES ({','.join('?' * len(values))}) "
                   "ON CONFLICT (id) DO UPDATE SET seen=excluded.seen, session=excluded.session, "
                   "url=excluded.url", values)

    def _holder_alive(self, db: Any, holder: str) -> bool:
        """Whether the replica ``holder`` is still known and its session lives."""
        row = db.execute("SELECT session FROM replicas WHERE id=?", (holder,)).fetchone()
        return row is not None and self._session_alive(db, row[0])

    def leave(self, replica_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM replicas WHERE id=?", (replica_id,))
            db.execute("UPDATE leader SET holder=NULL, expires=0 WHERE holder=?", (replica_id,))

    def replicas(self) -> list[Replica]:
        with self._tx() as db:
            now = self._clock(db)
            holder, expires = db.execute("SELECT holder, expires FROM leader WHERE id=1").fetchone()
            rows = db.execute(f"SELECT {','.join(_REPLICA_COLUMNS)} FROM replicas ORDER BY started, id").fetchall()
            found = [dict(zip(_REPLICA_COLUMNS, row)) for row in rows]
            alive = [r for r in found if self._session_alive(db, r.pop("session"))]
        return [Replica(**r, leader=r["id"] == holder and expires >= now) for r in alive]

    # -- census -----------------------------------------------------------------------------
    def census(self) -> list[StateCount]:
        queued = RunState.QUEUED.value
        oldest = dict(self._query(
            "SELECT account, MIN((SELECT MAX(t.time) FROM transitions t WHERE t.run_id=runs.id)) "
            "FROM runs WHERE state=? GROUP BY account", (queued,)))
        rows = self._query("SELECT account, state, COUNT(*), COALESCE(SUM(gpus * learners), 0) FROM runs "
                           "GROUP BY account, state ORDER BY account, state")
        return [StateCount(account=account, state=state, runs=runs, gpus=gpus if RunState(state).active else 0,
                           oldest=oldest.get(account) if state == queued else None)
                for account, state, runs, gpus in rows]


def _payload(stored: Any) -> dict:
    """An event as the database gives it back: JSON text (SQLite), or already decoded (PostgreSQL's jsonb)."""
    return json.loads(stored) if isinstance(stored, (str, bytes)) else stored
