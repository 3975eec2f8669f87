"""The Kubernetes objects starting a run creates, as pure functions: its Secret, Job and Service.

A run of one learner is a plain Job of one pod. A run of N learners is an Indexed Job
(completions = parallelism = N, one pod per learner with the manifest's per-learner resources)
plus a headless Service that gives every pod a stable name, ``<job>-<index>.<service>``: learner
1 (index 0) is the rendezvous (``MASTER_ADDR``) of ``torch.distributed``.

Nothing here talks to a cluster, so every object can be compared with reference YAML and
validated against the Kubernetes OpenAPI schema offline (``tests/k8s``).
"""

from __future__ import annotations

import re
import secrets
from typing import Any, Mapping, Optional

from ..errors import InvalidInput
from .base import Launch
from .k8s_names import (
    ACCOUNT_LABEL,
    ATTEMPT_LABEL,
    EXPERIMENT_LABEL,
    GPU_RESOURCE,
    INDEX_ANNOTATION,
    JOB_NAME_LABEL,
    KUEUE_LABEL,
    MANAGED_BY,
    RUN_LABEL,
    dns_label,
    label_value,
)
from .k8s_options import DEFAULT_VERSIONS, K8sOptions

#: The run's working directory in the pod (an emptyDir): WML_WORK_DIR of the runner.
WORK_DIR = "/job"
#: The one runner, as the container's entrypoint; the image must have wml_backend installed.
RUNNER_COMMAND = ("python3", "-m", "wml_backend.runner")
#: The rendezvous port of a multi-learner run (torch.distributed's default).
RENDEZVOUS_PORT = 29500
#: Seconds a cancelled runner has to stop the command and store partial results.
TERMINATION_GRACE_S = 60
#: Environment variables that are secrets: they go to the run's Secret, never the Job spec.
_SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|CREDENTIALS?|_KEY|_KEY_ID)$")


# -- names and values ---------------------------------------------------------------------------
def object_name(run_id: str, attempt: int, suffix: str) -> str:
    """Name of a run attempt's Job and Secret: ``wml-<run>-a<attempt>-<suffix>``.

    The random suffix keeps a name unique even when the same attempt is started twice (a
    backend that crashed between creating the Job and recording it).
    """
    return dns_label(f"wml-{run_id}-a{attempt}-{suffix}")


def fresh_name(launch: Launch) -> str:
    """A new name for the Job and Secret of ``launch``'s attempt (``object_name``, random suffix)."""
    return object_name(launch.run_id, launch.attempt, secrets.token_hex(2))


def cpu_quantity(cpus: float) -> str:
    """CPUs as a Kubernetes quantity: ``2`` or ``500m``."""
    milli = round(cpus * 1000)
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def memory_quantity(size: int) -> str:
    """Bytes as the shortest exact Kubernetes quantity: ``4Gi``, ``512Mi``, ``4G``, or bytes."""
    for unit, factor in (("Gi", 1 << 30), ("G", 10**9), ("Mi", 1 << 20), ("M", 10**6), ("Ki", 1 << 10)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def is_secret_env(name: str) -> bool:
    """Whether an environment variable holds a secret (a token, key or password)."""
    return bool(_SECRET_NAME.search(name))


def image_for(options: K8sOptions, framework: str, version: Optional[str]) -> str:
    """The image of ``framework`` ``version``: ``name:version`` in the map, else ``name``."""
    name = (framework or "custom").lower()
    version = version or DEFAULT_VERSIONS.get(name, "latest")
    template = options.images.get(f"{name}:{version}") or options.images.get(name)
    if template is None:
        known = ", ".join(sorted(options.images))
        raise InvalidInput(f"framework {name!r} has no image; configured: {known} (set WML_K8S_IMAGE_MAP)")
    return template.replace("{version}", version)


# -- the run's objects ----------------------------------------------------------------------------
def run_labels(launch: Launch) -> dict[str, str]:
    """Labels of every object of a run: who manages it, and its account, experiment and run."""
    return {**MANAGED_BY, ACCOUNT_LABEL: label_value(launch.account),
            EXPERIMENT_LABEL: label_value(launch.experiment_id), RUN_LABEL: label_value(launch.run_id),
            ATTEMPT_LABEL: str(launch.attempt)}


def secret_env(launch: Launch) -> dict[str, str]:
    """The runner variables that are secrets (its token, store credentials)."""
    return {k: v for k, v in sorted(launch.env.items()) if is_secret_env(k)}


def secret_object(launch: Launch, options: K8sOptions, name: str) -> dict[str, Any]:
    """The run's Secret: the runner's token and store credentials, read by the pod as env."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "immutable": True,
            "metadata": {"name": name, "namespace": options.namespace, "labels": run_labels(launch)},
            "stringData": secret_env(launch)}


def is_distributed(launch: Launch) -> bool:
    """Whether the run is several learners, hence an Indexed Job with a headless Service."""
    return (launch.learners or 1) > 1


def job_object(launch: Launch, options: K8sOptions, name: str,
               timeout_s: Optional[float] = None) -> dict[str, Any]:
    """The run's batch/v1 Job, never retried by Kubernetes: one pod running the runner, or, for
    N learners, an Indexed Job of N pods (one learner each) under the headless Service ``name``."""
    labels = run_labels(launch)
    meta = {"name": name, "namespace": options.namespace, "labels": dict(labels)}
    spec: dict[str, Any] = {"backoffLimit": 0}  # retries are the backend's (max_retries), not the Job's
    if is_distributed(launch):  # the first learner that fails fails the Job, which stops the others
        spec.update(completionMode="Indexed", completions=launch.learners, parallelism=launch.learners)
    if timeout_s:
        spec["activeDeadlineSeconds"] = max(1, int(timeout_s))
    spec["ttlSecondsAfterFinished"] = options.job_ttl_s
    if options.kueue_queue:
        meta["labels"][KUEUE_LABEL] = dns_label(options.kueue_queue.replace("{account}", launch.account))
        spec["suspend"] = True  # Kueue un-suspends it once the account's queue admits it
    spec["template"] = {"metadata": {"labels": labels}, "spec": _pod_spec(launch, options, name)}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": spec}


def service_object(launch: Launch, options: K8sOptions, name: str,
                   job_uid: Optional[str] = None) -> dict[str, Any]:
    """The headless Service of a multi-learner run: DNS names ``<job>-<index>.<name>`` for its pods.

    Owned by the Job (``job_uid``), so it goes when the Job goes: no write of its own to delete it.
    """
    meta: dict[str, Any] = {"name": name, "namespace": options.namespace, "labels": run_labels(launch)}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": meta,
               "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,  # names before readiness
                        "selector": {JOB_NAME_LABEL: name},
                        "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT,
                                   "protocol": "TCP"}]}}
    return owned_by(service, name, job_uid) if job_uid else service


def owned_by(obj: Mapping[str, Any], job_name: str, job_uid: str) -> dict[str, Any]:
    """``obj`` with the Job ``job_name`` (uid ``job_uid``) as its owner: it goes when the Job goes."""
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": job_name, "uid": job_uid,
             "controller": False, "blockOwnerDeletion": False}
    return {**obj, "metadata": {**obj["metadata"], "ownerReferences": [owner]}}


def run_objects(launch: Launch, options: K8sOptions, name: str) -> list[dict[str, Any]]:
    """What starting ``launch`` creates, in order: its Secret, its Job and, for several learners,
    the headless Service (to be made ``owned_by`` the Job once the Job exists), all named ``name``."""
    objects = [secret_object(launch, options, name),
               job_object(launch, options, name, getattr(launch, "timeout_s", None))]
    if is_distributed(launch):
        objects.append(service_object(launch, options, name))
    return objects


def _pod_spec(launch: Launch, options: K8sOptions, secret_name: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": "Never", "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
        "containers": [_container(launch, options, secret_name)],
        "volumes": [{"name": "work", "emptyDir": {}}, {"name": "dshm", "emptyDir": {"medium": "Memory"}}]}
    if is_distributed(launch):
        spec["subdomain"] = secret_name  # the headless Service of the same name: <job>-<index>.<service>
    if options.service_account:
        spec["serviceAccountName"] = options.service_account
    if launch.gpu_type:
        spec["nodeSelector"] = {options.gpu_label: launch.gpu_type}
    if launch.gpus and options.tolerations:
        spec["tolerations"] = [dict(t) for t in options.tolerations]
    if options.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": n} for n in options.image_pull_secrets]
    return spec


def _container(launch: Launch, options: K8sOptions, secret_name: str) -> dict[str, Any]:
    plain = {k: v for k, v in sorted(launch.env.items()) if not is_secret_env(k)}
    plain["WML_WORK_DIR"] = WORK_DIR
    if options.public_url:
        plain["WML_BACKEND_URL"] = options.public_url
    if not launch.gpus:
        plain["NVIDIA_VISIBLE_DEVICES"] = "void"  # a CPU run sees no GPU even on a GPU node
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in plain.items()]
    if is_distributed(launch):  # this pod is one learner: its index, and where learner 1 listens
        env += [{"name": "WML_LEARNER_INDEX", "valueFrom": {"fieldRef": {
                    "fieldPath": f"metadata.annotations['{INDEX_ANNOTATION}']"}}},
                {"name": "MASTER_ADDR", "value": f"{secret_name}-0.{secret_name}"},
                {"name": "MASTER_PORT", "value": str(RENDEZVOUS_PORT)}]
    return {
        "name": "runner", "image": image_for(options, launch.framework, launch.framework_version),
        "imagePullPolicy": "IfNotPresent", "command": list(RUNNER_COMMAND), "workingDir": WORK_DIR,
        "env": env,
        "envFrom": [{"secretRef": {"name": secret_name}}],
        "resources": {"limits": _limits(launch)},  # requests default to the limits
        "volumeMounts": [{"name": "work", "mountPath": WORK_DIR}, {"name": "dshm", "mountPath": "/dev/shm"}]}


def _limits(launch: Launch) -> dict[str, str]:
    """The pod's limits: one learner's, as the manifest gives them (each learner is a pod)."""
    limits = {"cpu": cpu_quantity(launch.cpus or 1)}
    if launch.memory_bytes:
        limits["memory"] = memory_quantity(launch.memory_bytes)
    if launch.gpus:
        limits[GPU_RESOURCE] = str(launch.gpus)
    return limits
