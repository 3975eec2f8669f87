"""Kueue's install manifests for the test cluster, printed as one JSON ``List`` (for kubectl).

Kueue's own manifests (CRDs, webhook configurations, RBAC) are read from its Go module at the
pinned version and changed only where the test cluster differs from an in-cluster install:

* the manager runs on this host, outside the cluster, so every webhook (admission and CRD
  conversion) is called at ``https://127.0.0.1:<port>/<path>`` (``clientConfig.url``) and trusts
  the test cluster's CA (``caBundle``), where an install names a Service and uses cert-manager or
  Kueue's internal certificates;
* only the webhooks of Kueue's own APIs and of the enabled integrations are registered (the
  others would answer "allowed" from a no-op handler: a round trip per object for nothing);
* the manager authenticates as a user (``--user``), bound to Kueue's manager ClusterRole, where an
  install uses a ServiceAccount; names get Kueue's ``kueue-`` prefix, as its kustomization does.

Usage: render_kueue.py COMPONENTS_DIR WEBHOOK_URL CA_FILE USER FRAMEWORK...
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import yaml

#: libyaml's parser where PyYAML has it: Kueue's CRDs are 2 MB of YAML.
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

#: CRDs whose versions are converted by Kueue's webhook (config/components/crd/kustomization.yaml).
CONVERTED = {"localqueues", "clusterqueues", "cohorts", "workloads", "multikueueclusters"}
#: Integration (Configuration ``integrations.frameworks``) -> the fragment of its webhook paths.
FRAMEWORK_PATHS = {"batch/job": "-batch-v1-job", "pod": "--v1-pod", "deployment": "-apps-v1-deployment",
                   "statefulset": "-apps-v1-statefulset"}
#: Webhooks of these integrations skip Kueue's and the system's own namespaces (its kustomization).
SYSTEM_NAMESPACES = ("kube-system", "kueue-system")
#: ClusterRoles for users of Kueue's APIs (aggregated into admin/edit/view), besides the manager's.
USER_ROLE_SUFFIXES = ("_editor_role.yaml", "_viewer_role.yaml", "batch_admin_role.yaml",
                      "batch_user_role.yaml")


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.load_all(path.read_text(), Loader=Loader) if doc]


def crds(components: Path, url: str, ca: str) -> list[dict]:
    out = []
    for path in sorted((components / "crd" / "bases").glob("*.yaml")):
        for crd in load_all(path):
            if crd["spec"]["names"]["plural"] in CONVERTED:
                crd["spec"]["conversion"] = {"strategy": "Webhook", "webhook": {
                    "clientConfig": {"url": f"{url}/convert", "caBundle": ca},
                    "conversionReviewVersions": ["v1"]}}
            out.append(crd)
    return out


def _wanted(path: str, frameworks: list[str]) -> bool:
    if "-kueue-x-k8s-io-" in path:
        return True
    return any(FRAMEWORK_PATHS.get(fw, "\0") in path for fw in frameworks)


def webhooks(components: Path, url: str, ca: str, frameworks: list[str]) -> list[dict]:
    out = []
    for config in load_all(components / "webhook" / "manifests.yaml"):
        config["metadata"]["name"] = "kueue-" + config["metadata"]["name"]
        kept = []
        for hook in config["webhooks"]:
            path = hook["clientConfig"]["service"]["path"]
            if not _wanted(path, frameworks):
                continue
            hook["clientConfig"] = {"url": url + path, "caBundle": ca}
            if any(path.endswith(s) for s in ("--v1-pod", "-apps-v1-deployment", "-apps-v1-statefulset")):
                hook["namespaceSelector"] = {"matchExpressions": [{
                    "key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": list(SYSTEM_NAMESPACES)}]}
            kept.append(hook)
        config["webhooks"] = kept
        out.append(config)
    return out


def _binding(kind: str, name: str, role: str, user: str, namespace: str | None = None) -> dict:
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind.replace("Binding", ""), "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]}


def rbac(components: Path, user: str) -> list[dict]:
    """Kueue's ClusterRoles, its manager's Role on Secrets of its namespace, and bindings to ``user``."""
    out = []
    for path in sorted((components / "rbac").glob("*.yaml")):
        if path.name in ("role.yaml", "manager_secrets_role.yaml") or path.name.endswith(USER_ROLE_SUFFIXES):
            for role in load_all(path):
                role["metadata"]["name"] = "kueue-" + role["metadata"]["name"]
                if role["kind"] == "Role":
                    role["metadata"]["namespace"] = "kueue-system"
                out.append(role)
    out.append(_binding("ClusterRoleBinding", "kueue-manager-rolebinding", "kueue-manager-role", user))
    out.append(_binding("RoleBinding", "kueue-manager-secrets-rolebinding", "kueue-manager-secrets-role", user,
                        "kueue-system"))
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 5:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    components, url, ca_file, user, frameworks = Path(argv[0]), argv[1].rstrip("/"), argv[2], argv[3], argv[4:]
    ca = base64.b64encode(Path(ca_file).read_bytes()).decode()
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kueue-system"}}
    docs = [namespace, *crds(components, url, ca), *rbac(components, user),
            *webhooks(components, url, ca, frameworks)]
    json.dump({"apiVersion": "v1", "kind": "List", "items": docs}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
