"""Admission from the heads of the queues decides exactly what admission from the whole queue did.

The scheduler reads only the first runs of each account's queue (``plan_from_heads``), so that a
pass costs the same however long the queue; these tests hold its plans to the plans the whole
queue gives, on random queues, limits and running runs stored in a real run store.
"""

from __future__ import annotations

import random
from datetime import datetime, timezone

import pytest

from wml_core.states import RunState
from wml_backend.executors import Capacity
from wml_backend.rundb import ExperimentRow, RunRow, SqliteRunStore
from wml_backend.scheduler import Limits, plan_admissions, plan_from_heads

T0 = 1_700_000_000.0


def _fill(store: SqliteRunStore, rng: random.Random, accounts: list[str], runs: int) -> None:
    """Queue ``runs`` runs of random sizes across ``accounts``, a few experiments each."""
    for e in range(runs // 10):
        account = rng.choice(accounts)
        rows = [RunRow(id=f"e{e}-{n}", experiment_id=f"e{e}", account=account, name=f"r{n}",
                       state=RunState.QUEUED, gpus=rng.choice([0, 1, 1, 2]), learners=rng.choice([1, 1, 2]),
                       cpus=rng.choice([0.5, 1.0, 2.0]), created=datetime.fromtimestamp(T0 + e, timezone.utc))
                for n in range(10)]
        store.insert_experiment(ExperimentRow(id=f"e{e}", account=account, name=f"e{e}", created=T0 + e,
                                              definition={"name": "x", "framework": "custom", "command": "true"}),
                                rows, b"PK", None)


def _start_some(store: SqliteRunStore, rng: random.Random, capacity: Capacity) -> None:
    """Start a random few queued runs on free GPUs, as earlier passes would have."""
    free = list(capacity.gpu_ids)
    for run in rng.sample(store.runs(states=[RunState.QUEUED], transitions="none"), rng.randint(0, capacity.slots)):
        need = run.gpus * run.learners
        if need <= len(free):
            gpu_ids, free = free[:need], free[need:]
            store.transition(run.id, RunState.PENDING, T0, gpu_ids=gpu_ids)
            store.transition(run.id, RunState.PROCESSING, T0)


def _ids(plan) -> list:
    return [(a.run.id, a.gpu_ids) for a in plan]


def _counting(store: SqliteRunStore, read: list[int]):
    """``store.queue_heads``, adding to ``read`` how many runs each call read."""
    def heads(wanted: dict[str, int]) -> dict[str, list[RunRow]]:
        found = store.queue_heads(wanted)
        read.append(sum(len(runs) for runs in found.values()))
        return found
    return heads


@pytest.mark.parametrize("seed", range(12))
def test_the_heads_of_the_queues_give_the_plan_the_whole_queue_gives(tmp_path, seed):
    rng = random.Random(seed)
    store = SqliteRunStore(tmp_path / "wml.db")
    accounts = [f"a{n}" for n in range(rng.randint(1, 6))]
    limits = {a: Limits(gpus=rng.randint(0, 6), slots=rng.choice([None, 1, 2, 5]),
                        cpus=rng.choice([None, 2.0, 8.0])) for a in accounts}
    capacity = Capacity(gpu_ids=tuple(range(rng.randint(1, 8))), slots=rng.randint(1, 12))
    _fill(store, rng, accounts, rng.randint(10, 30) * 10)
    _start_some(store, rng, capacity)
    active = store.runs(states=[RunState.PENDING, RunState.PROCESSING], transitions="none")
    whole = store.runs(states=[RunState.QUEUED], transitions="none")
    read: list[int] = []
    from_heads = plan_from_heads(_counting(store, read), active, limits, capacity)
    assert sum(read) < len(whole), "the plan read the whole queue: the test shows nothing"
    assert _ids(from_heads) == _ids(plan_admissions(whole, active, limits, capacity))
    store.close()


def test_accounts_still_take_turns_when_read_from_the_heads(tmp_path):
    store = SqliteRunStore(tmp_path / "wml.db")
    for account, first in (("a", 0), ("b", 100)):
        rows = [RunRow(id=f"{account}-{n}", experiment_id=account, account=account, name="r", state=RunState.QUEUED,
                       gpus=1, created=datetime.fromtimestamp(T0, timezone.utc)) for n in range(50)]
        store.insert_experiment(ExperimentRow(id=account, account=account, name=account, created=T0 + first,
                                              definition={"name": "x", "framework": "custom", "command": "true"}),
                                rows, b"PK", None)
    limits = {"a": Limits(gpus=4), "b": Limits(gpus=4)}
    capacity = Capacity(gpu_ids=(0, 1, 2, 3), slots=4)
    read: list[int] = []
    plan = plan_from_heads(_counting(store, read), [], limits, capacity)
    assert [a.run.id for a in plan] == ["a-0", "b-0", "a-1", "b-1"]
    assert max(read) <= 2 * len(plan), f"read {read} runs of the 100 queued for a plan of {len(plan)}"
    store.close()
