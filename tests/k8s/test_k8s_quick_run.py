"""A run whose runner ends while its start is still being recorded keeps its Job.

The lifecycle stops at once a run that ended while its start was in flight (``_stop_if_asked``:
its runner had no handle to be stopped by). A run that ended because its runner exited has
nothing left to stop: deleting its Job there lost the Job (and its pod's log) that stays until
its TTL. It took a loaded host to see it: the admitting thread, after storing the handle, must
be slower than the whole run; here it waits for the run's end, as such a thread would be.
"""

from __future__ import annotations

import pytest
from test_cli_e2e import TINY, definition
from test_start_races import runners  # noqa: F401 (runners: a fixture, the backend runners report to)
from wml_backend.eventbus import EventBus
from wml_backend.executors.kubernetes import KubernetesExecutor
from wml_backend.lifecycle import Lifecycle
from wml_core.states import RunState

pytestmark = pytest.mark.nodeagent


def test_a_run_that_ends_before_its_start_is_done_keeps_its_job(runners, kube_ns, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("KUBECONFIG", str(kube_ns.kubeconfig))
    settings = runners.settings(gpus=2, slots=3, public_url=runners.url)
    executor = KubernetesExecutor.from_settings(settings)
    lifecycle = Lifecycle(settings, runners.store, executor, EventBus(runners.store))
    record = runners.store.update_run

    def slow_after_start(run_id: str, **fields) -> None:
        record(run_id, **fields)
        if "handle" in fields:  # the runner gets its spec from now: it runs and ends meanwhile
            runners.wait(run_id, lambda r: r.state.terminal, timeout=60)
    monkeypatch.setattr(runners.store, "update_run", slow_after_start)
    run = runners.submit(definition(tmp_path, hyperparameters={"lr": [0.3], "steps": [2]}), TINY)
    before = kube_ns.writes()
    try:
        lifecycle.admit()
    finally:
        executor.close()
    assert runners.store.run(run.id).state is RunState.COMPLETED
    [job] = [j for j in kube_ns.objects("jobs") if j["metadata"]["labels"]["wml.dev/run"] == run.id]
    assert "deletionTimestamp" not in job["metadata"], "the Job of a run that ended by itself stays until its TTL"
    assert "delete jobs" not in kube_ns.writes() - before
