"""Smoke tests of the test cluster itself: the control plane of scripts/kube-up.sh, Kueue and the
node agent (tests/k8s/nodeagent), through the official client, as any user of a cluster.

The cluster is the session's (``kube_cluster`` in conftest.py: the one running in
``WML_KUBE_STATE``, e.g. after ``eval "$(bash scripts/kube-up.sh)"``, or one started for the
session). These tests are of the test cluster itself: they need its node agent.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from testcluster import start_nodes, stop_nodes

KUEUE = ("kueue.x-k8s.io", "v1beta2")
RESTRICTED = {"runAsNonRoot": True, "runAsUser": 1000, "allowPrivilegeEscalation": False,
              "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
pytestmark = pytest.mark.nodeagent


@pytest.fixture(scope="session")
def cluster(kube_cluster) -> dict[str, str]:
    """The variables of kube-up.sh's ``export`` lines."""
    return kube_cluster.env


@pytest.fixture(scope="session")
def api(kube_cluster) -> client.ApiClient:
    return kube_cluster.api()


@pytest.fixture
def ns(api) -> Iterator[str]:
    """A namespace of this test's own, deleted after it."""
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0, every: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(every)


def job(name: str, code: str, **spec: Any) -> dict:
    """A Job whose one container runs ``python3 -c code`` (from the project's venv, on the node)."""
    container = {"name": "main", "image": "python:3.11-slim", "command": ["python3", "-c", code],
                 **spec.pop("container", {})}
    labels = spec.pop("labels", {})
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "labels": labels},
            "spec": {"backoffLimit": 0, **spec, "template": {"spec": {
                "restartPolicy": "Never", "containers": [container]}}}}


def job_condition(batch: client.BatchV1Api, ns: str, name: str) -> str:
    """``Complete`` or ``Failed`` once the Job ended, else ""."""
    job = batch.read_namespaced_job_status(name, ns)
    for cond in job.status.conditions or []:
        if cond.type in ("Complete", "Failed") and cond.status == "True":
            return cond.type
    return ""


def job_pods(core: client.CoreV1Api, ns: str, name: str) -> list:
    return core.list_namespaced_pod(ns, label_selector=f"job-name={name}").items


def test_nodes_are_ready_with_gpus(api, cluster):
    nodes = client.CoreV1Api(api).list_node().items
    assert len(nodes) >= 1
    for node in nodes:
        ready = {c.type: c.status for c in node.status.conditions}["Ready"]
        assert ready == "True"
        assert int(node.status.allocatable["nvidia.com/gpu"]) >= 1
    kubectl = subprocess.run(["kubectl", "version", "--client", "-o", "json"], capture_output=True, text=True,
                             env={**os.environ, **cluster}, check=True)
    assert cluster["WML_KUBE_VERSION"] in kubectl.stdout  # the PATH puts this version's kubectl first


def test_job_completes_with_exit_code_0(api, ns):
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    batch.create_namespaced_job(ns, job("ok", "print(42)"))
    assert wait_for("the Job to end", lambda: job_condition(batch, ns, "ok")) == "Complete"
    [pod] = job_pods(core, ns, "ok")
    assert pod.status.phase == "Succeeded" and pod.status.pod_ip.startswith("127.")  # its own loopback address
    state = pod.status.container_statuses[0].state.terminated
    assert (state.exit_code, state.reason) == (0, "Completed")
    assert core.read_namespaced_pod_log(pod.metadata.name, ns).strip() == "42"  # through the node's endpoint


def test_failing_job_reports_its_exit_code(api, ns):
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    batch.create_namespaced_job(ns, job("bad", "raise SystemExit(3)"))
    assert wait_for("the Job to end", lambda: job_condition(batch, ns, "bad")) == "Failed"
    [pod] = job_pods(core, ns, "bad")
    state = pod.status.container_statuses[0].state.terminated
    assert (pod.status.phase, state.exit_code, state.reason) == ("Failed", 3, "Error")


@pytest.mark.parametrize("how", ["delete", "evict"])
def test_deleting_a_running_pod_sends_sigterm_then_the_pod_goes(api, ns, tmp_path, how):
    core = client.CoreV1Api(api)
    marker = tmp_path / "sigterm"
    code = (f"import pathlib, signal, sys, time\n"
            f"def stop(*_):\n    pathlib.Path({str(marker)!r}).write_text('TERM'); sys.exit(0)\n"
            f"signal.signal(signal.SIGTERM, stop)\nprint('up', flush=True)\ntime.sleep(120)\n")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sleeper"}, "spec": {
        "restartPolicy": "Never", "terminationGracePeriodSeconds": 20,
        "containers": [{"name": "main", "image": "python:3.11-slim", "command": ["python3", "-c", code]}]}}
    core.create_namespaced_pod(ns, pod)
    wait_for("the pod to run", lambda: core.read_namespaced_pod("sleeper", ns).status.phase == "Running")
    wait_for("the process to start", lambda: "up" in core.read_namespaced_pod_log("sleeper", ns))
    started = time.monotonic()
    if how == "delete":
        core.delete_namespaced_pod("sleeper", ns)
    else:  # as a node drain does
        core.create_namespaced_pod_eviction("sleeper", ns, {"metadata": {"name": "sleeper", "namespace": ns}})
    # (waited for with what the handler wrote: the file is there, empty, a moment before)
    said = wait_for("the SIGTERM marker", lambda: marker.exists() and marker.read_text(), timeout=20)
    assert said == "TERM"

    def gone() -> bool:
        try:
            core.read_namespaced_pod("sleeper", ns)
            return False
        except ApiException as exc:
            return exc.status == 404
    wait_for("the pod object to go", gone, timeout=20)
    assert time.monotonic() - started < 15  # the process ended on SIGTERM: no wait for the grace period


def test_indexed_job_completes(api, ns):
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    code = "import os; print('index', os.environ['JOB_COMPLETION_INDEX'])"
    batch.create_namespaced_job(ns, job("indexed", code, completions=2, parallelism=2, completionMode="Indexed"))
    assert wait_for("the Job to end", lambda: job_condition(batch, ns, "indexed")) == "Complete"
    logs = sorted(core.read_namespaced_pod_log(p.metadata.name, ns).strip() for p in job_pods(core, ns, "indexed"))
    assert logs == ["index 0", "index 1"]


def test_the_pods_of_a_headless_service_resolve_each_other(api, ns):
    """No cluster DNS here: the agent stands in for it, for the pods of a headless Service (its
    ``subdomain``), through their hosts files: each learner of an Indexed Job finds the other."""
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    core.create_namespaced_service(ns, {"metadata": {"name": "peers"}, "spec": {
        "clusterIP": "None", "selector": {"batch.kubernetes.io/job-name": "ddp"}, "ports": [{"port": 29500}]}})
    code = ("import os, socket, time\n"
            "peer = 'ddp-%d' % (1 - int(os.environ['JOB_COMPLETION_INDEX']))\n"
            f"names = [peer + '.peers', peer + '.peers.{ns}.svc', peer + '.peers.{ns}.svc.cluster.local']\n"
            "for _ in range(100):  # the peer's pod may start later\n"
            "    try:\n        print(*[socket.gethostbyname(n) for n in names]); break\n"
            "    except OSError:\n        time.sleep(0.1)\n")
    spec = job("ddp", code, completions=2, parallelism=2, completionMode="Indexed")
    spec["spec"]["template"]["spec"]["subdomain"] = "peers"
    batch.create_namespaced_job(ns, spec)
    assert wait_for("the Job to end", lambda: job_condition(batch, ns, "ddp")) == "Complete"
    logs = [core.read_namespaced_pod_log(p.metadata.name, ns).strip() for p in job_pods(core, ns, "ddp")]
    assert logs == ["127.0.0.1 127.0.0.1 127.0.0.1"] * 2


@pytest.fixture
def gpu_queue(api, ns) -> Iterator[str]:
    """A Kueue ClusterQueue with a nominal quota of 1 GPU, and its LocalQueue in ``ns``."""
    custom = client.CustomObjectsApi(api)
    tag = ns.split("-")[-1]
    flavor, cq = f"flavor-{tag}", f"cq-{tag}"
    custom.create_cluster_custom_object(*KUEUE, "resourceflavors", {
        "apiVersion": "/".join(KUEUE), "kind": "ResourceFlavor", "metadata": {"name": flavor}})
    custom.create_cluster_custom_object(*KUEUE, "clusterqueues", {
        "apiVersion": "/".join(KUEUE), "kind": "ClusterQueue", "metadata": {"name": cq},
        "spec": {"namespaceSelector": {}, "resourceGroups": [{
            "coveredResources": ["nvidia.com/gpu"],
            "flavors": [{"name": flavor, "resources": [{"name": "nvidia.com/gpu", "nominalQuota": 1}]}]}]}})
    custom.create_namespaced_custom_object(*KUEUE, ns, "localqueues", {
        "apiVersion": "/".join(KUEUE), "kind": "LocalQueue", "metadata": {"name": "gpus"},
        "spec": {"clusterQueue": cq}})
    yield "gpus"
    custom.delete_namespaced_custom_object(*KUEUE, ns, "localqueues", "gpus")
    custom.delete_cluster_custom_object(*KUEUE, "clusterqueues", cq)
    custom.delete_cluster_custom_object(*KUEUE, "resourceflavors", flavor)


def test_kueue_admits_one_gpu_job_at_a_time(api, ns, gpu_queue):
    batch = client.BatchV1Api(api)
    gpu = {"resources": {"limits": {"nvidia.com/gpu": "1"}}}
    for name in ("first", "second"):
        batch.create_namespaced_job(ns, job(name, "import time; time.sleep(3)", container=gpu,
                                            labels={"kueue.x-k8s.io/queue-name": gpu_queue}))
        if name == "first":  # admitted (unsuspended) before the second one asks
            wait_for("the first Job's admission", lambda: batch.read_namespaced_job("first", ns).spec.suspend is False)
    # Kueue suspended both at creation (its webhook); the quota lets one run.
    time.sleep(1.0)
    assert batch.read_namespaced_job("second", ns).spec.suspend is True
    assert wait_for("the first Job to end", lambda: job_condition(batch, ns, "first")) == "Complete"
    assert wait_for("the second Job to end", lambda: job_condition(batch, ns, "second"), timeout=60) == "Complete"
    first, second = (batch.read_namespaced_job_status(n, ns).status for n in ("first", "second"))
    assert second.start_time >= first.completion_time


def test_pod_security_restricted_refuses_and_admits(api, ns):
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    core.patch_namespace(ns, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    bare = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare"}, "spec": {
        "containers": [{"name": "main", "image": "python:3.11-slim", "command": ["python3", "-c", "pass"]}]}}
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(ns, bare)
    status = json.loads(refused.value.body)
    assert (status["code"], status["reason"]) == (403, "Forbidden")
    assert 'violates PodSecurity "restricted:latest"' in status["message"]
    assert "runAsNonRoot != true" in status["message"]
    # A compliant pod is admitted and runs, as user 1000 with no capability (see nodeagent.security).
    compliant = job("compliant", "print('ok')", container={"securityContext": RESTRICTED})
    batch.create_namespaced_job(ns, compliant)
    assert wait_for("the Job to end", lambda: job_condition(batch, ns, "compliant")) == "Complete"


def test_pretend_nodes_run_pods_without_processes(api, kube_cluster, ns):
    """An extra agent of pretend nodes (as a scale test starts one): their pods end Succeeded."""
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    prefix = f"pretend-{ns.split('-')[-1]}-"
    nodes = start_nodes(kube_cluster, prefix, 3, options=["--pretend-run-s", "1", "--labels", f"smoke={prefix[:-1]}"])
    try:
        spec = job("many", "raise SystemExit(9)", completions=3, parallelism=3)  # never runs: pretend
        spec["spec"]["template"]["spec"]["nodeSelector"] = {"nodeagent.wml.dev/mode": "pretend", "smoke": prefix[:-1]}
        batch.create_namespaced_job(ns, spec)
        assert wait_for("the Job to end", lambda: job_condition(batch, ns, "many")) == "Complete"
        assert {p.spec.node_name[: len(prefix)] for p in job_pods(core, ns, "many")} == {prefix}
    finally:
        stop_nodes(kube_cluster, nodes)
