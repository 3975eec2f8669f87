"""The stand-in cluster in one call: API server, control plane, a GPU node, and a kubeconfig."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kubefake_api import ApiServer
from kubefake_cluster import Cluster
from kubefake_store import Store

NAMESPACE = "wml-test"


@dataclass
class FakeKube:
    """A running stand-in: its server, its control plane and node, and a kubeconfig for it."""

    server: ApiServer
    cluster: Cluster
    kubeconfig: Path
    namespace: str = NAMESPACE

    def writes(self) -> dict[str, int]:
        """API writes the executor made so far, by verb and resource."""
        return {f"{verb} {res}": n for (verb, res), n in self.server.store.calls.items()
                if verb in ("POST", "PUT", "PATCH", "DELETE")}

    def objects(self, resource: str) -> list[dict]:
        """The stored objects of a resource in the namespace."""
        return self.server.store.list(resource, self.namespace)[0]


def start_fake_kube(root: Path, gpus: int = 2, images: Callable[[str], bool] = lambda image: True,
                    simulate_s: float | None = None, history: int = 10000, validate: bool = True,
                    image_env: dict | None = None) -> FakeKube:
    """Start a stand-in server, its control plane and a node with ``gpus`` GPUs, under ``root``.

    ``images`` says which images exist and ``image_env`` what their ENV lines set; with
    ``simulate_s`` containers only pretend to run that long (no process); ``validate`` checks
    every created object against the Kubernetes schema, as the API server does.
    """
    root.mkdir(parents=True)
    server = ApiServer(Store(history=history, validate=validate)).start()
    cluster = Cluster(server, root / "node", gpus=gpus, images=images, simulate_s=simulate_s, image_env=image_env)
    return FakeKube(server, cluster, server.kubeconfig(root / "kubeconfig", NAMESPACE))


def stop_fake_kube(kube: FakeKube) -> None:
    """Kill its containers and stop its server."""
    kube.cluster.close()
    kube.server.stop()


#: RBAC verbs of the stand-in's recorded request verbs.
RBAC_VERBS = {"GET": "get", "LIST": "list", "WATCH": "watch", "POST": "create", "PATCH": "patch", "DELETE": "delete"}
ROLE = Path(__file__).parents[2] / "backend" / "deploy" / "rbac.yaml"


def role_allows() -> set[tuple[str, str]]:
    """(verb, resource) pairs the backend's Role in ``backend/deploy/rbac.yaml`` grants."""
    import yaml
    role = next(d for d in yaml.safe_load_all(ROLE.read_text()) if d["kind"] == "Role")
    return {(verb, res) for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]}


def calls_beyond_role(kube: FakeKube) -> set[tuple[str, str]]:
    """Requests the stand-in served that the deployed backend's Role would have refused."""
    return {(RBAC_VERBS[verb], res) for verb, res in kube.server.store.calls} - role_allows()
