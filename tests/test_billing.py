"""GPU time: gpus × (leaving the active states − entering PENDING), per attempt."""

from datetime import datetime, timezone

import pytest

from wml_core.billing import gpu_seconds, run_gpu_seconds
from wml_core.models import Run, Transition


def at(*pairs):
    return [Transition(state=s, time=datetime.fromtimestamp(t, timezone.utc)) for s, t in pairs]


def test_billed_from_pending_to_the_end_of_storing():
    run = at(("QUEUED", 0), ("PENDING", 10), ("DOWNLOADING", 11), ("PROCESSING", 12), ("STORING", 50),
             ("COMPLETED", 53))
    assert gpu_seconds(run, gpus=2) == pytest.approx(86)


def test_every_attempt_counts():
    run = at(("QUEUED", 0), ("PENDING", 1), ("PROCESSING", 2), ("STORING", 5), ("QUEUED", 6),
             ("PENDING", 10), ("PROCESSING", 11), ("STORING", 20), ("COMPLETED", 21))
    assert gpu_seconds(run, gpus=1) == pytest.approx(5 + 11)


def test_a_start_lost_in_a_backend_crash_is_not_billed():
    run = at(("QUEUED", 0), ("PENDING", 1), ("QUEUED", 4), ("PENDING", 5), ("PROCESSING", 6),
             ("STORING", 8), ("COMPLETED", 9))
    assert gpu_seconds(run, gpus=1) == pytest.approx(4)


def test_a_running_run_is_billed_until_now():
    run = at(("QUEUED", 0), ("PENDING", 1), ("PROCESSING", 2))
    assert gpu_seconds(run, gpus=3, now=11) == pytest.approx(30)



def test_a_wait_for_the_cluster_to_bind_gpus_is_not_billed():
    """Kueue holding the Job, or no node free for its pod: the run waits, and pays nothing for it."""
    processing = Run(id="r-01", experiment_id="r", account="a", name="r", state="PROCESSING", gpus=2,
                     created=datetime.fromtimestamp(0, timezone.utc), gpu_wait_seconds=25,
                     transitions=at(("QUEUED", 0), ("PENDING", 10), ("PROCESSING", 40)))
    assert run_gpu_seconds(processing, now=100) == pytest.approx(2 * (90 - 25))
    waiting = processing.model_copy(update={
        "state": "PENDING", "transitions": at(("QUEUED", 0), ("PENDING", 10)), "gpu_wait_seconds": 0,
        "waiting_since": datetime.fromtimestamp(10, timezone.utc)})
    assert run_gpu_seconds(waiting, now=100) == 0
