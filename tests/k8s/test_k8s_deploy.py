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

from wml_backend.executors.k8s_options import load_options
from wml_backend.daemon import parser, settings_from
from wml_backend.settings import parse_storage_url

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
    assert kinds == ["ConfigMap", "Deployment", "Namespace", "PersistentVolumeClaim", "Role", "RoleBinding",
                     "Secret", "Service", "ServiceAccount"]
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
        (("",), ("secrets",)): ["create", "list", "delete"],
        (("",), ("services",)): ["create"],  # a multi-learner run's headless Service (its Job owns it)
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
    url = urlparse(options.public_url)
    [service] = by_kind("Service")
    assert url.hostname == f"{service['metadata']['name']}.wml.svc"
    assert url.port == service["spec"]["ports"][0]["port"] == container["ports"][0]["containerPort"]


def test_the_storage_secret_is_a_template_not_a_credential():
    [secret] = by_kind("Secret")
    assert set(secret["stringData"].values()) == {"CHANGE-ME"}
