"""The objects the executor renders, as the API server judges them: accepted (server-side, strict
field validation) under Pod Security ``restricted``; what the backend's Role lets it do with
Secrets; Secrets and Services that go with their Job; Kueue queues named as docs/kubernetes.md
says. On any cluster (``kube_ns``: a namespace from ``backend/deploy``); no node agent needed.
"""

from __future__ import annotations

import dataclasses
import queue
import time
import uuid

import pytest

from wml_backend.executors.base import Launch
from wml_backend.executors.k8s_kueue import KUEUE_API, account_queues, resource_flavor
from wml_backend.executors.k8s_objects import object_name, run_objects
from wml_backend.executors.k8s_options import load_options, with_store
from wml_backend.executors.kubernetes import KubernetesExecutor
from wml_backend.settings import Settings
from wml_core.objectstore import StoreConfig

#: A default store that pods need no claim for (nothing here stores anything).
S3 = "s3://wml-k8s-test"
KUEUE_GROUP, KUEUE_VERSION = KUEUE_API.split("/")


def launch(run_id: str, gpus: int = 0, **changes) -> Launch:
    base = Launch(run_id=run_id, experiment_id="k8stest", account="k8s-test", attempt=1, gpus=gpus,
                  gpu_ids=tuple(range(gpus)), learners=1, cpus=0.1, memory_bytes=64 << 20, framework="custom",
                  env={"WML_RUN_ID": run_id, "WML_RUNNER_TOKEN": "not-a-real-token", "WML_BACKEND_URL": "http://x"})
    return dataclasses.replace(base, **changes)


def wait_for(check, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.25)
    return value


@pytest.fixture
def admin(kube_cluster):
    """The administrator's client, and the ``kubernetes.client`` module."""
    from kubernetes import client
    return kube_cluster.api(), client


@pytest.fixture
def executor(kube_ns, monkeypatch):
    """A factory of executors as the deployed backend runs them: as the ServiceAccount, in its namespace."""
    started = []

    def start(**env: str):
        monkeypatch.setenv("KUBECONFIG", str(kube_ns.kubeconfig))
        for key, value in {"WML_K8S_PENDING_NOTE_S": "1", "WML_K8S_JOB_TTL_S": "60", **env}.items():
            monkeypatch.setenv(key, value)
        ex = KubernetesExecutor.from_settings(Settings(gpus=1000, storage_url=S3))
        ex.exits = queue.Queue()
        ex.on_exit = lambda run_id, attempt, code, reason=None, log_tail=None, disruption=None: ex.exits.put((run_id, code, reason))
        started.append(ex)
        return ex

    yield start
    for ex in started:
        ex.close()


def test_the_api_server_accepts_every_object_we_render_under_pod_security_restricted(admin, kube_ns):
    api, client = admin
    ns = kube_ns.name
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    claims = with_store(load_options({"WML_K8S_STORE_PVC": "store", "WML_K8S_VOLUME_CLAIMS": "/data=data"}, ns),
                        StoreConfig(kind="file", root="/var/lib/wml/home/storage"))
    cases = [(launch("ok-01", gpus=2, gpu_type="nvidia-TeslaV100", timeout_s=60), load_options({}, ns)),
             (launch("ok-02", gpus=1, learners=3), load_options({}, ns)),
             (launch("ok-03", account="team_a"), load_options({"WML_K8S_KUEUE_QUEUE": "wml-{account}"}, ns)),
             (launch("ok-04", volume_path="/data/mnist"), claims)]
    create = {"Job": batch.create_namespaced_job, "Secret": core.create_namespaced_secret,
              "Service": core.create_namespaced_service,
              "NetworkPolicy": client.NetworkingV1Api(api).create_namespaced_network_policy}
    for run, options in cases:
        job, *owned = run_objects(run, options, object_name(run.run_id, 1, "0000"), job_uid=str(uuid.uuid4()))
        for obj in (job, *owned):
            resp = create[obj["kind"]](ns, obj, dry_run="All", field_validation="Strict", _preload_content=False)
            assert not resp.headers.get("Warning"), resp.headers.get("Warning")  # Pod Security warns on Jobs
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe"},
               "spec": job["spec"]["template"]["spec"]}
        core.create_namespaced_pod(ns, pod, dry_run="All", _preload_content=False)  # and enforces on pods
    refused = {**pod, "spec": {**pod["spec"], "securityContext": {}}}
    with pytest.raises(client.ApiException, match="violates PodSecurity"):  # the namespace does enforce it
        core.create_namespaced_pod(ns, refused, dry_run="All", _preload_content=False)


def test_the_backend_can_read_no_secret(kube_ns):
    for verb, allowed in (("list", False), ("get", False), ("watch", False), ("create", True), ("delete", True)):
        assert kube_ns.can_i(verb, "secrets") is allowed, verb


def absent(client, read, name: str, ns: str) -> bool:
    try:
        read(name, ns)
        return False
    except client.ApiException as exc:
        return exc.status == 404


def test_the_secret_and_the_service_go_with_their_job(admin, kube_ns, executor):
    api, client = admin
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    ex = executor()
    handle = ex.start(launch("gc-01", gpus=1000, learners=2))  # fits no node: it waits
    ex.close()  # the backend goes: nothing of it deletes the Secret now
    name = handle["job"]
    for obj in (core.read_namespaced_secret(name, kube_ns.name), core.read_namespaced_service(name, kube_ns.name)):
        [owner] = obj.metadata.owner_references
        assert (owner.kind, owner.name, owner.uid) == ("Job", name, handle["uid"])
    batch.delete_namespaced_job(name, kube_ns.name, propagation_policy="Background")
    wait_for(lambda: absent(client, core.read_namespaced_secret, name, kube_ns.name))
    wait_for(lambda: absent(client, core.read_namespaced_service, name, kube_ns.name))


def test_kueue_admits_into_the_queue_the_docs_name_for_any_account(admin, kube_ns, executor):
    api, client = admin
    custom = client.CustomObjectsApi(api)
    try:
        custom.create_cluster_custom_object(KUEUE_GROUP, KUEUE_VERSION, "resourceflavors", resource_flavor())
    except client.ApiException as exc:
        if exc.status == 404:
            pytest.skip("Kueue is not installed")
        assert exc.status == 409, exc  # made by another test
    account = f"Team_{uuid.uuid4().hex[:4]}"  # upper case and "_": not a valid name as it is
    cluster_queue, local_queue = account_queues(account, kube_ns.name, gpus=1)
    custom.create_cluster_custom_object(KUEUE_GROUP, KUEUE_VERSION, "clusterqueues", cluster_queue)
    custom.create_namespaced_custom_object(KUEUE_GROUP, KUEUE_VERSION, kube_ns.name, "localqueues", local_queue)
    try:
        ex = executor(WML_K8S_KUEUE_QUEUE="wml-{account}")
        handle = ex.start(launch("kq-01", account=account, gpus=1))
        batch = client.BatchV1Api(api)
        wait_for(lambda: not batch.read_namespaced_job(handle["job"], kube_ns.name).spec.suspend)  # admitted
        ex.cancel("kq-01", handle)
        ex.exits.get(timeout=120)
    finally:
        custom.delete_cluster_custom_object(KUEUE_GROUP, KUEUE_VERSION, "clusterqueues",
                                            cluster_queue["metadata"]["name"])
