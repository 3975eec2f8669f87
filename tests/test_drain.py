"""``wml backend stop --drain`` on the local executor (issue 14, item 4): the runs are stopped as
disruptions, not cancelled: their runners get SIGTERM and store their checkpoints, the runs go
back to QUEUED as preempted (not a retry), and resume from the checkpoint at the next start."""

from __future__ import annotations

import time
from datetime import datetime

from resuming import drain, resuming_run


def test_stop_drain_queues_the_runs_again_and_they_resume_at_the_next_start(backend, tmp_path):
    run_id = resuming_run(backend, tmp_path, steps=40, sleep=0.5)
    deadline = time.monotonic() + 60
    while backend.cli_json("show", run_id)["metrics"].get("step", 0) < 3:
        assert time.monotonic() < deadline, backend.cli_json("show", run_id)
        time.sleep(0.1)
    drain(backend)  # it exits by itself, once the runs are queued again
    drained_at = time.time()
    backend.start()
    deadline = time.monotonic() + 120
    while (run := backend.cli_json("show", run_id))["state"] not in ("COMPLETED", "FAILED", "HALTED"):
        assert time.monotonic() < deadline, run
        time.sleep(0.2)
    assert run["state"] == "COMPLETED" and run["attempt"] == 2 and run["preemptions"] == 1, run
    assert run["preempted"].startswith("preempted: the backend was stopped with --drain; resumed at step"), run
    states = [(t["state"], t["attempt"]) for t in run["transitions"]]
    assert "HALTED" not in [s for s, _ in states] and states.count(("QUEUED", 2)) == 1, states
    requeued = next(t for t in run["transitions"] if (t["state"], t["attempt"]) == ("QUEUED", 2))
    assert datetime.fromisoformat(requeued["time"]).timestamp() <= drained_at  # before the backend exited
    log = backend.cli("logs", run_id, check=True).stdout
    first, resumed = (int(part.split()[0]) for part in log.split("starting at step ")[1:])  # both attempts'
    assert first == 1 and 3 <= resumed <= 40, log
    assert run["metrics"]["step"] == 40
