"""Fair use inside the backend: the pending timeout, runs that can never fit, disabled accounts.

An executor that never places what it starts (a cluster with no node of 4096 CPUs) stands in
for Kubernetes; the lifecycle, the run store and the scheduler are the real ones.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

import pytest

from wml_backend.eventbus import EventBus
from wml_backend.executors import Capacity, Executor, Launch
from wml_backend.lifecycle import Lifecycle
from wml_backend.rundb import Account, ExperimentRow, RunRow, SqliteRunStore
from wml_backend.settings import Settings
from wml_core.states import RunState


class NeverPlaced(Executor):
    """Starts runs that never leave PENDING, and records what it is told to stop."""

    name = "never-placed"

    def __init__(self) -> None:
        super().__init__()
        self.stopped: list[str] = []

    def capacity(self) -> Capacity:
        return Capacity(gpu_ids=(0,), slots=4)

    def start(self, launch: Launch) -> dict[str, Any]:
        return {"attempt": launch.attempt, "job": f"job-{launch.run_id}"}

    def cancel(self, run_id: str, handle: dict[str, Any]) -> None:
        self.stopped.append(run_id)

    def kill(self, run_id: str, handle: dict[str, Any]) -> None:
        self.stopped.append(run_id)

    def reattach(self, run_id: str, handle: dict[str, Any]) -> bool:
        return False


@pytest.fixture
def world(tmp_path):
    """A lifecycle with a 60 s pending timeout over a fresh store and an executor that places nothing."""
    settings = Settings(home=tmp_path, pending_timeout_s=60)
    store = SqliteRunStore(settings.database)
    executor = NeverPlaced()
    yield Lifecycle(settings, store, executor, EventBus(store)), store, executor
    store.close()


def queue(store: SqliteRunStore, account: str, runs: int = 1, **asks: Any) -> list[str]:
    """Queue ``runs`` runs of a new experiment of ``account``, each asking for ``asks``; their ids."""
    exp_id = f"e{len(store.runs())}"
    rows = [RunRow(id=f"{exp_id}-{n}", experiment_id=exp_id, account=account, name="r", state=RunState.QUEUED,
                   created=datetime.now(timezone.utc), **asks) for n in range(1, runs + 1)]
    experiment = ExperimentRow(id=exp_id, account=account, name="x", created=time.time(),
                               definition={"name": "x", "framework": "custom", "command": "true"})
    store.insert_experiment(experiment, rows, b"PK", None)
    return [r.id for r in rows]


def test_a_run_not_placed_within_the_pending_timeout_fails_saying_why(world):
    life, store, executor = world
    store.create_account(Account(name="a", gpu_quota=0), "h")
    [run_id] = queue(store, "a", gpus=0, cpus=4096)
    life.admit()
    assert store.run(run_id).state is RunState.PENDING
    life.note(run_id, "no node has 4096 CPUs")
    life.expire_pending(now=time.time() + 30)
    assert store.run(run_id).state is RunState.PENDING, "within the timeout it waits"
    life.expire_pending(now=time.time() + 61)
    run = store.run(run_id)
    assert run.state is RunState.FAILED
    assert run.reason == "it was not placed within the pending timeout (60 s): no node has 4096 CPUs"
    assert run_id in executor.stopped, "its Job is left behind"


def test_a_pending_timeout_of_0_waits_for_ever(world, tmp_path):
    life, store, _ = world
    life.settings = Settings(home=tmp_path, pending_timeout_s=0)
    store.create_account(Account(name="a", gpu_quota=0), "h")
    [run_id] = queue(store, "a", gpus=0)
    life.admit()
    life.expire_pending(now=time.time() + 10**6)
    assert store.run(run_id).state is RunState.PENDING


def test_a_queued_run_over_its_accounts_lowered_limits_fails_instead_of_blocking_its_queue(world):
    life, store, _ = world
    store.create_account(Account(name="a", gpu_quota=0), "h")
    big, small = queue(store, "a", gpus=0, cpus=4) + queue(store, "a", gpus=0, cpus=1)
    store.update_account("a", cpus=2.0)  # an administrator lowered the limit after the submission
    life.admit()
    assert store.run(big).state is RunState.FAILED
    assert store.run(big).reason == ("it can never start: each run asks for 4 CPUs but account 'a' may hold "
                                     "at most 2 CPUs")
    assert store.run(small).state is RunState.PENDING


def test_a_disabled_accounts_runs_are_not_admitted(world):
    life, store, _ = world
    store.create_account(Account(name="a", gpu_quota=0, disabled=True), "h")
    [run_id] = queue(store, "a", gpus=0)
    life.admit()
    assert store.run(run_id).state is RunState.QUEUED


def test_operator_defaults_hold_for_accounts_without_limits_of_their_own(world, tmp_path):
    life, store, _ = world
    life.settings = Settings(home=tmp_path, account_slots=2)
    store.create_account(Account(name="a", gpu_quota=0), "h")
    store.create_account(Account(name="b", gpu_quota=0, slots=3), "h2")
    queue(store, "a", runs=4, gpus=0)
    queue(store, "b", runs=4, gpus=0)
    life.admit()
    started = [r.account for r in store.runs(states=[RunState.PENDING])]
    assert sorted(started) == ["a", "a", "b", "b"]  # 4 slots: a stops at its default 2
