"""The executor through the official client against the stand-in server, without a backend.

The node's kubelet only plays containers here (``simulate_s``): these tests are about Jobs,
pods and watches. ``test_k8s_backend.py`` runs the real runner in pods, end to end.
"""

from __future__ import annotations

import dataclasses
import queue
import time

import pytest
from wml_backend.errors import InvalidInput
from wml_backend.executors.base import Launch
from wml_backend.executors.kubernetes import KubernetesExecutor
from wml_backend.settings import Settings


class Recorder:
    """An executor wired to record ``on_exit`` and ``on_note`` calls."""

    def __init__(self, monkeypatch, kube, **env: str):
        monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig))
        for name, value in {"WML_K8S_PENDING_NOTE_S": "0", "WML_K8S_IMAGE_PULL_GRACE_S": "0.5", **env}.items():
            monkeypatch.setenv(name, value)
        self.exits: queue.Queue = queue.Queue()
        self.notes: list[tuple[str, str]] = []
        self.executor = KubernetesExecutor.from_settings(Settings(gpus=4))
        self.executor.on_exit = lambda run_id, attempt, code, reason=None, log_tail=None: self.exits.put(
            (run_id, code, reason))
        self.executor.on_note = lambda run_id, note: self.notes.append((run_id, note))
        self.bound: list[tuple[str, float]] = []
        self.executor.on_bound = lambda run_id, attempt, at: self.bound.append((run_id, at))

    def exit(self, timeout: float = 20) -> tuple[str, int | None, str | None]:
        """The next run that ended: (run id, exit code, reason)."""
        return self.exits.get(timeout=timeout)

    def note(self, run_id: str, timeout: float = 20) -> str:
        """The latest note on ``run_id``, waiting for one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [n for r, n in self.notes if r == run_id]
            if found:
                return found[-1]
            time.sleep(0.05)
        raise AssertionError(f"no note on {run_id}")


def launch(run_id: str, gpus: int = 1, account: str = "alice") -> Launch:
    return Launch(run_id=run_id, experiment_id=run_id.split("-")[0], account=account, attempt=1, gpus=gpus,
                  gpu_ids=tuple(range(gpus)), learners=1, cpus=1, memory_bytes=256 << 20, framework="pytorch",
                  env={"WML_RUN_ID": run_id, "WML_RUNNER_TOKEN": f"token-{run_id}", "WML_BACKEND_URL": "http://x"})


def with_timeout(launch: Launch, seconds: float) -> Launch:
    """``launch`` with a time limit (``Launch.timeout_s``, a field the lifecycle is asked to add)."""
    if "timeout_s" in Launch.__dataclass_fields__:
        return dataclasses.replace(launch, timeout_s=seconds)
    object.__setattr__(launch, "timeout_s", seconds)
    return launch


@pytest.fixture
def recorder(fake_kube, monkeypatch):
    """An executor on a node whose containers succeed after 0.2 s."""
    kube = fake_kube(simulate_s=0.2)
    rec = Recorder(monkeypatch, kube)
    yield kube, rec
    rec.executor.close()


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_happy_path_is_three_writes_per_run_and_no_polling(recorder):
    kube, rec = recorder
    handles = {f"hp{i}-01": rec.executor.start(launch(f"hp{i}-01")) for i in range(4)}
    ended = sorted(rec.exit() for _ in handles)
    assert ended == [(run_id, 0, None) for run_id in sorted(handles)]
    assert kube.writes() == {"POST secrets": 4, "POST jobs": 4, "DELETE secrets": 4}
    calls = kube.server.store.calls
    assert calls[("LIST", "jobs")] == calls[("LIST", "pods")] == calls[("LIST", "secrets")] == 1  # the first only
    assert not [k for k in calls if k[0] == "GET"]  # no per-run reads
    assert kube.objects("secrets") == []
    for run_id, handle in handles.items():
        assert handle["job"].startswith(f"wml-{run_id}-a1-") and handle["attempt"] == 1
        assert handle["namespace"] == "wml-test"


def test_kueue_job_waits_suspended_until_admitted(fake_kube, monkeypatch):
    kube = fake_kube(simulate_s=0.2)
    rec = Recorder(monkeypatch, kube, WML_K8S_KUEUE_QUEUE="wml-{account}")
    handle = rec.executor.start(launch("kq-01"))
    assert rec.note("kq-01") == "waiting for Kueue to admit it (LocalQueue wml-alice)"
    assert kube.objects("pods") == [] and rec.bound == [], "suspended: no GPU is bound yet"
    admitted = time.time()
    kube.cluster.admit(kube.namespace, handle["job"])
    assert rec.exit() == ("kq-01", 0, None)
    [(run_id, bound_at)] = rec.bound
    assert run_id == "kq-01" and admitted - 1 <= bound_at <= time.time()  # the API's times are whole seconds
    rec.executor.close()


def test_no_free_gpu_shows_as_a_note_and_cancel_deletes_the_job(recorder):
    kube, rec = recorder
    handle = rec.executor.start(launch("big-01", gpus=3))  # the node has 2
    assert rec.note("big-01").startswith(
        "waiting for free GPUs: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu")
    rec.executor.cancel("big-01", handle)
    run_id, code, reason = rec.exit()
    assert (run_id, code) == ("big-01", None) and "deleted" in reason
    assert kube.objects("jobs") == kube.objects("pods") == kube.objects("secrets") == []


@pytest.mark.parametrize("event, reason", [
    ("evict", "evicted from its node: The node was low on resource: memory."),
    ("lose_node", "node lost (its node became unreachable or was tainted NoExecute)"),
])
def test_eviction_and_node_loss_fail_with_a_reason(fake_kube, monkeypatch, event, reason):
    kube = fake_kube(simulate_s=30)
    rec = Recorder(monkeypatch, kube)
    rec.executor.start(launch("ev-01"))
    wait_for(lambda: any(p["status"].get("phase") == "Running" for p in kube.objects("pods")))
    pod = kube.objects("pods")[0]["metadata"]["name"]
    if event == "evict":
        kube.cluster.evict(kube.namespace, pod)
    else:
        kube.cluster.lose_node(kube.namespace)
    assert rec.exit() == ("ev-01", None, reason)
    rec.executor.close()


def test_deadline_fails_the_run_as_timed_out(fake_kube, monkeypatch):
    kube = fake_kube(simulate_s=30)
    rec = Recorder(monkeypatch, kube)
    rec.executor.start(with_timeout(launch("dl-01"), 1))
    assert rec.exit() == ("dl-01", None, "timed out after 1 s (activeDeadlineSeconds)")
    rec.executor.close()


def test_an_image_that_cannot_be_pulled_fails_the_run(fake_kube, monkeypatch):
    kube = fake_kube(images=lambda image: "pytorch" not in image)
    rec = Recorder(monkeypatch, kube)
    rec.executor.start(launch("img-01"))
    run_id, code, reason = rec.exit()
    assert run_id == "img-01" and code is None
    assert reason.startswith("cannot pull image wml-runner-pytorch:2.4 (")
    assert kube.objects("jobs") == kube.objects("secrets") == []
    rec.executor.close()


def test_a_new_executor_reattaches_to_running_jobs(fake_kube, monkeypatch):
    kube = fake_kube(simulate_s=2)
    first = Recorder(monkeypatch, kube)
    handle = first.executor.start(launch("ra-01"))
    first.executor.close()  # the backend goes away; the Job runs on
    second = Recorder(monkeypatch, kube)
    assert second.executor.reattach("ra-01", handle)
    assert not second.executor.reattach("gone-01", {"job": "wml-gone-01-a1-xxxx"})
    assert second.exit() == ("ra-01", 0, None)
    assert kube.objects("secrets") == []  # the first executor's Secret, cleaned by the second
    second.executor.close()


def test_a_watch_that_expired_lists_again(fake_kube, monkeypatch):
    kube = fake_kube(simulate_s=0.5)
    rec = Recorder(monkeypatch, kube)
    store = kube.server.store
    handle = rec.executor.start(launch("w-01"))
    store.pause_watches()  # the executor hears nothing while the run ends...
    wait_for(lambda: any(c["type"] == "Complete" for c in store.get("jobs", kube.namespace, handle["job"])[
        "status"].get("conditions", [])))
    store.compact()  # ...and the events it missed are gone: its watch gets 410 Gone
    store.resume_watches()
    assert rec.exit() == ("w-01", 0, None)
    assert store.calls[("LIST", "jobs")] >= 2  # listed again
    rec.executor.close()


def test_configuration_errors_are_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(InvalidInput, match=r"^kubernetes: no usable configuration .*set KUBECONFIG"):
        KubernetesExecutor.from_settings(Settings())


def test_an_unknown_context_lists_the_known_ones(fake_kube, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(fake_kube().kubeconfig))
    monkeypatch.setenv("WML_K8S_CONTEXT", "prod")
    with pytest.raises(InvalidInput, match=r"^WML_K8S_CONTEXT: no context 'prod' in the kubeconfig; it has: fake$"):
        KubernetesExecutor.from_settings(Settings())


def test_learners_are_pods_of_an_indexed_job_with_a_headless_service(recorder):
    kube, rec = recorder
    handle = rec.executor.start(dataclasses.replace(launch("ix-01"), learners=2))
    assert rec.exit() == ("ix-01", 0, None)
    assert handle["learners"] == 2
    pods = sorted(kube.objects("pods"), key=lambda p: p["metadata"]["name"])
    assert [p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for p in pods] == ["0", "1"]
    assert [p["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] for p in pods] == ["1", "1"]
    [service] = kube.objects("services")
    assert service["metadata"]["name"] == handle["job"] and service["spec"]["clusterIP"] == "None"
    # one write more than a one-learner run: the Service, deleted with its Job (it owns it)
    assert kube.writes() == {"POST secrets": 1, "POST jobs": 1, "POST services": 1, "DELETE secrets": 1}
    rec.executor.cancel("ix-01", handle)  # deleting the Job takes its Service along
    wait_for(lambda: kube.objects("services") == [] and kube.objects("jobs") == [])


def test_a_failed_learner_fails_the_run_by_name_and_stops_the_others(fake_kube, monkeypatch):
    kube = fake_kube(simulate_s=30)
    rec = Recorder(monkeypatch, kube)
    rec.executor.start(dataclasses.replace(launch("ixf-01"), learners=2))
    wait_for(lambda: len([p for p in kube.objects("pods") if p["status"].get("phase") == "Running"]) == 2)
    second = next(p for p in kube.objects("pods")
                  if p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == "1")
    kube.cluster.evict(kube.namespace, second["metadata"]["name"])
    assert rec.exit() == ("ixf-01", None, "learner 2: evicted from its node: The node was low on resource: memory.")
    wait_for(lambda: kube.objects("jobs") == [] and kube.objects("services") == [] and kube.objects("secrets") == [])
    wait_for(lambda: all(p["status"].get("phase") == "Failed" for p in kube.objects("pods")))
    rec.executor.close()
