"""The pod of a run's Job, as a pure function: one container running the runner, and its limits.

Every run pod is admitted under Pod Security ``restricted`` (non-root, no privilege escalation,
no capability, the runtime's seccomp profile), gets no API token, and is bounded in every
resource it can use up: CPU, memory, GPUs, local disk (``ephemeral-storage``) and ``/dev/shm``.
Its only volumes are its work directory and, when the run's data is on a volume rather than in
object storage, that volume's PersistentVolumeClaim, mounted at the directory the runner is told.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any

from wml_core.errors import InvalidInput
from wml_backend.executors.base import Launch
from wml_backend.executors.k8s_names import GPU_RESOURCE, INDEX_ANNOTATION
from wml_backend.executors.k8s_options import DEFAULT_VERSIONS, K8sOptions

#: The run's working directory in the pod (an emptyDir): WML_WORK_DIR of the runner.
WORK_DIR = "/job"
#: HOME of the (non-root) runner: inside the work directory, so that tools' caches can be written
#: whatever user the image has.
HOME_DIR = f"{WORK_DIR}/home"
#: The one runner, as the container's entrypoint; the image must have wml_runner installed.
RUNNER_COMMAND = ("python3", "-m", "wml_runner")
#: The rendezvous port of a multi-learner run (torch.distributed's default).
RENDEZVOUS_PORT = 29500
#: Seconds a cancelled runner has to stop the command and store partial results.
TERMINATION_GRACE_S = 60
#: Environment variables that are secrets: they go to the run's Secret, never the Job spec.
_SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|CREDENTIALS?|_KEY|_KEY_ID)$")
#: What Pod Security ``restricted`` asks of every container.
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def is_secret_env(name: str) -> bool:
    """Whether an environment variable holds a secret (a token, key or password)."""
    return bool(_SECRET_NAME.search(name))


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


def image_for(options: K8sOptions, framework: str, version: str | None) -> str:
    """The image of ``framework`` ``version``: ``name:version`` in the map, else ``name``."""
    name = (framework or "custom").lower()
    version = version or DEFAULT_VERSIONS.get(name, "latest")
    template = options.images.get(f"{name}:{version}") or options.images.get(name)
    if template is None:
        known = ", ".join(sorted(options.images))
        raise InvalidInput(f"framework {name!r} has no image; configured: {known} (set WML_K8S_IMAGE_MAP)")
    return template.replace("{version}", version)


def is_distributed(launch: Launch) -> bool:
    """Whether the run is several learners, hence an Indexed Job with a headless Service."""
    return (launch.learners or 1) > 1


def pod_spec(launch: Launch, options: K8sOptions, name: str) -> dict[str, Any]:
    """The pod of the run's Job ``name`` (which also names its Secret and headless Service)."""
    claims = claim_mounts(launch, options)
    spec: dict[str, Any] = {
        "restartPolicy": "Never", "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
        "securityContext": _pod_security(options),
        "containers": [_container(launch, options, name, claims)],
        "volumes": _volumes(launch, options, claims)}
    if is_distributed(launch):
        spec["subdomain"] = name  # the headless Service of the same name: <job>-<index>.<service>
    if options.service_account:
        spec["serviceAccountName"] = options.service_account
    if launch.gpu_type:
        spec["nodeSelector"] = {options.gpu_label: launch.gpu_type}
    if launch.gpus and options.tolerations:
        spec["tolerations"] = [dict(t) for t in options.tolerations]
    if options.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": n} for n in options.image_pull_secrets]
    return spec


def claim_mounts(launch: Launch, options: K8sOptions) -> dict[str, str]:
    """The directories of the run's store that are PersistentVolumeClaims in the pod, each with
    its claim: the embedded file store's (``WML_K8S_STORE_PVC``) and a ``mount_volume`` data
    store's (``WML_K8S_VOLUME_CLAIMS``). A ``mount_volume`` directory with no claim is refused."""
    mounts = {options.store_root: options.store_claim} if options.store_root else {}
    path = posixpath.normpath(launch.volume_path) if launch.volume_path else None
    if path and not _inside(path, mounts):
        directory = max((d for d in options.volume_claims if _inside(path, [d])), key=len, default=None)
        if directory is None:
            raise InvalidInput(f"data store: mount_volume {path!r} is on no PersistentVolumeClaim; map it "
                               f"(WML_K8S_VOLUME_CLAIMS={path}=CLAIM) or use object storage")
        mounts[directory] = options.volume_claims[directory]
    return mounts


def _inside(path: str, directories) -> bool:
    """Whether ``path`` is one of ``directories`` or under one."""
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in directories)


def _pod_security(options: K8sOptions) -> dict[str, Any]:
    """Pod Security ``restricted``: a non-root user, the runtime's seccomp profile."""
    uid = options.run_as_user
    return {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "fsGroup": uid,
            "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"}}


def _volumes(launch: Launch, options: K8sOptions, claims: dict[str, str]) -> list[dict[str, Any]]:
    """The work directory, a memory-backed ``/dev/shm`` within the memory limit, and the claims."""
    shm = min(options.shm_bytes, launch.memory_bytes or options.shm_bytes)
    volumes = [{"name": "work", "emptyDir": {}},
               {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": memory_quantity(shm)}}]
    volumes += [{"name": f"claim-{i}", "persistentVolumeClaim": {"claimName": claim}}
                for i, claim in enumerate(claims.values())]
    return volumes


def _container(launch: Launch, options: K8sOptions, name: str, claims: dict[str, str]) -> dict[str, Any]:
    mounts = [{"name": "work", "mountPath": WORK_DIR}, {"name": "dshm", "mountPath": "/dev/shm"}]
    mounts += [{"name": f"claim-{i}", "mountPath": path} for i, path in enumerate(claims)]
    return {
        "name": "runner", "image": image_for(options, launch.framework, launch.framework_version),
        "imagePullPolicy": "IfNotPresent", "command": list(RUNNER_COMMAND), "workingDir": WORK_DIR,
        "env": _env(launch, options, name),
        "envFrom": [{"secretRef": {"name": name}}],  # made just after the Job: the kubelet waits for it
        "resources": {"limits": _limits(launch, options)},  # requests default to the limits
        "securityContext": dict(RESTRICTED_CONTAINER),
        "volumeMounts": mounts}


def _env(launch: Launch, options: K8sOptions, name: str) -> list[dict[str, Any]]:
    """The runner's variables that are not secrets; the backend's URL is the one pods reach."""
    plain = {k: v for k, v in sorted(launch.env.items()) if not is_secret_env(k)}
    plain.update(WML_BACKEND_URL=options.backend_url, WML_WORK_DIR=WORK_DIR, HOME=HOME_DIR)
    if not launch.gpus:
        plain["NVIDIA_VISIBLE_DEVICES"] = "void"  # a CPU run sees no GPU even on a GPU node
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in plain.items()]
    if is_distributed(launch):  # this pod is one learner: its index, and where learner 1 listens
        env += [{"name": "WML_LEARNER_INDEX", "valueFrom": {"fieldRef": {
                    "fieldPath": f"metadata.annotations['{INDEX_ANNOTATION}']"}}},
                {"name": "MASTER_ADDR", "value": f"{name}-0.{name}"},
                {"name": "MASTER_PORT", "value": str(RENDEZVOUS_PORT)}]
    return env


def _limits(launch: Launch, options: K8sOptions) -> dict[str, str]:
    """The pod's limits: one learner's, as the manifest gives them (each learner is a pod), and
    the local disk it may fill."""
    limits = {"cpu": cpu_quantity(launch.cpus or 1),
              "ephemeral-storage": memory_quantity(options.ephemeral_storage_bytes)}
    if launch.memory_bytes:
        limits["memory"] = memory_quantity(launch.memory_bytes)
    if launch.gpus:
        limits[GPU_RESOURCE] = str(launch.gpus)
    return limits
