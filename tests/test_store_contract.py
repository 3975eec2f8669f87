"""The run-store contract (``RunStore``), run against every store: SQLite and PostgreSQL.

``connect`` opens one more connection to the same fresh database each time it is called: a
second call is a second backend replica, which the race tests use. The PostgreSQL half runs
against a real server (``pgserver.py``) and is skipped without one unless WML_REQUIRE_POSTGRES is set.
"""

from __future__ import annotations

import os
import threading
from datetime import datetime, timezone
from typing import Callable

import pytest
from pgserver import postgres_server  # noqa: F401 (fixture)

from wml_backend.errors import Conflict, NotFound
from wml_backend.models import MetricPoint
from wml_backend.states import RunState, can_move
from wml_backend.store import Account, ExperimentRow, RunRow, RunStore, SqliteRunStore

Q, P, D = RunState.QUEUED, RunState.PENDING, RunState.DOWNLOADING
T0 = 1_700_000_000.0


@pytest.fixture(params=["sqlite", "postgres"])
def connect(request, tmp_path) -> Callable[[], RunStore]:
    """Open a new connection to this test's fresh database; all are closed afterwards."""
    if request.param == "sqlite":
        def open_store() -> RunStore:
            return SqliteRunStore(tmp_path / "wml.db")
    else:
        dsn = request.getfixturevalue("postgres_server").dsn()
        from wml_backend.store.postgres import PostgresRunStore

        def open_store() -> RunStore:
            return PostgresRunStore(dsn)
    opened: list[RunStore] = []

    def connect_() -> RunStore:
        opened.append(open_store())
        return opened[-1]
    yield connect_
    for store in opened:
        store.close()


@pytest.fixture
def store(connect) -> RunStore:
    """One connection to a fresh store."""
    return connect()


def add_experiment(store: RunStore, exp_id: str = "e1", account: str = "alice", runs: int = 2,
                   created: float = T0, secret: dict | None = None, **run_fields) -> list[RunRow]:
    """Insert an experiment with ``runs`` QUEUED runs ``<exp_id>-<n>``; return the runs."""
    rows = [RunRow(id=f"{exp_id}-{n}", experiment_id=exp_id, account=account, name=f"run {n}",
                   state=Q, hparams={"batch": 32 * n, "lr": 0.1}, gpus=1,
                   created=datetime.fromtimestamp(created, timezone.utc), **run_fields)
            for n in range(1, runs + 1)]
    experiment = ExperimentRow(id=exp_id, account=account, name=f"exp {exp_id}", created=created,
                               definition={"name": exp_id, "framework": "pytorch", "cpus": 2})
    store.insert_experiment(experiment, rows, b"PK\x03\x04" + exp_id.encode(), secret)
    return rows


def move(store: RunStore, run_id: str, *states: RunState, **fields) -> RunRow:
    """Take a run through ``states`` one second apart; the last row."""
    row = None
    for n, state in enumerate(states, 1):
        row = store.transition(run_id, state, T0 + n, **fields)
    return row


def test_a_database_from_an_older_version_gains_the_columns_added_since(connect):
    older = connect()
    with older._tx() as db:  # as the first schema wrote it
        db.execute("ALTER TABLE runs DROP COLUMN gpu_seconds")
    store = connect()
    add_experiment(store)
    assert [r.gpu_seconds for r in store.runs()] == [0.0, 0.0]


# -- accounts -------------------------------------------------------------------------------
def test_accounts_are_created_found_by_token_and_listed_by_name(store):
    store.create_account(Account(name="zed", gpu_quota=1), "hash-z")
    store.create_account(Account(name="admin", gpu_quota=4, admin=True), "hash-a")
    assert store.account_by_token("hash-a") == Account(name="admin", gpu_quota=4, admin=True)
    assert store.account_by_token("unknown") is None
    assert [a.name for a in store.accounts()] == ["admin", "zed"]


def test_a_taken_account_name_conflicts_and_keeps_the_first(store):
    store.create_account(Account(name="alice", gpu_quota=1), "hash-1")
    with pytest.raises(Conflict):
        store.create_account(Account(name="alice", gpu_quota=8), "hash-2")
    assert store.accounts() == [Account(name="alice", gpu_quota=1)]
    assert store.account_by_token("hash-2") is None


# -- experiments --------------------------------------------------------------------------
def test_an_experiment_is_stored_with_its_runs_code_secret_and_queued_transitions(store):
    add_experiment(store, secret={"password": "s3cret"})
    exp = store.experiment("e1")
    assert (exp.name, exp.account, exp.created) == ("exp e1", "alice", T0)
    assert list(exp.definition) == ["name", "framework", "cpus"]  # JSON kept as written
    assert store.code("e1") == b"PK\x03\x04e1"
    assert store.secret("e1") == {"password": "s3cret"}
    run = store.run("e1-2")
    assert (run.state, run.hparams, list(run.hparams), run.gpus) == (Q, {"batch": 64, "lr": 0.1}, ["batch", "lr"], 1)
    assert [(t.state, t.time.timestamp(), t.attempt) for t in run.transitions] == [(Q, T0, 1)]


def test_an_experiment_without_secret_or_code_has_none(store):
    add_experiment(store)
    assert store.secret("e1") is None
    with pytest.raises(NotFound):
        store.code("nope")


def test_insert_experiment_is_all_or_nothing(store):
    with pytest.raises(TypeError):  # the secret fails last, after the experiment, runs and code
        add_experiment(store, secret={"key": object()})
    assert store.experiment("e1") is None and store.runs() == [] and store.secret("e1") is None
    with pytest.raises(NotFound):
        store.code("e1")
    add_experiment(store)  # nothing half-written blocks the same ids
    assert len(store.runs(experiment="e1")) == 2


def test_experiments_are_newest_first_and_scoped_to_their_account(store):
    add_experiment(store, "old", created=T0)
    add_experiment(store, "new", created=T0 + 10)
    add_experiment(store, "tie", created=T0 + 10)  # same time: the later stored is newer
    add_experiment(store, "bob", account="bob")
    assert [e.id for e in store.experiments("alice")] == ["tie", "new", "old"]
    assert store.experiment_ids("alice") == ["tie", "new", "old"] and store.experiment_ids("alice", 2) == ["tie", "new"]
    assert {i: e.name for i, e in store.experiments_by_id(["old", "bob", "missing"]).items()} == {
        "old": "exp old", "bob": "exp bob"}
    assert store.experiments_by_id([]) == {}
    assert store.experiment("bob", account="alice") is None
    assert store.experiment("bob", account="bob").id == "bob"
    assert store.experiment("missing") is None


# -- runs -------------------------------------------------------------------------------------
def test_runs_filter_by_account_experiment_and_states_in_submission_order(store):
    add_experiment(store, "e1", runs=3)
    add_experiment(store, "e2", account="bob")
    move(store, "e1-2", P)
    assert [r.id for r in store.runs()] == ["e1-1", "e1-2", "e1-3", "e2-1", "e2-2"]
    assert [r.id for r in store.runs(account="bob")] == ["e2-1", "e2-2"]
    assert [r.id for r in store.runs(experiment="e1", states=[Q])] == ["e1-1", "e1-3"]
    assert [r.id for r in store.runs(account="alice", states=[P, D])] == ["e1-2"]
    assert store.runs(states=[]) == [] and store.runs(account="nobody") == []
    seqs = [r.seq for r in store.runs()]
    assert seqs == sorted(seqs)


def test_an_accounts_queue_is_its_queued_runs_in_submission_order(store):
    add_experiment(store, "e1", runs=3)
    add_experiment(store, "e2", account="bob")
    add_experiment(store, "e3", runs=1)
    move(store, "e1-2", P)
    positions = {r.id: r.queue_position for r in store.runs(positions=True)}
    assert positions == {"e1-1": 1, "e1-2": None, "e1-3": 2, "e3-1": 3, "e2-1": 1, "e2-2": 2}
    assert {r.queue_position for r in store.runs()} == {None}  # not asked for: not counted
    assert store.run("e3-1").queue_position == 3 and store.run("e1-2").queue_position is None


def test_state_counts_per_experiment(store):
    add_experiment(store, "e1", runs=3)
    add_experiment(store, "e2", account="bob")
    move(store, "e1-2", P, D)
    move(store, "e1-3", RunState.HALTED)
    assert store.state_counts(["e1", "e2", "none"]) == {
        "e1": {"QUEUED": 1, "DOWNLOADING": 1, "HALTED": 1}, "e2": {"QUEUED": 2}, "none": {}}
    assert store.state_counts([]) == {}


def test_an_ended_experiments_summary_is_kept_once(connect):
    store = connect()
    add_experiment(store, "e1")
    store.save_summaries({"e1": {"state": "COMPLETED", "runs": {"COMPLETED": 2}}})
    store.save_summaries({"e1": {"state": "FAILED"}})  # the first one kept stays
    store.save_summaries({})
    assert connect().summaries(["e1", "e2"]) == {"e1": {"state": "COMPLETED", "runs": {"COMPLETED": 2}}}
    assert store.summaries([]) == {}


def test_another_accounts_run_is_none(store):
    add_experiment(store, account="bob")
    assert store.run("e1-1", account="alice") is None
    assert store.run("e1-1", account="bob").id == "e1-1"
    assert store.run("missing") is None


def test_transitions_are_recorded_with_time_attempt_and_fields(store):
    add_experiment(store, max_retries=1)
    move(store, "e1-1", P, D, gpu_ids=[0, 3])
    row = store.transition("e1-1", Q, T0 + 5, attempt=2, gpu_ids=[], reason="retry")
    assert (row.state, row.attempt, row.gpu_ids, row.reason, row.max_retries) == (Q, 2, [], "retry", 1)
    assert [(t.state, t.time.timestamp(), t.attempt) for t in row.transitions] == [
        (Q, T0, 1), (P, T0 + 1, 1), (D, T0 + 2, 1), (Q, T0 + 5, 2)]
    assert store.run("e1-1") == row


@pytest.mark.parametrize("path,illegal", [
    ([P, D], P),                                   # backwards
    ([P], P),                                      # not forward: a second admission
    ([RunState.COMPLETED], Q),                     # a terminal state is never left...
    ([P, RunState.HALTED], RunState.FAILED),       # ...not even for another terminal one
    ([], Q),                                       # only an active run is queued again
])
def test_illegal_transitions_conflict_and_change_nothing(store, path, illegal):
    add_experiment(store, runs=1)
    before = move(store, "e1-1", *path) if path else store.run("e1-1")
    assert not can_move(before.state, illegal)
    with pytest.raises(Conflict):
        store.transition("e1-1", illegal, T0 + 99, reason="should not stick")
    assert store.run("e1-1") == before


def test_transition_of_an_unknown_run_is_not_found(store):
    with pytest.raises(NotFound):
        store.transition("missing", P, T0)


def test_update_run_sets_fields_but_not_state(store):
    add_experiment(store)
    store.update_run("e1-1", handle={"pid": 42, "job": "wml-e1-1"}, log_tail=["a", "b"], exit_code=3)
    run = store.run("e1-1")
    assert (run.state, run.handle, run.log_tail, run.exit_code) == (Q, {"pid": 42, "job": "wml-e1-1"}, ["a", "b"], 3)
    assert len(run.transitions) == 1 and store.run("e1-2").handle == {}
    with pytest.raises(ValueError):
        store.update_run("e1-1", colour="red")


# -- metrics and logs -------------------------------------------------------------------
def point(seq: int, step: float | None = None, **values: float) -> MetricPoint:
    return MetricPoint(seq=seq, time=T0 + seq, step=step, values=values)


def test_metrics_are_idempotent_by_seq_and_merge_latest_values(store):
    add_experiment(store)
    assert store.add_metrics("e1-1", [point(0, 1, loss=0.9), point(1, 2, loss=0.5, acc=0.7)]) == [
        point(0, 1, loss=0.9), point(1, 2, loss=0.5, acc=0.7)]
    resent = store.add_metrics("e1-1", [point(1, 2, loss=0.5, acc=0.7), point(2, None, loss=0.4)])
    assert resent == [point(2, None, loss=0.4)]
    assert store.add_metrics("e1-1", [point(2, None, loss=0.4)]) == []
    assert store.run("e1-1").metrics == {"loss": 0.4, "acc": 0.7, "step": 2}
    assert store.run("e1-2").metrics == {}


def test_metrics_since_a_seq(store):
    add_experiment(store)
    store.add_metrics("e1-1", [point(n, n, loss=1 / (n + 1)) for n in range(4)])
    store.add_metrics("e1-2", [point(0, 0, loss=9.0)])
    assert [p.seq for p in store.metrics("e1-1")] == [0, 1, 2, 3]
    assert store.metrics("e1-1", since=1) == [point(2, 2, loss=1 / 3), point(3, 3, loss=0.25)]
    assert store.metrics("e1-1", since=3) == [] and store.metrics("missing") == []


def test_logs_append_idempotently_by_offset_per_learner(store):
    add_experiment(store)
    assert store.append_log("e1-1", 1, 0, b"line 1\n") == 7
    assert store.append_log("e1-1", 1, 0, b"line 1\n") == 7          # resent: ignored
    assert store.append_log("e1-1", 1, 3, b"e 1\nline 2\n") == 7     # not the end: ignored
    assert store.append_log("e1-1", 1, 7, b"line 2\n\xff") == 15
    assert store.append_log("e1-1", 1, 15, b"") == 15
    assert store.append_log("e1-1", 2, 0, b"learner 2\n") == 10
    assert store.read_log("e1-1", 1, 0, 1 << 20) == b"line 1\nline 2\n\xff"
    assert store.read_log("e1-1", 2, 0, 100) == b"learner 2\n"


def test_logs_read_from_any_offset_up_to_a_limit(store):
    add_experiment(store)
    for offset, chunk in ((0, b"abc"), (3, b"defg"), (7, b"hij")):
        store.append_log("e1-1", 1, offset, chunk)
    assert store.read_log("e1-1", 1, 2, 4) == b"cdef"
    assert store.read_log("e1-1", 1, 5, 100) == b"fghij"
    assert store.read_log("e1-1", 1, 10, 100) == b"" and store.read_log("e1-2", 1, 0, 100) == b""


# -- several connections: restarts and replicas -------------------------------------------
def test_another_connection_sees_what_was_committed(connect):
    first = connect()
    add_experiment(first, secret={"k": "v"})
    first.close()
    second = connect()
    assert [r.id for r in second.runs()] == ["e1-1", "e1-2"] and second.secret("e1") == {"k": "v"}


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def read_in_threads(store: RunStore, threads: int, together: bool) -> None:
    """``store.runs()`` in that many short-lived threads, one after another or all at once."""
    start = threading.Barrier(threads if together else 1)
    for batch in ([range(threads)] if together else [[i] for i in range(threads)]):
        readers = [threading.Thread(target=lambda: (start.wait(), store.runs())) for _ in batch]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join()


def test_reads_from_many_threads_leave_no_connections_behind(store):
    """The local executor reads from a thread per run: 200 runs must not leave 200 open connections."""
    add_experiment(store)
    read_in_threads(store, 20, together=True)  # SQLite keeps the files of its peak readers for reuse
    before = open_files()
    read_in_threads(store, 200, together=False)
    read_in_threads(store, 20, together=True)
    assert open_files() - before <= 3, "connections of ended threads are still open"


def test_replicas_racing_to_admit_a_run_admit_it_once(connect):
    replicas = [connect() for _ in range(4)]
    runs = add_experiment(replicas[0], runs=3)
    for run in runs:
        start, outcomes = threading.Barrier(len(replicas)), []

        def admit(replica: RunStore, run_id: str) -> None:
            start.wait()
            try:
                replica.transition(run_id, P, T0 + 1, gpu_ids=[0])
                outcomes.append("won")
            except Conflict:
                outcomes.append("conflict")
        threads = [threading.Thread(target=admit, args=(r, run.id)) for r in replicas]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert sorted(outcomes) == ["conflict"] * (len(replicas) - 1) + ["won"]
        assert [t.state for t in replicas[1].run(run.id).transitions] == [Q, P]


def test_a_transition_checks_and_writes_under_one_lock(connect, monkeypatch):
    """The loser's check waits for the winner's commit, then sees PENDING: it cannot go stale."""
    winner, loser = connect(), connect()
    add_experiment(winner, runs=1)
    checked, release = threading.Event(), threading.Event()
    check = winner._check_move

    def paused_check(*args):
        check(*args)
        checked.set()
        assert release.wait(30)
    monkeypatch.setattr(winner, "_check_move", paused_check)
    first = threading.Thread(target=winner.transition, args=("e1-1", P, T0 + 1))
    first.start()
    conflicts = []
    second = threading.Thread(target=lambda: conflicts.append(_conflict(loser, "e1-1")))
    try:
        assert checked.wait(30)  # the winner has read QUEUED and holds the lock, not yet written
        second.start()
        second.join(timeout=0.3)
        assert second.is_alive(), "the second move did not wait for the first one's lock"
    finally:
        release.set()
        first.join(timeout=30)
    second.join(timeout=30)
    assert conflicts == [True]
    assert [t.state for t in loser.run("e1-1").transitions] == [Q, P]


def _conflict(store: RunStore, run_id: str) -> bool:
    """Whether moving ``run_id`` to PENDING raised ``Conflict``."""
    try:
        store.transition(run_id, P, T0 + 2)
    except Conflict:
        return True
    return False


def test_one_holder_of_the_admission_lock_at_a_time(connect):
    """Threads of one replica and other replicas wait while a replica admits."""
    holder, other = connect(), connect()
    order: list[str] = []

    def admit(store: RunStore) -> None:
        with store.admission_lock():
            order.append("waiter")
    waiters = [threading.Thread(target=admit, args=(s,)) for s in (holder, other)]
    with holder.admission_lock():
        for t in waiters:
            t.start()
        waiters[-1].join(timeout=0.3)
        order.append("holder")
    for t in waiters:
        t.join(timeout=30)
    assert order == ["holder", "waiter", "waiter"]
