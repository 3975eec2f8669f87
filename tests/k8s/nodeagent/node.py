"""One Node: its registration, its heartbeats (Lease and status) and the pods bound to it.

The node lists and watches the pods whose ``spec.nodeName`` is its own (the only pods the Node
authorizer lets it list), starts a worker for each new one, passes every later version of the
pod to its worker (a ``deletionTimestamp`` stops it), and kills the containers of a pod whose
object vanished. A watch that breaks is resumed from the last version seen; one that is too old
(410 Gone) lists again, with back-off between failures.
"""

from __future__ import annotations

import logging
import platform
import random
import shutil
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Optional

from .api import MERGE, Api, ApiError, Gone, path
from .pods import TERMINAL, PodWorker, PretendPod, now
from .podenv import POD_IP
from .processes import ProcessPod

if TYPE_CHECKING:
    from .agent import Agent

log = logging.getLogger("nodeagent")
LEASE_S = 40  # the kubelet's lease duration; renewed every quarter of it
RENEW_S = LEASE_S / 4
STATUS_S = 60.0  # a full status (conditions with a new heartbeat time) at least this often
WATCH_S = 300  # server-side timeout of one watch call (jittered)
#: Node label saying how the node runs pods: "processes" or "pretend" (a selector for scale tests).
MODE_LABEL = "nodeagent.wml.dev/mode"


@dataclass
class NodeConfig:
    """What a node advertises and how it runs pods."""

    gpus: int = 2
    cpus: str = "32"
    memory: str = "128Gi"
    pods: int = 110
    ephemeral_storage: str = "100Gi"
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[dict] = field(default_factory=list)
    pretend: bool = False
    pretend_run_s: Optional[float] = None


def micro_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Node:
    def __init__(self, agent: "Agent", name: str, api: Api, config: NodeConfig):
        self.agent, self.name, self.api, self.config = agent, name, api, config
        self.uid = ""
        self.workers: dict[str, PodWorker] = {}
        #: uid -> "ended" or "deleted": pods whose worker is done (late events of theirs are old news)
        self.finished: dict[str, str] = {}
        self.lock = threading.Lock()
        self.free_gpus = list(range(config.gpus))
        self.allocatable = {"cpu": config.cpus, "memory": config.memory, "pods": str(config.pods),
                            "ephemeral-storage": config.ephemeral_storage, "nvidia.com/gpu": str(config.gpus)}
        self.last_status = 0.0
        self.stopping = False

    # -- registration and heartbeats ------------------------------------------------------------
    def _node_object(self) -> dict:
        mode = "pretend" if self.config.pretend else "processes"
        labels = {"kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux",
                  "kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                  "beta.kubernetes.io/arch": "amd64", MODE_LABEL: mode, **self.config.labels}
        return {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.name, "labels": labels},
                "spec": {"taints": self.config.taints} if self.config.taints else {},
                "status": self._status(full=True)}

    def _status(self, full: bool = False) -> dict:
        beat = now()
        conditions = [
            {"type": kind, "status": "False", "reason": reason, "message": message,
             "lastHeartbeatTime": beat, "lastTransitionTime": self.agent.started}
            for kind, reason, message in (
                ("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"))]
        conditions.append({"type": "Ready", "status": "True", "reason": "KubeletReady",
                           "message": "node agent is posting ready status", "lastHeartbeatTime": beat,
                           "lastTransitionTime": self.agent.started})
        status: dict = {"conditions": conditions}
        if full:
            status.update(
                capacity=dict(self.allocatable), allocatable=dict(self.allocatable),
                addresses=[{"type": "InternalIP", "address": POD_IP}, {"type": "Hostname", "address": self.name}],
                daemonEndpoints={"kubeletEndpoint": {"Port": self.agent.log_port}},
                nodeInfo={"machineID": self.name, "systemUUID": self.name, "bootID": self.agent.boot_id,
                          "kernelVersion": platform.release(), "osImage": "wml node agent",
                          "containerRuntimeVersion": "nodeagent://1", "kubeletVersion": self.agent.version,
                          "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"})
        return status

    def register(self) -> None:
        """Create the Node (or take over an existing one of that name) and its Lease."""
        body = self._node_object()
        try:
            node = self.api.create("/api/v1/nodes", body)
        except ApiError as exc:
            if exc.status != 409:
                raise
            self.api.patch(path("api", "v1", "nodes", self.name),
                           {"metadata": {"labels": body["metadata"]["labels"]}})
            node = self.api.patch(path("api", "v1", "nodes", self.name, "status"), {"status": body["status"]})
        self.uid = node["metadata"]["uid"]
        self.last_status = time.monotonic()
        self.renew_lease()

    def renew_lease(self) -> None:
        lease_path = path("apis", "coordination.k8s.io", "v1", "namespaces", "kube-node-lease", "leases", self.name)
        try:
            self.api.patch(lease_path, {"spec": {"holderIdentity": self.name, "renewTime": micro_now(),
                                                 "leaseDurationSeconds": LEASE_S}}, MERGE)
        except ApiError as exc:
            if exc.status != 404:
                raise
            owner = {"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": self.uid}
            self.api.create("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "ownerReferences": [owner]},
                "spec": {"holderIdentity": self.name, "leaseDurationSeconds": LEASE_S, "renewTime": micro_now()}})

    def heartbeat(self) -> None:
        """Renew the Lease; post the status when it is due. Errors are logged, not raised."""
        try:
            self.renew_lease()
            if time.monotonic() - self.last_status >= STATUS_S:
                self.api.patch(path("api", "v1", "nodes", self.name, "status"), {"status": self._status()})
                self.last_status = time.monotonic()
        except ApiError as exc:
            if exc.status == 404:  # the Node was deleted: register again, as a kubelet does
                self.register()
            else:
                log.warning("node %s: heartbeat failed: %s", self.name, exc)
        except Exception as exc:  # the API server is away: the next beat tries again
            log.warning("node %s: heartbeat failed: %s", self.name, exc)

    # -- GPUs ------------------------------------------------------------------------------------
    def allocate_gpus(self, count: int) -> list[int]:
        with self.lock:
            taken, self.free_gpus = self.free_gpus[:count], self.free_gpus[count:]
            return taken

    def release_gpus(self, gpus: list[int]) -> None:
        with self.lock:
            self.free_gpus = sorted(self.free_gpus + gpus)

    # -- pods ------------------------------------------------------------------------------------
    def watch_pods(self) -> None:
        """List and watch this node's pods until the agent stops."""
        selector = {"fieldSelector": f"spec.nodeName={self.name}"}
        failures = 0
        version = ""
        while not self.stopping:
            try:
                if not version:
                    listed = self.api.get("/api/v1/pods", **selector)
                    version = listed["metadata"]["resourceVersion"]
                    self._resync(listed.get("items") or [])
                began, events = time.monotonic(), 0
                for event in self.api.watch("/api/v1/pods", {**selector, "resourceVersion": version},
                                            WATCH_S + random.randint(0, 60)):
                    obj = event["object"]
                    version = obj["metadata"].get("resourceVersion", version)
                    if event["type"] != "BOOKMARK":
                        self.sync(event["type"], obj)
                    failures, events = 0, events + 1
                    if self.stopping:
                        return
                if not events and time.monotonic() - began < 1.0:
                    time.sleep(1.0)  # a watch the server ends at once: do not spin
            except Gone:
                version = ""  # too old: list again
            except Exception as exc:
                if self.stopping:
                    return
                failures += 1
                delay = min(0.5 * 2 ** failures, 30.0) * random.uniform(0.8, 1.2)
                log.warning("node %s: pod watch failed (%s); again in %.1f s", self.name, exc, delay)
                time.sleep(delay)
                if isinstance(exc, ApiError) and exc.status in (401, 403):
                    version = ""

    def _resync(self, pods: list[dict]) -> None:
        """After a (re)list: the pods listed are synced; the ones no longer there are gone."""
        seen = {p["metadata"]["uid"] for p in pods}
        with self.lock:
            vanished = [w for uid, w in self.workers.items() if uid not in seen]
            self.finished = {uid: v for uid, v in self.finished.items() if uid in seen}
        for worker in vanished:
            worker.vanish()
        for pod in pods:
            self.sync("ADDED", pod)

    def sync(self, kind: str, pod: dict) -> None:
        meta, status = pod["metadata"], pod.get("status") or {}
        uid = meta["uid"]
        with self.lock:
            worker = self.workers.get(uid)
            finished = self.finished.get(uid)
            if kind == "DELETED":
                self.finished.pop(uid, None)
        if kind == "DELETED":
            if worker:
                worker.vanish()
            self._remove_volumes(pod)
            return
        if worker is not None:
            worker.update(pod)
            return
        if finished or status.get("phase") in TERMINAL:
            if meta.get("deletionTimestamp") and finished != "deleted":  # only the object is left to remove
                self._worker(pod).finish_deletion()
                with self.lock:
                    self.finished[uid] = "deleted"
            return
        if status.get("containerStatuses") and status.get("phase") == "Running":
            self._lost(pod)  # started by an earlier agent: its processes are gone
            return
        worker = self._worker(pod)
        with self.lock:
            self.workers[uid] = worker
        worker.update(pod)
        worker.start()

    def _remove_volumes(self, pod: dict) -> None:
        """The pod is gone: its volumes and file system go too (its logs stay, for post-mortems)."""
        meta = pod["metadata"]
        pod_dir = self.agent.pods_dir / f"{meta['namespace']}_{meta['name']}_{meta['uid']}"
        for sub in ("volumes", "rootfs", "home"):
            shutil.rmtree(pod_dir / sub, ignore_errors=True)

    def _worker(self, pod: dict) -> PodWorker:
        return (PretendPod if self.config.pretend else ProcessPod)(self, pod)

    def _lost(self, pod: dict) -> None:
        """A Running pod this agent did not start: report its containers as lost (exit 137)."""
        worker = self._worker(pod)
        worker.start_time = (pod.get("status") or {}).get("startTime") or now()
        statuses = [worker.container_status(c, {"terminated": {
            "exitCode": 137, "reason": "ContainerStatusUnknown", "finishedAt": now(), "startedAt": now(),
            "message": "The container could not be located when the pod was terminated"}})
            for c in pod["spec"]["containers"]]
        worker.report("Failed", statuses)
        if pod["metadata"].get("deletionTimestamp"):
            worker.finish_deletion()

    def forget(self, worker: PodWorker, deleted: bool) -> None:
        with self.lock:
            if self.workers.get(worker.uid) is worker:
                del self.workers[worker.uid]
            self.finished[worker.uid] = "deleted" if deleted else "ended"

    def stop(self) -> None:
        """The agent stops: kill every container now (nothing more is reported)."""
        self.stopping = True
        with self.lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.vanish()
