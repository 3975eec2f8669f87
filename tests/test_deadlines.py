"""A runner asked to stop has a grace to exit; past it, the leader kills it and ends the run as
asked. The deadline is stored with the run, so it holds whichever replica set it and whichever
leads (issue #16: timers lived in one process's memory and died with it).

Two replicas (local executor) on one PostgreSQL. A run's runner is frozen (SIGSTOP: it hears no
SIGTERM, as a runner hung on a dead mount or a stuck upload), the run is cancelled, and the
replica that took the cancel, or the leader, is killed with SIGKILL before the grace is over.
"""

from __future__ import annotations

import json
import signal
import time

import httpx
import psutil
import pytest
from pgserver import postgres_server  # noqa: F401 (fixture)

from ha_campaign import write_sweep
from ha_cluster import Cluster
from wml_backend.executors.base import CANCEL_GRACE_S
from wml_backend.executors.local import runner_notes

#: Seconds after the grace within which the leader's pass (every second) ends the run.
SLACK_S = 4.0


@pytest.fixture(scope="module")
def cluster(postgres_server, tmp_path_factory):  # noqa: F811
    found = Cluster(tmp_path_factory.mktemp("deadlines"), postgres_server.dsn(), count=2, gpus=2).start()
    yield found
    found.close()


def _frozen_run(cluster: Cluster, folder) -> tuple[str, psutil.Process]:
    """A long run, PROCESSING, whose runner is stopped (SIGSTOP); its id and runner."""
    manifest, model = write_sweep(folder, runs=1, steps=600, sleep=0.1)
    experiment = cluster.cli_json("train", str(manifest), str(model))["id"]
    run_id = f"{experiment}-01"
    deadline = time.monotonic() + 60
    while (run := cluster.cli_json("show", run_id))["state"] != "PROCESSING":
        assert time.monotonic() < deadline, f"{run_id} did not start: {run['state']}"
        time.sleep(0.2)
    runner = _runner_of(cluster, run_id)
    runner.send_signal(signal.SIGSTOP)
    return run_id, runner


def _runner_of(cluster: Cluster, run_id: str) -> psutil.Process:
    """The runner process of ``run_id``, from the note the local executor of its replica keeps."""
    [note] = [n for r in cluster.replicas for n in runner_notes(r.home / "backend" / "runs").glob(f"{run_id}.json")]
    return psutil.Process(json.loads(note.read_text())["pid"])


def _cancel(cluster: Cluster, n: int, run_id: str) -> float:
    """Cancel the run through replica ``n``; when (monotonic)."""
    answer = httpx.post(f"{cluster.replicas[n].url}/v1/runs/{run_id}/cancel",
                        headers={"Authorization": f"Bearer {cluster.token}"}, timeout=10)
    assert answer.status_code == 200, answer.text
    return time.monotonic()


def _ended(cluster: Cluster, run_id: str, runner: psutil.Process, by: float) -> dict:
    """The run once it ended, which must be by ``by`` (monotonic), its runner gone with it."""
    while (run := cluster.cli_json("show", run_id))["state"] not in ("HALTED", "FAILED", "COMPLETED"):
        assert time.monotonic() < by, f"{run_id} is still {run['state']}: its runner was never killed"
        time.sleep(0.2)
    assert not runner.is_running() or runner.status() == psutil.STATUS_ZOMBIE, "its runner lives on"
    return run


def test_the_leader_kills_a_runner_whose_stop_was_asked_of_a_replica_that_died(cluster, tmp_path):
    run_id, runner = _frozen_run(cluster, tmp_path)
    follower = 1 - cluster.wait_leader()
    asked = _cancel(cluster, follower, run_id)
    cluster.kill(follower)  # with the grace it was keeping
    try:
        run = _ended(cluster, run_id, runner, by=asked + CANCEL_GRACE_S + SLACK_S)
        assert (run["state"], run["reason"]) == ("HALTED", "cancelled by the user")
    finally:
        cluster.restart(follower)


def test_a_new_leader_keeps_the_deadline_its_predecessor_gave(cluster, tmp_path):
    run_id, runner = _frozen_run(cluster, tmp_path)
    leader = cluster.wait_leader()
    asked = _cancel(cluster, leader, run_id)
    time.sleep(CANCEL_GRACE_S * 0.7)
    cluster.kill(leader)  # near the end of the grace: a new one would end it a whole grace after the takeover
    try:
        cluster.wait_leader(other_than=leader)
        run = _ended(cluster, run_id, runner, by=asked + CANCEL_GRACE_S + SLACK_S)
        assert run["state"] == "HALTED"
    finally:
        cluster.restart(leader)
