"""A stand-in control plane: the Job controller, the scheduler and one GPU node with its kubelet.

It acts on the stand-in server's store as kube-controller-manager and kube-scheduler act on
etcd through the API: a Job gets one pod (``backoffLimit`` is honoured as 0), an Indexed Job
``completions`` pods (index annotation and label, ``JOB_COMPLETION_INDEX``, hostname
``<job>-<index>``; Complete when all succeed, Failed, its other pods deleted, when one fails), the pod is bound
to the node when its GPUs, node selector and taints allow (else ``Unschedulable`` with the
scheduler's message), and the Job's conditions follow its pod. Tests also use it to play
events no API call causes: an eviction, a lost node, Kueue admitting a suspended Job.
"""

from __future__ import annotations

import copy
import queue
import secrets
import threading
from collections.abc import Callable
from pathlib import Path

from kubefake_api import ApiServer
from kubefake_kubelet import Kubelet
from kubefake_store import ApiError, now

GPU = "nvidia.com/gpu"
NODE_TAINT = {"key": GPU, "value": "present", "effect": "NoSchedule"}
FINAL = ("Succeeded", "Failed")
INDEX = "batch.kubernetes.io/job-completion-index"


class Cluster:
    """One node with ``gpus`` GPUs, ``labels`` and a GPU taint, plus the controllers around it."""

    def __init__(self, server: ApiServer, root: Path, gpus: int = 2, labels: dict | None = None,
                 images: Callable[[str], bool] = lambda image: True, simulate_s: float | None = None,
                 image_env: dict | None = None):
        self.server, self.store = server, server.store
        self.node, self.gpus = "gpu-node-1", gpus
        self.labels = {"kubernetes.io/hostname": self.node, **(labels or {})}
        self.kubelet = Kubelet(server, root, images, simulate_s, image_env)
        self._events: queue.Queue = queue.Queue()
        self._timers: list[threading.Timer] = []
        self._waiting: dict[tuple[str, str], None] = {}  # pods to bind, in arrival order
        self._holding: dict[tuple[str, str], int] = {}  # bound, unfinished pods and their GPUs
        self._used = 0
        self.store.listeners.append(lambda res, kind, obj: self._events.put((res, kind, obj)))
        self._thread = threading.Thread(target=self._loop, name="fake-control-plane", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the controllers and kill every container."""
        self._events.put(None)
        for timer in self._timers:
            timer.cancel()
        self.kubelet.close()

    def _loop(self) -> None:
        while (item := self._events.get()) is not None:
            res, kind, obj = item
            try:
                if res == "jobs" and kind != "DELETED":
                    self._sync_job(obj["metadata"]["namespace"], obj["metadata"]["name"])
                elif res == "pods":
                    self._pod_event(kind, obj)
            except ApiError:
                pass  # the object went meanwhile, as happens to controllers

    # -- Job controller -------------------------------------------------------------------------
    def _sync_job(self, ns: str, name: str) -> None:
        job = self.store.get("jobs", ns, name)
        status, spec = job["status"], job["spec"]
        if job["metadata"].get("deletionTimestamp") or spec.get("suspend") or _finished(job) \
                or status.get("active") or status.get("failed") or status.get("succeeded"):
            return
        template = job["spec"]["template"]
        indexed = spec.get("completionMode") == "Indexed"
        count = spec.get("completions", 1) if indexed else 1
        for index in range(count):
            labels = {**template["metadata"].get("labels", {}), "batch.kubernetes.io/job-name": name,
                      "job-name": name, "controller-uid": job["metadata"]["uid"]}
            meta = {"name": f"{name}-{secrets.token_hex(3)[:5]}", "labels": labels,
                    "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                                         "uid": job["metadata"]["uid"], "controller": True,
                                         "blockOwnerDeletion": True}]}
            pod_spec = copy.deepcopy(template["spec"])
            if indexed:  # as the Job controller does for Indexed Jobs
                meta["name"] = f"{name}-{index}-{secrets.token_hex(3)[:5]}"
                labels[INDEX] = str(index)
                meta["annotations"] = {INDEX: str(index)}
                pod_spec["hostname"] = f"{name}-{index}"
                for container in pod_spec["containers"]:
                    container["env"] = container.get("env", []) + [{"name": "JOB_COMPLETION_INDEX", "value": str(index)}]
            self.store.create("pods", ns, {"metadata": meta, "spec": pod_spec, "status": {"phase": "Pending"}})
        self.store.update("jobs", ns, name, lambda j: j["status"].update(active=count, startTime=now()))
        if spec.get("activeDeadlineSeconds"):
            timer = threading.Timer(spec["activeDeadlineSeconds"], self._deadline, args=(ns, name))
            timer.daemon = True
            self._timers.append(timer)
            timer.start()

    def _deadline(self, ns: str, name: str) -> None:
        try:
            job = self.store.get("jobs", ns, name)
            if not _finished(job):
                self._finish(ns, name, "Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
                for pod in self._pods_of(job):
                    self.store.delete("pods", ns, pod["metadata"]["name"])
        except ApiError:
            pass

    def _pod_event(self, kind: str, pod: dict) -> None:
        meta = pod["metadata"]
        ns = meta["namespace"]
        self.kubelet.sync(kind, pod)
        owner = next((r["name"] for r in meta.get("ownerReferences", []) if r["kind"] == "Job"), None)
        if owner is not None:
            self._job_follows_pod(ns, owner, kind, pod)
        self._schedule(kind, pod)

    def _job_follows_pod(self, ns: str, name: str, kind: str, pod: dict) -> None:
        try:
            job = self.store.get("jobs", ns, name)
        except ApiError:
            return
        if _finished(job) or job["metadata"].get("deletionTimestamp"):
            return
        phase = pod["status"].get("phase")
        disrupted = any(c.get("type") == "DisruptionTarget" for c in pod["status"].get("conditions", []))
        completions = job["spec"].get("completions", 1) if job["spec"].get("completionMode") == "Indexed" else 1
        if phase == "Succeeded":
            done = {p["metadata"]["name"] for p in self._pods_of(job) if p["status"].get("phase") == "Succeeded"}
            if len(done | {pod["metadata"]["name"]}) >= completions:
                self._finish(ns, name, "Complete", None, None, succeeded=completions)
        elif phase == "Failed" or kind == "DELETED" or (disrupted and pod["metadata"].get("deletionTimestamp")):
            self._finish(ns, name, "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit",
                         failed=1)
            for other in self._pods_of(job):  # the Job failed: its other pods are terminated
                if other["metadata"]["name"] != pod["metadata"]["name"] and other["status"].get("phase") not in FINAL:
                    self.store.delete("pods", ns, other["metadata"]["name"])

    def _finish(self, ns: str, name: str, kind: str, reason: str | None, message: str | None,
                **counts: int) -> None:
        def change(job: dict) -> None:
            cond = {"type": kind, "status": "True", "lastTransitionTime": now()}
            if reason:
                cond.update(reason=reason, message=message)
            job["status"].update(active=0, conditions=job["status"].get("conditions", []) + [cond], **counts)
            if kind == "Complete":
                job["status"]["completionTime"] = now()
        self.store.update("jobs", ns, name, change)

    def _pods_of(self, job: dict) -> list[dict]:
        pods, _ = self.store.list("pods", job["metadata"]["namespace"], f"job-name={job['metadata']['name']}")
        return pods

    # -- scheduler ---------------------------------------------------------------------------------
    def _schedule(self, kind: str, pod: dict) -> None:
        """Track GPUs held on the node; bind waiting pods, in order, while they fit."""
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        if kind == "ADDED" and not pod["spec"].get("nodeName"):
            self._waiting[key] = None
        elif key in self._holding and (kind == "DELETED" or pod["status"].get("phase") in FINAL):
            self._used -= self._holding.pop(key)
        elif kind == "DELETED":
            self._waiting.pop(key, None)
        for ns, name in list(self._waiting):
            try:
                pod = self.store.get("pods", ns, name)
            except ApiError:
                del self._waiting[(ns, name)]
                continue
            if pod["metadata"].get("deletionTimestamp"):
                continue
            problem = self._misfit(pod, self.gpus - self._used)
            if problem is None:
                del self._waiting[(ns, name)]
                self._holding[(ns, name)] = _gpus(pod)
                self._used += _gpus(pod)
            self._bind(ns, pod, problem)

    def _misfit(self, pod: dict, free: int) -> str | None:
        spec = pod["spec"]
        if any(self.labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
            return "1 node(s) didn't match Pod's node affinity/selector"
        if _gpus(pod) and not any(t.get("key") == GPU and t.get("operator") == "Exists"
                                  for t in spec.get("tolerations", [])):
            return "1 node(s) had untolerated taint {nvidia.com/gpu: present}"
        if _gpus(pod) > free:
            return f"1 Insufficient {GPU}"
        return None

    def _bind(self, ns: str, pod: dict, problem: str | None) -> None:
        if problem is None:
            cond = {"type": "PodScheduled", "status": "True"}
        else:
            cond = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": f"0/1 nodes are available: {problem}. preemption: 0/1 nodes are available: "
                               "1 No preemption victims found for incoming pod."}
        if [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in pod["status"].get("conditions") or []] \
                == [cond]:
            return

        def change(p: dict) -> None:
            p["status"]["conditions"] = [{**cond, "lastTransitionTime": now()}]
            if problem is None:
                p["spec"]["nodeName"] = self.node
        self.store.update("pods", ns, pod["metadata"]["name"], change)

    # -- events no API call causes ----------------------------------------------------------------
    def evict(self, ns: str, pod_name: str, message: str = "The node was low on resource: memory.") -> None:
        """The kubelet evicts a pod under node pressure: its containers are killed, it is Failed."""
        self.kubelet.kill((ns, pod_name))

        def change(pod: dict) -> None:
            pod["status"].update(phase="Failed", reason="Evicted", message=message, conditions=[
                {"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet"}])
        self.store.update("pods", ns, pod_name, change)

    def lose_node(self, ns: str) -> None:
        """The node stops answering: its containers die unseen, the taint manager deletes its pods."""
        self.kubelet.close()
        pods, _ = self.store.list("pods", ns)
        for pod in pods:
            if pod["spec"].get("nodeName") == self.node and pod["status"].get("phase") not in FINAL:
                self.store.update("pods", ns, pod["metadata"]["name"], _taint_manager_deletes)

    def admit(self, ns: str, job_name: str) -> None:
        """Kueue admits a suspended Job: it un-suspends it."""
        self.store.update("jobs", ns, job_name, lambda job: job["spec"].update(suspend=False))


def _taint_manager_deletes(pod: dict) -> None:
    pod["metadata"].update(deletionTimestamp=now(), deletionGracePeriodSeconds=30)
    pod["status"].setdefault("conditions", []).append(
        {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager",
         "message": "Taint manager: deleting due to NoExecute taint"})


def _finished(job: dict) -> bool:
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in job["status"].get("conditions", []))


def _gpus(pod: dict) -> int:
    return int(pod["spec"]["containers"][0].get("resources", {}).get("limits", {}).get(GPU, 0))
