"""The Job, Secret and Kueue objects of a run: pure builders, reference YAML, the official schema.

Set ``WML_UPDATE_REFERENCES=1`` to rewrite the reference files after an intended change
(and read the diff before committing it).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from wml_backend.errors import InvalidInput
from wml_backend.executors.base import Launch
from wml_backend.executors.k8s_kueue import account_queues, resource_flavor
from wml_backend.executors.k8s_names import dns_label, label_value
from wml_backend.executors.k8s_objects import (
    cpu_quantity,
    image_for,
    job_object,
    memory_quantity,
    secret_object,
    service_object,
)
from wml_backend.executors.k8s_options import K8sOptions, load_options
from wml_backend.executors.k8s_status import (
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
    env={"WML_RUN_ID": "k3x9q2-01", "WML_BACKEND_URL": "http://127.0.0.1:8642", "WML_RUNNER_TOKEN": TOKEN,
         "WML_STORE_ACCESS_KEY": ACCESS, "WML_STORE_SECRET_KEY": SECRET_KEY})
CPU_LAUNCH = Launch(
    run_id="k3x9q2-02", experiment_id="k3x9q2", account="Bob Smith", attempt=2, gpus=0, gpu_ids=(), learners=1,
    cpus=0.5, memory_bytes=512 << 20, framework="custom",
    env={"WML_RUN_ID": "k3x9q2-02", "WML_RUNNER_TOKEN": TOKEN, "WML_BACKEND_URL": "http://127.0.0.1:8642"})
OPTIONS = K8sOptions(namespace="wml", public_url="http://wml-backend.wml.svc:8642")


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
    job = valid(job_object(GPU_LAUNCH, OPTIONS, "wml-k3x9q2-01-a1-b2c3", timeout_s=7200))
    reference("job-gpu.yaml", [job])
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"cpu": "6", "memory": "12G", "nvidia.com/gpu": "2"}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "nvidia-TeslaV100"}
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["activeDeadlineSeconds"] == 7200


def test_learners_are_an_indexed_job_with_a_headless_service():
    launch = dataclasses.replace(GPU_LAUNCH, learners=2)
    name = "wml-k3x9q2-01-a1-b2c3"
    job = valid(job_object(launch, OPTIONS, name, timeout_s=7200))
    service = valid(service_object(launch, OPTIONS, name, job_uid="6f1c2a4e-0000-4000-8000-00000000abcd"))
    reference("job-indexed.yaml", [job, service])
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimit"]) == \
        ("Indexed", 2, 2, 0)
    container = pod["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "6", "memory": "12G", "nvidia.com/gpu": "2"}  # per learner
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
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == dns_label("wml-Bob Smith")
    assert "tolerations" not in job["spec"]["template"]["spec"]


def test_secret_matches_reference_and_schema():
    reference("secret.yaml", [valid(secret_object(GPU_LAUNCH, OPTIONS, "wml-k3x9q2-01-a1-b2c3"))])


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
    assert env["WML_BACKEND_URL"] == OPTIONS.public_url and env["WML_WORK_DIR"] == "/job"


def test_kueue_examples_are_what_the_builders_make():
    assert list(yaml.safe_load_all((DEPLOY / "kueue" / "resource-flavor.yaml").read_text())) == [resource_flavor()]
    free = list(yaml.safe_load_all((DEPLOY / "kueue" / "free-account.yaml").read_text()))
    assert free == account_queues("alice", "wml", gpus=1)
    cluster_queue, local_queue = free
    gpu = cluster_queue["spec"]["resourceGroups"][0]["flavors"][0]["resources"][2]
    assert gpu == {"name": "nvidia.com/gpu", "nominalQuota": "1", "borrowingLimit": "0"}  # free account: 1 GPU
    assert local_queue["spec"]["clusterQueue"] == cluster_queue["metadata"]["name"]
    job = job_object(GPU_LAUNCH, K8sOptions(namespace="wml", kueue_queue="wml-{account}"), "wml-x")
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == local_queue["metadata"]["name"]


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


def test_a_runner_in_a_learner_pod_runs_that_learner_only():
    from wml_backend.runner.main import learner_of_pod
    assert learner_of_pod({"WML_LEARNER_INDEX": "1", "MASTER_ADDR": "job-0.job"}) == 2
    assert learner_of_pod({"JOB_COMPLETION_INDEX": "0", "MASTER_ADDR": "job-0.job"}) == 1
    assert learner_of_pod({"WML_LEARNER_INDEX": "1"}) is None  # no rendezvous given: not a learner pod
    assert learner_of_pod({"MASTER_ADDR": "127.0.0.1"}) is None  # the local executor's runner: every learner
