"""The Job, Secret and Kueue objects of a run: pure builders, reference YAML, the official schema.

Set ``WML_UPDATE_REFERENCES=1`` to rewrite the reference files after an intended change
(and read the diff before committing it).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import kubernetes_validate
from wml_core.objectstore import StoreConfig
import pytest
import yaml
from wml_core.errors import InvalidInput
from wml_backend.executors.base import Launch
from wml_backend.executors.k8s_kueue import account_queues, queue_name, resource_flavor
from wml_backend.executors.k8s_names import dns_label, label_value
from wml_backend.executors.k8s_objects import job_object, run_objects, secret_object, service_object
from wml_backend.executors.k8s_options import K8sOptions, load_options, with_store
from wml_backend.executors.k8s_pod import cpu_quantity, image_for, memory_quantity
from wml_backend.executors.k8s_status import (
    create_failure,
    failure_reason,
    learner_failure,
    pod_failed,
    pod_index,
    stuck_reason,
    waiting_note,
)

REFERENCE = Path(__file__).parent / "reference"
DEPLOY = Path(__file__).parents[2] / "backend" / "deploy"
#: The Kubernetes version whose OpenAPI schema every object must satisfy (strict: no unknown field).
SCHEMA_VERSION = "1.32.0"
TOKEN, ACCESS, SECRET_KEY = "runner-token-abc", "AKIAEXAMPLE", "secret-key-xyz"

GPU_LAUNCH = Launch(
    run_id="k3x9q2-01", experiment_id="k3x9q2", account="alice", attempt=1, gpus=2, gpu_ids=(0, 1), learners=1, cpus=6,
    memory_bytes=12 * 10**9, framework="pytorch", framework_version="2.4", gpu_type="nvidia-TeslaV100",
    timeout_s=7200, env={"WML_RUN_ID": "k3x9q2-01", "WML_BACKEND_URL": "http://127.0.0.1:8642",
                         "WML_RUNNER_TOKEN": TOKEN, "WML_STORE_ACCESS_KEY": ACCESS, "WML_STORE_SECRET_KEY": SECRET_KEY})
CPU_LAUNCH = Launch(
    run_id="k3x9q2-02", experiment_id="k3x9q2", account="Bob Smith", attempt=2, gpus=0, gpu_ids=(), learners=1,
    cpus=0.5, memory_bytes=512 << 20, framework="custom",
    env={"WML_RUN_ID": "k3x9q2-02", "WML_RUNNER_TOKEN": TOKEN, "WML_BACKEND_URL": "http://127.0.0.1:8642"})
OPTIONS = load_options({}, "wml")  # as the backend's: its URL for pods is the Service of backend/deploy
JOB_UID = "6f1c2a4e-0000-4000-8000-00000000abcd"


def reference(name: str, objects: list[dict]) -> None:
    """Compare with ``reference/NAME`` (or rewrite it when asked to)."""
    path = REFERENCE / name
    text = yaml.safe_dump_all(objects, sort_keys=False)
    if os.environ.get("WML_UPDATE_REFERENCES"):
        path.write_text(text)
    assert list(yaml.safe_load_all(path.read_text())) == objects, f"{name} differs; see the module docstring"


def valid(obj: dict) -> dict:
    """``obj``, once the official schema accepts it."""
    kubernetes_validate.validate(obj, SCHEMA_VERSION, strict=True)
    return obj


def test_gpu_job_matches_reference_and_schema():
    job = valid(job_object(GPU_LAUNCH, OPTIONS, "wml-k3x9q2-01-a1-b2c3"))
    reference("job-gpu.yaml", [job])
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {
        "cpu": "6", "ephemeral-storage": "20Gi", "memory": "12G", "nvidia.com/gpu": "2"}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "nvidia-TeslaV100"}
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["activeDeadlineSeconds"] == 7200


def test_learners_are_an_indexed_job_with_a_headless_service():
    launch = dataclasses.replace(GPU_LAUNCH, learners=2)
    name = "wml-k3x9q2-01-a1-b2c3"
    job = valid(job_object(launch, OPTIONS, name))
    service = valid(service_object(launch, OPTIONS, name, job_uid=JOB_UID))
    reference("job-indexed.yaml", [job, service])
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimit"]) == \
        ("Indexed", 2, 2, 0)
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"  # per learner
    assert pod["subdomain"] == name == service["metadata"]["name"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["MASTER_ADDR"] == f"{name}-0.{name}" and env["MASTER_PORT"] == "29500"
    assert env["WML_LEARNER_INDEX"] == {"fieldRef": {
        "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": name}
    assert service["metadata"]["ownerReferences"][0]["kind"] == "Job"
    for value in (TOKEN, ACCESS, SECRET_KEY):
        assert value not in yaml.safe_dump(job)


def test_one_learner_stays_a_plain_job():
    job = job_object(GPU_LAUNCH, OPTIONS, "wml-x")
    assert "completionMode" not in job["spec"] and "subdomain" not in job["spec"]["template"]["spec"]
    env = {e["name"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert not env & {"MASTER_ADDR", "WML_LEARNER_INDEX"}


def test_a_failed_learner_pod_is_named_by_its_index():
    annotations = {"batch.kubernetes.io/job-completion-index": "1"}
    failed = {**pod({"phase": "Failed", **state(terminated={"exitCode": 1, "reason": "Error"})}),
              "metadata": {"annotations": annotations}}
    assert pod_index(failed) == 1 and pod_failed(failed)
    assert learner_failure(failed) == "learner 2: the command exited with code 1"
    oom = {**pod(state(terminated={"exitCode": 137, "reason": "OOMKilled"})), "metadata": {"annotations": annotations}}
    assert learner_failure(oom) == "learner 2: out of memory: raise memory (the limit was 256Mi)"
    assert not pod_failed(pod({"phase": "Running"})) and pod_index(pod({})) == 0


def test_kueue_cpu_job_matches_reference_and_schema():
    options = K8sOptions(namespace="wml", kueue_queue="wml-{account}", image_pull_secrets=("registry",))
    job = valid(job_object(CPU_LAUNCH, options, "wml-k3x9q2-02-a2-e5f6"))
    reference("job-kueue-cpu.yaml", [job])
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == queue_name("wml-{account}", "Bob Smith")
    assert "tolerations" not in job["spec"]["template"]["spec"]


def test_secret_matches_reference_and_schema():
    reference("secret.yaml", [valid(secret_object(GPU_LAUNCH, OPTIONS, "wml-k3x9q2-01-a1-b2c3", job_uid=JOB_UID))])


def test_the_job_comes_first_and_owns_the_secret_and_the_service():
    launch = dataclasses.replace(GPU_LAUNCH, learners=2)
    job, secret, service, policy = run_objects(launch, OPTIONS, "wml-x", job_uid=JOB_UID)
    assert [o["kind"] for o in (job, secret, service, policy)] == ["Job", "Secret", "Service", "NetworkPolicy"]
    for owned in (secret, service, policy):  # the garbage collector deletes them with the Job
        assert owned["metadata"]["ownerReferences"] == [{"apiVersion": "batch/v1", "kind": "Job", "name": "wml-x",
                                                         "uid": JOB_UID, "controller": False,
                                                         "blockOwnerDeletion": False}]
    assert "ownerReferences" not in job["metadata"]  # Jobs run on while the backend restarts
    assert [o["kind"] for o in run_objects(GPU_LAUNCH, OPTIONS, "wml-x")] == ["Job", "Secret"]


def test_run_pods_are_admitted_under_pod_security_restricted():
    """What the ``restricted`` profile checks, field by field (the real API server checks it too:
    ``test_k8s_cluster.py``)."""
    for launch in (GPU_LAUNCH, CPU_LAUNCH, dataclasses.replace(GPU_LAUNCH, learners=3)):
        pod = job_object(launch, OPTIONS, "wml-x")["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        assert not {"hostNetwork", "hostPID", "hostIPC"} & set(pod)
        for container in pod["containers"]:
            assert container["securityContext"] == {"allowPrivilegeEscalation": False,
                                                    "capabilities": {"drop": ["ALL"]}}
            assert not container.get("ports")
        assert {kind for v in pod["volumes"] for kind in v if kind != "name"} <= {"emptyDir", "persistentVolumeClaim"}


def test_pods_have_a_disk_limit_and_a_bounded_shm():
    pod = job_object(GPU_LAUNCH, OPTIONS, "wml-x")["spec"]["template"]["spec"]
    [dshm] = [v for v in pod["volumes"] if v["name"] == "dshm"]
    assert dshm["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
    assert pod["containers"][0]["resources"]["limits"]["ephemeral-storage"] == "20Gi"
    small = job_object(CPU_LAUNCH, OPTIONS, "wml-x")["spec"]["template"]["spec"]  # 512Mi of memory
    assert [v["emptyDir"]["sizeLimit"] for v in small["volumes"] if v["name"] == "dshm"] == ["512Mi"]
    options = load_options({"WML_K8S_EPHEMERAL_STORAGE": "100Gi", "WML_K8S_SHM_SIZE": "8Gi"}, "wml")
    big = job_object(GPU_LAUNCH, options, "wml-x")["spec"]["template"]["spec"]
    assert big["containers"][0]["resources"]["limits"]["ephemeral-storage"] == "100Gi"
    assert [v["emptyDir"]["sizeLimit"] for v in big["volumes"] if v["name"] == "dshm"] == ["8Gi"]


def test_pods_reach_the_backend_at_its_service_never_at_loopback():
    configured = load_options({"WML_PUBLIC_URL": "http://wml.example:80"}, "x")
    for options in (OPTIONS, load_options({}, "ml-team"), configured):
        env = {e["name"]: e.get("value") for e in
               job_object(GPU_LAUNCH, options, "wml-x")["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["WML_BACKEND_URL"] == options.backend_url  # not the launch's 127.0.0.1
    assert load_options({}, "ml-team").backend_url == "http://wml-backend.ml-team.svc:8642"
    assert K8sOptions(namespace="ml-team").backend_url == "http://wml-backend.ml-team.svc:8642"
    assert load_options({}, "x", public_url="https://wml.internal").backend_url == "https://wml.internal"


def test_the_embedded_file_store_needs_a_claim_and_is_mounted_where_the_backend_has_it():
    file_store = StoreConfig(kind="file", root="/var/lib/wml/home/storage")
    with pytest.raises(InvalidInput, match=r"^kubernetes: the embedded file store \(/var/lib/wml/home/storage\) "
                                           r"is on the backend's disk.*WML_K8S_STORE_PVC") as info:
        with_store(load_options({}, "wml"), file_store)
    assert "\n" not in str(info.value)
    assert with_store(OPTIONS, StoreConfig(kind="s3")) is OPTIONS
    options = with_store(load_options({"WML_K8S_STORE_PVC": "wml-store"}, "wml"), file_store)
    pod = valid(job_object(GPU_LAUNCH, options, "wml-x"))["spec"]["template"]["spec"]
    assert {"name": "claim-0", "persistentVolumeClaim": {"claimName": "wml-store"}} in pod["volumes"]
    assert {"name": "claim-0", "mountPath": "/var/lib/wml/home/storage"} in pod["containers"][0]["volumeMounts"]


def test_a_mount_volume_is_an_operator_named_claim_or_refused():
    options = load_options({"WML_K8S_VOLUME_CLAIMS": "/cosdata=cos-claim, /scratch/=scratch"}, "wml")
    assert dict(options.volume_claims) == {"/cosdata": "cos-claim", "/scratch": "scratch"}
    for path, mounted in (("/cosdata", "/cosdata"), ("/cosdata/mnist/", "/cosdata"), ("/scratch/a", "/scratch")):
        pod = valid(job_object(dataclasses.replace(GPU_LAUNCH, volume_path=path), options, "wml-x"))
        container = pod["spec"]["template"]["spec"]["containers"][0]
        assert {"name": "claim-0", "mountPath": mounted} in container["volumeMounts"]
    with pytest.raises(InvalidInput, match=r"^data store: mount_volume '/cos' is on no PersistentVolumeClaim; map "
                                           r"it \(WML_K8S_VOLUME_CLAIMS=/cos=CLAIM\) or use object storage$"):
        run_objects(dataclasses.replace(GPU_LAUNCH, volume_path="/cos"), options, "wml-x")


def test_secrets_are_in_the_secret_never_in_the_job():
    job_text = yaml.safe_dump(job_object(GPU_LAUNCH, OPTIONS, "wml-x"))
    secret = secret_object(GPU_LAUNCH, OPTIONS, "wml-x")
    for value in (TOKEN, ACCESS, SECRET_KEY):
        assert value not in job_text
    assert secret["stringData"] == {"WML_RUNNER_TOKEN": TOKEN, "WML_STORE_ACCESS_KEY": ACCESS,
                                    "WML_STORE_SECRET_KEY": SECRET_KEY}
    container = job_object(GPU_LAUNCH, OPTIONS, "wml-x")["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "wml-x"}}]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["WML_BACKEND_URL"] == OPTIONS.backend_url and env["WML_WORK_DIR"] == "/job"


def test_kueue_examples_are_what_the_builders_make():
    assert list(yaml.safe_load_all((DEPLOY / "kueue" / "resource-flavor.yaml").read_text())) == [resource_flavor()]
    free = list(yaml.safe_load_all((DEPLOY / "kueue" / "free-account.yaml").read_text()))
    assert free == account_queues("alice", "wml", gpus=1)
    cluster_queue, local_queue = free
    [group] = cluster_queue["spec"]["resourceGroups"]
    quota = {r["name"]: r for r in group["flavors"][0]["resources"]}
    assert quota["nvidia.com/gpu"] == {"name": "nvidia.com/gpu", "nominalQuota": "1"}  # idle GPUs are lent
    assert cluster_queue["spec"]["cohortName"] == "wml" and cluster_queue["spec"]["preemption"] == {
        "reclaimWithinCohort": "Any", "withinClusterQueue": "LowerPriority", "borrowWithinCohort": {"policy": "Never"}}
    pod = job_object(GPU_LAUNCH, OPTIONS, "x")["spec"]["template"]["spec"]
    asked = set(pod["containers"][0]["resources"]["limits"])
    assert asked <= set(group["coveredResources"]) == set(quota), "Kueue admits nothing asking for more"
    assert local_queue["spec"]["clusterQueue"] == cluster_queue["metadata"]["name"]
    job = job_object(GPU_LAUNCH, K8sOptions(namespace="wml", kueue_queue="wml-{account}"), "wml-x")
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == local_queue["metadata"]["name"]


@pytest.mark.parametrize("account, queue", [
    ("alice", "wml-alice"),                           # the documented rule: wml-<account>...
    ("team-a", "wml-team-a"),
    ("a" * 59, "wml-" + "a" * 59),                    # ...up to 63 characters
    ("team_a", "wml-team-a-433147f7"),                # else made a valid name, with a hash: no collision
    ("Team-A", "wml-team-a-"),
    ("a" * 60, "wml-" + "a" * 50 + "-"),             # prefix only: the hash follows
    ("x" * 63 + "_y", "wml-" + "x" * 50 + "-"),
])
def test_kueue_queue_names_follow_one_rule_for_every_account(account, queue, capsys):
    name = queue_name("wml-{account}", account)
    assert name.startswith(queue) and len(name) <= 63 and dns_label(name) == name
    twin = account.lower().replace("_", "-")  # another account, which must get a queue of its own
    assert twin == account or name != queue_name("wml-{account}", twin)
    job = job_object(dataclasses.replace(GPU_LAUNCH, account=account),
                     K8sOptions(namespace="wml", kueue_queue="wml-{account}"), "wml-x")
    cluster_queue, local_queue = account_queues(account, "wml", gpus=1)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == local_queue["metadata"]["name"] == name
    assert cluster_queue["metadata"]["name"] == local_queue["spec"]["clusterQueue"] == dns_label(f"wml-{name}")
    from wml_backend.executors.k8s_kueue import main
    main([account, "--gpus", "2", "--namespace", "wml"])  # what an operator applies for that account
    printed = list(yaml.safe_load_all(capsys.readouterr().out))
    assert printed == account_queues(account, "wml", gpus=2)


def test_images_come_from_the_map_by_name_and_version():
    options = load_options({"WML_K8S_IMAGE_MAP": '{"pytorch:2.5": "reg/pt:special", "h2o3": "reg/h2o:{version}"}'},
                           "wml")
    assert image_for(options, "pytorch", "2.5") == "reg/pt:special"
    assert image_for(options, "pytorch", None) == "wml-runner-pytorch:2.4"
    assert image_for(options, "H2O3", "3.46") == "reg/h2o:3.46"
    with pytest.raises(InvalidInput, match=r"'caffe' has no image; configured: custom, h2o3, keras, pytorch"):
        image_for(options, "caffe", "1.0")


@pytest.mark.parametrize("env, message", [
    ({"WML_K8S_NAMESPCE": "x"}, r"WML_K8S_NAMESPCE: unknown setting; allowed: WML_K8S_NAMESPACE, WML_K8S_CONTEXT"),
    ({"WML_K8S_IMAGE_MAP": "pytorch=x"}, r"WML_K8S_IMAGE_MAP: 'pytorch=x' is not a JSON object of framework"),
    ({"WML_K8S_JOB_TTL_S": "-1"}, r"WML_K8S_JOB_TTL_S: '-1' is not a whole number of seconds ≥ 0"),
    ({"WML_K8S_TOLERATIONS": "{}"}, r"WML_K8S_TOLERATIONS: '{}' is not a JSON list of tolerations"),
])
def test_a_bad_setting_is_one_line_naming_what_is_allowed(env, message):
    with pytest.raises(InvalidInput, match=message) as info:
        load_options(env, "wml")
    assert "\n" not in str(info.value)


def test_quantities_and_names():
    assert [cpu_quantity(c) for c in (1, 0.5, 2.25)] == ["1", "500m", "2250m"]
    assert [memory_quantity(m) for m in (4 << 30, 4 * 10**9, 512 << 20, 1000)] == ["4Gi", "4G", "512Mi", "1000"]
    assert job_object(dataclasses.replace(GPU_LAUNCH, timeout_s=90.4), OPTIONS, "x")["spec"][
        "activeDeadlineSeconds"] == 90
    assert "activeDeadlineSeconds" not in job_object(CPU_LAUNCH, OPTIONS, "x")["spec"]
    assert label_value("alice") == "alice"
    assert label_value("Bob Smith").startswith("Bob-Smith-") and len(label_value("x" * 80)) <= 63
    assert dns_label("wml-Bob Smith").startswith("wml-bob-smith-")


POD = {"spec": {"containers": [{"image": "reg/runner:1", "resources": {"limits": {"memory": "256Mi"}}}]}}


def pod(status: dict) -> dict:
    return {**POD, "status": status}


def state(**state) -> dict:
    return {"containerStatuses": [{"state": state}]}


@pytest.mark.parametrize("job, pod_status, reason", [
    ({}, state(terminated={"exitCode": 137, "reason": "OOMKilled"}),
     "out of memory: raise memory (the limit was 256Mi)"),
    ({}, {"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."},
     "evicted from its node: The node was low on resource: memory."),
    ({}, {"phase": "Running", "conditions": [{"type": "DisruptionTarget", "status": "True",
                                              "reason": "DeletionByTaintManager"}]},
     "node lost (its node became unreachable or was tainted NoExecute)"),
    ({"spec": {"activeDeadlineSeconds": 60}, "status": {"conditions": [
        {"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]}}, {"phase": "Failed"},
     "timed out after 60 s (activeDeadlineSeconds)"),
    ({"spec": {"activeDeadlineSeconds": 60}, "status": {"conditions": [  # its pods were then stopped somehow
        {"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]}},
     {"phase": "Failed", "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "x"}]},
     "timed out after 60 s (activeDeadlineSeconds)"),
    ({}, state(terminated={"exitCode": 3, "reason": "Error"}), None),
])
def test_failure_reasons(job, pod_status, reason):
    assert failure_reason(job, pod(pod_status)) == reason


def test_waiting_and_stuck_reasons():
    unschedulable = {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                     "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]}
    assert waiting_note({"spec": {}}, pod(unschedulable)) == \
        "waiting for free GPUs: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    suspended = {"metadata": {"labels": {"kueue.x-k8s.io/queue-name": "wml-alice"}}, "spec": {"suspend": True}}
    assert waiting_note(suspended, None) == "waiting for Kueue to admit it (LocalQueue wml-alice)"
    pulling = state(waiting={"reason": "ImagePullBackOff", "message": "Back-off pulling image"})
    assert stuck_reason(pod(pulling)) == "cannot pull image reg/runner:1 (ImagePullBackOff): Back-off pulling image"
    assert stuck_reason(pod(state(waiting={"reason": "ContainerCreating"}))) is None
    no_secret = state(waiting={"reason": "CreateContainerConfigError", "message": 'secret "wml-x" not found'})
    assert stuck_reason(pod(no_secret), secret="wml-x") is None  # its own Secret, made just after the Job
    assert stuck_reason(pod(no_secret), secret="wml-y").startswith("cannot start the runner container (")
    not_yet_linked = state(waiting={"reason": "CreateContainerConfigError", "message": (
        'secrets "wml-x" is forbidden: User "system:node:node-1" cannot get resource "secrets" in API group "" '
        "in the namespace \"wml\": no relationship found between node 'node-1' and this object")})
    assert stuck_reason(pod(not_yet_linked), secret="wml-x") is None  # the Node authorizer learns of the pod next
    refused = state(waiting={"reason": "CreateContainerConfigError", "message": (
        'secrets "wml-x" is forbidden: User "system:node:node-1" cannot get resource "secrets"')})
    assert stuck_reason(pod(refused), secret="wml-x").startswith("cannot start the runner container (")


PSA = ('Error creating: pods "wml-x-abcde" is forbidden: violates PodSecurity "restricted:latest": '
       'allowPrivilegeEscalation != false')
QUOTA = ('Error creating: pods "wml-x-abcde" is forbidden: exceeded quota: gpus, requested: '
         'requests.nvidia.com/gpu=1, used: requests.nvidia.com/gpu=1, limited: requests.nvidia.com/gpu=1')


def test_a_pod_the_api_refuses_fails_the_run_with_its_words_unless_a_quota_may_free_up():
    assert create_failure(PSA) == ('cannot create the run\'s pod: pods "wml-x-abcde" is forbidden: violates '
                                   'PodSecurity "restricted:latest": allowPrivilegeEscalation != false')
    assert create_failure(QUOTA) is None and create_failure(None) is None
    assert waiting_note({"spec": {}}, None, QUOTA) == "waiting for its pod to be created: " + QUOTA[16:]


def test_a_runner_in_a_learner_pod_runs_that_learner_only():
    from wml_runner.main import learner_of_pod
    assert learner_of_pod({"WML_LEARNER_INDEX": "1", "MASTER_ADDR": "job-0.job"}) == 2
    assert learner_of_pod({"JOB_COMPLETION_INDEX": "0", "MASTER_ADDR": "job-0.job"}) == 1
    assert learner_of_pod({"WML_LEARNER_INDEX": "1"}) is None  # no rendezvous given: not a learner pod
    assert learner_of_pod({"MASTER_ADDR": "127.0.0.1"}) is None  # the local executor's runner: every learner
