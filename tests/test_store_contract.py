"""The run-store contract (``RunStore``), run against every store: SQLite and PostgreSQL.

``connect`` opens one more connection to the same fresh database each time it is called: a
second call is a second backend replica, which the race tests use. The PostgreSQL half runs
against a real server (``pgserver.py``) and is skipped without one unless WML_REQUIRE_POSTGRES is set.
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import datetime, timezone
from typing import Callable

import pytest
from pgserver import postgres_server  # noqa: F401 (fixture)

from cryptography.fernet import Fernet

from wml_core.errors import Conflict, NotFound, WmlError
from wml_core.models import MetricPoint
from wml_core.states import RunState, can_move
from wml_backend.rundb import Account, ExperimentRow, RunRow, RunStore, SqliteRunStore
from wml_backend.rundb.base import Replica

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
        from wml_backend.rundb.postgres import PostgresRunStore

        def open_store() -> RunStore:
            return PostgresRunStore(dsn, tmp_path / "secrets.key")
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
                               definition={"name": exp_id, "framework": "pytorch", "command": "true", "cpus": 2})
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
        for column in ("gpu_seconds", "stop_state", "stop_reason"):
            db.execute(f"ALTER TABLE runs DROP COLUMN {column}")
    store = connect()
    add_experiment(store)
    assert [(r.gpu_seconds, r.stop_state) for r in store.runs()] == [(0.0, None), (0.0, None)]
    move(store, "e1-1", P)
    assert store.request_stop("e1-1", RunState.STOPPED, "stopped by ASHA at step 3")


def test_a_definition_an_older_version_stored_reads_back_typed_with_the_defaults(store):
    add_experiment(store)
    with store._tx() as db:  # as a version before max_retries, provenance and early stopping's max_steps
        db.execute("UPDATE experiments SET definition=? WHERE id=?", (json.dumps({
            "name": "old", "framework": "keras", "command": "python3 train.py", "gpus": 1,
            "search": {"algorithm": "random", "early_stopping": {"type": "asha"}}}), "e1"))
    d = store.experiment("e1").definition
    assert (d.name, d.gpus, d.cpus, d.learners, d.memory_bytes, d.max_retries, d.provenance) == \
        ("old", 1, 1.0, 1, None, 0, {})
    assert (d.search.runs, d.search.mode, d.search.early_stopping.max_steps) == (None, "max", None)


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


def test_an_account_keeps_its_limits_and_is_found_by_name(store):
    bob = Account(name="bob", gpu_quota=1, slots=2, cpus=3.5, memory_bytes=2**34, max_queued=10)
    store.create_account(bob, "hash-b")
    assert store.account("bob") == bob == store.account_by_token("hash-b")
    assert store.account("nobody") is None


def test_updating_an_account_changes_the_fields_given_only(store):
    store.create_account(Account(name="bob", gpu_quota=1, slots=2), "hash-b")
    assert store.update_account("bob", cpus=8.0, disabled=True) == \
        Account(name="bob", gpu_quota=1, slots=2, cpus=8.0, disabled=True)
    assert store.update_account("bob", slots=None, gpu_quota=0).slots is None
    assert store.account_by_token("hash-b").disabled, "the token still finds it: the service refuses it"
    with pytest.raises(NotFound):
        store.update_account("nobody", slots=1)
    with pytest.raises(ValueError):
        store.update_account("bob", token_hash="x")


def test_a_new_token_replaces_the_old_at_once(connect):
    first, second = connect(), connect()
    first.create_account(Account(name="bob", gpu_quota=1), "old")
    first.set_token("bob", "new")
    assert second.account_by_token("old") is None and second.account_by_token("new").name == "bob"
    with pytest.raises(NotFound):
        first.set_token("nobody", "x")


def test_runs_are_counted_by_account_and_state(store):
    add_experiment(store, "e1", runs=3)
    add_experiment(store, "e2", account="bob", runs=2)
    move(store, "e1-1", P)
    assert store.count_runs("alice", [Q]) == 2 and store.count_runs("alice", [Q, P]) == 3
    assert store.count_runs("bob", [Q]) == 2 and store.count_runs("carol", [Q]) == 0
    assert store.count_runs("alice", []) == 0


def test_runs_held_are_counted_with_their_gpus_by_account_and_state(store):
    add_experiment(store, "e1", runs=3, learners=2)
    add_experiment(store, "e2", account="bob", runs=1)
    move(store, "e1-1", P)
    assert store.held("alice", [Q]) == (2, 4) and store.held("alice", [P, D]) == (1, 2)
    assert store.held("bob", [Q]) == (1, 1) and store.held("carol", [Q]) == (0, 0)
    assert store.held("alice", []) == (0, 0)


def test_a_run_keeps_the_cpus_and_memory_it_asks_for(store):
    add_experiment(store, runs=1, cpus=2.5, memory_bytes=3 * 2**30)
    run = store.run("e1-1")
    assert (run.cpus, run.memory_bytes) == (2.5, 3 * 2**30)


def test_a_database_from_an_older_version_gains_the_limit_columns(connect):
    older = connect()
    older.create_account(Account(name="bob", gpu_quota=1), "hash-b")
    add_experiment(older)
    with older._tx() as db:  # as a version before per-account limits wrote it
        for table, column in (("accounts", "slots"), ("accounts", "cpus"), ("accounts", "memory_bytes"),
                              ("accounts", "max_queued"), ("accounts", "disabled"), ("runs", "cpus"),
                              ("runs", "memory_bytes")):
            db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    store = connect()
    assert store.account("bob") == Account(name="bob", gpu_quota=1)
    assert [(r.cpus, r.memory_bytes) for r in store.runs()] == [(1.0, None), (1.0, None)]
    assert store.update_account("bob", slots=3).slots == 3


# -- experiments --------------------------------------------------------------------------
def test_an_experiment_is_stored_with_its_runs_code_secret_and_queued_transitions(store):
    add_experiment(store, secret={"password": "s3cret"})
    exp = store.experiment("e1")
    assert (exp.name, exp.account, exp.created) == ("exp e1", "alice", T0)
    assert (exp.definition.name, exp.definition.framework, exp.definition.cpus) == ("e1", "pytorch", 2.0)
    assert store.code("e1") == b"PK\x03\x04e1"
    assert store.secret("e1") == {"password": "s3cret"}
    run = store.run("e1-2")
    assert (run.state, run.hparams, list(run.hparams), run.gpus) == (Q, {"batch": 64, "lr": 0.1}, ["batch", "lr"], 1)
    assert [(t.state, t.time.timestamp(), t.attempt) for t in run.transitions] == [(Q, T0, 1)]


def test_a_secret_is_stored_encrypted_and_only_its_key_opens_it(connect, tmp_path):
    """A dump of the database holds no usable credential: the payload is sealed with a key kept
    in a 0600 file outside the database."""
    store = connect()
    add_experiment(store, secret={"secret_key": "planted-5ecret-value"})
    [[raw]] = store._query("SELECT payload FROM secrets")
    assert "planted-5ecret-value" not in str(raw)
    assert connect().secret("e1") == {"secret_key": "planted-5ecret-value"}, "another replica, the same key"
    key = store.box.key_file
    assert key.stat().st_mode & 0o777 == 0o600
    key.write_bytes(Fernet.generate_key())
    with pytest.raises(WmlError, match="cannot be decrypted"):
        connect().secret("e1")


def test_a_secret_an_older_version_stored_in_clear_is_sealed_at_open(connect):
    older = connect()
    add_experiment(older)
    with older._tx() as db:  # as a version before sealing stored it
        db.execute("INSERT INTO secrets (experiment_id, payload) VALUES (?, ?)", ("e1", json.dumps({"k": "clear"})))
    assert older.secret("e1") == {"k": "clear"}
    store = connect()
    [[raw]] = store._query("SELECT payload FROM secrets")
    assert "clear" not in str(raw) and store.secret("e1") == {"k": "clear"}


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


def test_an_experiment_read_before_it_was_stored_is_found_once_stored(connect):
    first, second = connect(), connect()
    assert first.experiment("e1") is None and first.experiments_by_id(["e1"]) == {}
    add_experiment(second, "e1")  # by another replica
    assert first.experiment("e1").name == "exp e1" and first.experiment("e1", account="bob") is None
    assert first.experiment("e1").definition == second.experiment("e1").definition


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


def test_the_heads_of_each_accounts_queue_are_its_first_queued_runs(store):
    add_experiment(store, "e1", runs=3)
    add_experiment(store, "e2", account="bob", runs=3)
    add_experiment(store, "e3", runs=2)
    move(store, "e1-1", P)
    heads = store.queue_heads({"alice": 3, "bob": 1, "carol": 2, "dave": 0})
    assert {a: [r.id for r in runs] for a, runs in heads.items()} == {
        "alice": ["e1-2", "e1-3", "e3-1"], "bob": ["e2-1"], "carol": [], "dave": []}
    assert all(r.transitions == [] and r.queue_position is None for r in heads["alice"])
    assert store.queue_heads({}) == {}


def test_an_accounts_queue_order_is_read_as_run_and_experiment_ids(store):
    add_experiment(store, "e1", runs=3)
    add_experiment(store, "e2", account="bob")
    add_experiment(store, "e3", runs=2)
    move(store, "e1-2", P)
    assert store.queue("alice", 10) == [("e1-1", "e1"), ("e1-3", "e1"), ("e3-1", "e3"), ("e3-2", "e3")]
    assert store.queue("alice", 2) == [("e1-1", "e1"), ("e1-3", "e1")]
    assert store.queue("bob", 1) == [("e2-1", "e2")] and store.queue("carol", 5) == []


def test_queued_runs_that_ran_before_are_found_by_account(store):
    add_experiment(store, "e1", runs=3)
    add_experiment(store, "e2", account="bob", runs=1)
    move(store, "e1-1", P, Q, attempt=2)  # retried
    move(store, "e1-3", P)
    store.update_run("e1-2", preemptions=1)
    move(store, "e2-1", P, Q, attempt=2)
    assert store.requeued("alice") == ["e1-1", "e1-2"] and store.requeued("bob") == ["e2-1"]
    assert store.requeued("carol") == []


def test_an_experiments_runs_are_only_its_accounts(store):
    add_experiment(store, "e1", runs=2)
    add_experiment(store, "e2", account="bob", runs=2)
    assert [r.id for r in store.runs(account="alice", experiment=["e1", "e2"])] == ["e1-1", "e1-2"]
    assert store.runs(account="alice", experiment="e2") == []
    assert [r.id for r in store.runs(account="bob", experiment="e2", after="e2-1")] == ["e2-2"]


def test_runs_page_by_seq_and_every_run_is_listed_once_whatever_its_state_becomes(store):
    add_experiment(store, "e1", runs=5)
    first = store.runs(account="alice", limit=2)
    move(store, "e1-1", P)  # a state change between pages moves nothing across them
    move(store, "e1-4", P)
    second = store.runs(account="alice", after=first[-1].id, limit=2)
    rest = store.runs(account="alice", after=second[-1].id, limit=2)
    assert [r.id for r in first + second + rest] == ["e1-1", "e1-2", "e1-3", "e1-4", "e1-5"]
    assert store.runs(account="alice", after=rest[-1].id, limit=2) == []
    add_experiment(store, "e2", account="bob")
    assert store.runs(account="bob", after="e1-1") == []  # another account's run: nothing


def test_experiment_ids_page_after_the_last_one_listed(store):
    for n, created in enumerate([T0, T0 + 10, T0 + 10, T0 + 20]):
        add_experiment(store, f"x{n}", created=created)
    add_experiment(store, "bob", account="bob", created=T0 + 5)
    assert store.experiment_ids("alice", 2) == ["x3", "x2"]
    assert store.experiment_ids("alice", 2, after="x2") == ["x1", "x0"]
    assert store.experiment_ids("alice", 2, after="x0") == []
    assert store.experiment_ids("alice", 2, after="bob") == []  # another account's: nothing


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
    assert store.run("e1-1", transitions="none") == row.model_copy(update={"transitions": []}), \
        "read without its transitions, a run is the same run"


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


def test_a_stop_is_recorded_once_and_stays_with_the_run(connect):
    store, replica = connect(), connect()
    add_experiment(store, runs=3)
    move(store, "e1-1", P, D)
    assert store.request_stop("e1-1", RunState.STOPPED, "stopped by ASHA at step 3")
    assert not replica.request_stop("e1-1", RunState.HALTED, "cancelled by the user")  # the first stays
    row = move(replica, "e1-1", RunState.PROCESSING)
    assert (row.stop_state, row.stop_reason) == (RunState.STOPPED, "stopped by ASHA at step 3")
    assert [(r.id, r.stop_state) for r in store.runs()] == [("e1-1", RunState.STOPPED), ("e1-2", None), ("e1-3", None)]


def test_only_a_run_that_has_not_ended_can_be_asked_to_stop(store):
    add_experiment(store)
    move(store, "e1-1", P, RunState.COMPLETED)
    assert not store.request_stop("e1-1", RunState.HALTED, "cancelled by the user")
    assert not store.request_stop("missing", RunState.HALTED, "cancelled by the user")
    assert store.run("e1-1").stop_state is None
    assert store.request_stop("e1-2", RunState.HALTED, "cancelled by the user")  # queued: not ended


def test_replicas_racing_to_stop_a_run_record_one_stop(connect):
    replicas = [connect() for _ in range(4)]
    add_experiment(replicas[0], runs=1)
    move(replicas[0], "e1-1", P)
    start, won = threading.Barrier(len(replicas)), []

    def stop(replica: RunStore, n: int) -> None:
        start.wait()
        if replica.request_stop("e1-1", RunState.STOPPED, f"replica {n}"):
            won.append(f"replica {n}")
    threads = [threading.Thread(target=stop, args=(r, n)) for n, r in enumerate(replicas)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(won) == 1 and replicas[1].run("e1-1").stop_reason == won[0]


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


def test_metrics_of_many_runs_are_read_at_once_each_after_its_own_seq(store):
    add_experiment(store, "e1", runs=3)
    store.add_metrics("e1-1", [point(s, acc=s / 10) for s in range(4)])
    store.add_metrics("e1-2", [point(s, acc=s / 10) for s in range(2)])
    found = store.metrics_of({"e1-1": 1, "e1-2": -1, "e1-3": -1, "missing": -1})
    assert {run_id: [p.seq for p in points] for run_id, points in found.items()} == {
        "e1-1": [2, 3], "e1-2": [0, 1], "e1-3": [], "missing": []}
    assert found["e1-1"][0].values == {"acc": 0.2}


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


def test_every_value_reads_back_exactly_read_after_read_in_order(store):
    """What is stored comes back the same, read after read: reals to the last digit (times to the
    microsecond, huge and tiny ones), big integers, any text, blobs; runs in the order stored."""
    now = time.time()  # microseconds: more digits than JSON's default 15
    add_experiment(store, "e1", runs=12, created=now, cpus=0.1 + 0.2, memory_bytes=2**62)
    store.transition("e1-3", P, now + 1 / 3)
    store.add_metrics("e1-1", [point(0, 1.0092329818289469e+260, loss=1 / 3), point(1, 2.5e-300, loss=1e300)])
    text = 'é\n"quoted" \\ \U0001F600 \x7f'
    store.update_run("e1-2", reason=text)
    for _ in range(3):
        runs = store.runs(account="alice", experiment="e1")
        assert [r.id for r in runs] == [f"e1-{n}" for n in range(1, 13)]  # in the order stored
        assert runs[0].created == datetime.fromtimestamp(now, timezone.utc)
        assert runs[0].cpus == 0.1 + 0.2 and runs[0].memory_bytes == 2**62
        assert runs[1].reason == text
        assert runs[2].transitions[-1].time == datetime.fromtimestamp(now + 1 / 3, timezone.utc)
        assert store.metrics("e1-1") == [point(0, 1.0092329818289469e+260, loss=1 / 3), point(1, 2.5e-300, loss=1e300)]
        assert store.code("e1") == b"PK\x03\x04e1"
        assert store.experiment("e1").created == now


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


# -- events ---------------------------------------------------------------------------------
def _events(store: RunStore, after: int = 0, account: str | None = None) -> list[tuple[str, ...]]:
    """(type, run id, state or point count) of each event after ``after``."""
    return [(e["type"], e["run"]["id"], e["run"]["state"]) if e["type"] == "run"
            else (e["type"], e["run_id"], len(e["points"])) for _, e in store.events(after, account)]


def test_each_change_records_its_event_in_its_own_transaction(store):
    add_experiment(store, runs=2)
    move(store, "e1-1", P, D)
    store.add_metrics("e1-1", [MetricPoint(seq=0, time=T0, values={"acc": 0.5})])
    with pytest.raises(Conflict):
        store.transition("e1-2", Q, T0)  # refused: no event either
    assert _events(store) == [("run", "e1-1", "QUEUED"), ("run", "e1-2", "QUEUED"), ("run", "e1-1", "PENDING"),
                              ("run", "e1-1", "DOWNLOADING"), ("metrics", "e1-1", 1)]
    run = store.events(0)[3][1]["run"]
    assert [t["state"] for t in run["transitions"]] == ["QUEUED", "PENDING", "DOWNLOADING"]
    store.add_metrics("e1-1", [MetricPoint(seq=0, time=T0, values={"acc": 0.5})])  # resent: nothing new
    assert len(store.events(0)) == 5 and store.latest_event() == store.events(0)[-1][0]


def test_events_are_read_after_a_seq_by_account_and_pruned_by_age(store):
    assert store.latest_event() == 0 and store.events(0) == []
    add_experiment(store, "e1", account="alice", runs=1)
    add_experiment(store, "e2", account="bob", runs=1)
    note = store.add_event("bob", {"type": "note", "text": "waiting for a node"})
    assert note == store.latest_event()
    first = store.events(0)[0][0]
    assert [e["type"] for _, e in store.events(first, "bob")] == ["run", "note"]
    assert store.events(first, "alice") == []
    assert [e["run"]["id"] for _, e in store.events(0, "alice")] == ["e1-1"]
    assert len(store.events(0, limit=2)) == 2
    log = store.event_log(0)
    assert [(seq, account) for seq, account, _ in log] == \
        [(seq, who) for who in ("alice", "bob") for seq, _ in store.events(0, who)]  # alice's came first
    assert [event for _, _, event in log] == [event for _, event in store.events(0)]
    assert store.event_log(first, limit=1) == [(store.events(first)[0][0], "bob", store.events(first)[0][1])]
    assert store.prune_events(before=0) == 0
    assert store.prune_events(before=datetime.now(timezone.utc).timestamp() + 1) == 3
    assert store.events(0) == [] and store.latest_event() in (0, note)


def test_a_reader_resuming_after_its_last_seq_misses_no_event_of_racing_writers(connect):
    """Seqs become readable in order: one drawn earlier never appears after a later one was read."""
    writers, reader = [connect() for _ in range(4)], connect()
    per_writer, seen = 40, []
    done = threading.Event()

    def write(store: RunStore, n: int) -> None:
        for i in range(per_writer):
            store.add_event("alice", {"type": "note", "writer": n, "i": i})

    threads = [threading.Thread(target=write, args=(w, n)) for n, w in enumerate(writers)]
    for t in threads:
        t.start()
    watcher = threading.Thread(target=lambda: [t.join() for t in threads] and None or done.set())
    watcher.start()
    while True:
        finished = done.is_set()
        seen += [seq for seq, _ in reader.events(seen[-1] if seen else 0)]
        if finished:
            break
    assert len(seen) == len(set(seen)) == per_writer * len(writers), "a reader missed or repeated events"
    assert seen == sorted(seen)


# -- replicas and their leader ------------------------------------------------------------------
def replica(n: int) -> Replica:
    return Replica(id=f"r{n}", url=f"http://127.0.0.1:{8000 + n}", host="here", pid=1000 + n, version="1")


def test_one_replica_leads_and_another_takes_over_when_it_leaves(connect):
    first, second = connect(), connect()
    assert first.heartbeat(replica(1), ttl_s=30)
    assert not second.heartbeat(replica(2), ttl_s=30)
    assert first.heartbeat(replica(1), ttl_s=30), "the leader renews its lease"
    assert [(r.id, r.leader) for r in second.replicas()] == [("r1", True), ("r2", False)]
    first.leave("r1")
    assert [r.id for r in second.replicas()] == ["r2"]
    assert second.heartbeat(replica(2), ttl_s=30), "a lease given back is taken at the next heartbeat"
    assert not first.heartbeat(replica(1), ttl_s=30)


def test_an_expired_lease_is_taken(connect):
    first, second = connect(), connect()
    assert first.heartbeat(replica(1), ttl_s=0.2)
    assert not second.heartbeat(replica(2), ttl_s=0.2)
    time.sleep(0.4)
    assert second.heartbeat(replica(2), ttl_s=30)
    assert not first.heartbeat(replica(1), ttl_s=30), "the old leader finds the lease taken"


def test_the_lease_of_a_leader_whose_session_is_gone_is_taken_at_once(connect):
    first, second = connect(), connect()
    assert first.heartbeat(replica(1), ttl_s=300)
    with second._tx() as db:  # as if its process (SQLite) or its connection (PostgreSQL) had died
        db.execute("UPDATE replicas SET session=? WHERE id=?", (_dead_session(second), "r1"))
    assert second.heartbeat(replica(2), ttl_s=30)
    assert [(r.id, r.leader) for r in second.replicas()] == [("r2", True)], "the dead replica is not listed"


def test_a_postgres_leader_that_disconnects_is_replaced_at_once(connect):
    first, second = connect(), connect()
    if isinstance(first, SqliteRunStore):
        pytest.skip("a SQLite store's session is its process")
    assert first.heartbeat(replica(1), ttl_s=300)
    first.close()
    deadline = time.monotonic() + 5  # the server ends the session as soon as it sees the connection closed
    while not second.heartbeat(replica(2), ttl_s=30):
        assert time.monotonic() < deadline, "the lease of a disconnected leader was not taken"
        time.sleep(0.05)


def _dead_session(store: RunStore) -> str:
    """A session that no process or connection has."""
    return "999999999:0.0" if isinstance(store, SqliteRunStore) else "2147483646"


def test_replicas_starting_together_create_the_administrator_once(connect):
    replicas = [connect() for _ in range(4)]
    start, outcomes = threading.Barrier(len(replicas)), []

    def create(store: RunStore, n: int) -> None:
        start.wait()
        try:
            store.create_account(Account(name="local", gpu_quota=1, admin=True), f"hash-{n}")
            outcomes.append("created")
        except Conflict:
            outcomes.append("conflict")
    threads = [threading.Thread(target=create, args=(r, n)) for n, r in enumerate(replicas)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(outcomes) == ["conflict"] * 3 + ["created"]


# -- schema versions and the census ----------------------------------------------------------------
def test_a_database_a_newer_backend_opened_is_refused_in_one_line(connect):
    from wml_backend.rundb.sql import SCHEMA_VERSION
    store = connect()
    assert store.schema_version() == SCHEMA_VERSION
    connect()  # the same version opens it again
    with store._tx() as db:
        db.execute("UPDATE schema_version SET version=?", (SCHEMA_VERSION + 3,))
    with pytest.raises(WmlError) as refused:
        connect()
    assert str(refused.value) == (f"the database's schema is version {SCHEMA_VERSION + 3}, newer than this "
                                  f"backend's {SCHEMA_VERSION}: upgrade this backend to the version that wrote it")


def test_the_census_counts_runs_gpus_and_the_longest_wait_by_account_and_state(store):
    add_experiment(store, "e1", account="alice", runs=3, created=T0)
    add_experiment(store, "e2", account="bob", runs=1, created=T0 + 5, learners=2)
    move(store, "e1-1", P)
    counts = {(c.account, c.state.value): (c.runs, c.gpus, c.oldest) for c in store.census()}
    assert counts == {("alice", "QUEUED"): (2, 0, T0), ("alice", "PENDING"): (1, 1, None),
                      ("bob", "QUEUED"): (1, 0, T0 + 5)}
