"""Races and leftovers (issue 13, item 7): a cancel while a run's start is in flight, and the
runners of runs that ended while no backend watched them.

Before: a cancel that came while ``Executor.start`` was in flight found no handle to stop; the
run was marked HALTED after the grace, and its runner (a process, a Job) trained on, untracked
and outside the quota. And a backend that started again never looked for runners of runs that
had ended meanwhile: they trained on too.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterator

import psutil
import pytest
from backend_process import BackendProcess, free_port
from executor_worlds import RunnerBackend, runner_backend
from s3server import ANY_KEY, ANY_SECRET, running_moto
from test_cli_e2e import TINY, definition, submit
from wml_backend.eventbus import EventBus
from wml_backend.executors.base import Launch
from wml_backend.executors.local import LocalExecutor, runner_notes
from wml_backend.lifecycle import Lifecycle
from wml_backend.rundb import SqliteRunStore
from wml_core.states import RunState

#: Seconds within which a runner that was told to stop, or killed, is gone.
GONE_S = 10.0


@pytest.fixture
def runners(tmp_path, monkeypatch) -> Iterator[RunnerBackend]:
    """A backend that serves runners but admits nothing: the test's own lifecycle admits."""
    for name, value in {"AWS_ACCESS_KEY_ID": ANY_KEY, "AWS_SECRET_ACCESS_KEY": ANY_SECRET,
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)  # the runners store their results with these
    with running_moto() as s3, runner_backend(tmp_path / "home", s3) as backend:
        yield backend


class SlowStart(LocalExecutor):
    """The local executor, whose ``start`` returns ``hold_s`` after its runner started (as a
    Kubernetes API server that is slow to answer after it created the Job)."""

    def __init__(self, work_dir: Path, hold_s: float, grace_s: float):
        super().__init__(work_dir, gpus=2, slots=3)
        self.hold_s, self.cancel_grace_s = hold_s, grace_s
        self.in_flight = threading.Event()
        self.handles: list[dict[str, Any]] = []

    def start(self, launch: Launch) -> dict[str, Any]:
        handle = super().start(launch)
        self.handles.append(handle)
        self.in_flight.set()
        time.sleep(self.hold_s)
        return handle


@contextmanager
def hung_backend() -> Iterator[str]:
    """The URL of a backend that takes connections and never answers: a runner told to report
    there waits, deaf to what its run became (as code that ignores its runner's protocol would)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


def gone(pid: int, within: float = GONE_S) -> bool:
    """Whether process ``pid`` has ended (or is a zombie) within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("hold_s, grace_s, deaf", [(3.0, 0.5, True), (0.5, 60.0, False)],
                         ids=["a-deaf-runner-whose-start-outlasts-the-grace", "the-start-returns-within-the-grace"])
def test_a_cancel_while_the_start_is_in_flight_stops_the_run_once_the_start_returns(runners, tmp_path, hold_s,
                                                                                    grace_s, deaf):
    with hung_backend() as hung:
        cancel_while_starting(runners, tmp_path, SlowStart(tmp_path / "runs", hold_s, grace_s), hung if deaf else None)


def cancel_while_starting(runners: RunnerBackend, tmp_path: Path, executor: SlowStart, runner_url=None) -> None:
    """Cancel a run while ``executor`` starts it; its runner must be gone soon after the start
    returned, and the run HALTED. ``runner_url``: where its runner reports (else ``runners``)."""
    settings = runners.settings(public_url=runner_url or runners.url)
    lifecycle = Lifecycle(settings, runners.store, executor, EventBus(runners.store))
    run = runners.submit(definition(tmp_path, hyperparameters={"lr": [0.3], "steps": [600], "sleep": [0.1]}), TINY)
    admitting = threading.Thread(target=lifecycle.admit)
    admitting.start()
    assert executor.in_flight.wait(30), "the run was not started"
    lifecycle.cancel(runners.store.run(run.id))  # while its start is in flight: no handle yet
    admitting.join(60)
    try:
        assert gone(executor.handles[0]["pid"]), "the cancelled run's runner trains on"
        ended = runners.wait(run.id, lambda r: r.state.terminal)
        assert (ended.state, ended.reason) == (RunState.HALTED, "cancelled by the user")
    finally:
        executor.kill(run.id, executor.handles[0])
        executor.close()


def start_elsewhere(backend: BackendProcess) -> None:
    """Start a killed backend again on another port: the runners it left report to a backend that
    is gone, and wait for it (deaf, as code that ignores its runner's protocol would be)."""
    backend.port = free_port()
    backend.url = backend.env["WML_BACKEND"] = f"http://127.0.0.1:{backend.port}"
    backend.start()


def test_runners_of_runs_that_ended_while_the_backend_was_down_are_killed_at_startup(backend, tmp_path):
    exp_id = submit(backend, definition(tmp_path, hyperparameters={"lr": [0.1], "steps": [600], "sleep": [0.1]}))
    run_id = f"{exp_id}-01"
    backend.wait_state(run_id, "PROCESSING")
    backend.kill()
    note = runner_notes(backend.home / "backend" / "runs") / f"{run_id}.json"
    runner = psutil.Process(json.loads(note.read_text())["pid"])
    family = [runner, *runner.children(recursive=True)]
    assert len(family) > 1, "the runner and its command outlive the backend"
    store = SqliteRunStore(backend.home / "backend" / "wml.db")
    store.transition(run_id, RunState.HALTED, time.time(), reason="ended while the backend was down")
    store.close()
    start_elsewhere(backend)
    for process in family:
        assert gone(process.pid), f"{process.pid} of the ended run {run_id} runs on"
    assert not note.exists(), "the note of a killed runner is kept"
    run = backend.cli_json("show", run_id)
    assert (run["state"], run["reason"]) == ("HALTED", "ended while the backend was down")


def test_a_recorded_start_whose_runner_is_gone_before_it_reported_is_queued_again(runners, tmp_path):
    """A leader that died between recording a start and handing its runner the launch leaves a
    PENDING run whose runner (an idle one, which exits with its leader) is gone having run nothing:
    the next leader queues it again rather than failing it. One gone after it reported fails."""
    never_ran, reported = (runners.submit(definition(tmp_path, hyperparameters={"lr": [0.1]}), TINY) for _ in range(2))
    dead = subprocess.Popen(["true"])
    dead.wait()
    handle = {"pid": dead.pid, "create_time": time.time(), "attempt": 1}
    for run, states in ((never_ran, [RunState.PENDING]), (reported, [RunState.PENDING, RunState.DOWNLOADING])):
        for state in states:
            runners.store.transition(run.id, state, time.time(), attempt=1, gpu_ids=[0], runner_token_hash="gone")
        runners.store.update_run(run.id, handle=handle)
    executor = LocalExecutor(tmp_path / "runs", gpus=2, slots=2, warm={})
    try:
        Lifecycle(runners.settings(), runners.store, executor, EventBus(runners.store)).recover()
    finally:
        executor.close()
    again = runners.store.run(never_ran.id)
    assert (again.state, again.reason) == (RunState.QUEUED, "requeued after a backend restart")
    assert runners.store.run(reported.id).state is RunState.FAILED
