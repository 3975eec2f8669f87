"""The local executor's idle runners: forked ahead so that a start finds one ready, each runs
exactly one run, holds nothing of a run until it is given one, and none outlives its executor
(closed, or its backend gone); and a runner that asks for its spec early gets it once its start
is recorded."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from executor_worlds import Exits, admit
from test_executor_contract import backend, tiny_run  # noqa: F401  (the backend runners report to: a fixture)
from wml_backend.executors import local as local_executor
from wml_backend.executors.local import IDLE_RUNNERS, MADE_AHEAD, REFILL_LATEST_S, REFILL_QUIET_S, LocalExecutor
from wml_backend.lifecycle import STORE_CREDENTIAL_ENV
from wml_backend.tokens import token_hash
from wml_core.runner_channel import ChannelAnswer, decode_call, encode_answer
from wml_core.states import RunState

#: Seconds within which idle runners are forked again, or gone.
READY_S = 20.0
#: The slots of the tests' executors: each keeps as many runners idle.
SLOTS = 3
#: How finely the kernel times a process's start (clock ticks: 10 ms), as psutil reads it.
CREATE_TIME_GRAIN_S = 0.015


@pytest.fixture
def others() -> frozenset[int]:
    """Idle runners already there before the test's executor: those of executors that other
    tests in this process left open (not this test's to count)."""
    return frozenset(idle_of(psutil.Process()))


@pytest.fixture
def executor(tmp_path, others) -> Iterator[tuple[LocalExecutor, Exits]]:
    exits = Exits()
    executor = exits.wire(LocalExecutor(tmp_path / "runs", gpus=2, slots=SLOTS, warm={}))
    yield executor, exits
    executor.close()


def idle_of(backend: psutil.Process) -> set[int]:
    """The pids of the idle runners of ``backend``'s local executor: its fork server's children
    still in the server's session (a runner given a run makes a session of its own first)."""
    found = set()
    for server in fork_servers(backend):
        for child in server.children():
            try:
                if os.getsid(child.pid) == os.getsid(server.pid):
                    found.add(child.pid)
            except OSError:
                pass
    return found


def fork_servers(backend: psutil.Process) -> list[psutil.Process]:
    """The fork server ``backend``'s local executors fork their runners from (one, once started)."""
    return [p for p in backend.children() if "forkserver" in " ".join(p.cmdline())]


def gone(pid: int) -> bool:
    """Whether process ``pid`` has ended."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def ready(backend: psutil.Process, others: frozenset[int] = frozenset(), slots: int = SLOTS) -> set[int]:
    """``backend``'s idle runners but ``others``, once there are as many as one executor of
    ``slots`` keeps."""
    return wait_for(lambda: len(found := idle_of(backend) - others) >= min(slots, IDLE_RUNNERS) and found)


def wait_for(check, timeout: float = READY_S):
    """``check()`` once it is truthy (asserted within ``timeout``)."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.05)
    return found


def test_idle_runners_are_ready_before_any_run_and_hold_no_secret(backend, executor, others, tmp_path):
    idle = ready(psutil.Process(), others)
    run = tiny_run(backend, tmp_path)
    launch, handle = admit(backend, run, executor[0])
    assert handle["pid"] in idle, "the run is given a runner forked before it"
    secrets = [launch.env["WML_RUNNER_TOKEN"], launch.env[STORE_CREDENTIAL_ENV[1]]]
    for pid in idle - {handle["pid"]}:
        process = psutil.Process(pid)
        seen = " ".join([*process.cmdline(), *process.environ().values()])
        assert not any(secret in seen for secret in secrets), "an idle runner holds a run's secret"
    assert executor[1].next() == (run.id, 1, 0)


def test_runs_started_back_to_back_each_get_a_runner_of_their_own_that_ends_with_them(
        backend, executor, others, tmp_path, caplog):
    local, exits = executor
    idle = ready(psutil.Process(), others)
    runs = [tiny_run(backend, tmp_path) for _ in range(SLOTS)]
    handles = [admit(backend, run, local)[1] for run in runs]
    assert len({handle["pid"] for handle in handles}) == len(runs)
    assert {handle["pid"] for handle in handles} <= idle, "a start of the wave waited for a runner to be forked"
    # A runner that takes its launch and closes its pipe at once (its calls go over HTTP here) was
    # once taken for one that was gone, and its run given to a second runner too.
    assert "another takes its launch" not in caplog.text
    ended = {exits.next()[:2] for _ in runs}
    assert ended == {(run.id, 1) for run in runs}
    for run, handle in zip(runs, handles):
        assert backend.store.run(run.id).reported_state is RunState.COMPLETED
        wait_for(lambda: gone(handle["pid"]), timeout=5)  # (a runner ends its run by a last word, then exits)
    # and the executor keeps runners ready for the next start
    ready(psutil.Process(), others)


def test_the_runners_a_wave_of_starts_took_are_forked_again_once_the_starts_pause(
        backend, executor, others, tmp_path, monkeypatch):
    """Forking replacements while a wave of starts goes on slows the runners just launched: they
    are forked once no start has taken a runner for ``REFILL_QUIET_S``."""
    # Pauses 10 times the product's, so that a start slowed by a busy machine is not taken for a pause.
    quiet = 10 * REFILL_QUIET_S
    monkeypatch.setattr(local_executor, "REFILL_QUIET_S", quiet)
    monkeypatch.setattr(local_executor, "REFILL_LATEST_S", 10 * REFILL_LATEST_S)
    local, exits = executor
    ready(psutil.Process(), others)
    runs = [tiny_run(backend, tmp_path) for _ in range(SLOTS)]
    taken = set()
    for run in runs[:-1]:  # starts a little apart, as an admission pass makes them
        taken.add(admit(backend, run, local)[1]["pid"])
        time.sleep(0.6 * quiet)
    with subprocess.Popen(["sleep", "1"]) as mark:  # the last runner is taken after this, timed on the same clock
        last_start = psutil.Process(mark.pid).create_time()
        taken.add(admit(backend, runs[-1], local)[1]["pid"])
    again = ready(psutil.Process(), others | taken)  # (a runner just launched may not have left the session yet)
    forked = min(psutil.Process(pid).create_time() for pid in again)
    assert forked >= last_start + quiet - CREATE_TIME_GRAIN_S, \
        f"a runner was forked {1000 * (forked - last_start):.0f} ms after the wave's last start began"
    assert {exits.next()[:2] for _ in runs} == {(run.id, 1) for run in runs}


def test_a_runner_killed_while_idle_is_passed_over(backend, executor, others, tmp_path):
    idle = ready(psutil.Process(), others)
    for pid in idle:
        psutil.Process(pid).kill()
    run = tiny_run(backend, tmp_path)
    _, handle = admit(backend, run, executor[0])
    assert handle["pid"] not in idle
    assert executor[1].next() == (run.id, 1, 0)


def test_closing_the_executor_ends_its_idle_runners_not_its_runs(backend, others, tmp_path):
    exits = Exits()
    local = exits.wire(LocalExecutor(tmp_path / "runs", gpus=2, slots=SLOTS, warm={}))
    idle = ready(psutil.Process(), others)
    run = tiny_run(backend, tmp_path, steps=10, sleep=0.1)
    _, handle = admit(backend, run, local)
    backend.wait(run.id, lambda row: row.state in (RunState.PROCESSING, RunState.STORING, RunState.COMPLETED)
                 or row.reported_state is not None)
    local.close()
    assert all(gone(pid) for pid in idle - {handle["pid"]}), "an idle runner outlived its executor"
    assert not any((tmp_path / "runs" / MADE_AHEAD).iterdir()), "the folders an idle runner made ahead outlived it"
    assert exits.next()[:2] == (run.id, 1), "a run's runner was ended with its executor"
    assert backend.store.run(run.id).reported_state is RunState.COMPLETED
    assert {p.name for p in (tmp_path / "runs" / run.id).iterdir()} >= {"model", "results", "checkpoints", "runner.log"}


def test_idle_runners_end_when_their_backend_dies(tmp_path):
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from wml_backend.executors.local import LocalExecutor
        if __name__ == "__main__":
            executor = LocalExecutor(Path({str(tmp_path / 'runs')!r}), gpus=1, slots=1, warm={{}})
            time.sleep(120)
        """)
    (tmp_path / "backend.py").write_text(script)
    backend = subprocess.Popen([sys.executable, str(tmp_path / "backend.py")])
    try:
        idle = ready(psutil.Process(backend.pid), slots=1)
        backend.kill()
        backend.wait()
        wait_for(lambda: all(gone(pid) for pid in idle), timeout=10)
    finally:
        backend.kill()


def test_a_runner_gets_its_spec_once_its_start_is_recorded_never_before(backend, tmp_path):
    """The spec waits briefly for the start (a local runner asks within milliseconds of it) and is
    refused while it is not recorded (its leader may have died first)."""
    run, token = tiny_run(backend, tmp_path), secrets.token_urlsafe(16)
    backend.store.transition(run.id, RunState.PENDING, time.time(), attempt=1, gpu_ids=[],
                             runner_token_hash=token_hash(token))

    runner = httpx.Client(base_url=f"{backend.url}/v1/runner/{run.id}", headers={"Authorization": f"Bearer {token}"})
    assert runner.get("/spec").status_code == 503, "a runner got the spec of a start that is not recorded"
    recorded = threading.Timer(0.01, backend.store.update_run, args=(run.id,),
                               kwargs={"handle": {"pid": 1, "create_time": 0.0, "attempt": 1}})
    recorded.start()
    answered = runner.get("/spec")  # asked before the start is recorded
    recorded.join()
    runner.close()
    assert answered.status_code == 200 and answered.json()["run_id"] == run.id


def test_a_runner_whose_start_is_not_recorded_never_runs_though_its_spec_was_asked_at_launch(
        backend, executor, tmp_path):
    """Over its pipe, a runner's spec is asked for it as it is launched, before any call of its
    own, and answered as its own ask: refused until the start is recorded (its leader may have
    died first). Once it is, the run runs."""
    local, exits = executor
    calls: list[str] = []
    local.on_runner_call = bridge_to(backend.url, calls)
    run = tiny_run(backend, tmp_path)
    _, handle = admit(backend, run, local, record=False)
    time.sleep(1.0)
    assert backend.store.run(run.id).state is RunState.PENDING, "a runner ran a start that is not recorded"
    backend.store.update_run(run.id, handle=handle)
    assert exits.next()[:2] == (run.id, 1)
    assert backend.store.run(run.id).reported_state is RunState.COMPLETED
    assert calls[0] == f"GET /v1/runner/{run.id}/spec", "the spec is asked first, at the launch"
    assert "POST /v1/runner/{run.id}/state".format(run=run) in calls, "the runner's own calls came over its pipe"


def test_a_local_start_is_said_before_its_runner_holds_the_launch(backend, executor, others, tmp_path):
    """The local executor says the runner's handle (``on_handle``) while that runner is still idle,
    so that the start is recorded before the runner can ask for its spec: none waits for it."""
    local, exits = executor
    said: list[tuple[str, dict, bool]] = []
    ready(psutil.Process(), others)
    [server] = fork_servers(psutil.Process())

    def on_handle(run_id: str, handle: dict) -> None:
        still_idle = os.getsid(handle["pid"]) == os.getsid(server.pid)  # a launched runner has a session of its own
        said.append((run_id, handle, still_idle))
        backend.store.update_run(run_id, handle=handle)
    local.on_handle = on_handle
    run = tiny_run(backend, tmp_path)
    _, handle = admit(backend, run, local, record=False)
    assert said == [(run.id, handle, True)], "the handle was not said, or said once its runner held the launch"
    assert exits.next() == (run.id, 1, 0)
    assert backend.store.run(run.id).reported_state is RunState.COMPLETED


def test_a_start_that_cannot_be_recorded_fails_and_leaves_no_runner(backend, executor, others, tmp_path):
    """A store that refuses the start's record (a database failing over): the start fails, and
    the runner taken for it, never given the launch, ends rather than waiting for ever."""
    local, _ = executor
    idle = ready(psutil.Process(), others)

    def refuse(run_id: str, handle: dict) -> None:
        raise RuntimeError("the run store is unavailable")
    local.on_handle = refuse
    run = tiny_run(backend, tmp_path)
    with pytest.raises(RuntimeError, match="unavailable"):
        admit(backend, run, local)
    wait_for(lambda: len([pid for pid in idle if gone(pid)]) == 1, timeout=10)
    assert backend.store.run(run.id).state is RunState.PENDING, "a runner ran a start that was not recorded"


def test_a_run_ends_at_its_runners_last_word_not_once_its_process_is_reaped(backend, executor, others, tmp_path):
    """A runner's last word over its pipe says that its run is over: the end is not kept waiting
    while the kernel frees the runner's memory and the fork server reaps it (stopped here, so
    that it cannot until it goes on)."""
    local, exits = executor
    local.on_runner_call = bridge_to(backend.url, [])
    ready(psutil.Process(), others)
    [server] = fork_servers(psutil.Process())
    run = tiny_run(backend, tmp_path)
    server.suspend()
    try:
        _, handle = admit(backend, run, local)
        assert exits.next() == (run.id, 1, 0), "the run's end waited for its runner to be reaped"
        assert psutil.pid_exists(handle["pid"]), "the runner was reaped by a fork server that is stopped"
    finally:
        server.resume()
    wait_for(lambda: not psutil.pid_exists(handle["pid"]), timeout=10)
    assert backend.store.run(run.id).reported_state is RunState.COMPLETED


def bridge_to(url: str, calls: list[str]):
    """An executor's answer to its runners' calls over their pipes: each made over HTTP to the
    backend at ``url`` (which this process is not), and noted in ``calls``."""
    http = httpx.Client(base_url=url)

    def answer(message: bytes) -> bytes:
        call = decode_call(message)
        calls.append(f"{call.method} {call.path}")
        response = http.request(call.method, call.path, content=call.body,
                                headers={"Authorization": f"Bearer {call.token}"} if call.token else {})
        return encode_answer(ChannelAnswer(response.status_code, response.headers.get("content-type", ""),
                                           response.content))
    return answer
