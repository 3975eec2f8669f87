"""Kueue for real (issue 14, item 5), on the test cluster with Kueue.

The backend runs with ``WML_K8S_KUEUE_QUEUE``: it makes each account's ClusterQueue (its GPU
quota as the nominal quota, in the cohort of its namespace) and LocalQueue itself, as accounts
are created and changed, under the RBAC of ``backend/deploy/kueue/rbac.yaml``. Kueue alone holds
the GPU quota: the backend hands Jobs over as slots allow, and a run beyond its account's quota
waits, suspended, in Kueue, which the user sees in its reason. A workload of higher priority
preempts a running run: Kueue suspends its Job, the runner gets SIGTERM and stores its
checkpoint, and the run is queued again (not a retry), waits in Kueue, and resumes.
"""

from __future__ import annotations

import json
import uuid
from types import SimpleNamespace

import pytest
from test_cluster_smoke import RESTRICTED, job, job_condition
from test_disruptions import resumed_after_one_preemption, resuming_run, running_pod
from test_k8s_backend import IMAGES, ClusterBackend, _stamp, jobs_of, wait_run, wait_until
from testcluster import DEPLOY, in_namespace

from s3server import ALLOW_ALL_S3
from wml_backend.executors.k8s_kueue import KUEUE_GROUP, KUEUE_VERSION, cluster_queue_name, resource_flavor

pytestmark = pytest.mark.nodeagent
QUEUE = "wml-{account}"
#: A WorkloadPriorityClass above the runs' (which have none: priority 0).
HIGH = "wml-test-high"


def kueue_rbac(ns) -> list[dict]:
    """backend/deploy/kueue/rbac.yaml for the backend of ``ns``: the ClusterRoleBinding named after
    ``ns`` (cluster-wide names), the Role and RoleBinding moved into it."""
    import yaml
    objects = [o for o in yaml.safe_load_all((DEPLOY / "kueue" / "rbac.yaml").read_text()) if o]
    made = []
    for obj in objects:
        if obj["kind"] == "ClusterRoleBinding":
            obj["metadata"]["name"] = f"{obj['metadata']['name']}-{ns.name}"
            obj["subjects"][0]["namespace"] = ns.name
        elif obj["kind"] != "ClusterRole":
            obj = in_namespace(obj, ns.name)
        made.append(obj)
    return made


def create_quietly(create, *args) -> None:
    """Create a cluster-wide object another test module may have made already."""
    from kubernetes.client import ApiException
    from kubernetes.utils import FailToCreateError
    try:
        create(*args)
    except ApiException as exc:
        if exc.status != 409:
            raise
    except FailToCreateError as exc:
        if any(e.status != 409 for e in exc.api_exceptions):
            raise


@pytest.fixture(scope="module")
def kueue(kube_module_ns, s3, tmp_path_factory):
    """A backend whose Jobs go through Kueue, its account ``local`` holding no GPUs (so that no
    idle quota is there to borrow in its cohort) and account ``alice`` 1 GPU, whose token its
    ``wml`` commands use (``admin``: the administrator's token)."""
    from kubernetes import client, utils
    api = kube_module_ns.cluster.api()
    custom, rbac = client.CustomObjectsApi(api), client.RbacAuthorizationV1Api(api)
    create_quietly(custom.create_cluster_custom_object, KUEUE_GROUP, KUEUE_VERSION, "resourceflavors",
                   resource_flavor())
    create_quietly(custom.create_cluster_custom_object, KUEUE_GROUP, KUEUE_VERSION, "workloadpriorityclasses",
                   {"apiVersion": f"{KUEUE_GROUP}/{KUEUE_VERSION}", "kind": "WorkloadPriorityClass",
                    "metadata": {"name": HIGH}, "value": 1000})
    granted = kueue_rbac(kube_module_ns)
    for obj in granted:
        create_quietly(utils.create_from_dict, api, obj)
    key = s3.user(f"operator-{kube_module_ns.name}", ALLOW_ALL_S3)
    home = tmp_path_factory.mktemp("k8s-kueue") / "wml-home"
    backend = ClusterBackend(home, kube_module_ns, s3, key, gpus=4, extra_env={
        "WML_K8S_KUEUE_QUEUE": QUEUE, "WML_K8S_PENDING_NOTE_S": "0.5", "WML_K8S_IMAGE_MAP": json.dumps(IMAGES)})
    backend.start()
    backend.cli("accounts", "update", "local", "--gpus", "0", check=True)
    token = backend.cli("accounts", "create", "alice", "--gpus", "1", check=True).stdout.strip().splitlines()[-1]
    admin, backend.env["WML_TOKEN"] = backend.env["WML_TOKEN"], token  # the tests' wml commands are alice's
    yield SimpleNamespace(ns=kube_module_ns, backend=backend, s3=s3, admin=admin, custom=custom)
    backend.close()
    for account in ("local", "alice"):
        custom.delete_cluster_custom_object(KUEUE_GROUP, KUEUE_VERSION, "clusterqueues",
                                            cluster_queue_name(kube_module_ns.name, QUEUE, account))
    binding = next(o for o in granted if o["kind"] == "ClusterRoleBinding")
    rbac.delete_cluster_role_binding(binding["metadata"]["name"])


def cluster_queue(kueue, account: str) -> dict:
    """The account's ClusterQueue, as the backend made it."""
    return kueue.custom.get_cluster_custom_object(KUEUE_GROUP, KUEUE_VERSION, "clusterqueues",
                                                  cluster_queue_name(kueue.ns.name, QUEUE, account))


def gpu_quota(queue: dict) -> str:
    """The nominal ``nvidia.com/gpu`` quota of a ClusterQueue."""
    [group] = queue["spec"]["resourceGroups"]
    return next(r["nominalQuota"] for r in group["flavors"][0]["resources"] if r["name"] == "nvidia.com/gpu")


def test_the_backend_keeps_each_accounts_queues_as_the_account_is(kueue):
    alice = cluster_queue(kueue, "alice")
    assert gpu_quota(alice) == "1" and alice["spec"]["cohortName"] == kueue.ns.name
    assert alice["spec"]["preemption"]["reclaimWithinCohort"] == "Any"
    assert gpu_quota(cluster_queue(kueue, "local")) == "0"  # updated from the backend's --gpus 4
    local_queue = kueue.custom.get_namespaced_custom_object(KUEUE_GROUP, KUEUE_VERSION, kueue.ns.name,
                                                            "localqueues", "wml-alice")
    assert local_queue["spec"]["clusterQueue"] == alice["metadata"]["name"]
    kueue.backend.cli("accounts", "update", "alice", "--gpus", "2", check=True, token=kueue.admin)
    assert gpu_quota(cluster_queue(kueue, "alice")) == "2"
    kueue.backend.cli("accounts", "update", "alice", "--gpus", "1", check=True, token=kueue.admin)
    assert gpu_quota(cluster_queue(kueue, "alice")) == "1"


def test_a_1_gpu_accounts_second_run_waits_in_kueue_until_the_first_ends(kueue, tmp_path):
    first = resuming_run(kueue, tmp_path / "a", steps=8)
    second = resuming_run(kueue, tmp_path / "b", steps=2)
    waiting = "waiting for Kueue to admit it (LocalQueue wml-alice)"
    # the backend handed both to the cluster (Kueue holds the quota); Kueue admits one
    run = wait_run(kueue.backend, second, until=lambda r: r["reason"] == waiting, timeout=60)
    assert run["state"] == "PENDING" and run["gpu_seconds"] == 0, run
    [held] = jobs_of(kueue, second)
    assert held["spec"]["suspend"] is True
    assert kueue.backend.cli_json("show", first)["state"] in ("PENDING", "DOWNLOADING", "PROCESSING", "STORING")
    assert waiting in kueue.backend.cli("show", second).stdout
    ended = wait_run(kueue.backend, first, timeout=90)
    done = wait_run(kueue.backend, second, timeout=90)
    assert ended["state"] == done["state"] == "COMPLETED", (ended, done)
    assert done["attempt"] == 1 and done["preemptions"] == 0, done
    began = min(_stamp(t) for t in done["transitions"] if t["state"] == "PROCESSING")
    assert began >= _stamp(ended["transitions"][-1]) - 1.0, (ended, done)  # once the first one's pod ended


def test_a_higher_priority_workload_preempts_a_run_which_resumes_afterwards(kueue, tmp_path):
    from kubernetes import client
    run_id = resuming_run(kueue, tmp_path, steps=30)
    running_pod(kueue, run_id)
    # someone else's Job in alice's queue, of a higher priority: Kueue preempts the run for it
    name = f"urgent-{uuid.uuid4().hex[:4]}"
    gpu = {"securityContext": RESTRICTED, "resources": {"limits": {"nvidia.com/gpu": "1", "cpu": "100m",
                                                                   "memory": "64Mi"}}}
    batch = client.BatchV1Api(kueue.ns.cluster.api())
    batch.create_namespaced_job(kueue.ns.name, job(name, "import time; time.sleep(6)", container=gpu, labels={
        "kueue.x-k8s.io/queue-name": "wml-alice", "kueue.x-k8s.io/priority-class": HIGH}))
    # the run is queued again, then waits in Kueue behind the urgent Job
    waiting = wait_run(kueue.backend, run_id, until=lambda r: r["attempt"] == 2 and r["state"] == "PENDING"
                       and r["reason"].startswith("waiting for Kueue"), timeout=60)
    assert waiting["preempted"].startswith("preempted: Kueue gave its GPUs to workload"), waiting["preempted"]
    assert "prioritization in the ClusterQueue" in waiting["preempted"], waiting["preempted"]
    wait_until(lambda: job_condition(batch, kueue.ns.name, name) == "Complete", timeout=60)
    run = resumed_after_one_preemption(kueue, run_id, steps=30, timeout=180)
    assert "preempted: Kueue gave its GPUs" in kueue.backend.cli("show", run_id).stdout
    began = min(_stamp(t) for t in run["transitions"] if t["state"] == "PROCESSING" and t["attempt"] == 2)
    urgent = batch.read_namespaced_job_status(name, kueue.ns.name).status
    assert began >= urgent.completion_time.timestamp() - 1.0, (run, urgent)  # not before the quota was free


def test_the_pending_timeout_runs_from_kueues_admission_not_from_the_wait_in_its_queue():
    from datetime import datetime, timezone

    from wml_backend.executors.k8s_watched_run import WatchedRun
    run = WatchedRun(job_name="wml-x", attempt=1, started=0.0, job={"spec": {"suspend": True}, "status": {}})
    assert run.admitted_at(100.0) is None  # waits in Kueue: no pending timeout runs
    run.job = {"spec": {"suspend": False}, "status": {"startTime": "2026-01-02T03:04:05Z"}}
    assert run.admitted_at(100.0) == datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc).timestamp()
    run.job = {"spec": {"suspend": False}, "status": {}}  # not yet started as far as the watch saw
    assert run.admitted_at(100.0) == 100.0


def test_kueues_preemption_message_names_the_workload_that_took_the_gpus():
    from wml_backend.executors.k8s_status import kueue_preemption
    message = ("Preempted to accommodate a workload (UID: 5b1f, JobUID: 77aa) due to reclamation within the "
               "cohort; preemptor path: /wml/wml-wml-bob; preemptee path: /wml/wml-wml-alice")
    assert kueue_preemption(message) == \
        "Kueue gave its GPUs to workload 5b1f of /wml/wml-wml-bob (reclamation within the cohort)"
    assert kueue_preemption("quota shrank") == "its Job was suspended by Kueue: quota shrank"
    assert kueue_preemption(None).startswith("its Job was suspended by Kueue")
