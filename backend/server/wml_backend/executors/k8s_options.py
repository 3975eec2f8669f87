"""The operator's settings of the Kubernetes executor: ``K8sOptions``, read from ``WML_K8S_*``.

``load_options`` reads the environment once at start-up; a variable it does not know, or a value
it cannot parse, is an ``InvalidInput`` of one line saying what was expected.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Optional

from ..errors import InvalidInput
from .k8s_names import GPU_RESOURCE

#: Images per framework (``name`` or ``name:version``); ``{version}`` is the manifest's version.
DEFAULT_IMAGES = MappingProxyType({
    "pytorch": "wml-runner-pytorch:{version}", "tensorflow": "wml-runner-tensorflow:{version}",
    "keras": "wml-runner-tensorflow:{version}", "custom": "wml-runner:{version}"})
#: The version used when a manifest names none.
DEFAULT_VERSIONS = MappingProxyType({"pytorch": "2.4", "tensorflow": "2.16", "keras": "2.16"})
#: GPU nodes are commonly tainted so that only GPU pods land there.
DEFAULT_TOLERATIONS = ({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"},)


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
