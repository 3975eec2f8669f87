"""Disruptions keep the work (issue 14, item 4), on the test cluster.

A SIGTERM the backend did not ask for (here: the eviction API, as ``kubectl drain`` uses it) ends
the attempt as preempted: the runner stores ``CHECKPOINT_DIR`` within the grace, the run goes back
to QUEUED with its next attempt (not a retry: ``max_retries: 0`` still completes), which resumes
from that checkpoint on a fresh pod. A user's cancel still ends the run HALTED.
"""

from __future__ import annotations

import json
import time
from typing import Optional

import pytest
from test_k8s_backend import IMAGES, ClusterBackend, jobs_of, pods_of, wait_run, wait_until

from resuming import resuming_run as submit_resuming
from s3server import ALLOW_ALL_S3

pytestmark = pytest.mark.nodeagent


@pytest.fixture(scope="module")
def k8s(kube_module_ns, s3, tmp_path_factory):
    """A backend admitting up to 4 GPUs into the module's namespace, results in S3."""
    key = s3.user(f"operator-{kube_module_ns.name}", ALLOW_ALL_S3)
    home = tmp_path_factory.mktemp("k8s-disrupt") / "wml-home"
    backend = ClusterBackend(home, kube_module_ns, s3, key, gpus=4, extra_env={
        "WML_K8S_PENDING_NOTE_S": "0.5", "WML_K8S_IMAGE_MAP": json.dumps(IMAGES)})
    backend.start()
    yield type("K8s", (), {"ns": kube_module_ns, "backend": backend, "s3": s3})
    backend.close()


def resuming_run(k8s, tmp_path, steps: int = 12, sleep: float = 1.0, max_retries: int = 0,
                 token: Optional[str] = None) -> str:
    """Submit a run of ``RESUMING`` to the module's backend; its id."""
    return submit_resuming(k8s.backend, tmp_path, steps, sleep, max_retries, token)


def evict(k8s, pod: dict) -> None:
    """Evict ``pod`` through the eviction API, as a node drain does (an administrator's call)."""
    from kubernetes import client
    core = client.CoreV1Api(k8s.ns.cluster.api())
    name = pod["metadata"]["name"]
    body = client.V1Eviction(metadata=client.V1ObjectMeta(name=name, namespace=k8s.ns.name))
    core.create_namespaced_pod_eviction(name, k8s.ns.name, body)


def running_pod(k8s, run_id: str, attempt: int = 1) -> dict:
    """The running pod of the run's ``attempt``, once its training has logged two steps or more."""
    def found():
        run = k8s.backend.cli_json("show", run_id)
        jobs = [j for j in jobs_of(k8s, run_id) if j["metadata"]["labels"]["wml.dev/attempt"] == str(attempt)]
        pods = [p for j in jobs for p in pods_of(k8s, j) if (p.get("status") or {}).get("phase") == "Running"]
        return pods[0] if pods and run["state"] == "PROCESSING" and run["metrics"].get("step", 0) >= 2 else None
    wait_until(lambda: found() is not None, timeout=60, what=lambda: k8s.backend.cli_json("show", run_id))
    return found()


def test_an_evicted_run_is_queued_again_and_resumes_from_its_checkpoint(k8s, tmp_path):
    run_id = resuming_run(k8s, tmp_path, max_retries=0)
    pod = running_pod(k8s, run_id, attempt=1)
    evict(k8s, pod)
    requeued = wait_run(k8s.backend, run_id, until=lambda r: r["attempt"] == 2, timeout=90)
    run = resumed_after_one_preemption(k8s, run_id)
    node = pod["spec"]["nodeName"]
    assert run["preempted"].startswith(f"preempted: evicted from node {node}"), run["preempted"]
    assert requeued["preempted"] == run["preempted"]
    shown = k8s.backend.cli("show", run_id).stdout
    assert "preempted: evicted from node" in shown, shown


def resumed_after_one_preemption(k8s, run_id: str, steps: int = 12, token: Optional[str] = None,
                                 timeout: float = 120) -> dict:
    """The run once ended: it must have COMPLETED in its second attempt, the first preempted (not
    HALTED, not a retry), resuming from the first attempt's checkpoint, with each attempt's bound
    GPU time billed once."""
    from test_cli_e2e import active_spans
    from test_k8s_backend import results
    run = wait_run(k8s.backend, run_id, timeout=timeout)
    assert run["state"] == "COMPLETED", run
    assert run["attempt"] == 2 and run["preemptions"] == 1, run
    assert "resumed at step" in run["preempted"], run["preempted"]
    states = [t["state"] for t in run["transitions"]]
    assert states.count("QUEUED") == 2 and states[-1] == "COMPLETED" and "HALTED" not in states, states
    # the second attempt resumed from the checkpoint the first stored, not from step 1
    stored = results(k8s, run_id)
    started = sorted(k for k in stored if k.startswith("started-at-"))
    assert started and started != ["started-at-1.txt"], sorted(stored)
    resumed_at = int(started[-1].removeprefix("started-at-").removesuffix(".txt"))
    assert 2 <= resumed_at <= steps, started
    assert run["metrics"]["step"] == steps
    # GPU time: each attempt's bound span once (at most the two active spans)
    spans = active_spans(run)
    assert len(spans) == 2 and 0 < run["gpu_seconds"] <= sum(b - a for a, b in spans) + 0.01, (spans, run)
    return run


def test_a_pod_deleted_by_someone_else_is_a_disruption_not_a_cancel(k8s, tmp_path):
    """``kubectl delete pod`` by an administrator (not the backend): SIGTERM, the grace period;
    the run is queued again and resumes, it is not HALTED as a user's cancel would be."""
    from kubernetes import client
    run_id = resuming_run(k8s, tmp_path)
    pod = running_pod(k8s, run_id)
    client.CoreV1Api(k8s.ns.cluster.api()).delete_namespaced_pod(pod["metadata"]["name"], k8s.ns.name)
    run = resumed_after_one_preemption(k8s, run_id)
    assert run["preempted"].startswith("preempted: its pod was deleted from node"), run["preempted"]
    assert "(not by the backend)" in run["preempted"]


def test_a_user_cancel_still_ends_the_run_halted(k8s, tmp_path):
    run_id = resuming_run(k8s, tmp_path, steps=40)
    running_pod(k8s, run_id, attempt=1)
    assert k8s.backend.cli("cancel", run_id).returncode == 0
    run = wait_run(k8s.backend, run_id, timeout=90)
    assert run["state"] == "HALTED" and run["reason"] == "cancelled by the user", run
    assert run["attempt"] == 1 and run["preemptions"] == 0 and run["preempted"] is None, run
    time.sleep(2)
    assert k8s.backend.cli_json("show", run_id)["state"] == "HALTED"
