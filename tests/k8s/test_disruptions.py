"""Disruptions keep the work (issue 14, item 4), on the test cluster.

A SIGTERM the backend did not ask for (here: the eviction API, as ``kubectl drain`` uses it) ends
the attempt as preempted: the runner stores ``CHECKPOINT_DIR`` within the grace, the run goes back
to QUEUED with its next attempt (not a retry: ``max_retries: 0`` still completes), which resumes
from that checkpoint on a fresh pod. A user's cancel still ends the run HALTED.
"""

from __future__ import annotations

import json
import textwrap
import time

import pytest
import yaml
from test_k8s_backend import IMAGES, ClusterBackend, jobs_of, pods_of, wait_run, wait_until

from s3server import ALLOW_ALL_S3

pytestmark = pytest.mark.nodeagent

#: Training code that resumes from ``CHECKPOINT_DIR/step`` and writes it after every step.
RESUMING = textwrap.dedent("""\
    import os, sys, time
    from pathlib import Path
    from wml_jupyter import run
    hp = run.hparams()
    ckpt = Path(os.environ["CHECKPOINT_DIR"]) / "step"
    first = int(ckpt.read_text()) + 1 if ckpt.exists() else 1
    print(f"starting at step {first}", flush=True)
    (Path(os.environ["RESULT_DIR"]) / f"started-at-{first}.txt").write_text("")
    for step in range(first, int(hp["steps"]) + 1):
        time.sleep(float(hp["sleep"]))
        ckpt.write_text(str(step))
        run.log(step=step, loss=1.0 / step)
        print(f"step {step}", flush=True)
    """)


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


def resuming_run(k8s, tmp_path, steps: int = 12, sleep: float = 0.5, max_retries: int = 0) -> str:
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / "train.py").write_text(RESUMING)
    manifest = {"name": "resume", "version": "1.0", "gpus": 1, "cpus": 1, "memory": "256Mi",
                "max_retries": max_retries,
                "framework": {"name": "custom", "version": "1", "command": "python3 train.py"},
                "hyperparameters": {"steps": [steps], "sleep": [sleep]}}
    path = tmp_path / "manifest.yml"
    path.write_text(yaml.safe_dump(manifest))
    result = k8s.backend.cli("train", str(path), str(code))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1] + "-01"


def evict(k8s, pod: dict) -> None:
    """Evict ``pod`` through the eviction API, as a node drain does (an administrator's call)."""
    from kubernetes import client
    core = client.CoreV1Api(k8s.ns.cluster.api())
    name = pod["metadata"]["name"]
    body = client.V1Eviction(metadata=client.V1ObjectMeta(name=name, namespace=k8s.ns.name))
    core.create_namespaced_pod_eviction(name, k8s.ns.name, body)


def running_pod(k8s, run_id: str, attempt: int) -> dict:
    """The running pod of the run's ``attempt``, once its training has logged a step or more."""
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
    run = wait_run(k8s.backend, run_id, timeout=120)
    assert run["state"] == "COMPLETED", run
    assert run["attempt"] == 2 and run["preemptions"] == 1, run
    node = pod["spec"]["nodeName"]
    assert run["preempted"].startswith(f"preempted: evicted from node {node}"), run["preempted"]
    assert "resumed at step" in run["preempted"], run["preempted"]
    states = [t["state"] for t in run["transitions"]]
    assert states.count("QUEUED") == 2 and states[-1] == "COMPLETED" and "HALTED" not in states, states
    assert requeued["preempted"] == run["preempted"]
    # the second attempt resumed from the checkpoint the first stored, not from step 1
    from test_k8s_backend import results
    stored = results(k8s, run_id)
    started = sorted(k for k in stored if k.startswith("started-at-"))
    assert started and started != ["started-at-1.txt"], sorted(stored)
    resumed_at = int(started[-1].removeprefix("started-at-").removesuffix(".txt"))
    assert 2 <= resumed_at <= 12, started
    assert run["metrics"]["step"] == 12
    # GPU time: each attempt's bound span once (at most the two active spans)
    from test_cli_e2e import active_spans
    spans = active_spans(run)
    assert len(spans) == 2 and 0 < run["gpu_seconds"] <= sum(b - a for a, b in spans) + 0.01, (spans, run)
    shown = k8s.backend.cli("show", run_id).stdout
    assert "preempted: evicted from node" in shown, shown


def test_a_user_cancel_still_ends_the_run_halted(k8s, tmp_path):
    run_id = resuming_run(k8s, tmp_path, steps=40)
    running_pod(k8s, run_id, attempt=1)
    assert k8s.backend.cli("cancel", run_id).returncode == 0
    run = wait_run(k8s.backend, run_id, timeout=90)
    assert run["state"] == "HALTED" and run["reason"] == "cancelled by the user", run
    assert run["attempt"] == 1 and run["preemptions"] == 0 and run["preempted"] is None, run
    time.sleep(2)
    assert k8s.backend.cli_json("show", run_id)["state"] == "HALTED"
