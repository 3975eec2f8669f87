"""What the kubelet computes before it starts a container: its volumes, env and command line.

Volumes are directories of the agent's state on this host (nothing is mounted at a pod's mount
paths, which this host does not have): each volume mount's ``mountPath`` stands for its
directory, and the paths under a ``mountPath`` that the container's ``workingDir``, ``command``,
``args`` and env values name (as a whole word: ``/job/x``, ``--data=/job/x``, ``cat /job/x``)
are rewritten to the directory. That is the one liberty taken with the pod spec; a path that a
program builds or has compiled in is not seen.

Supported volumes: ``emptyDir``, ``hostPath``, ``secret``, ``configMap``, ``downwardAPI``,
``projected`` (ServiceAccount token through the TokenRequest API, configMaps, secrets,
downward API) and ``persistentVolumeClaim`` bound to a ``hostPath`` or ``local``
PersistentVolume. Env: ``value`` (with ``$(VAR)`` expansion), ``secretKeyRef``,
``configMapKeyRef``, ``fieldRef``, ``resourceFieldRef``, ``envFrom`` secrets and config maps.
Everything is read with the node's own identity, so a pod sees only what the Node authorizer lets
its node read.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import threading
from pathlib import Path
from typing import Any, Optional

from .api import Api, ApiError, path
from .quantity import parse

#: The node's address (``hostIP``, its InternalIP): this host's loopback.
POD_IP = "127.0.0.1"
#: Pod addresses: each pod of this agent gets one of 127.1.0.1-127.254.255.254 of its own (all of
#: 127/8 is this host's loopback), so pods that listen on one port (replicas of a Deployment
#: binding ``status.podIP``) do not collide. Pods still reach each other at any of them.
_POD_ADDRESSES = 254 << 16
_pod_ips: dict[str, str] = {}
_pod_ips_lock = threading.Lock()
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_FIELD_KEY = re.compile(r"metadata\.(labels|annotations)\['([^']+)'\]")
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")


class ConfigError(Exception):
    """The container cannot be configured yet (a Secret missing...): ``CreateContainerConfigError``."""

    reason = "CreateContainerConfigError"


class NotMounted(ConfigError):
    """A volume cannot be set up yet (claim unbound...): the pod stays ``ContainerCreating``."""

    reason = "ContainerCreating"


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names are replaced, ``$$`` is a literal ``$``."""
    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))
    return _VAR_REF.sub(one, text)


def remap(value: str, mounts: list[tuple[str, Path]]) -> str:
    """``value`` with every path under a mount (``/job``, ``/job/x``: a whole path, in a shell
    line or a ``--flag=/job/x`` too) replaced by the directory that stands for the mount."""
    dirs = {m.rstrip("/"): str(d) for m, d in mounts if m.rstrip("/")}
    if not dirs:
        return value
    alternatives = "|".join(re.escape(m) for m in sorted(dirs, key=len, reverse=True))
    pattern = re.compile(r"(?<![\w./-])(" + alternatives + r")(?=/|$|[^\w.-])")
    return pattern.sub(lambda match: dirs[match.group(1)], value)  # one pass: no path rewritten twice


class PodFiles:
    """The volumes of one pod, as directories under ``root``."""

    def __init__(self, api: Api, pod: dict, root: Path, node_name: str):
        self.api, self.pod, self.root, self.node_name = api, pod, root, node_name
        self.ns = pod["metadata"]["namespace"]
        self.volumes: dict[str, Path] = {}

    # -- objects the node may read --------------------------------------------------------------
    def _get(self, kind: str, name: str, optional: bool = False) -> Optional[dict]:
        try:
            return self.api.get(path("api", "v1", "namespaces", self.ns, kind, name))
        except ApiError as exc:
            if exc.status == 404 and optional:
                return None
            singular = kind[:-1] if kind != "configmaps" else "configmap"
            raise ConfigError(f'{singular} "{name}" not found' if exc.status == 404 else exc.message) from None

    def secret_data(self, name: str, optional: bool = False) -> dict[str, bytes]:
        secret = self._get("secrets", name, optional) or {}
        return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}

    def configmap_data(self, name: str, optional: bool = False) -> dict[str, bytes]:
        cm = self._get("configmaps", name, optional) or {}
        data = {k: v.encode() for k, v in (cm.get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (cm.get("binaryData") or {}).items()})
        return data

    # -- volumes --------------------------------------------------------------------------------
    def prepare(self) -> None:
        for volume in self.pod["spec"].get("volumes") or []:
            self.volumes[volume["name"]] = self._volume(volume)

    def _volume(self, volume: dict) -> Path:
        name = volume["name"]
        here = self.root / "volumes" / name
        if "emptyDir" in volume:
            here.mkdir(parents=True, exist_ok=True)
            return here
        if "hostPath" in volume:
            host = Path(volume["hostPath"]["path"])
            if volume["hostPath"].get("type") == "DirectoryOrCreate":
                host.mkdir(parents=True, exist_ok=True)
            return host
        if "persistentVolumeClaim" in volume:
            return self._claim(volume["persistentVolumeClaim"]["claimName"])
        files: dict[str, bytes] = {}
        if "secret" in volume:
            src = volume["secret"]
            files = _items(self.secret_data(src["secretName"], src.get("optional", False)), src.get("items"))
        elif "configMap" in volume:
            src = volume["configMap"]
            files = _items(self.configmap_data(src["name"], src.get("optional", False)), src.get("items"))
        elif "downwardAPI" in volume:
            files = self._downward(volume["downwardAPI"].get("items") or [])
        elif "projected" in volume:
            for source in volume["projected"].get("sources") or []:
                files.update(self._projected(source))
        else:
            kind = next((k for k in volume if k != "name"), "?")
            raise NotMounted(f'volume "{name}": {kind} volumes are not supported by the node agent')
        for rel, content in files.items():
            target = here / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        here.mkdir(parents=True, exist_ok=True)
        return here

    def _claim(self, claim: str) -> Path:
        pvc = self._get("persistentvolumeclaims", claim)
        volume_name = (pvc.get("spec") or {}).get("volumeName")
        if not volume_name or (pvc.get("status") or {}).get("phase") != "Bound":
            raise NotMounted(f'persistentvolumeclaim "{claim}" is not bound')
        try:
            pv = self.api.get(path("api", "v1", "persistentvolumes", volume_name))
        except ApiError as exc:
            raise NotMounted(exc.message) from None
        source = pv["spec"].get("hostPath") or pv["spec"].get("local")
        if not source:
            raise NotMounted(f'persistentvolume "{volume_name}": only hostPath and local volumes can be mounted')
        return Path(source["path"])

    def _downward(self, items: list[dict]) -> dict[str, bytes]:
        return {item["path"]: field_value(self.pod, item["fieldRef"]["fieldPath"]).encode()
                for item in items if "fieldRef" in item}

    def _projected(self, source: dict) -> dict[str, bytes]:
        if "serviceAccountToken" in source:
            spec = source["serviceAccountToken"]
            return {spec["path"]: self._token(spec.get("audience"), spec.get("expirationSeconds", 3600)).encode()}
        if "configMap" in source:
            src = source["configMap"]
            return _items(self.configmap_data(src["name"], src.get("optional", False)), src.get("items"))
        if "secret" in source:
            src = source["secret"]
            return _items(self.secret_data(src["name"], src.get("optional", False)), src.get("items"))
        if "downwardAPI" in source:
            return self._downward(source["downwardAPI"].get("items") or [])
        return {}

    def _token(self, audience: Optional[str], seconds: int) -> str:
        """A token of the pod's ServiceAccount, bound to the pod (as the kubelet asks for one)."""
        meta = self.pod["metadata"]
        account = self.pod["spec"].get("serviceAccountName") or "default"
        spec = {"expirationSeconds": seconds,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]}}
        if audience:
            spec["audiences"] = [audience]
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        try:
            token_path = path("api", "v1", "namespaces", self.ns, "serviceaccounts", account, "token")
            answer = self.api.create(token_path, body)
        except ApiError as exc:
            raise NotMounted(f"cannot get a ServiceAccount token: {exc.message}") from None
        return answer["status"]["token"]

    def mounts(self, container: dict) -> list[tuple[str, Path]]:
        """(mountPath, directory) of the container's mounts, longest path first."""
        out = []
        for mount in container.get("volumeMounts") or []:
            host = self.volumes.get(mount["name"])
            if host is None:
                raise ConfigError(f'volume "{mount["name"]}" not found')
            if mount.get("subPath"):
                host = host / mount["subPath"]
                host.mkdir(parents=True, exist_ok=True)
            out.append((mount["mountPath"], host))
        return sorted(out, key=lambda m: len(m[0]), reverse=True)


def _items(data: dict[str, bytes], items: Optional[list[dict]]) -> dict[str, bytes]:
    if not items:
        return dict(data)
    return {item["path"]: data[item["key"]] for item in items if item["key"] in data}


def pod_ip(pod: dict) -> str:
    """The pod's own address (``status.podIP``), the same for its life on this agent."""
    uid = pod["metadata"]["uid"]
    with _pod_ips_lock:
        if uid not in _pod_ips:
            used = set(_pod_ips.values())
            n = int(hashlib.sha256(uid.encode()).hexdigest(), 16) % _POD_ADDRESSES  # spread over agents
            while _address(n) in used or _address(n).endswith((".0", ".255")):
                n = (n + 1) % _POD_ADDRESSES
            _pod_ips[uid] = _address(n)
        return _pod_ips[uid]


def release_pod_ip(uid: str) -> None:
    """The pod with ``uid`` is gone from this agent: its address may be given again."""
    with _pod_ips_lock:
        _pod_ips.pop(uid, None)


def _address(n: int) -> str:
    return f"127.{1 + (n >> 16)}.{(n >> 8) & 255}.{n & 255}"


def field_value(pod: dict, field_path: str) -> str:
    """A downward-API ``fieldPath`` of ``pod``."""
    meta, spec = pod["metadata"], pod["spec"]
    match = _FIELD_KEY.fullmatch(field_path)
    if match:
        return (meta.get(match.group(1)) or {}).get(match.group(2), "")
    if field_path in ("metadata.labels", "metadata.annotations"):
        values = meta.get(field_path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
    simple = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"],
              "metadata.uid": meta.get("uid", ""), "spec.nodeName": spec.get("nodeName", ""),
              "spec.serviceAccountName": spec.get("serviceAccountName", ""),
              "status.hostIP": POD_IP, "status.hostIPs": POD_IP, "status.podIP": pod_ip(pod),
              "status.podIPs": pod_ip(pod)}
    if field_path not in simple:
        raise ConfigError(f"unsupported fieldPath {field_path!r}")
    return simple[field_path]


def resource_value(pod: dict, container: dict, ref: dict, node_allocatable: dict) -> str:
    """A ``resourceFieldRef``: the container's limit (or request), else the node's allocatable."""
    if ref.get("containerName"):
        container = next(c for c in pod["spec"]["containers"] if c["name"] == ref["containerName"])
    kind, _, resource = ref["resource"].partition(".")
    resources = container.get("resources") or {}
    value = (resources.get(kind) or {}).get(resource)
    if value is None and kind == "requests":
        value = (resources.get("limits") or {}).get(resource)
    if value is None:
        value = node_allocatable.get(resource, "0")
    amount = parse(value) / parse(ref.get("divisor", "1"))
    return str(math.ceil(amount))


def container_env(files: PodFiles, container: dict, base: dict[str, str], allocatable: dict) -> dict[str, str]:
    """The environment of ``container``: ``base`` (the image's), then ``envFrom``, then ``env``."""
    env = dict(base)
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        if "secretRef" in source:
            ref = source["secretRef"]
            data = files.secret_data(ref["name"], ref.get("optional", False))
        else:
            ref = source["configMapRef"]
            data = files.configmap_data(ref["name"], ref.get("optional", False))
        env.update({prefix + k: v.decode("utf-8", "replace") for k, v in data.items()
                    if _ENV_NAME.fullmatch(prefix + k)})
    for var in container.get("env") or []:
        value = _env_value(files, container, var, env, allocatable)
        if value is not None:
            env[var["name"]] = value
    return env


def _env_value(files: PodFiles, container: dict, var: dict, env: dict, allocatable: dict) -> Optional[str]:
    source: dict[str, Any] = var.get("valueFrom") or {}
    if not source:
        return expand(var.get("value", ""), env)
    if "fieldRef" in source:
        return field_value(files.pod, source["fieldRef"]["fieldPath"])
    if "resourceFieldRef" in source:
        return resource_value(files.pod, container, source["resourceFieldRef"], allocatable)
    kind, getter = (("secretKeyRef", files.secret_data) if "secretKeyRef" in source
                    else ("configMapKeyRef", files.configmap_data))
    ref = source[kind]
    data = getter(ref["name"], ref.get("optional", False))
    if ref["key"] not in data:
        if ref.get("optional"):
            return None
        raise ConfigError(f'couldn\'t find key {ref["key"]} in {kind[:-6].lower()} {files.ns}/{ref["name"]}')
    return data[ref["key"]].decode("utf-8", "replace")
