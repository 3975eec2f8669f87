"""The run store on SQLite in WAL mode: the embedded backend's durable state."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from ..errors import Conflict, NotFound
from ..models import MetricPoint
from ..states import RunState, can_move
from .base import Account, ExperimentRow, RunRow, RunStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
  name TEXT PRIMARY KEY, token_hash TEXT UNIQUE NOT NULL, gpu_quota INTEGER NOT NULL,
  admin INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS experiments (
  id TEXT PRIMARY KEY, account TEXT NOT NULL, name TEXT NOT NULL, definition TEXT NOT NULL,
  metric TEXT, mode TEXT NOT NULL, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS experiments_account ON experiments(account, created);
CREATE TABLE IF NOT EXISTS runs (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, experiment_id TEXT NOT NULL,
  account TEXT NOT NULL, name TEXT NOT NULL, state TEXT NOT NULL, hparams TEXT NOT NULL,
  gpus INTEGER NOT NULL, learners INTEGER NOT NULL, exit_code INTEGER, reason TEXT,
  log_tail TEXT NOT NULL DEFAULT '[]', metrics TEXT NOT NULL DEFAULT '{}', results TEXT,
  attempt INTEGER NOT NULL DEFAULT 1, created REAL NOT NULL, gpu_ids TEXT NOT NULL DEFAULT '[]',
  handle TEXT NOT NULL DEFAULT '{}', runner_token_hash TEXT, max_retries INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS runs_experiment ON runs(experiment_id);
CREATE INDEX IF NOT EXISTS runs_state ON runs(state, account);
CREATE TABLE IF NOT EXISTS transitions (
  run_id TEXT NOT NULL, state TEXT NOT NULL, time REAL NOT NULL, attempt INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS transitions_run ON transitions(run_id);
CREATE TABLE IF NOT EXISTS metrics (
  run_id TEXT NOT NULL, seq INTEGER NOT NULL, time REAL NOT NULL, step REAL, "values" TEXT NOT NULL,
  PRIMARY KEY (run_id, seq));
CREATE TABLE IF NOT EXISTS logs (
  run_id TEXT NOT NULL, learner INTEGER NOT NULL, offset INTEGER NOT NULL, data BLOB NOT NULL,
  PRIMARY KEY (run_id, learner, offset));
CREATE TABLE IF NOT EXISTS secrets (experiment_id TEXT PRIMARY KEY, payload TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS code (experiment_id TEXT PRIMARY KEY, zip BLOB NOT NULL);
"""

_JSON_FIELDS = {"hparams", "log_tail", "metrics", "gpu_ids", "handle"}
_RUN_COLUMNS = ("seq", "id", "experiment_id", "account", "name", "state", "hparams", "gpus",
                "learners", "exit_code", "reason", "log_tail", "metrics", "results", "attempt",
                "created", "gpu_ids", "handle", "runner_token_hash", "max_retries")


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


class SqliteRunStore(RunStore):
    """All state in one SQLite file (WAL, so readers never wait for the writer)."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            Path(self.path).touch(mode=0o600, exist_ok=True)
            os.chmod(self.path, 0o600)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    # -- accounts ---------------------------------------------------------------------------
    def create_account(self, account: Account, token_hash: str) -> None:
        with self._tx() as db:
            if db.execute("SELECT 1 FROM accounts WHERE name=?", (account.name,)).fetchone():
                raise Conflict(f"account {account.name!r} already exists")
            db.execute("INSERT INTO accounts VALUES (?,?,?,?)",
                       (account.name, token_hash, account.gpu_quota, int(account.admin)))

    def account_by_token(self, token_hash: str) -> Optional[Account]:
        rows = self._query("SELECT name, gpu_quota, admin FROM accounts WHERE token_hash=?", (token_hash,))
        return Account(name=rows[0][0], gpu_quota=rows[0][1], admin=bool(rows[0][2])) if rows else None

    def accounts(self) -> list[Account]:
        rows = self._query("SELECT name, gpu_quota, admin FROM accounts ORDER BY name")
        return [Account(name=n, gpu_quota=q, admin=bool(a)) for n, q, a in rows]

    # -- experiments ------------------------------------------------------------------------
    def insert_experiment(self, experiment: ExperimentRow, runs: list[RunRow], code: bytes,
                          secret: Optional[dict]) -> None:
        e = experiment
        with self._tx() as db:
            db.execute("INSERT INTO experiments VALUES (?,?,?,?,?,?,?)",
                       (e.id, e.account, e.name, json.dumps(e.definition), e.metric, e.mode, e.created))
            db.executemany(f"INSERT INTO runs ({','.join(_RUN_COLUMNS[1:])}) "
                           f"VALUES ({','.join('?' * (len(_RUN_COLUMNS) - 1))})",
                           [self._run_values(r) for r in runs])
            db.executemany("INSERT INTO transitions VALUES (?,?,?,?)",
                           [(r.id, RunState.QUEUED.value, e.created, 1) for r in runs])
            db.execute("INSERT INTO code VALUES (?,?)", (e.id, code))
            if secret:
                db.execute("INSERT INTO secrets VALUES (?,?)", (e.id, json.dumps(secret)))

    def code(self, experiment_id: str) -> bytes:
        rows = self._query("SELECT zip FROM code WHERE experiment_id=?", (experiment_id,))
        if not rows:
            raise NotFound(f"no code for experiment {experiment_id!r}")
        return rows[0][0]

    @staticmethod
    def _run_values(run: RunRow) -> tuple:
        data = run.model_dump(mode="json")
        data["created"] = run.created.timestamp()
        return tuple(json.dumps(data[c]) if c in _JSON_FIELDS else data[c] for c in _RUN_COLUMNS[1:])

    def _experiment_rows(self, where: str, args: tuple) -> list[ExperimentRow]:
        rows = self._query("SELECT id, account, name, definition, metric, mode, created FROM experiments "
                           f"WHERE {where} ORDER BY created DESC, rowid DESC", args)
        return [ExperimentRow(id=i, account=a, name=n, definition=json.loads(d), metric=m, mode=mo, created=c)
                for i, a, n, d, m, mo, c in rows]

    def experiment(self, experiment_id: str, account: Optional[str] = None) -> Optional[ExperimentRow]:
        where, args = ("id=? AND account=?", (experiment_id, account)) if account else ("id=?", (experiment_id,))
        rows = self._experiment_rows(where, args)
        return rows[0] if rows else None

    def experiments(self, account: str) -> list[ExperimentRow]:
        return self._experiment_rows("account=?", (account,))

    # -- runs -------------------------------------------------------------------------------
    def _run_rows(self, where: str, args: list) -> list[RunRow]:
        rows = self._query(f"SELECT {','.join(_RUN_COLUMNS)} FROM runs WHERE {where} ORDER BY seq", args)
        if not rows:
            return []
        ids = [r[1] for r in rows]
        marks = ",".join("?" * len(ids))
        trans = self.transitions_of(self._query(
            f"SELECT run_id, state, time, attempt FROM transitions WHERE run_id IN ({marks}) "
            "ORDER BY rowid", ids))
        out = []
        for row in rows:
            data = dict(zip(_RUN_COLUMNS, row))
            for key in _JSON_FIELDS:
                data[key] = json.loads(data[key])
            data["created"] = _utc(data["created"])
            data["transitions"] = trans.get(data["id"], [])
            out.append(RunRow(**data))
        return out

    def run(self, run_id: str, account: Optional[str] = None) -> Optional[RunRow]:
        where, args = ("id=? AND account=?", [run_id, account]) if account else ("id=?", [run_id])
        rows = self._run_rows(where, args)
        return rows[0] if rows else None

    def runs(self, account: Optional[str] = None, experiment: Optional[str] = None,
             states: Optional[Iterable[RunState]] = None) -> list[RunRow]:
        where, args = ["1=1"], []
        if account is not None:
            where.append("account=?")
            args.append(account)
        if experiment is not None:
            where.append("experiment_id=?")
            args.append(experiment)
        if states is not None:
            states = [RunState(s).value for s in states]
            where.append(f"state IN ({','.join('?' * len(states))})")
            args.extend(states)
        return self._run_rows(" AND ".join(where), args)

    def transition(self, run_id: str, state: RunState, time: float, **fields: Any) -> RunRow:
        with self._tx() as db:
            row = db.execute("SELECT state, attempt FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:
                raise NotFound(f"no run {run_id!r}")
            current = RunState(row[0])
            if not can_move(current, state):
                raise Conflict(f"run {run_id} is {current.value}; it cannot become {state.value}")
            self._set(db, run_id, state=state.value, **fields)
            attempt = fields.get("attempt", row[1])
            db.execute("INSERT INTO transitions VALUES (?,?,?,?)", (run_id, state.value, time, attempt))
        return self.run(run_id)

    def update_run(self, run_id: str, **fields: Any) -> None:
        with self._tx() as db:
            self._set(db, run_id, **fields)

    @staticmethod
    def _set(db: sqlite3.Connection, run_id: str, **fields: Any) -> None:
        if not fields:
            return
        unknown = set(fields) - set(_RUN_COLUMNS)
        if unknown:
            raise ValueError(f"unknown run fields {sorted(unknown)}")
        values = [json.dumps(v) if k in _JSON_FIELDS else v for k, v in fields.items()]
        db.execute(f"UPDATE runs SET {','.join(f'{k}=?' for k in fields)} WHERE id=?", (*values, run_id))

    # -- metrics and logs ------------------------------------------------------------------
    def add_metrics(self, run_id: str, points: list[MetricPoint]) -> list[MetricPoint]:
        with self._tx() as db:
            new = []
            for p in points:
                cur = db.execute('INSERT OR IGNORE INTO metrics VALUES (?,?,?,?,?)',
                                 (run_id, p.seq, p.time, p.step, json.dumps(p.values)))
                if cur.rowcount:
                    new.append(p)
            if new:
                latest = json.loads(db.execute("SELECT metrics FROM runs WHERE id=?", (run_id,)).fetchone()[0])
                for p in new:
                    latest.update(p.values)
                    if p.step is not None:
                        latest["step"] = p.step
                db.execute("UPDATE runs SET metrics=? WHERE id=?", (json.dumps(latest), run_id))
        return new

    def metrics(self, run_id: str, since: int = -1) -> list[MetricPoint]:
        rows = self._query('SELECT seq, time, step, "values" FROM metrics WHERE run_id=? AND seq>? ORDER BY seq',
                           (run_id, since))
        return [MetricPoint(seq=s, time=t, step=st, values=json.loads(v)) for s, t, st, v in rows]

    def append_log(self, run_id: str, learner: int, offset: int, data: bytes) -> int:
        with self._tx() as db:
            length = self._log_length(db, run_id, learner)
            if offset == length and data:
                db.execute("INSERT INTO logs VALUES (?,?,?,?)", (run_id, learner, offset, data))
                length += len(data)
            return length

    @staticmethod
    def _log_length(db: sqlite3.Connection, run_id: str, learner: int) -> int:
        row = db.execute("SELECT offset + length(data) FROM logs WHERE run_id=? AND learner=? "
                         "ORDER BY offset DESC LIMIT 1", (run_id, learner)).fetchone()
        return row[0] if row else 0

    def read_log(self, run_id: str, learner: int, offset: int, limit: int) -> bytes:
        rows = self._query("SELECT offset, data FROM logs WHERE run_id=? AND learner=? "
                           "AND offset + length(data) > ? ORDER BY offset", (run_id, learner, offset))
        out = bytearray()
        for start, data in rows:
            out += data[max(0, offset - start):]
            if len(out) >= limit:
                break
        return bytes(out[:limit])

    # -- secrets ----------------------------------------------------------------------------
    def secret(self, experiment_id: str) -> Optional[dict]:
        rows = self._query("SELECT payload FROM secrets WHERE experiment_id=?", (experiment_id,))
        return json.loads(rows[0][0]) if rows else None
