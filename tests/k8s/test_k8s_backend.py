"""End to end: ``wml backend start --executor kubernetes`` on the test cluster.

The backend is a real process of this host. It authenticates as the ServiceAccount of
``backend/deploy`` in a namespace of its own (``kube_module_ns``: the tests of this module share
one backend, which takes seconds to start), keeps results in S3 (a moto server on 127.0.0.1) and
tells run pods to report to its loopback URL: the test cluster's node agent runs each pod's
command (``python3 -m wml_runner``) as a process of this host with the pod's env, Secret
included (and nothing of this host's env), so the real runner trains, ships logs and metrics to
the backend and stores results, as it would in a cluster. Images are not pulled (one under
``registry.invalid`` fails to pull), and GPUs are numbers.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from types import SimpleNamespace

import httpx
import psutil
import pytest
from backend_process import BackendProcess
from s3server import ALLOW_ALL_S3, ANY_KEY, ANY_SECRET, MotoS3
from test_cli_e2e import definition, submit
from test_distributed import DDP, ddp_manifest
from testcluster import BackendNamespace

pytestmark = pytest.mark.nodeagent
#: The backend's default store: results go under ``training-<run id>/`` there.
BUCKET = "wml-k8s-results"
#: Runner images: TensorFlow's cannot be pulled (the agent fails every ``*.invalid`` registry).
IMAGES = {"pytorch": "wml-runner-pytorch:{version}", "custom": "wml-runner:{version}",
          "tensorflow": "registry.invalid/wml-runner-tensorflow:{version}"}


def cluster_backend_env(ns: BackendNamespace, s3: MotoS3, url: str, key: tuple[str, str] = (ANY_KEY, ANY_SECRET),
                        bucket: str = BUCKET) -> dict[str, str]:
    """What a backend on this host needs to run its Jobs in ``ns``: the ServiceAccount's
    kubeconfig, an S3 default store and its ``key`` (the executor refuses the embedded file
    store) and the URL pods reach it at (pods are processes of this host here)."""
    return {"KUBECONFIG": str(ns.kubeconfig), "WML_PUBLIC_URL": url, "WML_STORAGE": f"s3://{bucket}",
            "AWS_ENDPOINT_URL": s3.endpoint, "AWS_ACCESS_KEY_ID": key[0], "AWS_SECRET_ACCESS_KEY": key[1],
            "AWS_DEFAULT_REGION": "us-east-1"}


class ClusterBackend(BackendProcess):
    """The backend as a user starts it (``wml backend start --executor kubernetes``), and as a
    supervisor restarts it (``wml-backend serve`` on the same port, as the Deployment does)."""

    def __init__(self, home, ns: BackendNamespace, s3: MotoS3, key: tuple[str, str] = (ANY_KEY, ANY_SECRET),
                 **kwargs):
        super().__init__(home, **kwargs)
        self.env.update(cluster_backend_env(ns, s3, self.url, key), **(kwargs.get("extra_env") or {}))

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
def k8s(kube_module_ns, s3, tmp_path_factory):
    """A backend admitting up to 4 GPUs (2 nodes of 2 GPUs) into the module's namespace; its
    store key is an IAM user's (``key``), so that it works while S3 checks signatures."""
    key = s3.user(f"operator-{kube_module_ns.name}", ALLOW_ALL_S3)
    home = tmp_path_factory.mktemp("k8s-e2e") / "wml-home"
    backend = ClusterBackend(home, kube_module_ns, s3, key, gpus=4, extra_env={
        "WML_K8S_PENDING_NOTE_S": "0.5", "WML_K8S_IMAGE_PULL_GRACE_S": "1", "WML_K8S_IMAGE_MAP": json.dumps(IMAGES)})
    backend.start()
    yield SimpleNamespace(ns=kube_module_ns, backend=backend, s3=s3, key=key)
    backend.close()


def run_of(k8s, tmp_path, *flags: str, **changes) -> str:
    """Submit the tiny definition with ``changes``; return its one run's id."""
    changes.setdefault("hyperparameters", {"lr": [0.3], "steps": [2]})
    return submit(k8s.backend, definition(tmp_path, **changes), *flags) + "-01"


def submitted_run(k8s, manifest, code) -> str:
    """``wml train MANIFEST CODE``; the one run's id."""
    result = k8s.backend.cli("train", str(manifest), str(code))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1] + "-01"


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


def wait_until(predicate, timeout: float = 15.0, what=lambda: "") -> None:
    """Wait until ``predicate()``; else fail, saying ``what()``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"condition not met in time {what()}"
        time.sleep(0.1)


def _stamp(transition: dict) -> float:
    return datetime.fromisoformat(transition["time"]).timestamp()


def jobs_of(k8s, run_id: str) -> list[dict]:
    return [j for j in k8s.ns.objects("jobs") if j["metadata"]["labels"]["wml.dev/run"] == run_id]


def pods_of(k8s, job: dict) -> list[dict]:
    return [p for p in k8s.ns.objects("pods") if p["metadata"]["labels"].get("job-name") == job["metadata"]["name"]]


def results(k8s, run_id: str) -> dict[str, bytes]:
    """The run's stored results, by key under its results prefix."""
    s3, prefix = k8s.s3.client(), f"training-{run_id}/"
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix):]: s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listed}


def test_a_run_is_a_job_whose_pod_runs_the_runner_in_two_writes(k8s, tmp_path):
    before = k8s.ns.writes()
    run_id = run_of(k8s, tmp_path)
    run = wait_run(k8s.backend, run_id)
    assert run["state"] == "COMPLETED", run
    assert [t["state"] for t in run["transitions"]] == [
        "QUEUED", "PENDING", "DOWNLOADING", "PROCESSING", "STORING", "COMPLETED"]
    assert run["metrics"]["step"] == 2
    span = _stamp(run["transitions"][-1]) - _stamp(run["transitions"][1])
    assert 0 < run["gpu_seconds"] <= round(span, 3) + 0.001, "billed from the pod's binding, at most from PENDING"
    assert "tiny training with lr=0.3" in k8s.backend.cli("logs", run_id).stdout
    stored = results(k8s, run_id)
    assert {"started.txt", "learner-1/training-log.txt"} <= set(stored), sorted(stored)
    assert json.loads(stored["env.json"])["WML_RUNNER_TOKEN"] is None
    [job] = jobs_of(k8s, run_id)
    assert job["spec"]["backoffLimit"] == 0 and "WML_RUNNER_TOKEN" not in json.dumps(job)
    [secret] = [s for s in k8s.ns.objects("secrets") if s["metadata"]["name"] == job["metadata"]["name"]]
    [owner] = secret["metadata"]["ownerReferences"]  # its token revoked, it goes with its Job after the TTL
    assert owner["uid"] == job["metadata"]["uid"]
    writes = {"create jobs": 1, "create secrets": 1}  # the audit log's count
    wait_until(lambda: k8s.ns.writes() - before == writes, timeout=5, what=lambda: k8s.ns.writes() - before)


@contextmanager
def secrets_made(k8s) -> Iterator[list[dict]]:
    """The Secrets created in the namespace during the block, as an administrator's watch saw them."""
    from kubernetes import client, watch
    made: list[dict] = []
    core, stream = client.CoreV1Api(k8s.ns.cluster.api()), watch.Watch()

    def follow() -> None:
        with suppress(Exception):  # the stream ends badly once stopped (or its namespace deleted)
            for event in stream.stream(core.list_namespaced_secret, k8s.ns.name, timeout_seconds=300):
                if event["type"] == "ADDED":
                    made.append(event["raw_object"])
    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        yield made
    finally:
        stream.stop()


def test_the_operators_store_key_reaches_no_pod_and_the_run_stores_with_a_scoped_credential(k8s, tmp_path):
    """The backend's store key is in its environment only (issue 13 item 2): a run on the default
    store asks the backend for a scoped credential (``scoped_credentials``), so neither its Secret
    nor its Job holds the key, and its results are stored all the same."""
    with secrets_made(k8s) as secrets:
        run_id = run_of(k8s, tmp_path)
        run = wait_run(k8s.backend, run_id, timeout=60)
    assert run["state"] == "COMPLETED", run
    assert "started.txt" in results(k8s, run_id)
    [job] = jobs_of(k8s, run_id)
    [secret] = [s for s in secrets if s["metadata"]["name"] == job["metadata"]["name"]]
    key, secret_key = k8s.key
    for value in (key, secret_key):
        assert base64.b64encode(value.encode()).decode() not in secret["data"].values()
        assert value not in json.dumps(job)


def test_cancel_deletes_the_job_and_keeps_partial_results(k8s, tmp_path):
    run_id = run_of(k8s, tmp_path, hyperparameters={"lr": [0.1], "steps": [300], "sleep": [0.1]})
    wait_run(k8s.backend, run_id, until=lambda r: r["state"] == "PROCESSING" and r["metrics"])
    assert k8s.backend.cli("cancel", run_id).returncode == 0
    run = wait_run(k8s.backend, run_id)
    assert run["state"] == "HALTED" and run["reason"] == "cancelled by the user"
    assert "started.txt" in results(k8s, run_id)  # written before the cancel, stored after it
    wait_until(lambda: jobs_of(k8s, run_id) == [], timeout=30)  # gone once its pod has stopped


def test_out_of_memory_fails_with_advice(k8s, tmp_path):
    command = "python3 -c 'import time; b = bytearray(900 * 2**20); time.sleep(30)'"
    run_id = run_of(k8s, tmp_path, memory="300Mi", framework={"name": "custom", "version": "1", "command": command})
    run = wait_run(k8s.backend, run_id)
    assert run["state"] == "FAILED" and run["exit_code"] == 137
    assert run["reason"] == "out of memory: raise memory (the limit was 300Mi)"
    [job] = jobs_of(k8s, run_id)
    [pod] = pods_of(k8s, job)
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["reason"], terminated["exitCode"]) == ("OOMKilled", 137)  # as the API reports it


def test_an_image_that_cannot_be_pulled_fails_the_run_with_the_apis_words(k8s, tmp_path):
    framework = {"name": "tensorflow", "version": "2.16", "command": "python3 train.py"}
    run = wait_run(k8s.backend, run_of(k8s, tmp_path, framework=framework))
    assert run["state"] == "FAILED"
    pull = r"cannot pull image registry\.invalid/wml-runner-tensorflow:2\.16 \((ErrImagePull|ImagePullBackOff)\): "
    said = r'(failed to pull|Back-off pulling image) .*"registry\.invalid/'  # the pod status' message
    assert re.match(pull + said, run["reason"]), run["reason"]


def test_a_run_waiting_for_gpus_says_so(k8s, tmp_path):
    run_id = run_of(k8s, tmp_path, gpus=3)  # the backend admits 4 GPUs, a node has 2
    run = wait_run(k8s.backend, run_id, until=lambda r: (r["reason"] or "").startswith("waiting"), timeout=30)
    assert run["state"] == "PENDING"
    assert run["reason"].startswith("waiting for free GPUs: 0/"), run["reason"]
    assert "Insufficient nvidia.com/gpu" in run["reason"], "the scheduler's own words"
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


def test_two_learners_find_each_other_by_dns_name_and_all_reduce(k8s):
    """An Indexed Job of 2 pods and a headless Service: learner 2 reaches learner 1 at
    ``MASTER_ADDR`` = ``<job>-0.<job>``, a name the node agent resolves as cluster DNS would."""
    before = k8s.ns.writes()
    run_id = submitted_run(k8s, DDP / "manifest.yml", DDP)
    run = wait_run(k8s.backend, run_id, timeout=120)
    assert run["state"] == "COMPLETED" and run["learners"] == 2, run
    assert [t["state"] for t in run["transitions"]] == [
        "QUEUED", "PENDING", "DOWNLOADING", "PROCESSING", "STORING", "COMPLETED"]  # learner 1's reports only
    for learner in (1, 2):
        wait_until(lambda k=learner: "all_reduce sum = 3" in api_log(k8s.backend, run_id, k))
        assert f"is rank {learner - 1} of 2 (node {learner - 1}, local rank 0)" in api_log(k8s.backend, run_id, learner)
    assert run["metrics"]["total"] == 3
    [job] = jobs_of(k8s, run_id)
    name = job["metadata"]["name"]
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 2
    pods = pods_of(k8s, job)
    assert sorted(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for p in pods) == ["0", "1"]
    assert sorted((p["spec"]["hostname"], p["spec"]["subdomain"]) for p in pods) == [(f"{name}-0", name),
                                                                                     (f"{name}-1", name)]
    env = {e["name"]: e.get("value") for e in pods[0]["spec"]["containers"][0]["env"]}
    assert env["MASTER_ADDR"] == f"{name}-0.{name}", "a DNS name, as on any cluster: no address rewritten"
    assert all(p["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1" for p in pods)
    [service] = [s for s in k8s.ns.objects("services") if s["metadata"]["name"] == name]
    assert service["spec"]["clusterIP"] == "None"
    wait_until(lambda: {"learner-1/training-log.txt", "learner-2/training-log.txt",
                        "_submitted_code/model.zip"} <= set(results(k8s, run_id)))
    writes = {"create jobs": 1, "create secrets": 1, "create services": 1,
              "create networkpolicies": 1}  # the Service and the run's NetworkPolicy
    wait_until(lambda: k8s.ns.writes() - before == writes, timeout=5, what=lambda: k8s.ns.writes() - before)


def test_a_failing_learner_pod_fails_the_run_and_stops_its_peer(k8s, tmp_path):
    started = time.monotonic()
    run_id = submitted_run(k8s, ddp_manifest(tmp_path, hyperparameters={"fail_rank": [1]}), DDP)
    run = wait_run(k8s.backend, run_id, timeout=120)
    assert run["state"] == "FAILED" and run["exit_code"] == 1, (run["reason"], run["log_tail"])
    assert run["reason"] == "learner 2: the command exited with code 1", run["reason"]
    assert any("this learner fails" in line for line in run["log_tail"]), run["log_tail"]
    wait_until(lambda: jobs_of(k8s, run_id) == [], timeout=30)  # deleted, the peer (sleeping 60 s) with it
    assert time.monotonic() - started < 45, "the peer must have been stopped"
    assert "this learner fails" in api_log(k8s.backend, run_id, 2)
