"""The Kueue objects that give each account a GPU quota: a ResourceFlavor, ClusterQueues, LocalQueues.

An operator applies them once per account (``backend/deploy/kueue`` holds an example; this
module's command line prints them for any account); a run's Job names its account's LocalQueue
through the ``KUEUE_LABEL`` when ``WML_K8S_KUEUE_QUEUE`` is set. ``queue_name`` is the one rule
for that name, used by both sides:

    python -m wml_backend.executors.k8s_kueue team_a --gpus 2 --namespace wml | kubectl apply -f -
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Optional

from wml_backend.executors.k8s_names import GPU_RESOURCE, dns_label

KUEUE_API = "kueue.x-k8s.io/v1beta2"
#: The LocalQueue (and ClusterQueue) name of an account unless ``WML_K8S_KUEUE_QUEUE`` says otherwise.
DEFAULT_QUEUE = "wml-{account}"


def queue_name(template: str, account: str) -> str:
    """The LocalQueue of ``account``: ``template`` with ``{account}`` replaced, kept as it is when
    it is a valid name, else made one (``dns_label``: ``team_a`` → ``wml-team-a-433147f7``)."""
    return dns_label(template.replace("{account}", account))


def resource_flavor(name: str = "default-flavor") -> dict[str, Any]:
    """A Kueue ResourceFlavor with no node labels: every node's GPUs are alike."""
    return {"apiVersion": KUEUE_API, "kind": "ResourceFlavor", "metadata": {"name": name}, "spec": {}}


def account_queues(account: str, namespace: str, gpus: int, cpu: str = "8", memory: str = "32Gi",
                   disk: str = "200Gi", flavor: str = "default-flavor", cohort: str = "wml",
                   template: str = DEFAULT_QUEUE) -> list[dict[str, Any]]:
    """An account's ClusterQueue (its GPU quota, no borrowing) and its LocalQueue in ``namespace``.

    It covers every resource a run pod asks for (Kueue admits nothing that asks for a resource
    its ClusterQueue does not cover): ``disk`` is their local disk (``ephemeral-storage``).
    """
    name = queue_name(template, account)
    quota = [{"name": "cpu", "nominalQuota": cpu}, {"name": "memory", "nominalQuota": memory},
             {"name": "ephemeral-storage", "nominalQuota": disk},
             {"name": GPU_RESOURCE, "nominalQuota": str(gpus), "borrowingLimit": "0"}]
    cluster_queue = {
        "apiVersion": KUEUE_API, "kind": "ClusterQueue", "metadata": {"name": name},
        "spec": {"cohortName": cohort,
                 "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                 "queueingStrategy": "BestEffortFIFO",
                 "resourceGroups": [{"coveredResources": [r["name"] for r in quota],
                                     "flavors": [{"name": flavor, "resources": quota}]}]}}
    local_queue = {"apiVersion": KUEUE_API, "kind": "LocalQueue",
                   "metadata": {"name": name, "namespace": namespace}, "spec": {"clusterQueue": name}}
    return [cluster_queue, local_queue]


def main(argv: Optional[list[str]] = None) -> None:
    """Print, as YAML, the ClusterQueue and LocalQueue of each account named (for ``kubectl apply -f -``)."""
    import yaml

    p = argparse.ArgumentParser(prog="python -m wml_backend.executors.k8s_kueue",
                                description="Print the Kueue queues of wml accounts.")
    p.add_argument("accounts", nargs="+", help="account names, as `wml accounts create` took them")
    p.add_argument("--gpus", type=int, default=1, help="the accounts' GPU quota (default 1)")
    p.add_argument("--namespace", default=os.environ.get("WML_K8S_NAMESPACE", "wml"),
                   help="the backend's namespace (default: WML_K8S_NAMESPACE, else wml)")
    p.add_argument("--queue", default=os.environ.get("WML_K8S_KUEUE_QUEUE", DEFAULT_QUEUE),
                   help="the backend's WML_K8S_KUEUE_QUEUE (default: that variable, else wml-{account})")
    args = p.parse_args(argv)
    objects = [obj for account in args.accounts
               for obj in account_queues(account, args.namespace, args.gpus, template=args.queue)]
    print(yaml.safe_dump_all(objects, sort_keys=False), end="")


if __name__ == "__main__":
    main()
