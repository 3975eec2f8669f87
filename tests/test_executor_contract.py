"""The executor contract: every executor (local, Kubernetes) does the same when it is told to
start a run, when its runner exits 0 or 1, to cancel it, to kill it after the grace, after a
backend restart (a new executor over the same runs), and says its capacity.

Each test drives an executor directly, as the lifecycle does, in each world of
``executor_worlds.py``: the real runner runs and reports to a real backend process. That backend
ends a run once its own executor sees the runner exit, which it does not here: what a runner
reported shows as the run's ``reported_state``.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import pytest
from executor_worlds import GPUS, SLOTS, WORLDS, Exits, RunnerBackend, admit, runner_backend
from s3server import running_moto
from test_cli_e2e import TINY, definition
from wml_backend.executors.base import Executor
from wml_backend.rundb import RunRow
from wml_core.states import RunState

#: Seconds within which a runner asked to stop has stopped, were it going to.
STOP_S = 1.0


@pytest.fixture(scope="module")
def backend(tmp_path_factory) -> Iterator[RunnerBackend]:
    """The backend runners report to, for the whole module."""
    with running_moto() as s3, runner_backend(tmp_path_factory.mktemp("runner-backend") / "home", s3) as backend:
        yield backend


@pytest.fixture(params=sorted(WORLDS))
def world(request, tmp_path, monkeypatch, backend):
    with WORLDS[request.param](tmp_path, monkeypatch, backend) as world:
        yield world


@pytest.fixture
def executors(world, backend) -> Iterator[Callable[..., tuple[Executor, Exits]]]:
    """Make executors of the world (their runners reach the backend, or ``backend_url``), each
    with its exits recorded; all closed after the test."""
    made: list[Executor] = []

    def make(backend_url: Optional[str] = None) -> tuple[Executor, Exits]:
        exits = Exits()
        made.append(exits.wire(world.make(backend_url or backend.url)))
        return made[-1], exits
    yield make
    for executor in made:
        executor.close()


def tiny_run(backend: RunnerBackend, tmp_path: Path, steps: int = 2, sleep: float = 0.0) -> RunRow:
    """A QUEUED run of the tiny definition that trains ``steps`` steps of ``sleep`` seconds."""
    manifest = definition(tmp_path, hyperparameters={"lr": [0.3], "steps": [steps], "sleep": [sleep]})
    return backend.submit(manifest, TINY)


def reached(state: RunState) -> Callable[[RunRow], bool]:
    """Whether a run is in ``state`` or has gone past it."""
    order = list(RunState)
    return lambda run: order.index(run.state) >= order.index(state)


@contextmanager
def hung_backend() -> Iterator[tuple[str, Callable[[], None]]]:
    """A backend that takes connections and never answers: its URL, and a wait for a caller."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.settimeout(30)
        callers: list[socket.socket] = []
        yield f"http://127.0.0.1:{server.getsockname()[1]}", lambda: callers.append(server.accept()[0])
        for caller in callers:
            caller.close()


def test_start_gives_a_json_handle_of_the_attempt(backend, executors, tmp_path):
    executor, exits = executors()
    run = tiny_run(backend, tmp_path)
    _, handle = admit(backend, run, executor, attempt=2)
    assert json.loads(json.dumps(handle)) == handle and handle["attempt"] == 2
    assert exits.next() == (run.id, 2, 0)
    assert [t.attempt for t in backend.store.run(run.id).transitions][-1] == 2


def test_a_runner_that_exits_0_is_said_to_have_exited_0(backend, executors, tmp_path):
    executor, exits = executors()
    run = tiny_run(backend, tmp_path, steps=3)
    admit(backend, run, executor)
    assert exits.next() == (run.id, 1, 0)
    stored = backend.store.run(run.id)
    assert (stored.reported_state, stored.metrics["step"]) == (RunState.COMPLETED, 3)


def test_a_runner_that_exits_1_is_said_to_have_exited_1(backend, executors, tmp_path):
    executor, exits = executors()
    run = tiny_run(backend, tmp_path)
    admit(backend, run, executor, token="refused")  # its first call fails: it exits 1
    assert exits.next() == (run.id, 1, 1)
    stored = backend.store.run(run.id)
    assert (stored.state, stored.reported_state) == (RunState.PENDING, None)  # it reported nothing


def test_a_cancelled_runner_stores_what_it_has_and_halts(backend, executors, tmp_path):
    executor, exits = executors()
    run = tiny_run(backend, tmp_path, steps=600, sleep=0.1)
    _, handle = admit(backend, run, executor)
    backend.wait(run.id, reached(RunState.PROCESSING))
    executor.cancel(run.id, handle)
    assert exits.next()[:2] == (run.id, 1)
    stored = backend.store.run(run.id)
    assert (stored.reported_state, stored.reason) == (RunState.HALTED, "cancelled by the user")
    assert "learner-1/training-log.txt" in backend.results(stored)


def test_a_runner_that_ignores_cancel_is_killed_after_the_grace(backend, executors, tmp_path):
    run = tiny_run(backend, tmp_path)
    with hung_backend() as (url, called):
        executor, exits = executors(url)
        assert executor.cancel_grace_s > STOP_S
        _, handle = admit(backend, run, executor, backend_url=url)
        called()  # the runner is up (its SIGTERM handler is in place before its first call: wml_runner.main),
        # and waits for an answer that never comes
        executor.cancel(run.id, handle)
        assert exits.none_within(STOP_S), "a runner that waits for its backend goes on"
        executor.kill(run.id, handle)  # what the lifecycle does after cancel_grace_s
        assert exits.next(timeout=10)[:2] == (run.id, 1)


def test_a_new_executor_reattaches_to_a_run_and_says_when_it_ends(backend, executors, world, tmp_path):
    first, _ = executors()
    run = tiny_run(backend, tmp_path, steps=25, sleep=0.1)
    _, handle = admit(backend, run, first)
    backend.wait(run.id, reached(RunState.PROCESSING))
    first.close()  # the backend goes away; its runs go on
    again, exits = executors()
    assert again.reattach(run.id, handle)
    assert not again.reattach("lost-01", world.lost_handle(handle))
    assert exits.next()[:2] == (run.id, 1)
    assert backend.store.run(run.id).reported_state is RunState.COMPLETED


def test_capacity_is_what_the_executor_was_given(executors):
    executor, _ = executors()
    capacity = executor.capacity()
    assert (capacity.gpu_ids, capacity.slots) == (tuple(range(GPUS)), SLOTS)


def test_an_account_synced_with_the_executor_runs_within_the_backends_own_quota(backend, executors, tmp_path):
    """``sync_account`` (after ``wml accounts create/update``) holds nothing here: with no Kueue,
    the backend alone counts GPUs, and a started run's pending time runs from its start."""
    executor, exits = executors()
    executor.sync_account("team_a", 1, 2.0, 2**30)
    assert executor.capacity().counts_gpus
    run = tiny_run(backend, tmp_path)
    admit(backend, run, executor)
    assert executor.pending_since(run.id, 1234.5) == 1234.5
    assert exits.next() == (run.id, 1, 0)
