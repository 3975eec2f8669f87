"""The Kubernetes objects starting a run creates, as pure functions: its Job, Secret, Service
and NetworkPolicy.

A run of one learner is a plain Job of one pod. A run of N learners is an Indexed Job
(completions = parallelism = N, one pod per learner with the manifest's per-learner resources)
plus a headless Service that gives every pod a stable name, ``<job>-<index>.<service>``: learner
1 (index 0) is the rendezvous (``MASTER_ADDR``) of ``torch.distributed``, and a NetworkPolicy
that lets its learners, and no other run's pods, connect to each other (the namespace's policy,
``backend/deploy/networkpolicy.yaml``, lets a run pod accept connections from the backend only).
The Job is made first; its Secret, Service and NetworkPolicy are then made ``owned_by`` it, so
that they go when it goes.

Nothing here talks to a cluster, so every object can be compared with reference YAML and
validated against the Kubernetes OpenAPI schema offline (``tests/k8s``).
"""

from __future__ import annotations

import secrets
from typing import Any, Mapping, Optional

from wml_backend.executors.base import Launch
from wml_backend.executors.k8s_kueue import queue_name
from wml_backend.executors.k8s_names import (
    ACCOUNT_LABEL,
    ATTEMPT_LABEL,
    EXPERIMENT_LABEL,
    JOB_NAME_LABEL,
    KUEUE_LABEL,
    MANAGED_BY,
    RUN_LABEL,
    dns_label,
    label_value,
)
from wml_backend.executors.k8s_options import K8sOptions
from wml_backend.executors.k8s_pod import RENDEZVOUS_PORT, is_distributed, is_secret_env, pod_spec


# -- names ------------------------------------------------------------------------------------
def object_name(run_id: str, attempt: int, suffix: str) -> str:
    """Name of a run attempt's Job and Secret: ``wml-<run>-a<attempt>-<suffix>``.

    The random suffix keeps a name unique even when the same attempt is started twice (a
    backend that crashed between creating the Job and recording it).
    """
    return dns_label(f"wml-{run_id}-a{attempt}-{suffix}")


def fresh_name(launch: Launch) -> str:
    """A new name for the Job and Secret of ``launch``'s attempt (``object_name``, random suffix)."""
    return object_name(launch.run_id, launch.attempt, secrets.token_hex(2))


def run_labels(launch: Launch) -> dict[str, str]:
    """Labels of every object of a run: who manages it, and its account, experiment and run."""
    return {**MANAGED_BY, ACCOUNT_LABEL: label_value(launch.account),
            EXPERIMENT_LABEL: label_value(launch.experiment_id), RUN_LABEL: label_value(launch.run_id),
            ATTEMPT_LABEL: str(launch.attempt)}


#: The labels of the backend's own pods (``backend/deploy/deployment.yaml``).
BACKEND_POD_LABELS = {"app.kubernetes.io/name": "wml-backend"}


# -- the run's objects ----------------------------------------------------------------------------
def job_object(launch: Launch, options: K8sOptions, name: str) -> dict[str, Any]:
    """The run's batch/v1 Job, never retried by Kubernetes: one pod running the runner, or, for
    N learners, an Indexed Job of N pods (one learner each) under the headless Service ``name``.
    A run with a ``timeout_s`` gets it as ``activeDeadlineSeconds`` (Kueue's wait not counted)."""
    labels = run_labels(launch)
    meta = {"name": name, "namespace": options.namespace, "labels": dict(labels)}
    spec: dict[str, Any] = {"backoffLimit": 0}  # retries are the backend's (max_retries), not the Job's
    if is_distributed(launch):  # the first learner that fails fails the Job, which stops the others
        spec.update(completionMode="Indexed", completions=launch.learners, parallelism=launch.learners)
    if launch.timeout_s:
        spec["activeDeadlineSeconds"] = max(1, round(launch.timeout_s))
    spec["ttlSecondsAfterFinished"] = options.job_ttl_s
    if options.kueue_queue:
        meta["labels"][KUEUE_LABEL] = queue_name(options.kueue_queue, launch.account)
        spec["suspend"] = True  # Kueue un-suspends it once the account's queue admits it
    spec["template"] = {"metadata": {"labels": labels}, "spec": pod_spec(launch, options, name)}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": spec}


def secret_env(launch: Launch) -> dict[str, str]:
    """The runner variables that are secrets (its token, store credentials)."""
    return {k: v for k, v in sorted(launch.env.items()) if is_secret_env(k)}


#: The runner variables that are worth nothing once the attempt is over: its token, which the
#: backend revokes when the attempt ends.
REVOKED_AT_END = frozenset({"WML_RUNNER_TOKEN"})


def secret_outlives_attempt(launch: Launch) -> bool:
    """Whether the run's Secret holds a credential that the attempt's end does not revoke (the
    store keys a manifest names, or the operator's with ``WML_STORE_CREDENTIALS=operator``): such
    a Secret is deleted as the run ends; any other goes with its Job, after the TTL."""
    return bool(set(secret_env(launch)) - REVOKED_AT_END)


def secret_object(launch: Launch, options: K8sOptions, name: str, job_uid: Optional[str] = None) -> dict[str, Any]:
    """The run's Secret: the runner's token and store credentials, read by the pod as env.

    Owned by the Job (``job_uid``): the garbage collector deletes it when the Job goes (nothing
    needs to list Secrets to find it), or the backend as the run ends if it holds more than the
    runner's token (``secret_outlives_attempt``).
    """
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "immutable": True,
              "metadata": {"name": name, "namespace": options.namespace, "labels": run_labels(launch)},
              "stringData": secret_env(launch)}
    return owned_by(secret, name, job_uid) if job_uid else secret


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


def network_policy_object(launch: Launch, options: K8sOptions, name: str,
                          job_uid: Optional[str] = None) -> dict[str, Any]:
    """The NetworkPolicy of a multi-learner run: the pods of its Job ``name`` may connect to each
    other (on any port: the rendezvous, then torch.distributed's own) and accept connections
    from each other and the backend only. With the namespace's policy (a run pod reaches the
    backend, DNS and the store, and accepts nothing but the backend) no other run reaches them.

    Owned by the Job (``job_uid``), so it goes when the Job goes: no write of its own to delete it.
    """
    learners = {"podSelector": {"matchLabels": {JOB_NAME_LABEL: name}}}
    backend = {"podSelector": {"matchLabels": dict(BACKEND_POD_LABELS)}}
    policy = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
              "metadata": {"name": name, "namespace": options.namespace, "labels": run_labels(launch)},
              "spec": {"podSelector": learners["podSelector"], "policyTypes": ["Ingress", "Egress"],
                       "ingress": [{"from": [learners, backend]}], "egress": [{"to": [learners]}]}}
    return owned_by(policy, name, job_uid) if job_uid else policy


def owned_by(obj: Mapping[str, Any], job_name: str, job_uid: str) -> dict[str, Any]:
    """``obj`` with the Job ``job_name`` (uid ``job_uid``) as its owner: it goes when the Job goes."""
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": job_name, "uid": job_uid,
             "controller": False, "blockOwnerDeletion": False}
    return {**obj, "metadata": {**obj["metadata"], "ownerReferences": [owner]}}


def run_objects(launch: Launch, options: K8sOptions, name: str,
                job_uid: Optional[str] = None) -> list[dict[str, Any]]:
    """What starting ``launch`` creates, in order, all named ``name``: its Job, its Secret and,
    for several learners, the headless Service and the NetworkPolicy; all but the Job owned by
    the Job once it has a uid."""
    objects = [job_object(launch, options, name), secret_object(launch, options, name, job_uid)]
    if is_distributed(launch):
        objects += [service_object(launch, options, name, job_uid),
                    network_policy_object(launch, options, name, job_uid)]
    return objects
