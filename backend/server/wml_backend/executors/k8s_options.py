"""The operator's settings of the Kubernetes executor: ``K8sOptions``, read from ``WML_K8S_*``.

``load_options`` reads the environment once at start-up; a variable it does not know, or a value
it cannot parse, is an ``InvalidInput`` of one line saying what was expected.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Mapping, Optional

from wml_core.errors import InvalidInput
from wml_core.manifest import parse_memory
from wml_core.objectstore import StoreConfig
from wml_backend.executors.k8s_names import GPU_RESOURCE

#: Images per framework (``name`` or ``name:version``); ``{version}`` is the manifest's version.
DEFAULT_IMAGES = MappingProxyType({
    "pytorch": "wml-runner-pytorch:{version}", "tensorflow": "wml-runner-tensorflow:{version}",
    "keras": "wml-runner-tensorflow:{version}", "custom": "wml-runner:{version}"})
#: The version used when a manifest names none.
DEFAULT_VERSIONS = MappingProxyType({"pytorch": "2.4", "tensorflow": "2.16", "keras": "2.16"})
#: GPU nodes are commonly tainted so that only GPU pods land there.
DEFAULT_TOLERATIONS = ({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"},)
#: Where run pods reach the backend unless ``WML_PUBLIC_URL`` says otherwise: the Service of
#: ``backend/deploy`` (service.yaml) in the executor's namespace, never this host's loopback.
DEFAULT_PUBLIC_URL = "http://wml-backend.{namespace}.svc:8642"
#: The user run containers run as (non-root, as Pod Security "restricted" requires); the runner
#: image (backend/deploy/docker/runner.Dockerfile) has it, and so does the backend's.
DEFAULT_RUN_AS_USER = 10001


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
    #: Runner's URL of the backend (``WML_PUBLIC_URL``); None: ``DEFAULT_PUBLIC_URL`` (``backend_url``).
    public_url: Optional[str] = None
    #: Seconds a Pending run waits before its reason says why (no GPU free, Kueue queue...).
    pending_note_s: float = 30.0
    #: Seconds an image that cannot be pulled is retried before the run fails.
    image_pull_grace_s: float = 120.0
    #: PersistentVolumeClaim holding the embedded file store, mounted in run pods at ``store_root``.
    store_claim: Optional[str] = None
    #: The embedded file store's directory (set by ``with_store``); None: the store is S3.
    store_root: Optional[str] = None
    #: ``mount_volume`` directories (a data store's ``connection.path``) and the claim of each.
    volume_claims: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: Local disk a run pod may fill (its work directory, data copy, logs): its ephemeral-storage limit.
    ephemeral_storage_bytes: int = 20 << 30
    #: Size of a run pod's ``/dev/shm`` (memory-backed; never more than the pod's memory limit).
    shm_bytes: int = 2 << 30
    #: User id of run containers (non-root).
    run_as_user: int = DEFAULT_RUN_AS_USER

    @property
    def backend_url(self) -> str:
        """Where run pods reach the backend: the configured URL, else its Service in the namespace."""
        return self.public_url or DEFAULT_PUBLIC_URL.format(namespace=self.namespace)


#: ``WML_K8S_*`` variables and the option each sets (CONTEXT picks the kubeconfig context).
SETTINGS_ENV = MappingProxyType({
    "WML_K8S_NAMESPACE": "namespace", "WML_K8S_CONTEXT": None, "WML_K8S_IMAGE_MAP": "images",
    "WML_K8S_GPU_LABEL": "gpu_label", "WML_K8S_TOLERATIONS": "tolerations", "WML_K8S_KUEUE_QUEUE": "kueue_queue",
    "WML_K8S_IMAGE_PULL_SECRETS": "image_pull_secrets", "WML_K8S_SERVICE_ACCOUNT": "service_account",
    "WML_K8S_JOB_TTL_S": "job_ttl_s", "WML_K8S_PENDING_NOTE_S": "pending_note_s",
    "WML_K8S_IMAGE_PULL_GRACE_S": "image_pull_grace_s",
    "WML_K8S_STORE_PVC": "store_claim", "WML_K8S_VOLUME_CLAIMS": "volume_claims",
    "WML_K8S_EPHEMERAL_STORAGE": "ephemeral_storage_bytes", "WML_K8S_SHM_SIZE": "shm_bytes",
    "WML_K8S_RUN_AS_USER": "run_as_user"})


def load_options(env: Mapping[str, str], namespace: str, public_url: Optional[str] = None) -> K8sOptions:
    """``K8sOptions`` from ``WML_K8S_*`` variables; a bad one is an ``InvalidInput`` of one line."""
    values: dict[str, Any] = {"namespace": namespace}
    for name, text in env.items():
        if not name.startswith("WML_K8S_"):
            continue
        if name not in SETTINGS_ENV:
            raise InvalidInput(f"{name}: unknown setting; allowed: {', '.join(SETTINGS_ENV)}")
        option = SETTINGS_ENV[name]
        if option:
            values[option] = _parse_option(name, option, text)
    return K8sOptions(**values, public_url=public_url or env.get("WML_PUBLIC_URL") or None)


def with_store(options: K8sOptions, store: StoreConfig) -> K8sOptions:
    """``options`` for a backend whose default store is ``store``. Pods cannot read the backend's
    disk: the embedded file store needs ``store_claim``, mounted in every run pod at its directory."""
    if store.kind != "file":
        return options
    if not options.store_claim:
        raise InvalidInput(f"kubernetes: the embedded file store ({store.root}) is on the backend's disk, which "
                           "run pods cannot read; use S3-compatible storage (--storage s3://BUCKET --endpoint URL) "
                           "or set WML_K8S_STORE_PVC to a PersistentVolumeClaim holding that directory")
    return replace(options, store_root=str(store.root))


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


def _parse_claims(text: str) -> Optional[Mapping[str, str]]:
    """``/data=claim-a,/scratch=claim-b``: absolute directories and valid claim names."""
    pairs = [item.partition("=") for item in text.split(",") if item.strip()]
    claims = {path.strip().rstrip("/") or "/": claim.strip() for path, _, claim in pairs}
    ok = pairs and all(p.startswith("/") and _DNS_NAME.match(c) for p, c in claims.items())
    return MappingProxyType(claims) if ok else None


def _parse_claim(text: str) -> Optional[str]:
    return text.strip() if _DNS_NAME.match(text.strip()) else None


def _parse_size(text: str) -> Optional[int]:
    """A size such as ``20Gi`` or ``512Mi`` (parse_memory's units), in bytes."""
    return parse_memory(text.strip())


#: A claim's name: a DNS-1123 subdomain.
_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")

_OPTION_PARSERS = {"images": _parse_images, "tolerations": _parse_tolerations,
                   "image_pull_secrets": lambda text: tuple(s.strip() for s in text.split(",") if s.strip()),
                   "volume_claims": _parse_claims, "ephemeral_storage_bytes": _parse_size,
                   "shm_bytes": _parse_size, "store_claim": _parse_claim,
                   "run_as_user": lambda text: int(text) if int(text) > 0 else None}


#: What each option's variable must hold, for error messages.
_EXPECTED = {
    "images": 'a JSON object of framework[:version] to image, e.g. {"pytorch": "reg/runner-pytorch:{version}"}',
    "tolerations": 'a JSON list of tolerations, e.g. [{"key": "nvidia.com/gpu", "operator": "Exists"}]',
    "image_pull_secrets": "a comma-separated list of Secret names",
    "job_ttl_s": "a whole number of seconds ≥ 0", "pending_note_s": "a number of seconds ≥ 0",
    "image_pull_grace_s": "a number of seconds ≥ 0", "namespace": "a namespace name",
    "gpu_label": "a node label key", "kueue_queue": "a LocalQueue name (may contain {account})",
    "service_account": "a service account name",
    "store_claim": "a PersistentVolumeClaim name",
    "volume_claims": "a comma-separated list of /directory=claim-name",
    "ephemeral_storage_bytes": "a size such as 20Gi", "shm_bytes": "a size such as 2Gi",
    "run_as_user": "a user id above 0"}
