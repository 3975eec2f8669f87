"""End to end: ``wml backend start --executor kubernetes`` against the stand-in server.

The backend is a real process that reaches the stand-in through a kubeconfig; the stand-in
kubelet runs each pod's command (``python3 -m wml_backend.runner``) as a local process with the
pod's env, Secret included, so the real runner trains, ships logs and metrics back to the
backend and stores results, as it would in a cluster.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from types import SimpleNamespace

import httpx
import psutil
import pytest
from backend_process import BackendProcess
from kubefake import calls_beyond_role, start_fake_kube, stop_fake_kube
from test_cli_e2e import definition, submit
from test_distributed import DDP, ddp_manifest


class ClusterBackend(BackendProcess):
    """The backend as a user starts it (``wml backend start --executor kubernetes``), and as a
    supervisor restarts it (``wml-backend serve`` on the same port, as the Deployment does)."""

    def start(self, timeout: float = 60.0) -> ClusterBackend:
        result = self.cli("backend", "start", "--executor", "kubernetes", "--port", str(self.port),
                          "--gpus", str(self.gpus), "--json", timeout=timeout)
        assert result.returncode == 0, f"{result.stdout}{result.stderr}"
        self.pid = json.loads(result.stdout)["pid"]
        self.env["WML_TOKEN"] = self.token
        return self

    def restart(self, timeout: float = 60.0) -> None:
        """Serve again on the same port, in the foreground of a child process."""
        log = open(self.home / "backend" / "backend.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "wml_backend.daemon", "serve", "--executor", "kubernetes",
                                      "--port", str(self.port), "--gpus", str(self.gpus)],
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        deadline = time.monotonic() + timeout
        while not _answers(f"{self.url}/healthz"):
            assert time.monotonic() < deadline and self.proc.poll() is None, "the backend did not restart"
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the backend (its Jobs run on)."""
        os.kill(self.pid, signal.SIGKILL)
        while psutil.pid_exists(self.pid) and psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE:
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:  # restarted as our child: stop and reap it
            super().stop()
        else:
            self.cli("backend", "stop")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def k8s(tmp_path_factory):
    """A stand-in cluster (one node, 2 GPUs) and a backend admitting up to 4 GPUs into it."""
    root = tmp_path_factory.mktemp("k8s-e2e")
    kube = start_fake_kube(root / "kube", gpus=2, images=lambda image: "tensorflow" not in image)  # pull fails
    backend = ClusterBackend(root / "wml-home", gpus=4, extra_env={
        "KUBECONFIG": str(kube.kubeconfig), "WML_K8S_PENDING_NOTE_S": "0.5", "WML_K8S_IMAGE_PULL_GRACE_S": "1"})
    backend.start()
    yield SimpleNamespace(kube=kube, backend=backend)
    backend.close()
    stop_fake_kube(kube)
    assert not calls_beyond_role(kube), f"backend/deploy/rbac.yaml lacks {calls_beyond_role(kube)}"


def run_of(k8s, tmp_path, *flags: str, **changes) -> str:
    """Submit the tiny definition with ``changes``; return its one run's id."""
    changes.setdefault("hyperparameters", {"lr": [0.3], "steps": [2]})
    return submit(k8s.backend, definition(tmp_path, **changes), *flags) + "-01"


def wait_run(backend: BackendProcess, run_id: str,
             until=lambda run: run["state"] in ("COMPLETED", "FAILED", "HALTED"), timeout: float = 90) -> dict:
    """The run once ``until`` holds for it (by default: once it ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = backend.cli_json("show", run_id)
        if until(run):
            return run
        time.sleep(0.2)
    raise AssertionError(f"{run_id} stuck: {backend.cli_json('show', run_id)}")


def _stamp(transition: dict) -> float:
    return datetime.fromisoformat(transition["time"]).timestamp()


def jobs_of(k8s, run_id: str) -> list[dict]:
    return [j for j in k8s.kube.objects("jobs") if j["metadata"]["labels"]["wml.dev/run"] == run_id]


def test_a_run_is_a_job_whose_pod_runs_the_runner(k8s, tmp_path):
    calls_before = dict(k8s.kube.server.store.calls)
    run_id = run_of(k8s, tmp_path)
    run = wait_run(k8s.backend, run_id)
    assert run["state"] == "COMPLETED", run
    assert [t["state"] for t in run["transitions"]] == [
        "QUEUED", "PENDING", "DOWNLOADING", "PROCESSING", "STORING", "COMPLETED"]
    assert run["metrics"]["step"] == 2
    span = _stamp(run["transitions"][-1]) - _stamp(run["transitions"][1])
    assert 0 < run["gpu_seconds"] <= round(span, 3) + 0.001, "billed from the pod's binding, at most from PENDING"
    assert "tiny training with lr=0.3" in k8s.backend.cli("logs", run_id).stdout
    results = k8s.backend.home / "storage" / "wml-results" / f"training-{run_id}"
    assert (results / "started.txt").exists() and (results / "learner-1" / "training-log.txt").exists()
    assert json.loads((results / "env.json").read_text())["WML_RUNNER_TOKEN"] is None
    [job] = jobs_of(k8s, run_id)
    assert job["spec"]["backoffLimit"] == 0 and "WML_RUNNER_TOKEN" not in json.dumps(job)
    wait_for_no_secrets(k8s)
    calls = k8s.kube.server.store.calls
    writes = {k: calls[k] - calls_before.get(k, 0) for k in calls if k[0] in ("POST", "DELETE")}
    assert {k: v for k, v in writes.items() if v} == {
        ("POST", "secrets"): 1, ("POST", "jobs"): 1, ("DELETE", "secrets"): 1}


def wait_for_no_secrets(k8s, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while k8s.kube.objects("secrets") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert k8s.kube.objects("secrets") == []


def test_cancel_deletes_the_job_and_keeps_partial_results(k8s, tmp_path):
    run_id = run_of(k8s, tmp_path, hyperparameters={"lr": [0.1], "steps": [300], "sleep": [0.1]})
    wait_run(k8s.backend, run_id, until=lambda r: r["state"] == "PROCESSING" and r["metrics"])
    assert k8s.backend.cli("cancel", run_id).returncode == 0
    run = wait_run(k8s.backend, run_id)
    assert run["state"] == "HALTED" and run["reason"] == "cancelled by the user"
    results = k8s.backend.home / "storage" / "wml-results" / f"training-{run_id}"
    assert (results / "started.txt").exists()  # written before the cancel, stored after it
    deadline = time.monotonic() + 30
    while jobs_of(k8s, run_id) and time.monotonic() < deadline:  # gone once its pod has stopped
        time.sleep(0.1)
    assert jobs_of(k8s, run_id) == []


def test_out_of_memory_fails_with_advice(k8s, tmp_path):
    command = "python3 -c 'import time; b = bytearray(900 * 2**20); time.sleep(30)'"
    run_id = run_of(k8s, tmp_path, memory="300Mi", framework={"name": "custom", "version": "1", "command": command})
    run = wait_run(k8s.backend, run_id)
    assert run["state"] == "FAILED" and run["exit_code"] == 137
    assert run["reason"] == "out of memory: raise memory (the limit was 300Mi)"


def test_an_image_that_cannot_be_pulled_fails_the_run(k8s, tmp_path):
    framework = {"name": "tensorflow", "version": "2.16", "command": "python3 train.py"}
    run = wait_run(k8s.backend, run_of(k8s, tmp_path, framework=framework))
    assert run["state"] == "FAILED"
    assert run["reason"].startswith("cannot pull image wml-runner-tensorflow:2.16 ("), run["reason"]


def test_a_run_waiting_for_gpus_says_so(k8s, tmp_path):
    run_id = run_of(k8s, tmp_path, gpus=3)  # the backend admits 4 GPUs, the node has 2
    run = wait_run(k8s.backend, run_id, until=lambda r: (r["reason"] or "").startswith("waiting"), timeout=30)
    assert run["state"] == "PENDING"
    assert run["reason"].startswith("waiting for free GPUs: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu")
    time.sleep(1)
    assert k8s.backend.cli_json("show", run_id)["gpu_seconds"] == 0, "no GPU is bound: nothing is billed"
    k8s.backend.cli("cancel", run_id)
    halted = wait_run(k8s.backend, run_id)
    assert halted["state"] == "HALTED" and halted["gpu_seconds"] == 0 and halted["gpu_wait_seconds"] > 1


def test_a_restarted_backend_reattaches_to_running_jobs(k8s, tmp_path):
    run_id = run_of(k8s, tmp_path, hyperparameters={"lr": [0.2], "steps": [25], "sleep": [0.2]})
    wait_run(k8s.backend, run_id, until=lambda r: r["state"] == "PROCESSING" and r["metrics"])
    k8s.backend.kill()
    time.sleep(1.0)  # the Job runs on while the backend is down
    k8s.backend.restart()
    run = wait_run(k8s.backend, run_id)
    assert run["state"] == "COMPLETED", run
    assert [p["step"] for p in k8s.backend.cli_json("metrics", run_id)] == list(range(1, 26))
    assert len(jobs_of(k8s, run_id)) == 1  # re-attached, not started again


def api_log(backend: BackendProcess, run_id: str, learner: int) -> str:
    """A learner's log as the API serves it (``GET /v1/runs/{id}/logs?learner=k``)."""
    response = httpx.get(f"{backend.url}/v1/runs/{run_id}/logs", params={"learner": learner},
                         headers={"Authorization": f"Bearer {backend.token}"}, timeout=10)
    response.raise_for_status()
    return response.json()["data"]


def wait_until(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_two_learners_are_two_pods_of_an_indexed_job_that_all_reduce(k8s):
    result = k8s.backend.cli("train", str(DDP / "manifest.yml"), str(DDP))
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.strip().splitlines()[-1] + "-01"
    run = wait_run(k8s.backend, run_id, timeout=120)
    assert run["state"] == "COMPLETED" and run["learners"] == 2, run
    assert [t["state"] for t in run["transitions"]] == [
        "QUEUED", "PENDING", "DOWNLOADING", "PROCESSING", "STORING", "COMPLETED"]  # learner 1's reports only
    for learner in (1, 2):
        wait_until(lambda k=learner: "all_reduce sum = 3" in api_log(k8s.backend, run_id, k))
        assert f"is rank {learner - 1} of 2 (node {learner - 1}, local rank 0)" in api_log(k8s.backend, run_id, learner)
    assert run["metrics"]["total"] == 3
    [job] = jobs_of(k8s, run_id)
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 2
    pods = [p for p in k8s.kube.objects("pods") if p["metadata"]["labels"].get("job-name") == job["metadata"]["name"]]
    assert sorted(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for p in pods) == ["0", "1"]
    assert all(p["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1" for p in pods)
    results = k8s.backend.home / "storage" / "wml-results" / f"training-{run_id}"
    wait_until(lambda: all((results / f"learner-{k}" / "training-log.txt").exists() for k in (1, 2)))
    assert (results / "_submitted_code" / "model.zip").exists()


def test_a_failing_learner_pod_fails_the_run_and_stops_its_peer(k8s, tmp_path):
    started = time.monotonic()
    result = k8s.backend.cli("train", str(ddp_manifest(tmp_path, hyperparameters={"fail_rank": [1]})), str(DDP))
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.strip().splitlines()[-1] + "-01"
    run = wait_run(k8s.backend, run_id, timeout=120)
    assert run["state"] == "FAILED" and run["exit_code"] == 1, run
    assert run["reason"] == "learner 2: the command exited with code 1", run["reason"]
    assert any("this learner fails" in line for line in run["log_tail"]), run["log_tail"]
    wait_until(lambda: jobs_of(k8s, run_id) == [], timeout=30)  # deleted, the peer (sleeping 60 s) with it
    assert time.monotonic() - started < 45, "the peer must have been stopped"
    assert "this learner fails" in api_log(k8s.backend, run_id, 2)
