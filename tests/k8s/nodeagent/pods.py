"""One pod's life on a node, as the kubelet reports it: status through the API, and deletion.

``PodWorker`` holds what both kinds of node share: the pod's latest object, its container
statuses, the status patches (phase, conditions, ``containerStatuses``, pod IP), and the end of
a deletion (once its containers have stopped, the pod object is deleted with grace 0, as the
kubelet does). Subclasses run the containers: ``processes.ProcessPod`` as local processes,
``PretendPod`` not at all.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Optional

from .api import ApiError, path, retrying
from .podenv import POD_IP, pod_ip, release_pod_ip

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("nodeagent")
TERMINAL = ("Succeeded", "Failed")
#: Annotations a pod on a pretend node may carry: how long it "runs", and its exit code.
RUN_SECONDS_ANNOTATION = "nodeagent.wml.dev/run-seconds"
EXIT_CODE_ANNOTATION = "nodeagent.wml.dev/exit-code"


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def exit_code(returncode: int) -> int:
    """A process' exit status as a container runtime reports it (a signal N is 128 + N)."""
    return returncode if returncode >= 0 else 128 - returncode


def waiting(reason: str, message: str = "") -> dict:
    return {"waiting": {"reason": reason, **({"message": message} if message else {})}}


def terminated(code: int, reason: str, started: Optional[str], message: str = "") -> dict:
    state = {"exitCode": code, "reason": reason, "finishedAt": now(), "startedAt": started or now()}
    if message:
        state["message"] = message
    return {"terminated": state}


class PodWorker:
    """Status and deletion of one pod bound to ``node``; ``start()`` runs it on a thread."""

    def __init__(self, node: "Node", pod: dict):
        self.node, self.api = node, node.api
        self.pod = pod
        meta = pod["metadata"]
        self.ns, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.lock = threading.Condition()
        self.deleting = False  # deletionTimestamp seen: stop the containers, then delete
        self.gone = False  # the pod object is gone (or the agent stops): report nothing more
        self.start_time = now()
        self.phase = "Pending"
        self._sent: Any = None
        self._unsent: Optional[dict] = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.ns}/{self.name})"

    # -- events from the node's watch -------------------------------------------------------------
    def start(self) -> None:
        threading.Thread(target=self._main, name=f"pod {self.ns}/{self.name}", daemon=True).start()

    def update(self, pod: dict) -> None:
        with self.lock:
            self.pod = pod
            if pod["metadata"].get("deletionTimestamp") and not self.deleting:
                self.deleting = True
            self.lock.notify_all()

    def vanish(self) -> None:
        """The pod object is gone (force-deleted) or the agent stops: kill now, report nothing."""
        with self.lock:
            self.gone = True
            self.lock.notify_all()

    def grace_s(self) -> float:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        grace = meta.get("deletionGracePeriodSeconds")
        return float(spec.get("terminationGracePeriodSeconds", 30) if grace is None else grace)

    def _main(self) -> None:
        deleted = False
        try:
            self.run()
            while self._unsent is not None and not (self.gone or self.node.stopping):
                time.sleep(5.0)  # the last status did not get through: as the kubelet, insist
                self._send(self._unsent)
            if self.deleting and not self.gone:
                self.finish_deletion()
                deleted = True
        except Exception:  # a bug here must not take the node down: say it, and leave the pod
            log.exception("%r failed", self)
        finally:
            release_pod_ip(self.uid)
            self.node.forget(self, deleted)

    def run(self) -> None:  # pragma: no cover - subclasses
        raise NotImplementedError

    # -- what the kubelet writes -----------------------------------------------------------------
    def report(self, phase: str, containers: list[dict], init: Optional[list[dict]] = None,
               reason: str = "", message: str = "") -> None:
        """Patch the pod's status (if it changed): ``containers`` are ``containerStatuses``."""
        if self.gone:
            return
        self.phase = phase
        started = [c for c in containers if "running" in c["state"]]
        ready = phase == "Running" and len(started) == len(containers)
        terminal = phase in TERMINAL
        initialized = init is None or all("terminated" in c["state"] and c["state"]["terminated"]["exitCode"] == 0
                                          for c in init)
        not_ready = "" if ready else ("PodCompleted" if terminal else "ContainersNotReady")
        conditions = [
            _condition("PodReadyToStartContainers", not terminal),
            _condition("Initialized", initialized, "" if initialized else "ContainersNotInitialized"),
            _condition("ContainersReady", ready, not_ready), _condition("Ready", ready, not_ready)]
        status: dict[str, Any] = {
            "phase": phase, "hostIP": POD_IP, "hostIPs": [{"ip": POD_IP}], "podIP": pod_ip(self.pod),
            "podIPs": [{"ip": pod_ip(self.pod)}], "startTime": self.start_time, "containerStatuses": containers,
            "conditions": conditions}
        if init is not None:
            status["initContainerStatuses"] = init
        if reason:
            status["reason"], status["message"] = reason, message
        self._send(status)

    def _send(self, status: dict) -> None:
        self._unsent = None
        key = _comparable(status)
        if key == self._sent:
            return
        status_path = path("api", "v1", "namespaces", self.ns, "pods", self.name, "status")
        phase, containers = status["phase"], status["containerStatuses"]
        try:
            retrying(lambda: self.api.patch(status_path, {"status": status}))
            self._sent = key
            log.log(logging.DEBUG if self.node.config.pretend else logging.INFO, "%s/%s on %s: %s %s", self.ns,
                    self.name, self.node.name, phase, " ".join(_brief(c["state"]) for c in containers))
        except ApiError as exc:
            if exc.status == 404:
                self.gone = True
            else:
                log.warning("%r: status not written: %s", self, exc)
        except Exception as exc:  # the API server stayed away: sent again later
            log.warning("%r: status not written (will retry): %s", self, exc)
            self._unsent = status

    def finish_deletion(self) -> None:
        """The containers have stopped: delete the pod object now (grace 0, this uid only)."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                "preconditions": {"uid": self.uid}}
        try:
            retrying(lambda: self.api.delete(path("api", "v1", "namespaces", self.ns, "pods", self.name), body))
        except ApiError as exc:
            if exc.status not in (404, 409):  # gone already, or another pod of that name now
                log.warning("%r: not deleted: %s", self, exc)
        except Exception as exc:
            log.warning("%r: not deleted: %s", self, exc)

    def container_status(self, spec: dict, state: dict, restarts: int = 0, last: Optional[dict] = None,
                         container_id: str = "") -> dict:
        running = "running" in state
        status = {"name": spec["name"], "image": spec.get("image", ""), "imageID": "",
                  "ready": running, "started": running, "restartCount": restarts, "state": state,
                  "lastState": last or {}}
        if container_id:
            status["containerID"] = container_id
        return status


def _brief(state: dict) -> str:
    kind, detail = next(iter(state.items()))
    return f"{kind}({detail.get('reason', '')}{' ' + str(detail['exitCode']) if 'exitCode' in detail else ''})"


def _condition(kind: str, ok: bool, reason: str = "") -> dict:
    cond = {"type": kind, "status": "True" if ok else "False", "lastProbeTime": None, "lastTransitionTime": now()}
    if reason:
        cond["reason"] = reason
    return cond


def _comparable(status: dict) -> Any:
    """``status`` without its times: a patch that would change only a time is not sent."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return tuple(sorted((k, strip(v)) for k, v in value.items()
                                if k not in ("lastTransitionTime", "finishedAt", "startedAt")))
        if isinstance(value, list):
            return tuple(strip(v) for v in value)
        return value
    return strip(status)


class PretendPod(PodWorker):
    """A pod on a pretend node: Running at once, with no process. It ends Succeeded after the
    node's ``run_s`` (or the pod's ``nodeagent.wml.dev/run-seconds`` annotation; its exit code
    from ``nodeagent.wml.dev/exit-code``), or never; a deletion stops it at once (exit 143, the
    status of a process ended by SIGTERM)."""

    def run(self) -> None:
        annotations = self.pod["metadata"].get("annotations") or {}
        run_s = annotations.get(RUN_SECONDS_ANNOTATION, self.node.config.pretend_run_s)
        code = int(annotations.get(EXIT_CODE_ANNOTATION, 0))
        specs = self.pod["spec"]["containers"]
        started = now()
        self.report("Running", [self.container_status(c, {"running": {"startedAt": started}}) for c in specs])
        deadline = None if run_s in (None, "") else time.monotonic() + float(run_s)
        with self.lock:
            while not (self.deleting or self.gone):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self.lock.wait(left)
        if self.gone:
            return
        if self.deleting:
            code = 143
        reason = "Completed" if code == 0 else "Error"
        self.report("Succeeded" if code == 0 else "Failed",
                    [self.container_status(c, terminated(code, reason, started)) for c in specs])
