"""The Kueue objects that hold each account's GPU quota: a ResourceFlavor, ClusterQueues, LocalQueues.

With ``WML_K8S_KUEUE_QUEUE`` set, each account's GPU quota is the ``nvidia.com/gpu`` nominal
quota of a ClusterQueue of its own, in one cohort per backend (its namespace) so that quota an
account leaves idle can be borrowed by the others, and taken back: ``PREEMPTION`` says how. The
backend makes and updates an account's ClusterQueue and LocalQueue itself when the account is
created or changed (``KueueQueues.apply``, through ``Executor.sync_account``); the operator applies
the ResourceFlavor once (``backend/deploy/kueue``). A run's Job names its account's LocalQueue
through the ``KUEUE_LABEL``; ``queue_name`` is the one rule for that name, used by both sides.
This module's command line prints an account's queues (to read, or for a cluster whose backend
may not write them):

    python -m wml_backend.executors.k8s_kueue team_a --gpus 2 --namespace wml | kubectl apply -f -
"""

from __future__ import annotations

import argparse
import os
from types import MappingProxyType
from typing import Any, Optional

from wml_backend.executors.k8s_client import CALL_TIMEOUT_S, CONNECT_TIMEOUT_S, ClusterError, call, why
from wml_backend.executors.k8s_names import GPU_RESOURCE, dns_label

KUEUE_GROUP, KUEUE_VERSION = "kueue.x-k8s.io", "v1beta2"
KUEUE_API = f"{KUEUE_GROUP}/{KUEUE_VERSION}"
#: The LocalQueue name of an account unless ``WML_K8S_KUEUE_QUEUE`` says otherwise.
DEFAULT_QUEUE = "wml-{account}"
#: How an account's ClusterQueue takes GPUs back: its nominal quota, lent to other accounts while
#: idle, is reclaimed from whichever borrower holds it, whatever that run's priority (a borrower
#: runs on borrowed time); within the account, a run of higher priority (a WorkloadPriorityClass)
#: preempts one of lower priority; nobody preempts to borrow. A preempted run's Job is suspended:
#: its runner gets SIGTERM, stores its checkpoint, and the run is queued again (not a retry).
PREEMPTION = MappingProxyType({"reclaimWithinCohort": "Any", "withinClusterQueue": "LowerPriority",
                               "borrowWithinCohort": {"policy": "Never"}})
#: Quota of the resources other than GPUs, when the account has no limit of its own: Kueue admits
#: nothing asking for a resource its ClusterQueue does not cover, and those limits are the
#: backend's (``wml accounts create --cpus --memory``), checked before a Job is made.
UNLIMITED = MappingProxyType({"cpu": "100k", "memory": "1Pi", "ephemeral-storage": "1Pi"})


def queue_name(template: str, account: str) -> str:
    """The LocalQueue of ``account``: ``template`` with ``{account}`` replaced, kept as it is when
    it is a valid name, else made one (``dns_label``: ``team_a`` → ``wml-team-a-433147f7``)."""
    return dns_label(template.replace("{account}", account))


def cluster_queue_name(namespace: str, template: str, account: str) -> str:
    """The ClusterQueue of ``account`` of the backend of ``namespace`` (ClusterQueues are
    cluster-wide: two backends' accounts of one name must not share one)."""
    return dns_label(f"{namespace}-{queue_name(template, account)}")


def resource_flavor(name: str = "default-flavor") -> dict[str, Any]:
    """A Kueue ResourceFlavor with no node labels: every node's GPUs are alike."""
    return {"apiVersion": KUEUE_API, "kind": "ResourceFlavor", "metadata": {"name": name}, "spec": {}}


def account_queues(account: str, namespace: str, gpus: int, cpus: Optional[float] = None,
                   memory_bytes: Optional[int] = None, flavor: str = "default-flavor",
                   template: str = DEFAULT_QUEUE) -> list[dict[str, Any]]:
    """An account's ClusterQueue (``gpus`` its nominal GPU quota, in the cohort of ``namespace``,
    borrowing allowed, ``PREEMPTION``) and its LocalQueue in ``namespace``.

    It covers every resource a run pod asks for (Kueue admits nothing that asks for a resource
    its ClusterQueue does not cover); CPUs and memory are the account's own limits, if any.
    """
    quota = [{"name": "cpu", "nominalQuota": UNLIMITED["cpu"] if cpus is None else f"{cpus:g}"},
             {"name": "memory", "nominalQuota": UNLIMITED["memory"] if memory_bytes is None else str(memory_bytes)},
             {"name": "ephemeral-storage", "nominalQuota": UNLIMITED["ephemeral-storage"]},
             {"name": GPU_RESOURCE, "nominalQuota": str(gpus)}]
    name = cluster_queue_name(namespace, template, account)
    cluster_queue = {
        "apiVersion": KUEUE_API, "kind": "ClusterQueue", "metadata": {"name": name},
        "spec": {"cohortName": dns_label(namespace),
                 "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                 "queueingStrategy": "BestEffortFIFO", "preemption": dict(PREEMPTION),
                 "resourceGroups": [{"coveredResources": [r["name"] for r in quota],
                                     "flavors": [{"name": flavor, "resources": quota}]}]}}
    local_queue = {"apiVersion": KUEUE_API, "kind": "LocalQueue",
                   "metadata": {"name": queue_name(template, account), "namespace": namespace},
                   "spec": {"clusterQueue": name}}
    return [cluster_queue, local_queue]


class KueueQueues:
    """Writes accounts' queues: creates each, or patches the one there (its spec, as built)."""

    def __init__(self, api: Any, namespace: str, template: str):
        from kubernetes import client
        self._custom, self.namespace, self.template = client.CustomObjectsApi(api), namespace, template

    def apply(self, account: str, gpus: int, cpus: Optional[float] = None,
              memory_bytes: Optional[int] = None) -> None:
        """Make or update ``account``'s ClusterQueue and LocalQueue; ``ClusterError`` if refused."""
        cluster_queue, local_queue = account_queues(account, self.namespace, gpus, cpus, memory_bytes,
                                                    template=self.template)
        c = self._custom
        _create_or_patch(c.create_cluster_custom_object, c.patch_cluster_custom_object, (), cluster_queue)
        _create_or_patch(c.create_namespaced_custom_object, c.patch_namespaced_custom_object, (self.namespace,),
                         local_queue)


def _create_or_patch(create, patch, where: tuple, obj: dict[str, Any]) -> None:
    """Create the Kueue object ``obj`` (in namespace ``where``, if any), or patch its spec if it is there."""
    from kubernetes.client import ApiException
    plural = obj["kind"].lower() + "s"
    try:
        create(KUEUE_GROUP, KUEUE_VERSION, *where, plural, obj, _request_timeout=(CONNECT_TIMEOUT_S, CALL_TIMEOUT_S))
    except ApiException as exc:
        if exc.status != 409:
            raise ClusterError(f"kubernetes: cannot create {obj['kind']} {obj['metadata']['name']}: {why(exc)}") \
                from None
        call(patch, KUEUE_GROUP, KUEUE_VERSION, *where, plural, obj["metadata"]["name"], {"spec": obj["spec"]})


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
