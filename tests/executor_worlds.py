"""The worlds the executor contract (``test_executor_contract.py``) runs in, one function each.

A *world* is where an executor runs its runners: this host for the local executor, a cluster for
the Kubernetes one. Both run the real runner (``python -m wml_runner``), which talks to a real
backend process and stores results in S3 (a moto server): ``runner_backend``. That backend has
no GPUs, so it admits none of its runs; the test admits them itself, as a second backend replica
would, and starts them with the executor under contract (``admit``).
"""

from __future__ import annotations

import queue
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import psutil
from backend_process import BackendProcess
from s3server import ANY_KEY, ANY_SECRET, MotoS3
from wml_backend.executors.base import Executor, Launch
from wml_backend.lifecycle import launch_of, store_credentials
from wml_backend.tokens import token_hash
from wml_backend.rundb import RunRow, SqliteRunStore
from wml_backend.settings import Settings
from wml_core.objectstore import StoreConfig
from wml_core.states import RunState

sys.path.insert(0, str(Path(__file__).parent / "k8s"))  # the test cluster's helpers live beside its tests
from testcluster import backend_namespace, shared_cluster  # noqa: E402

#: GPUs and run slots every world's executor is configured with.
GPUS, SLOTS = 2, 3
#: The runner backend's default store: runs' results go under ``training-<run id>/`` there.
STORAGE_BUCKET = "wml-contract"


# -- the backend runners report to ------------------------------------------------------------
@dataclass
class RunnerBackend:
    """A backend process that serves runners but admits nothing, its S3 server, and a replica's
    view of its run store through which tests admit runs."""

    process: BackendProcess
    s3: MotoS3
    store: SqliteRunStore

    @property
    def url(self) -> str:
        return self.process.url

    def settings(self, **options: Any) -> Settings:
        """Settings of a backend with this one's default store (``options`` besides)."""
        return Settings(storage_url=f"s3://{STORAGE_BUCKET}", endpoint=self.s3.endpoint, **options)

    def submit(self, manifest: Path, code: Path) -> RunRow:
        """Submit a one-run experiment; its QUEUED run."""
        experiment = self.process.client().train(manifest, code)
        [run] = self.store.runs(experiment=experiment.id)
        return run

    def results(self, run: RunRow) -> list[str]:
        """The keys of the run's stored results, relative to its results prefix."""
        bucket, _, prefix = run.results.partition("/")
        listed = self.s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        return sorted(o["Key"][len(prefix):] for o in listed)

    def wait(self, run_id: str, until: Callable[[RunRow], bool], timeout: float = 30) -> RunRow:
        """The run once ``until`` holds for it, as stored."""
        deadline = time.monotonic() + timeout
        while not until(run := self.store.run(run_id)):
            assert time.monotonic() < deadline, f"run {run_id} is still {run.state.value}"
            time.sleep(0.05)
        return run


@contextmanager
def runner_backend(home: Path, s3: MotoS3) -> Iterator[RunnerBackend]:
    """A backend without GPUs (its runs wait for the test to admit them) storing to ``s3``."""
    process = BackendProcess(home, gpus=0, extra_env={
        "WML_STORAGE": f"s3://{STORAGE_BUCKET}", "AWS_ENDPOINT_URL": s3.endpoint, "AWS_ACCESS_KEY_ID": ANY_KEY,
        "AWS_SECRET_ACCESS_KEY": ANY_SECRET, "AWS_DEFAULT_REGION": "us-east-1"}).start()
    store = SqliteRunStore(home / "backend" / "wml.db")
    try:
        yield RunnerBackend(process, s3, store)
    finally:
        store.close()
        process.close()


def admit(backend: RunnerBackend, run: RunRow, executor: Executor, attempt: int = 1,
          backend_url: Optional[str] = None, token: Optional[str] = None,
          record: bool = True) -> tuple[Launch, dict[str, Any]]:
    """Admit ``run`` (PENDING, a runner token) and start it on ``executor``, recording its
    handle, as the lifecycle does (unless ``record`` is False: its leader died first).

    ``backend_url`` and ``token`` replace what its runner is given (a backend that hangs, a
    token the backend refuses). Returns the launch and the executor's handle.
    """
    real = secrets.token_urlsafe(16)
    gpu_ids = tuple(range(run.gpus))
    row = backend.store.transition(run.id, RunState.PENDING, time.time(), attempt=attempt,
                                   gpu_ids=list(gpu_ids), runner_token_hash=token_hash(real))
    env = {"WML_RUN_ID": run.id, "WML_RUNNER_TOKEN": token or real, "WML_BACKEND_URL": backend_url or backend.url,
           **store_credentials({"access_key": ANY_KEY, "secret_key": ANY_SECRET}, StoreConfig())}
    launch = launch_of(row, backend.store.experiment(run.experiment_id).definition, gpu_ids, env)
    handle = executor.start(launch)
    if record:
        backend.store.update_run(run.id, handle=handle)  # the backend gives a runner its spec from then
    return launch, handle


# -- the worlds ---------------------------------------------------------------------------------
@dataclass
class World:
    """An executor's world: how to make an executor in it whose runners reach their backend at
    a URL (a new one over the same runs, as a restarted backend makes), and a handle like a
    given one that names nothing that runs."""

    name: str
    make: Callable[[str], Executor]
    lost_handle: Callable[[dict], dict]


@contextmanager
def local_world(tmp_path: Path, monkeypatch, backend: RunnerBackend, warm: bool = False) -> Iterator[World]:
    """The local executor: runners are processes of this host, working under ``tmp_path``.

    ``warm``: the tiny definition's commands (``python3 train.py``, framework ``custom``) start
    forked from a zygote (one that imports ``json``: the fork, not the import, is under test),
    and every command that ran was so started; else every run starts cold."""
    from wml_backend.executors.local import LocalExecutor

    runs = tmp_path / "runs"

    def make(backend_url: str) -> Executor:  # each launch gives its runner the URL
        return LocalExecutor(runs, gpus=GPUS, slots=SLOTS, warm={"custom": ("json",)} if warm else {})
    try:  # the same pid started at another time is another process (the pid was reused)
        yield World("local-warm" if warm else "local", make,
                    lambda handle: {**handle, "create_time": handle["create_time"] - 1})
        if warm:
            assert_all_warm(runs)
    finally:  # runners (and their commands) that a failed test left behind
        for proc in psutil.process_iter(["cwd"]):
            if (proc.info["cwd"] or "").startswith(str(runs)):
                with suppress(psutil.Error):
                    proc.kill()


def assert_all_warm(runs: Path) -> None:
    """Every command that ran under ``runs`` was forked by a zygote, none started cold."""
    ran = [log for log in runs.glob("*/learner-*/training-log.txt") if log.stat().st_size]
    forks = sum(log.read_text().count("zygote: forked") for log in runs.glob(".zygotes/*.log"))
    cold = [log for log in ran if "starts cold" in log.read_text()]
    assert not cold and forks >= len(ran), f"{len(ran)} commands ran, {forks} forked warm, cold: {cold}"


@contextmanager
def local_warm_world(tmp_path: Path, monkeypatch, backend: RunnerBackend) -> Iterator[World]:
    """The local executor with warm starts (``local_world``)."""
    with local_world(tmp_path, monkeypatch, backend, warm=True) as world:
        yield world


@contextmanager
def kubernetes_world(tmp_path: Path, monkeypatch, backend: RunnerBackend) -> Iterator[World]:
    """The Kubernetes executor on the test cluster (tests/k8s/testcluster.py), as the
    ServiceAccount of backend/deploy in a namespace of its own: a call its Role refuses fails the
    test. The cluster's node agent runs each pod's command as a process of this host, so runners
    reach the runner backend's URL and its S3 endpoint on 127.0.0.1.
    """
    from wml_backend.executors.kubernetes import KubernetesExecutor

    def make(backend_url: str) -> Executor:
        return KubernetesExecutor.from_settings(backend.settings(gpus=GPUS, slots=SLOTS, public_url=backend_url))
    with backend_namespace(shared_cluster(), tmp_path / "kube") as ns:
        monkeypatch.setenv("KUBECONFIG", str(ns.kubeconfig))
        yield World("kubernetes", make, lambda handle: {**handle, "job": handle["job"] + "-gone"})
        refused = ns.refused()
    assert not refused, f"backend/deploy/rbac.yaml lacks what the executor asked for: {refused}"


#: The worlds by name: each is entered with (tmp_path, monkeypatch, runner backend).
WORLDS = {"local": local_world, "local-warm": local_warm_world, "kubernetes": kubernetes_world}


# -- what an executor says ----------------------------------------------------------------------
@dataclass
class Exits:
    """The ``on_exit`` calls of one executor, as (run id, attempt, exit code)."""

    calls: queue.Queue = field(default_factory=queue.Queue)

    def wire(self, executor: Executor) -> Executor:
        """Record ``executor``'s exits here; the executor."""
        executor.on_exit = lambda run_id, attempt, code, **why: self.calls.put((run_id, attempt, code))
        return executor

    def next(self, timeout: float = 30) -> tuple[str, int, Optional[int]]:
        """The next runner that ended."""
        try:
            return self.calls.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no runner ended in {timeout} s") from None

    def none_within(self, seconds: float) -> bool:
        """Whether no runner ends in the next ``seconds``."""
        try:
            self.calls.get(timeout=seconds)
        except queue.Empty:
            return True
        return False
