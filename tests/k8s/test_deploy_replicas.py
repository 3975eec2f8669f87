"""``backend/deploy`` on the test cluster's control plane: two backend replicas as pods of its
Deployment, on a PostgreSQL of this host, run a sweep while the leader's pod is killed; every run
ends once, runs once and is billed once; the PodDisruptionBudget refuses to evict the last ready
replica.

``kubectl kustomize backend/deploy`` is applied as rendered, in a namespace of the test's own
(``kube_ns``: its Namespace, ServiceAccount and Role come from the same rendering), with what
this cluster needs changed, each for a reason of the node agent (``nodeagent``), which runs pods
as processes of this host rather than images:

* the container's ``command`` is the image's entrypoint (``wml-backend``): the agent runs no image;
* it binds ``$(POD_IP)``, not 0.0.0.0: pods share this host's network here, each with a loopback
  address of its own, where a real cluster gives each pod a network of its own;
* ``KUBECONFIG`` names the ServiceAccount's kubeconfig (a Secret): the agent writes a token
  volume's files, but the Kubernetes client reads them at a fixed path it does not rewrite;
* the Secrets hold this test's database, key and store, ``WML_PUBLIC_URL`` is ``ServiceProxy``,
  which stands in for kube-proxy (there is none) and sends each connection to a ready pod of the
  Service;
* ``--gpus 4``: the cluster's GPUs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import yaml
from cryptography.fernet import Fernet
from ha_campaign import TERMINAL, CommandWatcher, write_sweep
from ha_cluster import Balancer
from pgserver import postgres_server  # noqa: F401 (fixture)
from s3server import ALLOW_ALL_S3
from testcluster import DEPLOY, NAMESPACE_KINDS, in_namespace

pytestmark = pytest.mark.nodeagent
#: The Service (and Deployment) of backend/deploy, and the port its pods serve.
SERVICE, PORT = "wml-backend", 8642
#: Where the backend pod finds the ServiceAccount's kubeconfig (a Secret volume).
KUBECONFIG_DIR = "/etc/wml-kube"
#: Seconds another replica may take to lead after the leader's pod is killed (issue #16).
TAKEOVER_S = 10.0


class ServiceProxy(Balancer):
    """kube-proxy's part for one Service on 127.0.0.1: each connection goes to the next ready pod
    of the Service's selector that accepts it (what its EndpointSlices would list: the API refuses
    loopback addresses in those, and here every pod's is one)."""

    def __init__(self, cluster, namespace: str, service: str = SERVICE, port: int = PORT):
        self.cluster, self.namespace, self.service, self.target = cluster, namespace, service, port
        self._api_lock = threading.Lock()
        super().__init__([])

    def endpoints(self) -> list[str]:
        """The addresses of the Service's ready pods that are not being deleted."""
        from kubernetes import client
        core = client.CoreV1Api(self.cluster.api())
        with self._api_lock:
            selector = core.read_namespaced_service(self.service, self.namespace).spec.selector
            pods = core.list_namespaced_pod(self.namespace, label_selector=",".join(
                f"{k}={v}" for k, v in selector.items())).items
        return [p.status.pod_ip for p in pods if p.status.pod_ip and not p.metadata.deletion_timestamp
                and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]

    def _connect(self):
        addresses = self.endpoints()
        for _ in range(len(addresses)):
            address = addresses[self._next % len(addresses)]
            self._next += 1
            try:
                return socket.create_connection((address, self.target), timeout=1.0)
            except OSError:
                continue
        return None


def deployed_objects(ns, settings: dict[str, dict[str, str]]) -> list[dict]:
    """The objects of backend/deploy that ``kube_ns`` did not create, moved to its namespace and
    changed as the module's docstring says; ``settings``: each Secret's and the ConfigMap's data."""
    rendered = ns.cluster.kubectl("kustomize", str(DEPLOY)).stdout
    objects = [in_namespace(d, ns.name) for d in yaml.safe_load_all(rendered) if d and d["kind"] not in NAMESPACE_KINDS]
    for obj in objects:
        name = obj["metadata"]["name"]
        if obj["kind"] == "Secret":
            obj["stringData"] = settings[name]
        elif obj["kind"] == "ConfigMap":
            obj["data"].update(settings[name])
        elif obj["kind"] == "Deployment":
            _for_the_node_agent(obj["spec"]["template"]["spec"])
    kubeconfig = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "wml-kubeconfig", "namespace": ns.name},
                  "stringData": {"config": ns.kubeconfig.read_text()}}
    return [kubeconfig, *objects]


def _for_the_node_agent(pod: dict) -> None:
    """The pod spec of the Deployment, changed for the node agent (the module's docstring)."""
    [container] = pod["containers"]
    container["command"] = ["wml-backend"]
    args = container["args"]
    args[args.index("--host") + 1] = "$(POD_IP)"
    args[args.index("--gpus") + 1] = "4"
    container["env"] = [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {"name": "KUBECONFIG", "value": f"{KUBECONFIG_DIR}/config"}, *container["env"]]
    container["volumeMounts"].append({"name": "kubeconfig", "mountPath": KUBECONFIG_DIR, "readOnly": True})
    pod["volumes"].append({"name": "kubeconfig", "secret": {"secretName": "wml-kubeconfig"}})


def apply(ns, objects: list[dict]) -> None:
    ns.cluster.kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))


def backend_pods(ns) -> list[dict]:
    """The Deployment's pods that run and are not being deleted, by name."""
    pods = [p for p in ns.objects("pods") if p["metadata"].get("labels", {}).get("app.kubernetes.io/name") == SERVICE]
    return sorted((p for p in pods if p["status"].get("phase") == "Running" and p["status"].get("podIP")
                   and not p["metadata"].get("deletionTimestamp")), key=lambda p: p["metadata"]["name"])


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2.0)
    except httpx.HTTPError:
        return None


def ready_replicas(ns, count: int = 2, timeout: float = 120.0) -> list[dict]:
    """``count`` running pods whose backend answers ``/readyz`` (on its own pod IP)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pods = backend_pods(ns)
        answers = [_get(f"http://{p['status']['podIP']}:{PORT}/readyz") for p in pods]
        if len(pods) == count and all(a is not None and a.status_code == 200 for a in answers):
            return pods
        time.sleep(0.5)
    raise AssertionError(f"not {count} ready replicas within {timeout:g} s: "
                         f"{[(p['metadata']['name'], p['status'].get('podIP')) for p in backend_pods(ns)]}")


def leader_of(pods: list[dict]) -> dict | None:
    for pod in pods:
        answer = _get(f"http://{pod['status']['podIP']}:{PORT}/healthz")
        if answer is not None and answer.status_code == 200 and answer.json()["leader"]:
            return pod
    return None


def admin_token(ns) -> str:
    """The administrator's token, which the replica that created the account wrote to its $WML_HOME
    (an emptyDir: the node agent keeps it under its state dir)."""
    pods_dir = ns.cluster.state / "agent" / "pods"
    [token] = [t for t in pods_dir.glob(f"{ns.name}_{SERVICE}-*/volumes/*/home/backend/token")]
    return token.read_text().strip()


def wml(proxy: ServiceProxy, token: str, home: Path, *args: str):
    """``wml ARGS --json`` through the Service's address."""
    env = {**os.environ, "WML_BACKEND": proxy.url, "WML_TOKEN": token, "WML_HOME": str(home), "HOME": str(home)}
    done = subprocess.run([sys.executable, "-m", "wml_jupyter", *args, "--json"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def evict(ns, pod: dict) -> int:
    """Ask the eviction API to evict ``pod``: its HTTP status."""
    from kubernetes import client
    body = client.V1Eviction(metadata=client.V1ObjectMeta(name=pod["metadata"]["name"], namespace=ns.name))
    try:
        client.CoreV1Api(ns.cluster.api()).create_namespaced_pod_eviction(pod["metadata"]["name"], ns.name, body)
    except client.ApiException as exc:
        return exc.status
    return 201


def wait_budget(ns, allowed: int, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        [budget] = json.loads(ns.cluster.kubectl("get", "pdb", "-n", ns.name, "-o", "json").stdout)["items"]
        if budget.get("status", {}).get("disruptionsAllowed") == allowed:
            return budget
        time.sleep(0.5)
    raise AssertionError(f"the PodDisruptionBudget never allowed {allowed}: {budget.get('status')}")


def _billable(run: dict) -> float:
    """The most GPU-seconds a run may be billed: its spans from PENDING to the end."""
    times = {t["state"]: datetime.fromisoformat(t["time"]).timestamp() for t in run["transitions"]}
    return (times[run["state"]] - times["PENDING"]) * run["gpus"]


@pytest.fixture
def deployed(kube_ns, postgres_server, s3, tmp_path):  # noqa: F811
    key = s3.user(f"operator-{kube_ns.name}", ALLOW_ALL_S3)
    proxy = ServiceProxy(kube_ns.cluster, kube_ns.name)
    apply(kube_ns, deployed_objects(kube_ns, {
        "wml-database": {"WML_DATABASE": postgres_server.dsn()},
        "wml-secrets-key": {"key": Fernet.generate_key().decode()},
        "wml-storage": {"AWS_ACCESS_KEY_ID": key[0], "AWS_SECRET_ACCESS_KEY": key[1]},
        "wml-backend-config": {"WML_PUBLIC_URL": proxy.url, "WML_STORAGE": f"s3://ha-{kube_ns.name}",
                               "AWS_ENDPOINT_URL": s3.endpoint}}))
    yield proxy
    proxy.close()


def test_two_replicas_survive_their_leader_pod_killed_and_a_disruption_keeps_one(kube_ns, deployed, tmp_path):
    proxy, home = deployed, tmp_path / "client"
    pods = ready_replicas(kube_ns)
    assert len({p["status"]["podIP"] for p in pods}) == 2, "each replica listens on its own pod IP"
    token = admin_token(kube_ns)
    manifest, model = write_sweep(tmp_path / "sweep", runs=6, steps=4, sleep=1.0)
    commands = CommandWatcher()
    commands.start()
    experiment = wml(proxy, token, home, "train", str(manifest), str(model))["id"]

    # The leader's pod killed outright once runs train: the other replica leads within seconds.
    deadline = time.monotonic() + 120
    while not any(r["state"] == "PROCESSING" for r in wml(proxy, token, home, "list", "--experiment", experiment)):
        assert time.monotonic() < deadline, "no run started"
        time.sleep(0.5)
    leader = leader_of(pods)
    assert leader is not None, "no replica leads"
    [survivor] = [p for p in pods if p is not leader]
    kube_ns.cluster.kubectl("delete", "pod", leader["metadata"]["name"], "-n", kube_ns.name,
                            "--grace-period=0", "--force")
    killed = time.monotonic()
    while leader_of([survivor]) is None:
        assert time.monotonic() - killed < TAKEOVER_S, f"no takeover within {TAKEOVER_S:g} s"
        time.sleep(0.1)
    print(f"takeover after the leader's pod was killed: {time.monotonic() - killed:.1f} s")

    while wml(proxy, token, home, "show", experiment)["state"] in ("QUEUED", "RUNNING"):
        assert time.monotonic() < deadline + 180, "the sweep did not end"
        time.sleep(1.0)
    commands.stop()
    runs = wml(proxy, token, home, "list", "--experiment", experiment)
    assert len(runs) == 6
    for run in runs:
        states = [t["state"] for t in run["transitions"]]
        assert run["state"] == "COMPLETED", f"{run['id']}: {states} ({run['reason']})"
        assert sum(s in TERMINAL for s in states) == 1 and states.count("PROCESSING") == 1, f"{run['id']}: {states}"
        assert len(commands.commands.get(run["id"], ())) == 1, f"{run['id']}'s command did not run exactly once"
        assert 0 < run["gpu_seconds"] <= _billable(run) + 0.01, f"{run['id']} billed {run['gpu_seconds']}"
    usage = {e["id"]: e["gpu_seconds"] for e in wml(proxy, token, home, "usage")["experiments"]}
    assert abs(usage[experiment] - sum(r["gpu_seconds"] for r in runs)) < 0.1, "usage counts a run twice"

    # The Deployment replaced the pod; of two ready replicas one may be evicted, the last may not.
    pods = ready_replicas(kube_ns)
    budget = wait_budget(kube_ns, allowed=1)
    assert budget["spec"]["minAvailable"] == 1
    assert evict(kube_ns, pods[0]) == 201
    # The Deployment replaces an evicted replica at once (and this agent runs no probes: ready at
    # start), so the last-replica case is taken with one replica wanted.
    kube_ns.cluster.kubectl("scale", "deployment/wml-backend", "--replicas=1", "-n", kube_ns.name)
    wait_budget(kube_ns, allowed=0)
    [last] = ready_replicas(kube_ns, count=1)
    assert evict(kube_ns, last) == 429
