"""The executor on the test cluster, without a backend: Jobs, pods, events and watches.

The executor runs as the ServiceAccount of ``backend/deploy`` in a namespace of the test's own
(``kube_ns``): a call its Role does not allow fails the test, and the API server's audit log
counts its writes. Its runs go to pretend nodes of the node agent (no process: a pod there is
Running at once, and in the ``quick`` pool ends Succeeded a moment later), chosen by a node
label through ``WML_K8S_GPU_LABEL`` and the launch's ``gpu_type``. ``test_k8s_backend.py`` runs
the real runner in pods, end to end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from types import SimpleNamespace

import pytest
from wml_core.errors import InvalidInput
from wml_backend.executors.base import Launch
from wml_backend.executors.k8s_options import load_options
from wml_backend.executors.k8s_watched_run import WatchedRun
from wml_backend.executors.kubernetes import KubernetesExecutor
from wml_backend.settings import Settings
from testcluster import BackendNamespace, start_nodes, stop_nodes

pytestmark = pytest.mark.nodeagent
#: The node label that puts a test's runs on its pool of pretend nodes.
POOL_LABEL = "wml.test/pool"
#: A default store that pods need no claim for (the runs here store nothing).
S3 = "s3://wml-test"
#: Seconds a pod of the quick pool runs before it succeeds.
QUICK_S = 1


class Recorder:
    """An executor as the deployed backend runs it, wired to record what it tells the lifecycle."""

    def __init__(self, monkeypatch, ns: BackendNamespace, **env: str):
        monkeypatch.setenv("KUBECONFIG", str(ns.kubeconfig))
        for name, value in {"WML_K8S_PENDING_NOTE_S": "0", "WML_K8S_IMAGE_PULL_GRACE_S": "2",
                            "WML_K8S_GPU_LABEL": POOL_LABEL, **env}.items():
            monkeypatch.setenv(name, value)
        self.exits: queue.Queue = queue.Queue()
        self.notes: list[tuple[str, str]] = []
        self.bound: list[tuple[str, float]] = []
        self.stopping: list[tuple[str, int, str]] = []
        self.executor = KubernetesExecutor.from_settings(Settings(gpus=100, storage_url=S3))
        self.executor.on_exit = lambda run_id, attempt, code, reason=None, log_tail=None, disruption=None: self.exits.put(
            (run_id, code, reason))
        self.executor.on_note = lambda run_id, note: self.notes.append((run_id, note))
        self.executor.on_bound = lambda run_id, attempt, at: self.bound.append((run_id, at))
        self.executor.on_stopping = lambda run_id, attempt, reason: self.stopping.append((run_id, attempt, reason))

    def exit(self, timeout: float = 90) -> tuple[str, int | None, str | None]:
        """The next run that ended: (run id, exit code, reason)."""
        return self.exits.get(timeout=timeout)

    def note(self, run_id: str, timeout: float = 60) -> str:
        """The latest note on ``run_id``, waiting for one."""
        wait_for(lambda: any(r == run_id for r, _ in self.notes), timeout)
        return [n for r, n in self.notes if r == run_id][-1]


def launch(run_id: str, pool: str, gpus: int = 1, **changes) -> Launch:
    """A run on the pretend nodes of ``pool``."""
    base = Launch(run_id=run_id, experiment_id=run_id.split("-")[0], account="alice", attempt=1, gpus=gpus,
                  gpu_ids=tuple(range(gpus)), learners=1, cpus=0.1, memory_bytes=64 << 20, framework="pytorch",
                  gpu_type=pool, env={"WML_RUN_ID": run_id, "WML_RUNNER_TOKEN": f"token-{run_id}",
                                      "WML_BACKEND_URL": "http://x"})
    return dataclasses.replace(base, **changes)


def wait_for(predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)
    return value


def pool_nodes(cluster, name: str, count: int = 2, *options: str):
    """``count`` pretend nodes labelled ``POOL_LABEL=name``."""
    return start_nodes(cluster, f"{name}-", count, options=["--labels", f"{POOL_LABEL}={name}", *options])


@pytest.fixture(scope="module")
def pools(kube_cluster):
    """Two pools of pretend nodes (2 GPUs each): pods of ``quick`` succeed after ``QUICK_S``,
    pods of ``hold`` run until they are stopped."""
    if not kube_cluster.has_agent:
        pytest.skip("needs the test cluster's node agent")
    tag = uuid.uuid4().hex[:4]
    quick = pool_nodes(kube_cluster, f"quick{tag}", 2, "--pretend-run-s", str(QUICK_S))
    hold = pool_nodes(kube_cluster, f"hold{tag}", 2)
    yield SimpleNamespace(quick=f"quick{tag}", hold=f"hold{tag}", cluster=kube_cluster)
    for nodes in (quick, hold):
        stop_nodes(kube_cluster, nodes)


@pytest.fixture
def recorder(kube_ns, monkeypatch, pools):
    rec = Recorder(monkeypatch, kube_ns)
    yield rec
    rec.executor.close()


def named(objects: list[dict]) -> list[str]:
    return sorted(o["metadata"]["name"] for o in objects)


def test_happy_path_is_two_writes_per_run_and_no_polling(kube_ns, monkeypatch, pools):
    recorder = Recorder(monkeypatch, kube_ns, WML_K8S_JOB_TTL_S="1")
    try:
        handles = {f"hp{i}-01": recorder.executor.start(launch(f"hp{i}-01", pools.quick)) for i in range(4)}
        ended = sorted(recorder.exit() for _ in handles)
        assert ended == [(run_id, 0, None) for run_id in sorted(handles)]
        # the Secrets (a token revoked as the run ends) go with their Jobs after the TTL: no write of ours
        wait_for(lambda: kube_ns.objects("jobs") == kube_ns.objects("secrets") == [], timeout=60)
        assert kube_ns.writes() == {"create jobs": 4, "create secrets": 4}
    finally:
        recorder.executor.close()
    calls = [(c["verb"], c["objectRef"]["resource"]) for c in kube_ns.calls()]
    assert [r for v, r in calls if v == "list"] == ["jobs", "pods", "events"]  # once, at start: then watches
    assert not [c for c in calls if c[0] == "get"]  # no per-run reads
    assert not [c for c in calls if c[1] == "secrets" and c[0] != "create"]  # none read
    for run_id, handle in handles.items():
        assert handle["job"].startswith(f"wml-{run_id}-a1-") and handle["attempt"] == 1
        assert handle["namespace"] == kube_ns.name


def test_a_secret_with_store_keys_is_deleted_as_its_run_ends(recorder, kube_ns, pools):
    keys = {"WML_STORE_ACCESS_KEY": "ak", "WML_STORE_SECRET_KEY": "sk"}  # a manifest's: no attempt's end revokes them
    run = launch("sk-01", pools.quick)
    handle = recorder.executor.start(dataclasses.replace(run, env={**run.env, **keys}))
    assert recorder.exit() == ("sk-01", 0, None)
    wait_for(lambda: kube_ns.objects("secrets") == [], timeout=10)  # on_exit first, then the Secret's deletion
    assert named(kube_ns.objects("jobs")) == [handle["job"]], "the Job stays until its TTL"
    assert kube_ns.writes() == {"create jobs": 1, "create secrets": 1, "delete secrets": 1}


def test_the_job_is_made_first_and_owns_its_secret(recorder, kube_ns, pools):
    handle = recorder.executor.start(launch("own-01", pools.hold))
    creations = [c["objectRef"]["resource"] for c in kube_ns.calls() if c["verb"] == "create"]
    assert creations == ["jobs", "secrets"]  # the pod waits for its Secret, made just after
    [secret] = [s for s in kube_ns.objects("secrets") if s["metadata"]["name"] == handle["job"]]
    [owner] = secret["metadata"]["ownerReferences"]  # the garbage collector deletes it with the Job
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Job", handle["job"], handle["uid"])
    wait_for(lambda: recorder.bound)  # it ran: the Secret was there for its pod
    recorder.executor.cancel("own-01", handle)
    assert recorder.exit()[0] == "own-01"


def test_no_free_gpu_shows_as_a_note_and_cancel_deletes_the_job(recorder, kube_ns, pools):
    handle = recorder.executor.start(launch("big-01", pools.hold, gpus=3))  # its nodes have 2
    note = recorder.note("big-01")
    assert note.startswith("waiting for free GPUs: 0/") and "Insufficient nvidia.com/gpu" in note, note
    recorder.executor.cancel("big-01", handle)
    run_id, code, reason = recorder.exit()
    assert (run_id, code) == ("big-01", None) and "deleted" in reason
    wait_for(lambda: kube_ns.objects("jobs") == kube_ns.objects("pods") == kube_ns.objects("secrets") == [])
    assert recorder.bound == [], "no pod was bound: nothing is billed"


def running_pods(ns: BackendNamespace) -> list[dict]:
    return [p for p in ns.objects("pods") if (p.get("status") or {}).get("phase") == "Running"]


def evict(ns: BackendNamespace, pod: dict) -> None:
    """Evict ``pod`` through the eviction API, as a node drain does."""
    from kubernetes import client
    name = pod["metadata"]["name"]
    client.CoreV1Api(ns.cluster.api()).create_namespaced_pod_eviction(
        name, ns.name, {"metadata": {"name": name, "namespace": ns.name}})


def test_an_eviction_fails_the_run_with_its_reason(recorder, kube_ns, pools):
    recorder.executor.start(launch("ev-01", pools.hold))
    [pod] = wait_for(lambda: running_pods(kube_ns))
    evict(kube_ns, pod)
    run_id, code, reason = recorder.exit()
    assert (run_id, reason) == ("ev-01", "evicted (e.g. a node drain)") and code in (None, 143)  # SIGTERM


def test_a_node_lost_fails_the_run_with_its_reason(kube_ns, monkeypatch, pools):
    name = f"lost{uuid.uuid4().hex[:4]}"
    nodes = pool_nodes(pools.cluster, name, 1)
    rec = Recorder(monkeypatch, kube_ns)
    try:
        rec.executor.start(launch("nl-01", name))
        wait_for(lambda: running_pods(kube_ns))
        # as the node controller taints a node that stopped answering (whose taint pods tolerate 300 s)
        pools.cluster.kubectl("taint", "node", nodes.names[0], "wml.test/lost:NoExecute")
        run_id, _, reason = rec.exit(timeout=120)
        assert (run_id, reason) == ("nl-01", "node lost (its node became unreachable or was tainted NoExecute)")
    finally:
        rec.executor.close()
        stop_nodes(pools.cluster, nodes)


def test_a_run_past_its_deadline_fails_as_timed_out(recorder, pools):
    recorder.executor.start(launch("dl-01", pools.hold, timeout_s=2))
    run_id, _, reason = recorder.exit()
    assert (run_id, reason) == ("dl-01", "timed out after 2 s (activeDeadlineSeconds)")
    # said first, so that the runner's report of its SIGTERM (HALTED) ends the run FAILED, as timed out
    assert recorder.stopping == [("dl-01", 1, "timed out after 2 s (activeDeadlineSeconds)")]


def test_an_image_that_cannot_be_pulled_fails_the_run(kube_ns, monkeypatch, pools):
    rec = Recorder(monkeypatch, kube_ns, WML_K8S_GPU_LABEL="nodeagent.wml.dev/mode",  # a node that runs processes
                   WML_K8S_IMAGE_MAP='{"pytorch": "registry.invalid/wml-runner-pytorch:{version}"}')
    try:
        rec.executor.start(launch("img-01", "processes", gpus=0))
        run_id, _, reason = rec.exit()
        assert run_id == "img-01", run_id
        assert reason.startswith("cannot pull image registry.invalid/wml-runner-pytorch:2.4 ("), reason
        wait_for(lambda: kube_ns.objects("jobs") == kube_ns.objects("secrets") == [])
    finally:
        rec.executor.close()


def test_a_new_executor_reattaches_to_running_jobs(kube_ns, monkeypatch, pools):
    first = Recorder(monkeypatch, kube_ns)
    handle = first.executor.start(launch("ra-01", pools.hold))
    wait_for(lambda: running_pods(kube_ns))
    first.executor.close()  # the backend goes away; the Job runs on
    second = Recorder(monkeypatch, kube_ns)
    try:
        assert second.executor.reattach("ra-01", handle)
        assert not second.executor.reattach("gone-01", {"job": "wml-gone-01-a1-xxxx"})
        second.executor.cancel("ra-01", handle)
        assert second.exit()[0] == "ra-01"
        wait_for(lambda: kube_ns.objects("secrets") == [])  # the first executor's Secret, gone with the Job
    finally:
        second.executor.close()


def test_configuration_errors_are_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(InvalidInput, match=r"^kubernetes: no usable configuration .*set KUBECONFIG"):
        KubernetesExecutor.from_settings(Settings(storage_url=S3))


def test_an_unknown_context_lists_the_known_ones(kube_ns, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(kube_ns.kubeconfig))
    monkeypatch.setenv("WML_K8S_CONTEXT", "prod")
    with pytest.raises(InvalidInput, match=r"^WML_K8S_CONTEXT: no context 'prod' in the kubeconfig; it has: backend$"):
        KubernetesExecutor.from_settings(Settings(storage_url=S3))


def test_the_embedded_file_store_is_refused_at_start_unless_a_claim_holds_it(kube_ns, monkeypatch, tmp_path, pools):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))  # refused before any connection
    with pytest.raises(InvalidInput, match=r"^kubernetes: the embedded file store .* set WML_K8S_STORE_PVC") as info:
        KubernetesExecutor.from_settings(Settings(home=tmp_path))
    assert "\n" not in str(info.value)
    result = subprocess.run([sys.executable, "-m", "wml_backend.daemon", "start", "--executor", "kubernetes"],
                            env={**os.environ, "WML_HOME": str(tmp_path / "home")}, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and result.stderr.startswith("wml-backend: kubernetes: the embedded file store")
    assert len(result.stderr.splitlines()) == 1, "one line, at once: no daemon was started"
    for name, value in {"KUBECONFIG": str(kube_ns.kubeconfig), "WML_K8S_STORE_PVC": "wml-store",
                        "WML_K8S_GPU_LABEL": POOL_LABEL}.items():
        monkeypatch.setenv(name, value)
    executor = KubernetesExecutor.from_settings(Settings(home=tmp_path, gpus=1))
    try:
        assert executor.options.store_root == str(tmp_path / "storage")
        executor.start(launch("fs-01", pools.hold))
        [job] = kube_ns.objects("jobs")
        pod = job["spec"]["template"]["spec"]
        assert {"name": "claim-0", "persistentVolumeClaim": {"claimName": "wml-store"}} in pod["volumes"]
        assert {"name": "claim-0", "mountPath": str(tmp_path / "storage")} in pod["containers"][0]["volumeMounts"]
    finally:
        executor.close()


def test_a_mount_volume_with_no_claim_is_refused_before_any_write(recorder, kube_ns, pools):
    with pytest.raises(InvalidInput, match=r"^data store: mount_volume '/cosdata' is on no PersistentVolumeClaim"):
        recorder.executor.start(launch("mv-01", pools.quick, volume_path="/cosdata"))
    assert not kube_ns.writes()


def test_a_pod_the_api_refuses_fails_the_run_with_the_apis_words(recorder, kube_ns, pools):
    from kubernetes import client
    core = client.CoreV1Api(kube_ns.cluster.api())
    core.create_namespaced_limit_range(kube_ns.name, {"metadata": {"name": "small"}, "spec": {"limits": [
        {"type": "Container", "max": {"cpu": "50m"}}]}})  # a run asks for 100m
    recorder.executor.start(launch("fc-01", pools.quick))
    run_id, code, reason = recorder.exit()
    assert (run_id, code) == ("fc-01", None)
    assert reason.startswith("cannot create the run's pod: pods ") and \
        "maximum cpu usage per Container is 50m, but limit is 100m" in reason, reason
    wait_for(lambda: kube_ns.objects("jobs") == [])


def test_jobs_of_runs_that_ended_while_no_backend_watched_are_deleted(kube_ns, monkeypatch, pools):
    first = Recorder(monkeypatch, kube_ns)
    handles = {run_id: first.executor.start(launch(run_id, pools.hold, gpus=0)) for run_id in
               ("on-01", "over-01", "other-01")}
    twin = first.executor.start(launch("on-01", pools.hold, gpus=0))  # a second Job of a live run's attempt
    first.executor.close()
    second = Recorder(monkeypatch, kube_ns)
    try:
        assert second.executor.reattach("on-01", twin)
        second.executor.reconcile(lambda run_id, attempt: run_id != "over-01")  # other-01: another backend's
        kept = sorted([twin["job"], handles["other-01"]["job"]])
        wait_for(lambda: named(kube_ns.objects("jobs")) == kept)
        wait_for(lambda: named(kube_ns.objects("secrets")) == kept)  # the others' went with their Jobs
    finally:
        second.executor.close()


def test_learners_are_pods_of_an_indexed_job_with_a_headless_service(recorder, kube_ns, pools):
    handle = recorder.executor.start(launch("ix-01", pools.quick, learners=2))
    assert recorder.exit() == ("ix-01", 0, None)
    assert handle["learners"] == 2
    pods = sorted(kube_ns.objects("pods"), key=lambda p: p["metadata"]["name"])
    assert [p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for p in pods] == ["0", "1"]
    assert [p["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] for p in pods] == ["1", "1"]
    [service] = kube_ns.objects("services")
    assert service["metadata"]["name"] == handle["job"] and service["spec"]["clusterIP"] == "None"
    [owner] = service["metadata"]["ownerReferences"]
    assert owner["uid"] == handle["uid"]
    # two writes more than a one-learner run: the Service and the NetworkPolicy, deleted with their Job
    assert kube_ns.writes() == {"create jobs": 1, "create secrets": 1, "create services": 1,
                                "create networkpolicies": 1}
    recorder.executor.cancel("ix-01", handle)  # deleting the Job takes its Service along
    wait_for(lambda: kube_ns.objects("services") == [] and kube_ns.objects("jobs") == [])


def learner_pod(index: int, phase: str, code: int | None = None) -> dict:
    """A learner's pod as its node reports it: ``phase``, and its runner's exit ``code`` once it ended."""
    state = {"running": {}} if code is None else {"terminated": {"exitCode": code, "reason": "Completed"}}
    return {"metadata": {"name": f"wml-x-{index}", "annotations": {"batch.kubernetes.io/job-completion-index": str(index)}},
            "status": {"phase": phase, "containerStatuses": [{"name": "runner", "state": state}]}}


def test_a_multi_learner_run_ends_once_every_learner_succeeded_without_waiting_for_its_job():
    options = load_options({}, "wml")
    run = WatchedRun(job_name="wml-x", attempt=1, started=time.monotonic(), learners=2,
                     job={"metadata": {"name": "wml-x"}, "spec": {}, "status": {"active": 2}})
    run.record_pod(learner_pod(0, "Succeeded", 0), False)
    run.record_pod(learner_pod(1, "Running"), False)
    assert run.decide(options) is None, "learner 2 still runs"
    run.record_pod(learner_pod(1, "Succeeded", 0), False)
    assert run.decide(options) == "end", "the Job says Complete later, in its controller's next batch"
    suspended = WatchedRun(job_name="wml-x", attempt=1, started=time.monotonic(), learners=2,
                           job={"metadata": {"name": "wml-x"}, "spec": {"suspend": True}, "status": {}})
    for index in (0, 1):
        suspended.record_pod(learner_pod(index, "Succeeded", 0), False)
    assert suspended.decide(options) is None, "a Job Kueue suspended again says itself how the run ends"


def test_a_failed_learner_fails_the_run_by_name_and_stops_the_others(recorder, kube_ns, pools):
    recorder.executor.start(launch("ixf-01", pools.hold, learners=2))
    pods = wait_for(lambda: len(running_pods(kube_ns)) == 2 and running_pods(kube_ns))
    second = next(p for p in pods if p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == "1")
    evict(kube_ns, second)
    run_id, _, reason = recorder.exit()
    assert (run_id, reason) == ("ixf-01", "learner 2: evicted (e.g. a node drain)")
    wait_for(lambda: kube_ns.objects("jobs") == kube_ns.objects("services") == kube_ns.objects("secrets") == [])


# -- the watches, on their own ----------------------------------------------------------------------
class ScriptedList:
    """A ``list_namespaced_*`` whose answers a test writes: listings, then watch streams of events."""

    __name__ = "list_namespaced_thing"

    def __init__(self, answers: list):
        self.answers, self.calls = list(answers), []

    def __call__(self, namespace, watch=False, **kwargs):
        self.calls.append(("watch" if watch else "list", kwargs.get("resource_version"), time.monotonic()))
        answer = self.answers.pop(0) if self.answers else ConnectionError("no more answers")
        if isinstance(answer, Exception):
            raise answer
        return SimpleNamespace(data=json.dumps(answer).encode(), release_conn=lambda: None, shutdown=lambda: None,
                               stream=lambda *a, **k: iter([json.dumps(e).encode() + b"\n" for e in answer]))


def listing(version: str, *names: str) -> dict:
    return {"metadata": {"resourceVersion": version},
            "items": [{"metadata": {"name": n, "resourceVersion": version}} for n in names]}


def test_a_watch_that_expired_lists_again_and_reports_what_went(monkeypatch):
    from wml_backend.executors import k8s_watch
    monkeypatch.setattr("kubernetes.watch.watch.iter_resp_lines", lambda resp: (b.decode() for b in resp.stream()))
    gone = [{"type": "ERROR", "object": {"code": 410, "message": "too old resource version"}}]
    api = ScriptedList([listing("1", "a", "b"), gone, listing("5", "b")])
    seen: list[tuple[str, str]] = []
    informer = k8s_watch.Informer(api, "ns", lambda kind, obj: seen.append((kind, obj["metadata"]["name"])),
                                  threading.RLock())
    informer.sync()
    stop = threading.Event()
    thread = threading.Thread(target=informer.run, args=(stop,))
    thread.start()
    wait_for(lambda: len(api.calls) >= 3, 5)
    stop.set()
    thread.join(5)
    assert [c[:2] for c in api.calls[:3]] == [("list", None), ("watch", "1"), ("list", None)]  # listed again
    assert ("DELETED", "a") in seen and set(informer.objects) == {"b"}


def test_a_watch_backs_off_while_the_api_fails(monkeypatch):
    """No tight loop: a list that keeps failing is tried again after waits that double."""
    from wml_backend.executors import k8s_watch
    monkeypatch.setattr(k8s_watch, "FIRST_BACKOFF_S", 0.05)
    api = ScriptedList([])  # every call fails
    informer = k8s_watch.Informer(api, "ns", lambda kind, obj: None, threading.RLock())
    stop = threading.Event()
    thread = threading.Thread(target=informer.run, args=(stop,))
    thread.start()
    time.sleep(1.0)
    stop.set()
    thread.join(5)
    times = [c[2] for c in api.calls]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert 3 <= len(times) <= 6, times  # 0.05, 0.1, 0.2, 0.4...: a handful in a second, not thousands
    assert all(later > earlier for earlier, later in zip(gaps, gaps[1:]))
