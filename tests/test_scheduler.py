"""Admission decisions: quotas, capacity, FIFO within an account, fairness between accounts."""

from __future__ import annotations

from datetime import datetime, timezone

from wml_backend.executors import Capacity
from wml_backend.scheduler import Limits, plan_admissions
from wml_backend.rundb import RunRow

NOW = datetime.now(timezone.utc)


def run(seq: int, account: str, gpus: int = 1, state: str = "QUEUED", gpu_ids=(), learners: int = 1,
        cpus: float = 1.0, memory_bytes=None) -> RunRow:
    return RunRow(id=f"r{seq}", experiment_id="e", account=account, name="n", state=state, gpus=gpus,
                  learners=learners, created=NOW, seq=seq, gpu_ids=list(gpu_ids), cpus=cpus,
                  memory_bytes=memory_bytes)


def quotas(**gpus: int) -> dict[str, Limits]:
    """Limits of GPUs only, by account."""
    return {account: Limits(gpus=n) for account, n in gpus.items()}


def admitted(plan) -> list[tuple[str, tuple[int, ...]]]:
    return [(a.run.id, a.gpu_ids) for a in plan]


def test_quota_limits_an_account_and_gpus_are_never_shared():
    queued = [run(1, "a"), run(2, "a"), run(3, "a")]
    plan = plan_admissions(queued, [], quotas(a=2), Capacity(gpu_ids=(0, 1, 2, 3), slots=8))
    assert admitted(plan) == [("r1", (0,)), ("r2", (1,))]


def test_busy_gpus_are_skipped():
    active = [run(9, "a", state="PROCESSING", gpu_ids=(0,))]
    plan = plan_admissions([run(1, "b")], active, quotas(a=4, b=4), Capacity(gpu_ids=(0, 1), slots=4))
    assert admitted(plan) == [("r1", (1,))]


def test_fifo_within_an_account_a_big_head_blocks_its_followers():
    queued = [run(1, "a", gpus=2), run(2, "a", gpus=1)]
    active = [run(9, "a", state="PROCESSING", gpu_ids=(0,))]
    plan = plan_admissions(queued, active, quotas(a=2), Capacity(gpu_ids=(0, 1, 2), slots=4))
    assert admitted(plan) == []


def test_accounts_take_turns():
    queued = [run(1, "a"), run(2, "a"), run(3, "a"), run(4, "b"), run(5, "b")]
    plan = plan_admissions(queued, [], quotas(a=4, b=4), Capacity(gpu_ids=(0, 1, 2, 3), slots=4))
    assert [a.run.account for a in plan] == ["a", "b", "a", "b"]


def test_slots_bound_runs_without_gpus():
    queued = [run(i, "a", gpus=0) for i in range(1, 6)]
    plan = plan_admissions(queued, [], quotas(a=1), Capacity(gpu_ids=(0,), slots=3))
    assert [a.run.id for a in plan] == ["r1", "r2", "r3"]


def test_a_multi_learner_run_is_admitted_whole_or_not_at_all():
    queued = [run(1, "a", gpus=1, learners=2), run(2, "b", gpus=1)]
    active = [run(9, "c", state="PROCESSING", gpu_ids=(0,))]
    plan = plan_admissions(queued, active, quotas(a=2, b=1, c=1), Capacity(gpu_ids=(0, 1), slots=4))
    assert admitted(plan) == [], "the 2-learner run must not take one GPU and wait for the other"


# -- fair use: CPU-only runs count, per-account limits ---------------------------------------------
def test_an_account_without_gpus_cannot_keep_a_gpu_account_waiting():
    """A 0-GPU account's CPU-only runs held a share of 0 of its quota, so with older runs it won
    every free slot for ever; now each run counts against the slots."""
    cpu_only = [run(i, "cpu", gpus=0) for i in range(1, 40)]
    active = [run(100 + i, "cpu", gpus=0, state="PROCESSING") for i in range(3)]
    plan = plan_admissions([*cpu_only, run(50, "gpu")], active, quotas(cpu=0, gpu=1),
                           Capacity(gpu_ids=(0,), slots=4))
    assert admitted(plan) == [("r50", (0,))]


def test_accounts_without_gpus_share_the_slots():
    queued = [run(i, "a", gpus=0) for i in range(1, 10)] + [run(i, "b", gpus=0) for i in range(10, 20)]
    plan = plan_admissions(queued, [], quotas(a=0, b=0), Capacity(gpu_ids=(), slots=4))
    assert [a.run.account for a in plan] == ["a", "b", "a", "b"]


def test_an_account_holds_at_most_its_slots():
    queued = [run(i, "a", gpus=0) for i in range(1, 6)]
    plan = plan_admissions(queued, [run(9, "a", gpus=0, state="PROCESSING")], {"a": Limits(gpus=0, slots=2)},
                           Capacity(gpu_ids=(), slots=8))
    assert [a.run.id for a in plan] == ["r1"]


def test_cpus_and_memory_are_summed_over_learners_and_runs():
    queued = [run(1, "a", gpus=0, cpus=2, learners=2), run(2, "a", gpus=0, cpus=2), run(3, "b", gpus=0, memory_bytes=3),
              run(4, "b", gpus=0, memory_bytes=3)]
    limits = {"a": Limits(gpus=0, cpus=5), "b": Limits(gpus=0, memory_bytes=5)}
    plan = plan_admissions(queued, [], limits, Capacity(gpu_ids=(), slots=8))
    assert sorted(a.run.id for a in plan) == ["r1", "r3"], "r2 would make 6 CPUs, r4 6 bytes"


def test_an_account_without_limits_is_not_admitted():
    """A disabled account is left out of the limits: none of its runs start."""
    plan = plan_admissions([run(1, "gone", gpus=0), run(2, "a", gpus=0)], [], quotas(a=0),
                           Capacity(gpu_ids=(), slots=4))
    assert [a.run.id for a in plan] == ["r2"]


def test_where_the_cluster_holds_the_gpu_quotas_runs_are_handed_over_as_slots_allow():
    """Kueue (``counts_gpus`` False): a 1-GPU account's second run goes to the cluster too, to wait
    in Kueue's queue; run slots still bound what is handed over, and no GPU ids are handed out."""
    queued = [run(1, "a"), run(2, "a"), run(3, "a")]
    active = [run(9, "a", state="PROCESSING")]
    kueue = Capacity(gpu_ids=(0,), slots=3, counts_gpus=False)
    assert admitted(plan_admissions(queued, active, quotas(a=1), kueue)) == [("r1", ()), ("r2", ())]
    assert admitted(plan_admissions(queued, active, quotas(a=1), Capacity(gpu_ids=(0,), slots=3))) == []
