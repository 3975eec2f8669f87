"""Queue truth: what a queued run waits for, when it should start, and the quota as admission
counts it, against a real backend and real runs (``wml_backend.outlook``)."""

from __future__ import annotations

import subprocess
import time

from test_cli_e2e import definition, submit


def account(backend, name: str, *update: str) -> str:
    """A new 1-GPU account's token (its limits changed by ``wml accounts update NAME *update``)."""
    token = backend.cli("accounts", "create", name, "--gpus", "1", check=True).stdout.strip().splitlines()[-1]
    if update:
        backend.cli("accounts", "update", name, *update, check=True)
    return token


def until(check, timeout: float = 60.0, every: float = 0.2):
    """Poll ``check()`` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"not true within {timeout} s")


def test_queued_runs_say_they_wait_for_a_gpu_and_when_they_start(backend, tmp_path):
    token = account(backend, "gwen")
    client = backend.client(token)
    exp_id = submit(backend, definition(tmp_path, hyperparameters={"lr": [0.1, 0.2, 0.3], "steps": [4],
                                                                   "sleep": [1.0]}), token=token)
    runs = until(lambda: (lambda rs: rs if sum(r.state.value != "QUEUED" for r in rs) == 1 else None)(
        [r.model for r in client.runs(experiment=exp_id)]))
    queued = [r for r in runs if r.state.value == "QUEUED"]
    # the backend has 2 GPU slots and no GPU: the account's quota of 1 is what holds them back
    assert [(r.queue_position, r.queued_reason) for r in queued] == [
        (1, "a GPU slot: 1 of 1 in use"), (2, "a GPU slot: 1 of 1 in use")]
    assert all(r.eta_seconds is None for r in queued), "no run has ended: nothing to estimate from"
    usage = client.usage()
    assert (usage.real_gpus, usage.gpus_in_use, usage.gpu_quota, usage.runs_in_use, usage.queued_runs,
            usage.waiting_for) == (False, 1, 1, 1, 2, "a GPU slot: 1 of 1 in use")
    assert "GPU slots 1 / 1 in use · run slots 1 / 2 · 2 queued (waiting for a GPU slot: 1 of 1 in use)" in \
        backend.cli("usage", token=token).stdout

    # once a run has ended, the queue is played forward from how long it took
    last = until(lambda: (lambda r: r if r.state.value == "QUEUED" and r.eta_seconds is not None else None)(
        client.run(queued[1].id).model))
    first = client.run(runs[0].id).model
    took = (first.transitions[-1].time - next(t.time for t in first.transitions if t.state.value == "PENDING"))
    assert first.state.value == "COMPLETED"
    assert 0.5 * took.total_seconds() < last.eta_seconds <= took.total_seconds() + 1, (last.eta_seconds, took)
    experiment = client.experiment(exp_id).model
    assert experiment.eta_seconds is not None and experiment.eta_seconds >= last.eta_seconds + took.total_seconds() - 1
    ended = backend.wait_experiment(exp_id, token=token)
    assert ended["eta_seconds"] is None
    assert all(r.queued_reason is None for r in client.runs(experiment=exp_id))


def test_a_run_waiting_for_a_run_slot_says_so(backend, tmp_path):
    token = account(backend, "sam", "--slots", "1")
    client = backend.client(token)
    exp_id = submit(backend, definition(tmp_path, gpus=0, hyperparameters={"lr": [0.1, 0.2], "steps": [4],
                                                                          "sleep": [1.0]}), token=token)
    # once the first run holds the slot (before its admission, the second waits behind a head that fits)
    until(lambda: client.run(f"{exp_id}-01").model.state.value != "QUEUED")
    second = client.run(f"{exp_id}-02").model
    usage = client.usage()
    assert second.state.value == "QUEUED" and second.queued_reason == "a run slot: 1 of 1 busy"
    assert (usage.run_slots, usage.runs_in_use, usage.queued_runs) == (1, 1, 1)
    backend.wait_experiment(exp_id, token=token)


def test_logs_of_a_queued_run_say_why_it_waits_then_follow_its_log(backend, tmp_path):
    token = account(backend, "lou")
    exp_id = submit(backend, definition(tmp_path, hyperparameters={"lr": [0.1, 0.2], "steps": [5],
                                                                   "sleep": [0.3]}), token=token)
    env = {**backend.env, "WML_TOKEN": token}
    logs = subprocess.run(backend.cli_args("logs", f"{exp_id}-02"), env=env, capture_output=True, text=True,
                          timeout=120)
    assert logs.returncode == 0, logs.stderr
    waited = logs.stderr.strip().splitlines()
    assert waited and waited[0].startswith(f"{exp_id}-02 #1 in the queue · waits for a GPU slot: 1 of 1 in use"), waited
    assert "tiny training with lr=0.2" in logs.stdout and "step 5" in logs.stdout, "the real log, followed to its end"
