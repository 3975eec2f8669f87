"""The Kubernetes cluster that tests/k8s, bench/k8s_submit.py and tutorial 03 run against, and a
namespace in it as ``backend/deploy`` makes one, for a backend that authenticates as its
ServiceAccount.

Which cluster (``test_cluster``):

* the test cluster already running in ``$WML_KUBE_STATE`` (scripts/test.sh starts one and
  exports its variables; ``eval "$(bash scripts/kube-up.sh)"`` does the same by hand);
* else, when asked for (``pytest -m k8s`` with ``KUBECONFIG`` set), the cluster of
  ``KUBECONFIG`` as it is: any real cluster. It has no node agent (its pods run images, and
  cannot be assumed to reach this host) and no audit log;
* else a test cluster started with scripts/kube-up.sh in a state dir of its own, and stopped
  at the end.

The test cluster's API server writes an audit log of every request of a ServiceAccount outside
kube-system (scripts/kube-up.sh): ``BackendNamespace.writes()`` counts a backend's API writes
from it, and ``refused()`` lists the calls its Role did not allow.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "backend" / "deploy"
#: The ServiceAccount the deployed backend runs as (backend/deploy/rbac.yaml).
BACKEND_ACCOUNT = "wml-backend"
#: What a backend's namespace needs of backend/deploy: the rest (Deployment, Service, state claim,
#: ConfigMap, storage Secret) is the backend's own pod, which runs on this host in tests.
NAMESPACE_KINDS = ("Namespace", "ServiceAccount", "Role", "RoleBinding", "NetworkPolicy")
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")
#: How long the ServiceAccount's token lasts (the TokenRequest API's expirationSeconds).
TOKEN_S = 6 * 3600


# -- the cluster ----------------------------------------------------------------------------------
@dataclass
class Cluster:
    """A cluster and how to reach it: ``env`` holds what a shell that evaluated kube-up.sh's
    ``export`` lines has (``KUBECONFIG``, ``PATH`` with its kubectl, ``WML_KUBE_*``); ``state`` is
    the test cluster's state dir (None for any other cluster)."""

    kubeconfig: Path
    env: dict[str, str]
    state: Optional[Path] = None
    _api: Any = field(default=None, repr=False)

    @property
    def has_agent(self) -> bool:
        """Whether pods run as processes of this host (the test cluster's node agent)."""
        return self.state is not None

    @property
    def has_audit_log(self) -> bool:
        """Whether the API server writes an audit log (the test cluster's does)."""
        return self.state is not None

    def audit_events(self, *marks: str) -> list[dict]:
        """The audit log's events whose line holds every one of ``marks`` (empty: no audit log).

        Only whole lines: the API server may be writing the last one as it is read."""
        if self.state is None:
            return []
        text = (self.state / "logs" / "audit.log").read_text()
        whole = text[:text.rfind("\n") + 1].splitlines()
        return [json.loads(line) for line in whole if all(mark in line for mark in marks)]

    def api(self):
        """The administrator's API client (``kubernetes.client.ApiClient``)."""
        if self._api is None:
            from kubernetes import config
            self._api = config.new_client_from_config(config_file=str(self.kubeconfig))
        return self._api

    def kubectl(self, *args: str, stdin: Optional[str] = None, check: bool = True) -> subprocess.CompletedProcess:
        """``kubectl ARGS`` as the administrator (the cluster's own kubectl first in ``PATH``)."""
        env = {**os.environ, **self.env}
        return subprocess.run(["kubectl", *args], input=stdin, env=env, capture_output=True, text=True,
                              check=check, timeout=120)

    def node_gpus(self) -> int:
        """The most ``nvidia.com/gpu`` any one node has: a run asking more fits nowhere."""
        from kubernetes import client
        nodes = client.CoreV1Api(self.api()).list_node().items
        return max((int((n.status.allocatable or {}).get("nvidia.com/gpu", 0)) for n in nodes), default=0)


def cluster_env(env_file: Path) -> dict[str, str]:
    """The variables of kube-up.sh's ``export`` lines, as a shell that evaluated them has them."""
    out = subprocess.run(["bash", "-c", f'. "{env_file}" && env -0'], capture_output=True, check=True).stdout
    pairs = (item.split("=", 1) for item in out.decode().split("\0") if "=" in item)
    return {k: v for k, v in pairs if k in ("KUBECONFIG", "PATH") or k.startswith("WML_KUBE_")}


def running_cluster(environ=os.environ) -> Optional[Cluster]:
    """The test cluster running in ``$WML_KUBE_STATE``, if one is."""
    state = environ.get("WML_KUBE_STATE")
    if not state or not (Path(state) / "cluster.env").exists():
        return None
    if not _alive(Path(state) / "pids" / "kube-apiserver.pid"):
        return None
    env = cluster_env(Path(state) / "cluster.env")
    return Cluster(Path(env["KUBECONFIG"]), env, Path(state))


def _alive(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text()), 0)
        return True
    except (OSError, ValueError):
        return False


def given_cluster(kubeconfig: str) -> Cluster:
    """Any cluster, as ``kubeconfig`` reaches it."""
    return Cluster(Path(kubeconfig), {"KUBECONFIG": kubeconfig, "PATH": os.environ.get("PATH", "")})


def start_cluster(state: Path, **settings: str) -> Cluster:
    """Start a test cluster in ``state`` (kube-up.sh; ``settings`` are its WML_KUBE_* variables)."""
    env = {**os.environ, **settings, "WML_KUBE_STATE": str(state)}
    up = subprocess.run(["bash", str(REPO / "scripts" / "kube-up.sh")], env=env, stdout=subprocess.PIPE, text=True)
    if up.returncode != 0:
        raise RuntimeError(f"scripts/kube-up.sh failed (logs in {state}/logs)")
    cluster = running_cluster({"WML_KUBE_STATE": str(state)})
    assert cluster is not None
    return cluster


def stop_cluster(cluster: Cluster) -> None:
    """Stop a test cluster that ``start_cluster`` started."""
    subprocess.run(["bash", str(REPO / "scripts" / "kube-down.sh")], env={**os.environ, **cluster.env}, check=False,
                   capture_output=True)


@contextmanager
def test_cluster(state: Path, real: bool = False) -> Iterator[Cluster]:
    """The running test cluster; else with ``real`` the cluster of ``KUBECONFIG``; else a test
    cluster started in ``state`` for the block."""
    cluster = running_cluster()
    if cluster is None and real and os.environ.get("KUBECONFIG"):
        cluster = given_cluster(os.environ["KUBECONFIG"])
    if cluster is not None:
        yield cluster
        return
    cluster = start_cluster(state)
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


test_cluster.__test__ = False  # not a test, whatever its name

_SHARED: list[Cluster] = []


def shared_cluster() -> Cluster:
    """The running test cluster; else one started the first time this is called, for the rest
    of this process (stopped when it exits): for tests outside tests/k8s (the executor contract)."""
    if not _SHARED:
        cluster = running_cluster()
        if cluster is None:
            cluster = start_cluster(Path(tempfile.mkdtemp(prefix="wml-kube-")))
            atexit.register(stop_cluster, cluster)
        _SHARED.append(cluster)
    return _SHARED[0]


# -- more nodes ------------------------------------------------------------------------------------
@dataclass
class ExtraNodes:
    """Nodes of a node agent started after the cluster: their names, and the agent's process."""

    names: list[str]
    process: subprocess.Popen


def start_nodes(cluster: Cluster, prefix: str, count: int, pretend: bool = True, options: Sequence[str] = (),
                ready_timeout: float = 120) -> ExtraNodes:
    """Start a node agent of ``count`` nodes named ``<prefix>1``... (``pretend``: nodes that run
    nothing; ``options``: more of the agent's flags, e.g. ``--pretend-run-s 1``); wait until
    they are Ready."""
    counts = ["--nodes", "0", "--pretend-nodes", str(count), "--pretend-prefix", prefix] if pretend else \
        ["--nodes", str(count), "--prefix", prefix]
    process = subprocess.Popen(
        [sys.executable, "-m", "nodeagent", "--state", str(cluster.state), *counts, *options],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)}, stderr=subprocess.DEVNULL)
    nodes = ExtraNodes([f"{prefix}{i}" for i in range(1, count + 1)], process)
    deadline = time.monotonic() + ready_timeout
    while len(_ready(cluster, prefix)) < count:
        if process.poll() is not None or time.monotonic() > deadline:
            stop_nodes(cluster, nodes)
            raise RuntimeError(f"the node agent of {prefix}* did not make {count} Ready nodes")
        time.sleep(0.5)
    return nodes


def _ready(cluster: Cluster, prefix: str) -> list[str]:
    from kubernetes import client
    return [n.metadata.name for n in client.CoreV1Api(cluster.api()).list_node().items
            if n.metadata.name.startswith(prefix)
            and any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])]


def stop_nodes(cluster: Cluster, nodes: ExtraNodes) -> None:
    """Stop the agent (its pods' processes with it) and delete its Node objects."""
    from kubernetes import client
    nodes.process.terminate()
    try:
        nodes.process.wait(30)
    except subprocess.TimeoutExpired:
        nodes.process.kill()
    core = client.CoreV1Api(cluster.api())
    for name in nodes.names:
        try:
            core.delete_node(name)
        except client.ApiException as exc:
            if exc.status != 404:
                raise


# -- a backend's namespace ----------------------------------------------------------------------------
def deploy_objects(cluster: Cluster) -> list[dict]:
    """The objects of ``kubectl kustomize backend/deploy`` that make the backend's namespace."""
    rendered = cluster.kubectl("kustomize", str(DEPLOY)).stdout
    return [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in NAMESPACE_KINDS]


def in_namespace(obj: dict, namespace: str) -> dict:
    """``obj`` of backend/deploy moved to ``namespace`` (the Namespace itself renamed)."""
    obj = json.loads(json.dumps(obj))
    meta = obj["metadata"]
    if obj["kind"] == "Namespace":
        meta["name"] = namespace
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = namespace
    else:
        meta["namespace"] = namespace
    for subject in obj.get("subjects") or []:
        if subject.get("kind") == "ServiceAccount":
            subject["namespace"] = namespace
    return obj


@dataclass
class BackendNamespace:
    """A namespace as backend/deploy makes one, and a kubeconfig of its ServiceAccount (its token
    from the TokenRequest API; the namespace is its context's), for a backend to run as."""

    name: str
    cluster: Cluster
    kubeconfig: Path

    @property
    def user(self) -> str:
        """The backend's user name in the API (its ServiceAccount)."""
        return f"system:serviceaccount:{self.name}:{BACKEND_ACCOUNT}"

    def objects(self, resource: str) -> list[dict]:
        """The namespace's ``resource`` (``jobs``, ``pods``, ``secrets``, ``services``, ``events``...),
        as the administrator reads them (JSON as the API serves it)."""
        from kubernetes import client
        api = (client.BatchV1Api if resource == "jobs" else client.CoreV1Api)(self.cluster.api())
        listed = getattr(api, f"list_namespaced_{resource[:-1]}")(self.name, _preload_content=False)
        return json.loads(listed.data)["items"]

    def can_i(self, verb: str, resource: str) -> bool:
        """``kubectl auth can-i VERB RESOURCE --as=<the backend's ServiceAccount>``."""
        answer = self.cluster.kubectl("auth", "can-i", verb, resource, "-n", self.name, f"--as={self.user}",
                                      check=False)
        return answer.stdout.strip() == "yes"

    def calls(self) -> Optional[list[dict]]:
        """The backend's requests so far, from the test cluster's audit log (None elsewhere)."""
        if not self.cluster.has_audit_log:
            return None
        events = self.cluster.audit_events(f'"username":"{self.user}"')
        return [e for e in events if e.get("stage") == "ResponseComplete"]

    def writes(self) -> Optional[Counter]:
        """The backend's successful API writes so far, by ``verb resource`` (None: no audit log)."""
        calls = self.calls()
        if calls is None:
            return None
        return Counter(f"{c['verb']} {c['objectRef']['resource']}" for c in calls
                       if c["verb"] in WRITE_VERBS and c["responseStatus"].get("code", 0) < 300)

    def refused(self) -> list[str]:
        """The backend's requests that RBAC refused (403): what its Role lacks."""
        return sorted({f"{c['verb']} {c.get('objectRef', {}).get('resource')}" for c in self.calls() or []
                       if c.get("responseStatus", {}).get("code") == 403})


def create_namespace(cluster: Cluster, home: Path, prefix: str = "wml-test") -> BackendNamespace:
    """A new namespace made from backend/deploy, and in ``home`` its ServiceAccount's kubeconfig."""
    from kubernetes import client, utils
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    api = cluster.api()
    for obj in deploy_objects(cluster):
        utils.create_from_dict(api, in_namespace(obj, name))
    token = client.CoreV1Api(api).create_namespaced_service_account_token(
        BACKEND_ACCOUNT, name, {"spec": {"expirationSeconds": TOKEN_S}}).status.token
    home.mkdir(parents=True, exist_ok=True)
    kubeconfig = home / f"kubeconfig-{name}"
    kubeconfig.write_text(yaml.safe_dump(account_kubeconfig(api, name, token)))
    kubeconfig.chmod(0o600)
    return BackendNamespace(name, cluster, kubeconfig)


def account_kubeconfig(api, namespace: str, token: str) -> dict:
    """A kubeconfig that reaches the administrator's API server with ``token``, in ``namespace``."""
    cfg = api.configuration
    server: dict[str, Any] = {"server": cfg.host}
    if cfg.ssl_ca_cert:
        server["certificate-authority-data"] = base64.b64encode(Path(cfg.ssl_ca_cert).read_bytes()).decode()
    return {"apiVersion": "v1", "kind": "Config", "current-context": "backend",
            "clusters": [{"name": "cluster", "cluster": server}],
            "users": [{"name": BACKEND_ACCOUNT, "user": {"token": token}}],
            "contexts": [{"name": "backend", "context": {"cluster": "cluster", "user": BACKEND_ACCOUNT,
                                                        "namespace": namespace}}]}


def delete_namespace(ns: BackendNamespace) -> None:
    """Delete the namespace, its pods at once (their processes and GPUs go now, not after a
    grace period); the namespace controller deletes the rest."""
    from kubernetes import client
    core = client.CoreV1Api(ns.cluster.api())
    try:
        core.delete_namespace(ns.name)
        core.delete_collection_namespaced_pod(ns.name, grace_period_seconds=0)
    except client.ApiException as exc:
        if exc.status != 404:
            raise
    ns.kubeconfig.unlink(missing_ok=True)


@contextmanager
def backend_namespace(cluster: Cluster, home: Path, prefix: str = "wml-test") -> Iterator[BackendNamespace]:
    """A namespace from backend/deploy for the block (``create_namespace``), deleted after it."""
    ns = create_namespace(cluster, home, prefix)
    try:
        yield ns
    finally:
        delete_namespace(ns)
