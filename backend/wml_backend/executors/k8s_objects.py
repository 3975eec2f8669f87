"""The Kubernetes objects of a run, as pure functions: its Job, its Secret, Kueue queues.

A run of one learner is a plain Job of one pod. A run of N learners is an Indexed Job
(completions = parallelism = N, one pod per learner with the manifest's per-learner resources)
plus a headless Service that gives every pod a stable name, ``<job>-<index>.<service>``: learner
1 (index 0) is the rendezvous (``MASTER_ADDR``) of ``torch.distributed``.

Nothing here talks to a cluster, so every object can be compared with reference YAML and
validated against the Kubernetes OpenAPI schema offline (``tests/k8s``).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Optional

from ..errors import InvalidInput
from .base import Launch

#: Labels every object of a run carries; the executor watches what matches ``SELECTOR``.
MANAGED_BY = {"app.kubernetes.io/managed-by": "wml-backend", "app.kubernetes.io/name": "wml-run"}
SELECTOR = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())
ACCOUNT_LABEL, EXPERIMENT_LABEL, RUN_LABEL = "wml.dev/account", "wml.dev/experiment", "wml.dev/run"
ATTEMPT_LABEL = "wml.dev/attempt"
#: The label Kueue reads to put a Job in a LocalQueue.
KUEUE_LABEL = "kueue.x-k8s.io/queue-name"
GPU_RESOURCE = "nvidia.com/gpu"
#: The run's working directory in the pod (an emptyDir): WML_WORK_DIR of the runner.
WORK_DIR = "/job"
#: The one runner, as the container's entrypoint; the image must have wml_backend installed.
RUNNER_COMMAND = ("python3", "-m", "wml_backend.runner")
#: The annotation (and label) Kubernetes sets on each pod of an Indexed Job: its index.
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
#: The label the Job controller puts on its pods (the headless Service selects by it).
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
#: The rendezvous port of a multi-learner run (torch.distributed's default).
RENDEZVOUS_PORT = 29500
#: Seconds a cancelled runner has to stop the command and store partial results.
TERMINATION_GRACE_S = 60
#: Images per framework (``name`` or ``name:version``); ``{version}`` is the manifest's version.
DEFAULT_IMAGES = MappingProxyType({
    "pytorch": "wml-runner-pytorch:{version}", "tensorflow": "wml-runner-tensorflow:{version}",
    "keras": "wml-runner-tensorflow:{version}", "custom": "wml-runner:{version}"})
#: The version used when a manifest names none.
DEFAULT_VERSIONS = MappingProxyType({"pytorch": "2.4", "tensorflow": "2.16", "keras": "2.16"})
#: GPU nodes are commonly tainted so that only GPU pods land there.
DEFAULT_TOLERATIONS = ({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"},)
#: Environment variables that are secrets: they go to the run's Secret, never the Job spec.
_SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|CREDENTIALS?|_KEY|_KEY_ID)$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@dataclass(frozen=True)
class K8sOptions:
    """How runs become Jobs in one cluster namespace (read from ``WML_K8S_*``)."""

    namespace: str = "default"
    images: Mapping[str, str] = field(default_factory=lambda: DEFAULT_IMAGES)
    #: Node label whose value must equal the manifest's ``gpu_type``.
    gpu_label: str = "nvidia.com/gpu.product"
    tolerations: tuple[Mapping[str, Any], ...] = DEFAULT_TOLERATIONS
    #: LocalQueue name for an account, e.g. ``wml-{account}``; None: no Kueue.
    kueue_queue: Optional[str] = None
    image_pull_secrets: tuple[str, ...] = ()
    #: Service account of run pods (None: the namespace default, with no API token mounted).
    service_account: Optional[str] = None
    #: Seconds a finished Job is kept for ``kubectl`` before Kubernetes deletes it.
    job_ttl_s: int = 3600
    #: Runner's URL of the backend (the Service URL in a cluster); None: the backend's own URL.
    public_url: Optional[str] = None
    #: Seconds a Pending run waits before its reason says why (no GPU free, Kueue queue...).
    pending_note_s: float = 30.0
    #: Seconds an image that cannot be pulled is retried before the run fails.
    image_pull_grace_s: float = 120.0


# -- names and values ---------------------------------------------------------------------------
def label_value(text: str) -> str:
    """``text`` as a valid label value: unchanged when valid, else cleaned and suffixed by a hash."""
    if len(text) <= 63 and _LABEL_VALUE.match(text):
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:54].strip("-_.")
    return f"{clean}-{digest}" if clean else digest


def dns_label(text: str) -> str:
    """``text`` as a DNS-1123 label (object names, queue names): lower case, ``-``, ≤ 63."""
    clean = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    if clean == text and len(clean) <= 63:
        return clean
    return f"{clean[:54].strip('-')}-{hashlib.sha256(text.encode()).hexdigest()[:8]}".lstrip("-")


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


def pod_index(pod: Optional[Mapping[str, Any]]) -> int:
    """The index of a pod of an Indexed Job (0 for any other pod)."""
    meta = (pod or {}).get("metadata") or {}
    value = (meta.get("annotations") or {}).get(INDEX_ANNOTATION) or (meta.get("labels") or {}).get(INDEX_ANNOTATION)
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def pod_failed(pod: Optional[Mapping[str, Any]]) -> bool:
    """Whether a learner's pod failed: its runner exited non-zero, or it was evicted or disrupted."""
    if pod is None:
        return False
    code = exit_code(pod)
    return (pod.get("status") or {}).get("phase") == "Failed" or (code is not None and code != 0) or \
        condition(pod, "DisruptionTarget") is not None


def learner_failure(pod: Mapping[str, Any]) -> str:
    """Why a learner's pod failed, naming the learner (index + 1)."""
    code = exit_code(pod)
    why = failure_reason(None, pod)
    if why is None or why.startswith("the run's Job or pod was deleted"):
        why = f"the command exited with code {code}" if code is not None else "its pod failed"
    return f"learner {pod_index(pod) + 1}: {why}"


# -- Kueue ------------------------------------------------------------------------------------------
KUEUE_API = "kueue.x-k8s.io/v1beta1"


def resource_flavor(name: str = "default-flavor") -> dict[str, Any]:
    """A Kueue ResourceFlavor with no node labels: every node's GPUs are alike."""
    return {"apiVersion": KUEUE_API, "kind": "ResourceFlavor", "metadata": {"name": name}, "spec": {}}


def account_queues(account: str, namespace: str, gpus: int, cpu: str = "8", memory: str = "32Gi",
                   flavor: str = "default-flavor", cohort: str = "wml") -> list[dict[str, Any]]:
    """An account's ClusterQueue (its GPU quota, no borrowing) and its LocalQueue in ``namespace``."""
    name = dns_label(f"wml-{account}")
    quota = [{"name": "cpu", "nominalQuota": cpu}, {"name": "memory", "nominalQuota": memory},
             {"name": GPU_RESOURCE, "nominalQuota": str(gpus), "borrowingLimit": "0"}]
    cluster_queue = {
        "apiVersion": KUEUE_API, "kind": "ClusterQueue", "metadata": {"name": name},
        "spec": {"cohort": cohort, "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                 "queueingStrategy": "BestEffortFIFO",
                 "resourceGroups": [{"coveredResources": ["cpu", "memory", GPU_RESOURCE],
                                     "flavors": [{"name": flavor, "resources": quota}]}]}}
    local_queue = {"apiVersion": KUEUE_API, "kind": "LocalQueue",
                   "metadata": {"name": name, "namespace": namespace}, "spec": {"clusterQueue": name}}
    return [cluster_queue, local_queue]


# -- reading a Job and its pod back ---------------------------------------------------------------
#: Waiting reasons of a container whose image cannot be pulled (retried by the kubelet, maybe forever).
IMAGE_PULL_ERRORS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
#: Waiting reasons of a container the kubelet cannot create (a missing Secret, a bad command...).
CONTAINER_ERRORS = frozenset({"CreateContainerConfigError", "CreateContainerError", "RunContainerError"})
#: What a pod's DisruptionTarget condition means, for the run's reason.
DISRUPTIONS = MappingProxyType({
    "DeletionByTaintManager": "node lost (its node became unreachable or was tainted NoExecute)",
    "DeletionByPodGC": "node lost (its node was removed)",
    "PreemptionByScheduler": "preempted by a higher-priority pod",
    "EvictionByEvictionAPI": "evicted (e.g. a node drain)",
    "TerminationByKubelet": "terminated by the kubelet (node shutdown or resource pressure)"})


def condition(obj: Optional[Mapping[str, Any]], kind: str) -> Optional[dict[str, Any]]:
    """The ``status.conditions`` entry of type ``kind`` whose status is True, if any."""
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return cond
    return None


def job_finished(job: Mapping[str, Any]) -> bool:
    """Whether Kubernetes says the Job is over (Complete or Failed)."""
    return bool(condition(job, "Complete") or condition(job, "Failed"))


def container_state(pod: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """The runner container's state: ``{"waiting"|"running"|"terminated": {...}}`` or ``{}``."""
    statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or [{}]
    return statuses[0].get("state") or {}


def pod_over(pod: Optional[Mapping[str, Any]]) -> bool:
    """Whether the pod's runner can no longer report: gone, finished, or on a lost node."""
    if pod is None:
        return True
    phase = (pod.get("status") or {}).get("phase")
    return phase in ("Succeeded", "Failed") or "terminated" in container_state(pod) or \
        condition(pod, "DisruptionTarget") is not None


def exit_code(pod: Optional[Mapping[str, Any]]) -> Optional[int]:
    """The runner container's exit code, when it has one."""
    return (container_state(pod).get("terminated") or {}).get("exitCode")


def stuck_reason(pod: Optional[Mapping[str, Any]]) -> Optional[str]:
    """Why the runner container cannot start (image pull, container config), if so."""
    waiting = container_state(pod).get("waiting") or {}
    reason, message = waiting.get("reason"), waiting.get("message") or ""
    if reason in IMAGE_PULL_ERRORS:
        image = pod["spec"]["containers"][0]["image"]
        return f"cannot pull image {image} ({reason}): {message}".rstrip(": ")
    if reason in CONTAINER_ERRORS:
        return f"cannot start the runner container ({reason}): {message}".rstrip(": ")
    return None


def waiting_note(job: Mapping[str, Any], pod: Optional[Mapping[str, Any]]) -> Optional[str]:
    """Why a started run is still waiting for a node: Kueue's queue, or the scheduler's words."""
    if (job.get("spec") or {}).get("suspend"):
        queue = job["metadata"].get("labels", {}).get(KUEUE_LABEL, "?")
        return f"waiting for Kueue to admit it (LocalQueue {queue})"
    for cond in ((pod or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("reason") == "Unschedulable":
            what = "free GPUs" if f"Insufficient {GPU_RESOURCE}" in cond.get("message", "") else "a node"
            return f"waiting for {what}: {cond.get('message', '')}".rstrip(": ")
    return None


def failure_reason(job: Optional[Mapping[str, Any]], pod: Optional[Mapping[str, Any]]) -> Optional[str]:
    """Why Kubernetes ended a run, in words a user can act on; None when the runner just exited."""
    terminated = container_state(pod).get("terminated") or {}
    if terminated.get("reason") == "OOMKilled":
        limit = pod["spec"]["containers"][0].get("resources", {}).get("limits", {}).get("memory")
        return "out of memory: raise memory" + (f" (the limit was {limit})" if limit else "")
    status = (pod or {}).get("status") or {}
    if status.get("reason") == "Evicted":
        return f"evicted from its node: {status.get('message', '')}".rstrip(": ")
    disrupted = condition(pod, "DisruptionTarget")
    if disrupted:
        return DISRUPTIONS.get(disrupted.get("reason"), f"disrupted ({disrupted.get('reason')})")
    failed = condition(job, "Failed")
    if failed and failed.get("reason") == "DeadlineExceeded":
        return f"timed out after {job['spec'].get('activeDeadlineSeconds')} s (activeDeadlineSeconds)"
    if pod is None or not terminated:
        return "the run's Job or pod was deleted before the runner ended"
    return None


# -- configuration ------------------------------------------------------------------------------------
#: ``WML_K8S_*`` variables and the option each sets (CONTEXT picks the kubeconfig context).
SETTINGS_ENV = MappingProxyType({
    "WML_K8S_NAMESPACE": "namespace", "WML_K8S_CONTEXT": None, "WML_K8S_IMAGE_MAP": "images",
    "WML_K8S_GPU_LABEL": "gpu_label", "WML_K8S_TOLERATIONS": "tolerations", "WML_K8S_KUEUE_QUEUE": "kueue_queue",
    "WML_K8S_IMAGE_PULL_SECRETS": "image_pull_secrets", "WML_K8S_SERVICE_ACCOUNT": "service_account",
    "WML_K8S_JOB_TTL_S": "job_ttl_s", "WML_K8S_PENDING_NOTE_S": "pending_note_s",
    "WML_K8S_IMAGE_PULL_GRACE_S": "image_pull_grace_s"})


def load_options(env: Mapping[str, str], namespace: str, public_url: Optional[str] = None) -> K8sOptions:
    """``K8sOptions`` from ``WML_K8S_*`` variables; a bad one is an ``InvalidInput`` of one line."""
    values: dict[str, Any] = {"namespace": namespace, "public_url": public_url or env.get("WML_PUBLIC_URL")}
    for name, text in env.items():
        if not name.startswith("WML_K8S_"):
            continue
        if name not in SETTINGS_ENV:
            raise InvalidInput(f"{name}: unknown setting; allowed: {', '.join(SETTINGS_ENV)}")
        option = SETTINGS_ENV[name]
        if option:
            values[option] = _parse_option(name, option, text)
    return K8sOptions(**values)


def _parse_option(name: str, option: str, text: str) -> Any:
    try:
        parse = _OPTION_PARSERS.get(option) or _parse_scalar(K8sOptions.__dataclass_fields__[option].default)
        value = parse(text)
    except ValueError:
        value = None
    if value is None:
        raise InvalidInput(f"{name}: {text!r} is not {_EXPECTED[option]}")
    return value


def _parse_images(text: str) -> Optional[Mapping[str, str]]:
    images = json.loads(text)
    if isinstance(images, dict) and images and all(isinstance(v, str) and v for v in images.values()):
        return MappingProxyType({**DEFAULT_IMAGES, **{k.lower(): v for k, v in images.items()}})
    return None


def _parse_tolerations(text: str) -> Optional[tuple]:
    tolerations = json.loads(text)
    ok = isinstance(tolerations, list) and all(isinstance(t, dict) for t in tolerations)
    return tuple(tolerations) if ok else None


def _parse_scalar(default: Any):
    """A parser for a number (≥ 0) or a non-empty string option, after its default's type."""
    def parse(text: str) -> Any:
        if isinstance(default, (int, float)):
            number = type(default)(text)
            return number if number >= 0 else None
        return text.strip() or None
    return parse


_OPTION_PARSERS = {"images": _parse_images, "tolerations": _parse_tolerations,
                   "image_pull_secrets": lambda text: tuple(s.strip() for s in text.split(",") if s.strip())}


#: What each option's variable must hold, for error messages.
_EXPECTED = {
    "images": 'a JSON object of framework[:version] to image, e.g. {"pytorch": "reg/runner-pytorch:{version}"}',
    "tolerations": 'a JSON list of tolerations, e.g. [{"key": "nvidia.com/gpu", "operator": "Exists"}]',
    "image_pull_secrets": "a comma-separated list of Secret names",
    "job_ttl_s": "a whole number of seconds ≥ 0", "pending_note_s": "a number of seconds ≥ 0",
    "image_pull_grace_s": "a number of seconds ≥ 0", "namespace": "a namespace name",
    "gpu_label": "a node label key", "kueue_queue": "a LocalQueue name (may contain {account})",
    "service_account": "a service account name"}
