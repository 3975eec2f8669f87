"""Restart safety: kill -9 of the backend mid-sweep or mid-stop loses, duplicates and changes nothing."""

from __future__ import annotations

import time

import pytest
from test_cli_e2e import TINY, active_spans, definition, submit
from wml_backend.rundb import SqliteRunStore
from wml_core.states import RunState

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


# -- a stop decided before a restart ---------------------------------------------------------
#: Training code whose good runs (lr >= 0.5) end after one step and whose bad ones train on
#: until stopped; asked to stop (its next ``run.log`` ends it, or SIGTERM), it says so in its log and
#: goes on, as a command that saves a long checkpoint would, until the runner kills it.
SLOW_TO_STOP = """
import signal, time
from wml_jupyter import run
hp = run.hparams()
signal.signal(signal.SIGTERM, lambda *_: print("asked to stop", flush=True))
try:
    for step in range(1, 2 if hp["lr"] >= 0.5 else 600):
        run.log(step=step, acc=hp["lr"] * step)
        time.sleep(0.1)
except SystemExit:
    print("asked to stop", flush=True)
    time.sleep(600)
    raise
"""


def slow_to_stop(backend, tmp_path, lrs: list[float], **manifest) -> tuple[str, str]:
    """Submit ``SLOW_TO_STOP`` with ``lrs`` as a grid, for an account of 1 GPU: one run at a time.

    Returns the experiment's id and the account's token."""
    code = tmp_path / "slow-to-stop"
    code.mkdir()
    (code / "train.py").write_text(SLOW_TO_STOP)
    token = backend.cli("accounts", "create", "serial", "--gpus", "1", check=True).stdout.strip().splitlines()[-1]
    path = definition(tmp_path, hyperparameters={"lr": lrs}, **manifest)
    result = backend.cli("train", str(path), str(code), token=token, check=True)
    return result.stdout.strip().splitlines()[-1], token


def told_to_stop(backend, run_id: str) -> bool:
    """Whether the run's command was asked to stop: its log on this host says so."""
    log = backend.home / "backend" / "runs" / run_id / "learner-1" / "training-log.txt"
    return log.exists() and "asked to stop" in log.read_text()


def wait_until_told_to_stop(backend, run_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not told_to_stop(backend, run_id):
        assert time.monotonic() < deadline, f"{run_id} was not asked to stop in {timeout} s"
        time.sleep(0.02)


ASHA = {"search": {"algorithm": "grid", "metric": "acc", "mode": "max",
                   "early_stopping": {"type": "asha", "min_steps": 1, "reduction_factor": 3}}}


@pytest.mark.parametrize("decider, state, reason", [
    ("asha", "STOPPED", "stopped by ASHA at step 1: acc 0.1 is below the cut-off 0.9 of the 2 runs that reached it"),
    ("user", "HALTED", "cancelled by the user"),
])
def test_a_backend_killed_mid_stop_ends_the_run_as_decided(backend, tmp_path, decider, state, reason):
    exp_id, token = slow_to_stop(backend, tmp_path, [0.9, 0.1] if decider == "asha" else [0.1], **ASHA)
    run_id = f"{exp_id}-{'02' if decider == 'asha' else '01'}"
    if decider == "user":
        backend.wait_state(run_id, "PROCESSING", token=token)
        backend.cli("cancel", run_id, token=token, check=True)
    wait_until_told_to_stop(backend, run_id)  # decided, and its runner told: it ends within a second
    backend.kill()
    backend.start()
    run = backend.wait_state(run_id, state, token=token)
    assert run["reason"] == reason
    assert backend.wait_experiment(exp_id, token=token)["runs"] == (
        {"COMPLETED": 1, "STOPPED": 1} if decider == "asha" else {"HALTED": 1})


def test_a_stop_recorded_but_never_told_is_told_after_a_restart(backend, tmp_path):
    exp_id, token = slow_to_stop(backend, tmp_path, [0.1])
    run_id = f"{exp_id}-01"
    backend.wait_state(run_id, "PROCESSING", token=token)
    backend.kill()  # as if it died between recording a stop and telling the executor:
    store = SqliteRunStore(backend.home / "backend" / "wml.db")
    assert store.request_stop(run_id, RunState.STOPPED, "stopped by ASHA at step 1: planted")
    store.close()
    assert not told_to_stop(backend, run_id)
    backend.start()
    wait_until_told_to_stop(backend, run_id)
    run = backend.wait_state(run_id, "STOPPED", token=token)
    assert run["reason"] == "stopped by ASHA at step 1: planted"
