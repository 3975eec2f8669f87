"""``backend/deploy``: kustomize renders it, the official schema accepts it, the Role is minimal,
and the configuration it gives the backend is configuration the backend accepts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import kubernetes_validate
import pytest
import yaml

from wml_backend.executors.k8s_names import MANAGED_BY
from wml_backend.executors.k8s_objects import BACKEND_POD_LABELS
from wml_backend.executors.k8s_options import DEFAULT_RUN_AS_USER, load_options
from wml_backend.daemon import parser, settings_from
from wml_core.objectstore.resolve import parse_storage_url

DEPLOY = Path(__file__).parents[2] / "backend" / "deploy"
SCHEMA_VERSION = "1.32.0"


def objects(folder: Path = DEPLOY) -> list[dict]:
    """Every object the kustomization in ``folder`` lists (read directly: no kubectl needed)."""
    resources = yaml.safe_load((folder / "kustomization.yaml").read_text())["resources"]
    return [doc for name in resources for doc in yaml.safe_load_all((folder / name).read_text()) if doc]


def by_kind(kind: str) -> list[dict]:
    return [o for o in objects() if o["kind"] == kind]


def test_every_object_is_valid_for_kubernetes():
    kinds = sorted(o["kind"] for o in objects())
    assert kinds == ["ConfigMap", "Deployment", "Namespace", "NetworkPolicy", "PodDisruptionBudget", "Role",
                     "RoleBinding", "Secret", "Secret", "Secret", "Service", "ServiceAccount"]
    for obj in objects():
        kubernetes_validate.validate(obj, SCHEMA_VERSION, strict=True)


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl is not installed")
@pytest.mark.parametrize("folder", [DEPLOY, DEPLOY / "kueue"])
def test_kustomize_renders(folder):
    rendered = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, check=True)
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    assert len(docs) == len(objects(folder))
    if folder == DEPLOY:
        assert {d["metadata"].get("namespace", "wml") for d in docs} == {"wml"}


def test_the_role_is_namespaced_and_minimal():
    [role] = by_kind("Role")
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): r["verbs"] for r in role["rules"]}
    assert rules == {
        (("batch",), ("jobs",)): ["create", "list", "watch", "delete"],
        (("",), ("pods",)): ["list", "watch", "delete"],
        (("",), ("pods/log",)): ["get"],
        (("",), ("secrets",)): ["create", "delete"],  # never list, get or watch: no one else's Secret is read
        (("",), ("events",)): ["list", "watch"],  # FailedCreate: the API refused a run's pod
        (("",), ("services",)): ["create"],  # a multi-learner run's headless Service (its Job owns it)
        (("networking.k8s.io",), ("networkpolicies",)): ["create"],  # and its NetworkPolicy (owned too)
    }
    assert not by_kind("ClusterRole") and not by_kind("ClusterRoleBinding")
    [binding] = by_kind("RoleBinding")
    [account] = by_kind("ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"]}]


def test_the_deployment_runs_the_kubernetes_executor_with_valid_settings():
    [deployment] = by_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    settings = settings_from(parser().parse_args(container["args"]))  # the backend's own flags
    settings.check_exposure()
    assert settings.executor == "kubernetes" and settings.host == "0.0.0.0"
    assert pod["serviceAccountName"] == by_kind("ServiceAccount")[0]["metadata"]["name"]
    config = by_kind("ConfigMap")[0]["data"]
    options = load_options(config, "wml")  # a misspelt WML_K8S_* would raise here
    assert parse_storage_url(config["WML_STORAGE"]) == ("wml-results", "")
    assert options.images["pytorch"] == "wml-runner-pytorch:{version}"
    url = urlparse(options.backend_url)
    [service] = by_kind("Service")
    assert url.hostname == f"{service['metadata']['name']}.wml.svc"
    assert url.port == service["spec"]["ports"][0]["port"] == container["ports"][0]["containerPort"]
    assert load_options({}, "wml").backend_url == options.backend_url  # the default is that Service


def test_the_namespace_admits_only_pods_that_pod_security_restricted_allows():
    [namespace] = by_kind("Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    [deployment] = by_kind("Deployment")  # the backend's own pod too
    pod = deployment["spec"]["template"]["spec"]
    security = pod["securityContext"]
    assert security["runAsNonRoot"] and security["seccompProfile"]["type"] == "RuntimeDefault"
    for container in pod["containers"]:
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_run_pods_accept_the_backend_only_and_reach_no_other_run():
    """A run's learners reach each other through their run's own policy (test_k8s_network_policy)."""
    [policy] = by_kind("NetworkPolicy")
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": MANAGED_BY["app.kubernetes.io/name"]}}
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    runs = {"podSelector": spec["podSelector"]}
    [deployment] = by_kind("Deployment")
    assert deployment["spec"]["template"]["metadata"]["labels"] == BACKEND_POD_LABELS
    backend = {"podSelector": {"matchLabels": BACKEND_POD_LABELS}}
    assert spec["ingress"] == [{"from": [backend]}]  # from nothing but the backend
    port = deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    assert {"to": [backend], "ports": [{"protocol": "TCP", "port": port}]} in spec["egress"]
    assert not [rule for rule in spec["egress"] if runs in rule["to"]], "no run reaches another"
    assert all(rule.get("to") for rule in spec["egress"]), "no rule lets a run reach anywhere"


def test_the_run_image_runs_as_the_user_run_pods_run_as():
    dockerfile = (DEPLOY / "docker" / "runner.Dockerfile").read_text()
    assert f"USER {DEFAULT_RUN_AS_USER}" in dockerfile.splitlines()


def test_the_secrets_are_templates_not_credentials():
    secrets = {s["metadata"]["name"]: s["stringData"] for s in by_kind("Secret")}
    assert set(secrets) == {"wml-storage", "wml-database", "wml-secrets-key"}
    assert {value for data in secrets.values() for value in data.values()} == {"CHANGE-ME"}


def test_two_replicas_share_a_database_and_a_key_and_are_replaced_one_at_a_time():
    [deployment] = by_kind("Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    assert {"secretRef": {"name": "wml-database"}} in container["envFrom"]  # WML_DATABASE, from no file
    env = {e["name"]: e.get("value") for e in container["env"]}
    key_volume = next(v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == "wml-secrets-key")
    [key_mount] = [m for m in container["volumeMounts"] if m["name"] == key_volume["name"]]
    assert key_mount["readOnly"] and env["WML_SECRETS_KEY_FILE"] == f"{key_mount['mountPath']}/key"
    assert not any("persistentVolumeClaim" in v for v in pod["volumes"]), "no volume ties a replica to a node"
    assert not by_kind("PersistentVolumeClaim")


def test_a_disruption_leaves_one_ready_replica():
    [budget] = by_kind("PodDisruptionBudget")
    [deployment] = by_kind("Deployment")
    assert budget["spec"]["minAvailable"] == 1 < deployment["spec"]["replicas"]
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]


def test_the_probes_ask_routes_the_backend_serves_to_anyone():
    from wml_backend.api import PUBLIC_ROUTES
    [deployment] = by_kind("Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    ready, alive = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert (ready["path"], alive["path"]) == ("/readyz", "/livez")
    assert {ready["path"], alive["path"]} <= PUBLIC_ROUTES  # a probe carries no token
