"""The Kueue objects that give each account a GPU quota: a ResourceFlavor, ClusterQueues, LocalQueues.

An operator applies them once (``backend/deploy/kueue``); a run's Job names its account's
LocalQueue through the ``KUEUE_LABEL`` when ``WML_K8S_KUEUE_QUEUE`` is set.
"""

from __future__ import annotations

from typing import Any

from .k8s_names import GPU_RESOURCE, dns_label

KUEUE_API = "kueue.x-k8s.io/v1beta1"


def resource_flavor(name: str = "default-flavor") -> dict[str, Any]:
    """A Kueue ResourceFlavor with no node labels: every node's GPUs are alike."""
    return {"apiVersion": KUEUE_API, "kind": "ResourceFlavor", "metadata": {"name": name}, "spec": {}}


def account_queues(account: str, namespace: str, gpus: int, cpu: str = "8", memory: str = "32Gi",
                   flavor: str = "default-flavor", cohort: str = "wml") -> list[dict[str, Any]]:
    """An account's ClusterQueue (its GPU quota, no borrowing) and its LocalQueue in ``namespace``."""
    name = dns_label(f"wml-{account}")
    quota = [{"name": "cpu", "nominalQuota": cpu}, {"name": "memory", "nominalQuota": memory},
             {"name": GPU_RESOURCE, "nominalQuota": str(gpus), "borrowingLimit": "0"}]
    cluster_queue = {
        "apiVersion": KUEUE_API, "kind": "ClusterQueue", "metadata": {"name": name},
        "spec": {"cohort": cohort, "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                 "queueingStrategy": "BestEffortFIFO",
                 "resourceGroups": [{"coveredResources": ["cpu", "memory", GPU_RESOURCE],
                                     "flavors": [{"name": flavor, "resources": quota}]}]}}
    local_queue = {"apiVersion": KUEUE_API, "kind": "LocalQueue",
                   "metadata": {"name": name, "namespace": namespace}, "spec": {"clusterQueue": name}}
    return [cluster_queue, local_queue]
