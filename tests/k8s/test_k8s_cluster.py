"""Against a real cluster (``KUBECONFIG=... pytest -m k8s tests/k8s``): the API server accepts our
objects, and the executor follows Jobs there. Needs only the Role of ``backend/deploy/rbac.yaml``
in the namespace (``WML_K8S_NAMESPACE`` or the context's); no runner image, no GPU: the runs
here are ones that cannot start, which is what they test.
"""

from __future__ import annotations

import os
import queue

import pytest

from wml_backend.executors.base import Launch
from wml_backend.executors.k8s_objects import job_object, object_name, secret_object
from wml_backend.executors.kubernetes import KubernetesExecutor
from wml_backend.settings import Settings

pytestmark = pytest.mark.k8s


def launch(run_id: str, gpus: int = 0) -> Launch:
    return Launch(run_id=run_id, experiment_id="k8stest", account="k8s-test", attempt=1, gpus=gpus,
                  gpu_ids=tuple(range(gpus)), learners=1, cpus=0.1, memory_bytes=64 << 20, framework="custom",
                  env={"WML_RUN_ID": run_id, "WML_RUNNER_TOKEN": "not-a-real-token", "WML_BACKEND_URL": "http://x"})


@pytest.fixture
def executor(monkeypatch):
    monkeypatch.setenv("WML_K8S_PENDING_NOTE_S", "1")
    monkeypatch.setenv("WML_K8S_IMAGE_PULL_GRACE_S", "5")
    monkeypatch.setenv("WML_K8S_JOB_TTL_S", "60")
    monkeypatch.setenv("WML_K8S_IMAGE_MAP", os.environ.get("WML_K8S_IMAGE_MAP")
                       or '{"custom": "registry.invalid/wml-runner-missing:{version}"}')
    executor = KubernetesExecutor.from_settings(Settings(gpus=1000))
    exits: queue.Queue = queue.Queue()
    notes: queue.Queue = queue.Queue()
    executor.on_exit = lambda run_id, attempt, code, reason=None, log_tail=None: exits.put((run_id, code, reason))
    executor.on_note = lambda run_id, note: notes.put((run_id, note))
    yield executor, exits, notes
    executor.close()


def test_the_api_server_accepts_our_objects(executor):
    ex, _, _ = executor
    name = object_name("k8stest-dry", 1, "0000")
    for create, body in ((ex._core.create_namespaced_secret, secret_object(launch("k8stest-dry"), ex.options, name)),
                         (ex._batch.create_namespaced_job, job_object(launch("k8stest-dry", 1), ex.options, name))):
        create(ex.ns, body, dry_run="All", field_validation="Strict", _preload_content=False)


def test_an_image_that_cannot_be_pulled_fails_the_run(executor):
    ex, exits, _ = executor
    ex.start(launch("k8stest-img"))
    run_id, code, reason = exits.get(timeout=180)
    assert run_id == "k8stest-img" and reason.startswith("cannot pull image registry.invalid/"), reason


def test_a_run_no_node_can_hold_waits_with_the_schedulers_words(executor):
    ex, exits, notes = executor
    handle = ex.start(launch("k8stest-big", gpus=1000))
    run_id, note = notes.get(timeout=120)
    assert run_id == "k8stest-big" and note.startswith("waiting for "), note
    ex.cancel("k8stest-big", handle)
    assert exits.get(timeout=120)[0] == "k8stest-big"
