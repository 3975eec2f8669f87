"""Restart safety: kill -9 of the backend mid-sweep loses and duplicates nothing."""

from __future__ import annotations

import time

from test_cli_e2e import TINY, active_spans, definition, submit

TERMINAL = {"COMPLETED", "FAILED", "HALTED", "STOPPED"}


def test_kill_9_mid_sweep_then_restart(backend, tmp_path):
    exp_id = submit(backend, definition(tmp_path, hyperparameters={
        "lr": [0.1, 0.2, 0.3], "steps": [4, 5], "sleep": [0.2]}))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until some runs train and some still wait
        states = [r["state"] for r in backend.cli_json("list", "--experiment", exp_id)]
        if "PROCESSING" in states and "QUEUED" in states:
            break
        time.sleep(0.1)
    backend.kill()
    time.sleep(1.0)  # runs go on while the backend is down
    backend.start()
    exp = backend.wait_experiment(exp_id, timeout=120)
    runs = backend.cli_json("list", "--experiment", exp_id)
    assert len(runs) == 6 and exp["runs"] == {"COMPLETED": 6}, exp["runs"]
    for run in runs:
        states = [t["state"] for t in run["transitions"]]
        assert sum(s in TERMINAL for s in states) == 1, f"{run['id']} ended twice: {states}"
        assert len(active_spans(run)) == 1, f"{run['id']} ran twice: {states}"
        steps = [p["step"] for p in backend.cli_json("metrics", run["id"])]
        assert steps == list(range(1, run["hparams"]["steps"] + 1)), f"{run['id']} lost or doubled metrics"
    spans = sorted(s for r in runs for s in active_spans(r))
    for i, (start, _) in enumerate(spans):  # never more runs at once than the 2 GPU slots
        assert sum(1 for s, e in spans if s <= start < e) <= 2


def test_run_whose_process_died_while_backend_was_down_is_failed(backend, tmp_path):
    import psutil
    exp_id = submit(backend, definition(tmp_path, hyperparameters={"lr": [0.1], "steps": [200], "sleep": [0.1]}))
    run_id = f"{exp_id}-01"
    backend.wait_state(run_id, "PROCESSING")
    backend.kill()
    run_dir = str(backend.home / "backend" / "runs" / run_id)
    runner = [p for p in psutil.process_iter(["cwd"]) if p.info["cwd"] == run_dir]
    assert runner, "the runner should outlive the backend"
    for proc in runner[0].children(recursive=True) + runner:
        proc.kill()
    backend.start()
    run = backend.cli_json("show", run_id)
    assert run["state"] == "FAILED" and "lost" in run["reason"]
