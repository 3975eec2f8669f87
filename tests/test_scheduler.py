"""Admission decisions: quotas, capacity, FIFO within an account, fairness between accounts."""

from __future__ import annotations

from datetime import datetime, timezone

from wml_backend.executors import Capacity
from wml_backend.scheduler import plan_admissions
from wml_backend.store import RunRow

NOW = datetime.now(timezone.utc)


def run(seq: int, account: str, gpus: int = 1, state: str = "QUEUED", gpu_ids=(), learners: int = 1) -> RunRow:
    return RunRow(id=f"r{seq}", experiment_id="e", account=account, name="n", state=state, gpus=gpus,
                  learners=learners, created=NOW, seq=seq, gpu_ids=list(gpu_ids))


def admitted(plan) -> list[tuple[str, tuple[int, ...]]]:
    return [(a.run.id, a.gpu_ids) for a in plan]


def test_quota_limits_an_account_and_gpus_are_never_shared():
    queued = [run(1, "a"), run(2, "a"), run(3, "a")]
    plan = plan_admissions(queued, [], {"a": 2}, Capacity(gpu_ids=(0, 1, 2, 3), slots=8))
    assert admitted(plan) == [("r1", (0,)), ("r2", (1,))]


def test_busy_gpus_are_skipped():
    active = [run(9, "a", state="PROCESSING", gpu_ids=(0,))]
    plan = plan_admissions([run(1, "b")], active, {"a": 4, "b": 4}, Capacity(gpu_ids=(0, 1), slots=4))
    assert admitted(plan) == [("r1", (1,))]


def test_fifo_within_an_account_a_big_head_blocks_its_followers():
    queued = [run(1, "a", gpus=2), run(2, "a", gpus=1)]
    active = [run(9, "a", state="PROCESSING", gpu_ids=(0,))]
    plan = plan_admissions(queued, active, {"a": 2}, Capacity(gpu_ids=(0, 1, 2), slots=4))
    assert admitted(plan) == []


def test_accounts_take_turns():
    queued = [run(1, "a"), run(2, "a"), run(3, "a"), run(4, "b"), run(5, "b")]
    plan = plan_admissions(queued, [], {"a": 4, "b": 4}, Capacity(gpu_ids=(0, 1, 2, 3), slots=4))
    assert [a.run.account for a in plan] == ["a", "b", "a", "b"]


def test_slots_bound_runs_without_gpus():
    queued = [run(i, "a", gpus=0) for i in range(1, 6)]
    plan = plan_admissions(queued, [], {"a": 1}, Capacity(gpu_ids=(0,), slots=3))
    assert [a.run.id for a in plan] == ["r1", "r2", "r3"]


def test_a_multi_learner_run_is_admitted_whole_or_not_at_all():
    queued = [run(1, "a", gpus=1, learners=2), run(2, "b", gpus=1)]
    active = [run(9, "c", state="PROCESSING", gpu_ids=(0,))]
    plan = plan_admissions(queued, active, {"a": 2, "b": 1, "c": 1}, Capacity(gpu_ids=(0, 1), slots=4))
    assert admitted(plan) == [], "the 2-learner run must not take one GPU and wait for the other"
