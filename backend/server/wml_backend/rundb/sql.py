"""The run store in SQL, written once for SQLite and PostgreSQL.

Queries use ``?`` placeholders and SQL both databases speak (``ON CONFLICT DO NOTHING``, the
quoted ``"offset"`` column, a ``rowid`` column for insertion order: SQLite's own, PostgreSQL's
an identity column). A backend supplies its column types, its connection and transactions, and
``LOCK_ROW``: what makes the read that decides a write lock that row until the commit.
JSON fields are stored as JSON text, so key order survives (PostgreSQL's ``JSON``, not ``JSONB``).
"""

from __future__ import annotations

import json
import threading
import time
from abc import abstractmethod
from datetime import datetime, timezone
from typing import Any, Callable, ContextManager, Iterable, Optional, Protocol, Sequence

from cachetools import LRUCache
from pydantic_core import from_json  # json.loads' result, parsed several times faster

from wml_core.errors import BackendUnavailable, Conflict, NotFound
from wml_core.models import MetricPoint, Transition
from wml_core.states import TERMINAL, RunState, can_move
from wml_backend.rundb.base import Account, ExperimentRow, RunRow, RunStore, run_event
from wml_backend.rundb.claims import INDEXES as CLAIM_INDEXES
from wml_backend.rundb.claims import TABLES as CLAIM_TABLES
from wml_backend.rundb.claims import SqlDataClaims
from wml_backend.rundb.coordination import TABLES, SqlCoordination
from wml_backend.rundb.secretbox import SecretBox

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
  name TEXT PRIMARY KEY, token_hash TEXT UNIQUE NOT NULL, gpu_quota INTEGER NOT NULL,
  admin INTEGER NOT NULL DEFAULT 0, slots INTEGER, cpus {real}, memory_bytes {bigint}, max_queued INTEGER,
  disabled INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS experiments (
  {rowid}id TEXT PRIMARY KEY, account TEXT NOT NULL, name TEXT NOT NULL, definition {json} NOT NULL,
  metric TEXT, mode TEXT NOT NULL, created {real} NOT NULL);
CREATE INDEX IF NOT EXISTS experiments_account ON experiments(account, created);
CREATE TABLE IF NOT EXISTS runs (
  seq {serial}, id TEXT UNIQUE NOT NULL, experiment_id TEXT NOT NULL,
  account TEXT NOT NULL, name TEXT NOT NULL, state TEXT NOT NULL, hparams {json} NOT NULL,
  gpus INTEGER NOT NULL, learners INTEGER NOT NULL, exit_code INTEGER, reason TEXT,
  log_tail {json} NOT NULL DEFAULT '[]', metrics {json} NOT NULL DEFAULT '{{}}', results TEXT,
  attempt INTEGER NOT NULL DEFAULT 1, created {real} NOT NULL, gpu_ids {json} NOT NULL DEFAULT '[]',
  handle {json} NOT NULL DEFAULT '{{}}', runner_token_hash TEXT, max_retries INTEGER NOT NULL DEFAULT 0,
  gpu_seconds {real} NOT NULL DEFAULT 0, gpu_wait_seconds {real} NOT NULL DEFAULT 0, waiting_since {real},
  stop_state TEXT, stop_reason TEXT, cpus {real} NOT NULL DEFAULT 1, memory_bytes {bigint}, reported_state TEXT,
  preemptions INTEGER NOT NULL DEFAULT 0, preempted TEXT);
CREATE INDEX IF NOT EXISTS runs_experiment ON runs(experiment_id);
CREATE INDEX IF NOT EXISTS runs_queue ON runs(state, account, seq);
CREATE INDEX IF NOT EXISTS runs_account ON runs(account, seq);
CREATE TABLE IF NOT EXISTS transitions (
  {rowid}run_id TEXT NOT NULL, state TEXT NOT NULL, time {real} NOT NULL, attempt INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS transitions_run ON transitions(run_id);
CREATE TABLE IF NOT EXISTS metrics (
  run_id TEXT NOT NULL, seq INTEGER NOT NULL, time {real} NOT NULL, step {real}, "values" {json} NOT NULL,
  PRIMARY KEY (run_id, seq));
CREATE TABLE IF NOT EXISTS logs (
  run_id TEXT NOT NULL, learner INTEGER NOT NULL, "offset" {bigint} NOT NULL, data {blob} NOT NULL,
  PRIMARY KEY (run_id, learner, "offset"));
CREATE TABLE IF NOT EXISTS secrets (experiment_id TEXT PRIMARY KEY, payload {json} NOT NULL);
CREATE TABLE IF NOT EXISTS code (experiment_id TEXT PRIMARY KEY, zip {blob} NOT NULL);
CREATE TABLE IF NOT EXISTS summaries (experiment_id TEXT PRIMARY KEY, payload {json} NOT NULL);
"""

_JSON_FIELDS = {"hparams", "log_tail", "metrics", "gpu_ids", "handle"}
_RUN_COLUMNS = ("seq", "id", "experiment_id", "account", "name", "state", "hparams", "gpus",
                "learners", "exit_code", "reason", "log_tail", "metrics", "results", "attempt",
                "created", "gpu_ids", "handle", "runner_token_hash", "max_retries", "gpu_seconds",
                "gpu_wait_seconds", "waiting_since", "stop_state", "stop_reason", "cpus", "memory_bytes",
                "reported_state", "preemptions", "preempted", "deadline")
#: The one key of a stored secret's payload: the credentials' JSON, encrypted (``secretbox``).
SEALED = "sealed"
#: An account's columns, in ``Account``'s terms (``admin`` and ``disabled`` are 0 or 1).
_ACCOUNT_COLUMNS = ("name", "gpu_quota", "admin", "slots", "cpus", "memory_bytes", "max_queued", "disabled")
_EXPERIMENT_COLUMNS = ("id", "account", "name", "definition", "metric", "mode", "created")
_TRANSITION_COLUMNS = ("run_id", "state", "time", "attempt")
#: A QUEUED run's place in its account's queue, in the statement that reads the run: one snapshot.
_QUEUE_POSITION = (f"CASE WHEN state='{RunState.QUEUED.value}' THEN (SELECT COUNT(*) FROM runs ahead "
                   f"WHERE ahead.state='{RunState.QUEUED.value}' "
                   "AND ahead.account=runs.account AND ahead.seq<=runs.seq) END")


#: Columns added since the first schema (table, column, definition): a database that an older
#: version wrote gains them when it is opened.
ADDED_COLUMNS = (("runs", "gpu_seconds", "{real} NOT NULL DEFAULT 0"),
                 ("runs", "gpu_wait_seconds", "{real} NOT NULL DEFAULT 0"),
                 ("runs", "waiting_since", "{real}"),
                 ("runs", "stop_state", "TEXT"),
                 ("runs", "stop_reason", "TEXT"),
                 ("runs", "cpus", "{real} NOT NULL DEFAULT 1"),
                 ("runs", "memory_bytes", "{bigint}"),
                 ("accounts", "slots", "INTEGER"),
                 ("accounts", "cpus", "{real}"),
                 ("accounts", "memory_bytes", "{bigint}"),
                 ("accounts", "max_queued", "INTEGER"),
                 ("accounts", "disabled", "INTEGER NOT NULL DEFAULT 0"),
                 ("runs", "reported_state", "TEXT"),
                 ("runs", "preemptions", "INTEGER NOT NULL DEFAULT 0"),
                 ("runs", "preempted", "TEXT"),
                 ("runs", "deadline", "{real}"))


#: Tables added since the first schema, by name (each created when missing at open).
ADDED_TABLES = {**TABLES, **CLAIM_TABLES}
#: Indexes added since the first schema, by name (each created when missing at open).
ADDED_INDEXES = {
    # An experiment's runs, of some states, in order: its listing, and the ended runs that time
    # a queue's estimate, read from the index instead of every run of one state or account.
    "runs_experiment_state": "CREATE INDEX IF NOT EXISTS runs_experiment_state ON runs(experiment_id, state, seq)",
    **CLAIM_INDEXES,
}
#: The schema's version: the first schema's, plus one per added column, table and index (so each
#: entry of ``ADDED_COLUMNS``, ``ADDED_TABLES`` and ``ADDED_INDEXES`` is a version). A database records
#: the highest version that opened it (``schema_version``); a backend older than its database refuses to open it.
SCHEMA_VERSION = 1 + len(ADDED_COLUMNS) + len(ADDED_TABLES) + len(ADDED_INDEXES)
_VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (id INTEGER PRIMARY KEY, version INTEGER NOT NULL)"


def upgrades(types: dict[str, str], columns_of: Callable[[str], set[str]]) -> list[str]:
    """The statements that add to an existing database the columns it lacks (``columns_of(table)``)."""
    return [f"ALTER TABLE {table} ADD COLUMN {column} {definition.format(**types)}"
            for table, column, definition in ADDED_COLUMNS if column not in columns_of(table)]


def schema(types: dict[str, str]) -> list[str]:
    """The schema's statements with a database's column types filled in."""
    text = ";".join([SCHEMA, *ADDED_TABLES.values(), *ADDED_INDEXES.values()]).format(**types)
    return [s.strip() for s in text.split(";") if s.strip()]


def check_version(found: Optional[int]) -> None:
    """Refuse, in one line, a database that a newer backend has opened (``found``: its version)."""
    if found is not None and found > SCHEMA_VERSION:
        raise BackendUnavailable(f"the database's schema is version {found}, newer than this backend's "
                                 f"{SCHEMA_VERSION}: upgrade this backend to the version that wrote it")


#: Accounts whose queue heads one statement reads (SQLite allows 500 terms in a compound SELECT).
_HEADS_PER_STATEMENT = 200


def _insert(table: str, columns: Sequence[str]) -> str:
    return f"INSERT INTO {table} ({','.join(columns)}) VALUES ({','.join('?' * len(columns))})"


def _account_values(fields: dict[str, Any], columns: Iterable[str] = _ACCOUNT_COLUMNS) -> tuple:
    """An account's ``fields`` as stored, in the order of ``columns`` (flags as 0 or 1)."""
    return tuple(int(fields[c]) if c in ("admin", "disabled") else fields[c] for c in columns)


#: The JSON text of an empty object and list, most runs' ``handle``, ``gpu_ids``, ``log_tail``...:
#: made without parsing, which is most of reading a long list of runs.
_EMPTY_JSON = {"{}": dict, "[]": list}


def _load(value: Any) -> Any:
    """A JSON field as read: text from SQLite, already parsed by psycopg."""
    if isinstance(value, str):
        empty = _EMPTY_JSON.get(value)
        return empty() if empty is not None else from_json(value)
    return from_json(value) if isinstance(value, bytes) else value


#: Experiments kept in memory once read (a stored experiment never changes), the last used.
EXPERIMENTS_KEPT = 2_000


class _Kept:
    """Experiments read before, by id: rows that never change, shared by the store's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # an LRU cache reorders itself on reads too
        self._rows: LRUCache[str, ExperimentRow] = LRUCache(EXPERIMENTS_KEPT)

    def get(self, ids: Iterable[str]) -> dict[str, ExperimentRow]:
        """Those of ``ids`` kept, by id."""
        with self._lock:
            return {i: self._rows[i] for i in ids if i in self._rows}

    def keep(self, rows: Iterable[ExperimentRow]) -> None:
        """Keep ``rows`` for the next reads."""
        with self._lock:
            for row in rows:
                self._rows[row.id] = row


class Db(Protocol):
    """What a transaction offers: a DB-API ``execute`` (returning a cursor) and ``executemany``."""

    def execute(self, sql: str, args: Sequence[Any] = ...) -> Any: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any: ...


class SqlRunStore(SqlCoordination, SqlDataClaims, RunStore):
    """The ``RunStore`` contract over a SQL database; subclasses connect and run transactions."""

    #: Appended to the read that decides a write, to lock the row until the commit. Empty where
    #: a transaction already holds the whole database's write lock (SQLite's BEGIN IMMEDIATE).
    LOCK_ROW = ""
    #: Encrypts the credentials kept with experiments (set by the subclass before its schema).
    box: SecretBox

    @abstractmethod
    def _tx(self) -> ContextManager[Db]:
        """A transaction: committed when the block ends, rolled back if it raises."""

    @abstractmethod
    def _query(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        """The rows of one read."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection."""

    def migrate(self, db: Db, types: dict[str, str], columns_of: Callable[[str], set[str]]) -> None:
        """Bring the database to this backend's schema in transaction ``db`` (opened by one replica at
        a time): refuse a newer one, create what is missing, seal old secrets, record the version."""
        db.execute(_VERSION_TABLE)
        row = db.execute("SELECT version FROM schema_version WHERE id=1").fetchone()
        check_version(row[0] if row else None)
        for statement in schema(types):
            db.execute(statement)
        for statement in upgrades(types, columns_of):
            db.execute(statement)
        self.seal_plain_secrets(db)
        db.execute("INSERT INTO schema_version (id, version) VALUES (1, ?) "
                   "ON CONFLICT (id) DO UPDATE SET version=excluded.version", (SCHEMA_VERSION,))

    def schema_version(self) -> int:
        """The version of the schema the database holds."""
        return self._query("SELECT version FROM schema_version WHERE id=1")[0][0]

    # -- accounts ---------------------------------------------------------------------------
    def create_account(self, account: Account, token_hash: str) -> None:
        with self._tx() as db:  # one statement: of replicas creating the same account at once, one does
            added = db.execute(_insert("accounts", ("token_hash", *_ACCOUNT_COLUMNS)) + " ON CONFLICT DO NOTHING",
                               (token_hash, *_account_values(account.model_dump()))).rowcount
            if not added:
                raise Conflict(f"account {account.name!r} already exists")

    def _accounts(self, where: str, args: Sequence[Any]) -> list[Account]:
        rows = self._query(f"SELECT {','.join(_ACCOUNT_COLUMNS)} FROM accounts WHERE {where} ORDER BY name", args)
        return [Account(**dict(zip(_ACCOUNT_COLUMNS, row))) for row in rows]

    def account_by_token(self, token_hash: str) -> Optional[Account]:
        found = self._accounts("token_hash=?", (token_hash,))
        return found[0] if found else None

    def account(self, name: str) -> Optional[Account]:
        found = self._accounts("name=?", (name,))
        return found[0] if found else None

    def accounts(self) -> list[Account]:
        return self._accounts("1=1", ())

    def update_account(self, name: str, **fields: Any) -> Account:
        unknown = set(fields) - set(_ACCOUNT_COLUMNS[1:])
        if unknown:
            raise ValueError(f"unknown account fields {sorted(unknown)}")
        self._update_account(name, fields)
        return self.account(name)

    def set_token(self, name: str, token_hash: str) -> None:
        self._update_account(name, {"token_hash": token_hash})

    def _update_account(self, name: str, fields: dict[str, Any]) -> None:
        """Set ``fields`` of account ``name``; ``NotFound`` if there is none."""
        with self._tx() as db:
            if not fields:
                found = db.execute("SELECT 1 FROM accounts WHERE name=?", (name,)).fetchone()
            else:
                found = db.execute(f"UPDATE accounts SET {','.join(f'{k}=?' for k in fields)} WHERE name=?",
                                   (*_account_values(fields, fields), name)).rowcount
            if not found:
                raise NotFound(f"no account {name!r}")

    def count_runs(self, account: str, states: Iterable[RunState]) -> int:
        return self._totals("COUNT(*)", account, states)[0]  # from the queue index alone

    def held(self, account: str, states: Iterable[RunState]) -> tuple[int, int]:
        return tuple(self._totals("COUNT(*), COALESCE(SUM(gpus * learners), 0)", account, states))

    def _totals(self, sums: str, account: str, states: Iterable[RunState]) -> tuple:
        """``sums`` over the runs of ``account`` in one of ``states`` (zeros for no state)."""
        states = [RunState(s).value for s in states]
        if not states:
            return (0, 0)
        return self._query(f"SELECT {sums} FROM runs WHERE account=? AND state IN ({','.join('?' * len(states))})",
                           (account, *states))[0]

    # -- experiments ------------------------------------------------------------------------
    def insert_experiment(self, experiment: ExperimentRow, runs: list[RunRow], code: bytes,
                          secret: Optional[dict]) -> None:
        e = experiment
        with self._tx() as db:
            db.execute(_insert("experiments", _EXPERIMENT_COLUMNS),
                       (e.id, e.account, e.name, json.dumps(e.definition.redacted()), e.metric, e.mode, e.created))
            db.execute(_insert("code", ("experiment_id", "zip")), (e.id, code))
            if secret:
                db.execute(_insert("secrets", ("experiment_id", "payload")), (e.id, self._sealed(secret)))
            self._insert_runs(db, runs, e.created)  # last: its events hold the event writers' turn to the commit

    def add_runs(self, runs: list[RunRow]) -> None:
        with self._tx() as db:
            self._insert_runs(db, runs, time.time())

    def _insert_runs(self, db: Db, runs: list[RunRow], created: float) -> None:
        db.executemany(_insert("runs", _RUN_COLUMNS[1:]), [self._run_values(r) for r in runs])
        db.executemany(_insert("transitions", _TRANSITION_COLUMNS),
                       [(r.id, RunState.QUEUED.value, created, 1) for r in runs])
        queued = [Transition(state=RunState.QUEUED, time=datetime.fromtimestamp(created, timezone.utc), attempt=1)]
        self._record_events(db, [(r.account, run_event(r.model_copy(update={"transitions": queued}), created))
                                 for r in runs])

    def code(self, experiment_id: str) -> bytes:
        rows = self._query("SELECT zip FROM code WHERE experiment_id=?", (experiment_id,))
        if not rows:
            raise NotFound(f"no code for experiment {experiment_id!r}")
        return bytes(rows[0][0])

    @staticmethod
    def _run_values(run: RunRow) -> tuple:
        data = run.model_dump(mode="json")
        data["created"] = run.created.timestamp()
        return tuple(json.dumps(data[c]) if c in _JSON_FIELDS else data[c] for c in _RUN_COLUMNS[1:])

    def _experiment_rows(self, where: str, args: Sequence[Any], limit: Optional[int] = None) -> list[ExperimentRow]:
        return [ExperimentRow(**dict(zip(_EXPERIMENT_COLUMNS, row), definition=_load(row[3])))
                for row in self._newest(where, args, limit, _EXPERIMENT_COLUMNS)]

    def _newest(self, where: str, args: Sequence[Any], limit: Optional[int], columns: Sequence[str]) -> list[tuple]:
        """Experiments matching ``where``, newest first (the later stored first among equal times)."""
        return self._query(f"SELECT {','.join(columns)} FROM experiments WHERE {where} "
                           f"ORDER BY created DESC, rowid DESC{f' LIMIT {int(limit)}' if limit else ''}", args)

    @property
    def _kept(self) -> _Kept:
        """The experiments this store read before (made at the first use: subclasses set up their own state)."""
        kept = self.__dict__.get("_kept_rows")
        return kept if kept is not None else self.__dict__.setdefault("_kept_rows", _Kept())

    def experiment(self, experiment_id: str, account: Optional[str] = None) -> Optional[ExperimentRow]:
        row = self.experiments_by_id([experiment_id]).get(experiment_id)
        return row if row is not None and account in (None, row.account) else None

    def experiments(self, account: str, limit: Optional[int] = None) -> list[ExperimentRow]:
        return self._experiment_rows("account=?", (account,), limit)

    def experiment_ids(self, account: str, limit: Optional[int] = None, after: Optional[str] = None) -> list[str]:
        where, args = "account=?", [account]
        if after is not None:  # the order's key (created, rowid) of the page's last, which never changes
            where += " AND (created, rowid) < (SELECT created, rowid FROM experiments WHERE id=? AND account=?)"
            args += [after, account]
        return [row[0] for row in self._newest(where, args, limit, ("id",))]

    def experiments_by_id(self, experiment_ids: list[str]) -> dict[str, ExperimentRow]:
        found = self._kept.get(experiment_ids)
        missing = [i for i in experiment_ids if i not in found]
        if missing:
            rows = self._experiment_rows(f"id IN ({','.join('?' * len(missing))})", missing)
            self._kept.keep(rows)
            found.update((row.id, row) for row in rows)
        return found

    # -- runs -------------------------------------------------------------------------------
    def _read(self, db: Optional[Db], sql: str, args: Sequence[Any]) -> list[tuple]:
        """The rows of one read: in transaction ``db`` (it sees the transaction's writes), else on its own."""
        return db.execute(sql, tuple(args)).fetchall() if db is not None else self._query(sql, args)

    def _run_rows(self, where: str, args: list, transitions: str = "all", positions: bool = True,
                  db: Optional[Db] = None, limit: Optional[int] = None) -> list[RunRow]:
        position = _QUEUE_POSITION if positions else "NULL"
        page = f" LIMIT {int(limit)}" if limit is not None else ""
        rows = self._read(db, f"SELECT {','.join(_RUN_COLUMNS)}, {position} FROM runs WHERE {where} ORDER BY seq{page}",
                          args)
        return self._rows_to_runs(rows, transitions, db)

    def _rows_to_runs(self, rows: list[tuple], transitions: str, db: Optional[Db] = None) -> list[RunRow]:
        """Runs from rows of ``_RUN_COLUMNS`` and a queue position, with the ``transitions`` asked for."""
        if not rows:
            return []
        state = _RUN_COLUMNS.index("state")
        ids = [r[1] for r in rows if transitions == "all" or transitions == "live" and not RunState(r[state]).terminal]
        trans = self.transitions_of(self._read(db, "SELECT run_id, state, time, attempt FROM transitions "
                                               f"WHERE run_id IN ({','.join('?' * len(ids))}) ORDER BY rowid",
                                               ids)) if ids else {}
        out = []
        for row in rows:
            data = dict(zip(_RUN_COLUMNS, row))
            for key in _JSON_FIELDS:
                data[key] = _load(data[key])
            data["created"] = datetime.fromtimestamp(data["created"], timezone.utc)
            if data["waiting_since"] is not None:
                data["waiting_since"] = datetime.fromtimestamp(data["waiting_since"], timezone.utc)
            data["transitions"] = trans.get(data["id"], [])
            data["queue_position"] = row[-1]
            out.append(RunRow(**data))
        return out

    def run(self, run_id: str, account: Optional[str] = None, transitions: str = "all") -> Optional[RunRow]:
        where, args = ("id=? AND account=?", [run_id, account]) if account else ("id=?", [run_id])
        rows = self._run_rows(where, args, transitions)
        return rows[0] if rows else None

    def runs(self, account: Optional[str] = None, experiment: Optional[str | list[str]] = None,
             states: Optional[Iterable[RunState]] = None, transitions: str = "all",
             positions: bool = False, after: Optional[str] = None, limit: Optional[int] = None) -> list[RunRow]:
        where, args = ["1=1"], []
        if account is not None:
            # Of an experiment's runs, read from the experiment's index: ``account||''`` keeps the
            # planner from walking every run of the account instead (to save a sort of a few).
            where.append("account=?" if experiment is None else "account||''=?")
            args.append(account)
        if experiment is not None:
            experiments = [experiment] if isinstance(experiment, str) else list(experiment)
            where.append(f"experiment_id IN ({','.join('?' * len(experiments))})" if experiments else "1=0")
            args.extend(experiments)
        if states is not None:
            states = [RunState(s).value for s in states]
            where.append(f"state IN ({','.join('?' * len(states))})" if states else "1=0")
            args.extend(states)
        if after is not None:
            mine = "" if account is None else " AND last.account=?"
            where.append(f"seq>(SELECT last.seq FROM runs AS last WHERE last.id=?{mine})")
            args.extend([after] if account is None else [after, account])
        return self._run_rows(" AND ".join(where), args, transitions, positions, limit=limit)

    def queue_heads(self, wanted: dict[str, int]) -> dict[str, list[RunRow]]:
        heads: dict[str, list[RunRow]] = {account: [] for account in wanted}
        asked = [(account, int(n)) for account, n in wanted.items() if n > 0]
        for start in range(0, len(asked), _HEADS_PER_STATEMENT):
            for run in self._rows_to_runs(self._query(*self._heads_read(asked[start:start + _HEADS_PER_STATEMENT])),
                                          "none"):
                heads[run.account].append(run)
        return {account: sorted(runs, key=lambda r: r.seq) for account, runs in heads.items()}

    def _heads_read(self, chunk: list[tuple[str, int]]) -> tuple[str, list]:
        """One statement (and its arguments) that reads the first ``n`` QUEUED runs of each (account,
        ``n``) of ``chunk``, each from the queue index however long the queue: one LIMIT per account."""
        one = (f"SELECT * FROM (SELECT {','.join(_RUN_COLUMNS)}, NULL FROM runs WHERE state=? AND account=? "
               "ORDER BY seq LIMIT ?) AS head")
        return " UNION ALL ".join([one] * len(chunk)), [a for account, n in chunk
                                                         for a in (RunState.QUEUED.value, account, n)]

    def queue(self, account: str, limit: int) -> list[tuple[str, str]]:
        rows = self._query(f"SELECT id, experiment_id FROM runs WHERE state=? AND account=? ORDER BY seq "
                           f"LIMIT {int(limit)}", (RunState.QUEUED.value, account))
        return [(run_id, experiment_id) for run_id, experiment_id in rows]

    def requeued(self, account: str) -> list[str]:
        rows = self._query("SELECT id FROM runs WHERE state=? AND account=? AND (attempt>1 OR preemptions>0) "
                           "ORDER BY seq", (RunState.QUEUED.value, account))
        return [row[0] for row in rows]

    def state_counts(self, experiment_ids: list[str]) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {e: {} for e in experiment_ids}
        if experiment_ids:
            for experiment, state, n in self._query(
                    "SELECT experiment_id, state, COUNT(*) FROM runs WHERE experiment_id IN "
                    f"({','.join('?' * len(experiment_ids))}) GROUP BY experiment_id, state", experiment_ids):
                counts[experiment][state] = n
        return counts

    def transition(self, run_id: str, state: RunState, time: float, **fields: Any) -> RunRow:
        with self._tx() as db:
            row = db.execute(f"SELECT state, attempt FROM runs WHERE id=?{self.LOCK_ROW}", (run_id,)).fetchone()
            if row is None:
                raise NotFound(f"no run {run_id!r}")
            self._check_move(run_id, RunState(row[0]), state)
            self._set(db, run_id, state=state.value, **fields)
            db.execute(_insert("transitions", _TRANSITION_COLUMNS),
                       (run_id, state.value, time, fields.get("attempt", row[1])))
            run = self._run_rows("id=?", [run_id], db=db)[0]
            self._record_event(db, run.account, run_event(run, time))
        return run

    @staticmethod
    def _check_move(run_id: str, current: RunState, state: RunState) -> None:
        """``Conflict`` unless ``current`` → ``state`` is legal (called with the row locked)."""
        if not can_move(current, state):
            raise Conflict(f"run {run_id} is {current.value}; it cannot become {state.value}")

    def update_run(self, run_id: str, **fields: Any) -> None:
        with self._tx() as db:
            self._set(db, run_id, **fields)

    def request_stop(self, run_id: str, state: RunState, reason: str) -> bool:
        ended = [s.value for s in TERMINAL]
        with self._tx() as db:  # one UPDATE that checks and writes: the row is locked meanwhile
            cursor = db.execute("UPDATE runs SET stop_state=?, stop_reason=? WHERE id=? AND stop_state IS NULL "
                                f"AND state NOT IN ({','.join('?' * len(ended))})",
                                (state.value, reason, run_id, *ended))
            return cursor.rowcount > 0

    @staticmethod
    def _set(db: Db, run_id: str, **fields: Any) -> None:
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
            new = [p for p in points if self._insert_point(db, run_id, p)]
            if new:
                row = db.execute(f"SELECT metrics, account, experiment_id FROM runs WHERE id=?{self.LOCK_ROW}",
                                 (run_id,)).fetchone()
                latest = _load(row[0]) if row else {}
                for p in new:
                    latest.update(p.values)
                    if p.step is not None:
                        latest["step"] = p.step
                db.execute("UPDATE runs SET metrics=? WHERE id=?", (json.dumps(latest), run_id))
                if row:
                    self._record_event(db, row[1], {"type": "metrics", "run_id": run_id, "experiment_id": row[2],
                                                    "points": [p.model_dump() for p in new]})
        return new

    @staticmethod
    def _insert_point(db: Db, run_id: str, p: MetricPoint) -> bool:
        """Store one point unless its ``seq`` is stored already; whether it was new."""
        cursor = db.execute(_insert("metrics", ("run_id", "seq", "time", "step", '"values"'))
                            + " ON CONFLICT DO NOTHING", (run_id, p.seq, p.time, p.step, json.dumps(p.values)))
        return cursor.rowcount > 0

    def metrics(self, run_id: str, since: int = -1) -> list[MetricPoint]:
        rows = self._query('SELECT seq, time, step, "values" FROM metrics WHERE run_id=? AND seq>? ORDER BY seq',
                           (run_id, since))
        return [MetricPoint(seq=s, time=t, step=st, values=_load(v)) for s, t, st, v in rows]

    def metrics_of(self, since: dict[str, int]) -> dict[str, list[MetricPoint]]:
        out: dict[str, list[MetricPoint]] = {run_id: [] for run_id in since}
        asked = list(since.items())
        for start in range(0, len(asked), _HEADS_PER_STATEMENT):
            chunk = asked[start:start + _HEADS_PER_STATEMENT]
            rows = self._query('SELECT run_id, seq, time, step, "values" FROM metrics WHERE '
                               + " OR ".join(["(run_id=? AND seq>?)"] * len(chunk)) + " ORDER BY run_id, seq",
                               [a for run_id, seq in chunk for a in (run_id, seq)])
            for run_id, s, t, st, v in rows:
                out[run_id].append(MetricPoint(seq=s, time=t, step=st, values=_load(v)))
        return out

    def append_log(self, run_id: str, learner: int, offset: int, data: bytes) -> int:
        with self._tx() as db:
            row = db.execute('SELECT "offset" + length(data) FROM logs WHERE run_id=? AND learner=? '
                             'ORDER BY "offset" DESC LIMIT 1', (run_id, learner)).fetchone()
            length = row[0] if row else 0
            if offset == length and data:
                db.execute(_insert("logs", ("run_id", "learner", '"offset"', "data")) + " ON CONFLICT DO NOTHING",
                           (run_id, learner, offset, data))
                length += len(data)
            return length

    def read_log(self, run_id: str, learner: int, offset: int, limit: int) -> bytes:
        rows = self._query('SELECT "offset", data FROM logs WHERE run_id=? AND learner=? '
                           'AND "offset" + length(data) > ? ORDER BY "offset"', (run_id, learner, offset))
        out = bytearray()
        for start, data in rows:
            out += data[max(0, offset - start):]
            if len(out) >= limit:
                break
        return bytes(out[:limit])

    # -- summaries of ended experiments --------------------------------------------------------
    def save_summaries(self, summaries: dict[str, dict]) -> None:
        if not summaries:
            return
        with self._tx() as db:
            db.executemany(_insert("summaries", ("experiment_id", "payload")) + " ON CONFLICT DO NOTHING",
                           [(experiment_id, json.dumps(summary)) for experiment_id, summary in summaries.items()])

    def summaries(self, experiment_ids: list[str]) -> dict[str, dict]:
        if not experiment_ids:
            return {}
        rows = self._query("SELECT experiment_id, payload FROM summaries WHERE experiment_id IN "
                           f"({','.join('?' * len(experiment_ids))})", experiment_ids)
        return {experiment_id: _load(payload) for experiment_id, payload in rows}

    # -- secrets ----------------------------------------------------------------------------
    def secret(self, experiment_id: str) -> Optional[dict]:
        rows = self._query("SELECT payload FROM secrets WHERE experiment_id=?", (experiment_id,))
        return self._unsealed(_load(rows[0][0])) if rows else None

    def _sealed(self, secret: dict) -> str:
        """A secret as stored: ``{"sealed": <the encrypted JSON>}``."""
        return json.dumps({SEALED: self.box.seal(secret)})

    def _unsealed(self, payload: dict) -> dict:
        """A stored secret: sealed, or in clear as a version before sealing stored it."""
        return self.box.open(payload[SEALED]) if set(payload) == {SEALED} else payload

    def reseal_secrets(self) -> int:
        """Seal every stored secret again with the first key of the key file, in one transaction
        (the file's other keys then open nothing stored: they may go); how many were."""
        with self._tx() as db:
            rows = db.execute(f"SELECT experiment_id, payload FROM secrets{self.LOCK_ROW}").fetchall()
            for experiment_id, payload in rows:
                sealed = self.box.reseal(_load(payload)[SEALED])
                db.execute("UPDATE secrets SET payload=? WHERE experiment_id=?",
                           (json.dumps({SEALED: sealed}), experiment_id))
        return len(rows)

    def seal_plain_secrets(self, db: Db) -> None:
        """Encrypt the secrets a version before sealing stored in clear (at open, in ``db``'s transaction)."""
        for experiment_id, payload in db.execute("SELECT experiment_id, payload FROM secrets").fetchall():
            if set(_load(payload)) != {SEALED}:
                db.execute("UPDATE secrets SET payload=? WHERE experiment_id=?",
                           (self._sealed(_load(payload)), experiment_id))
