"""The stand-in API server's storage: objects with uids and resourceVersions, and their history.

It behaves as etcd behind kube-apiserver does for the calls the executor makes: one global
resourceVersion, watches that resume from a version (410 Gone once it left the history),
label selectors, and deletion with Foreground, Background or Orphan propagation.
"""

from __future__ import annotations

import base64
import copy
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from datetime import datetime, timezone

#: Resources served, with their apiVersion and kind.
KINDS = {"pods": ("v1", "Pod"), "secrets": ("v1", "Secret"), "jobs": ("batch/v1", "Job"),
         "services": ("v1", "Service"), "events": ("v1", "Event")}
#: Kubernetes version whose OpenAPI schema created objects are validated against.
SCHEMA_VERSION = "1.32.0"


class ApiError(Exception):
    """An error the API answers with a ``Status`` object."""

    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> dict:
        """The ``Status`` body."""
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}


def now() -> str:
    """The time as Kubernetes writes it."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def matches(labels: dict, selector: str) -> bool:
    """Whether ``labels`` satisfy a label selector (``a=b``, ``a!=b``, ``a``, ``!a``)."""
    for term in filter(None, (t.strip() for t in (selector or "").split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            ok = labels.get(key) != value
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            ok = labels.get(key) == value
        else:
            ok = (term[1:] not in labels) if term.startswith("!") else term in labels
        if not ok:
            return False
    return True


class Store:
    """Objects by (resource, namespace, name), a bounded event history, and call counts."""

    def __init__(self, history: int = 10000, validate: bool = True):
        self.cond = threading.Condition()
        self.rv = 0
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.history: deque[tuple[int, str, str, dict]] = deque(maxlen=history)
        self.validate = validate
        self.calls: Counter = Counter()
        self.listeners: list[Callable[[str, str, dict], None]] = []
        self.closed = False
        self._epoch = 0  # bumped to end every open watch (as an API server restart would)
        self.compacted = 0  # events up to this resourceVersion are gone (etcd compaction)
        self._watching = threading.Event()  # cleared: watches are accepted but send nothing
        self._watching.set()

    # -- reading -----------------------------------------------------------------------------
    def get(self, resource: str, ns: str, name: str) -> dict:
        """A copy of one object; 404 when there is none."""
        with self.cond:
            obj = self.objects.get((resource, ns, name))
            if obj is None:
                raise ApiError(404, "NotFound", f'{resource} "{name}" not found')
            return copy.deepcopy(obj)

    def list(self, resource: str, ns: str | None, selector: str = "") -> tuple[list[dict], int]:
        """Copies of the matching objects and the resourceVersion of the list."""
        with self.cond:
            items = [copy.deepcopy(o) for (r, n, _), o in sorted(self.objects.items())
                     if r == resource and ns in (None, n) and matches(o["metadata"].get("labels", {}), selector)]
            return items, self.rv

    def watch(self, resource: str, ns: str | None, selector: str, since: int,
              timeout: float) -> Iterator[dict]:
        """Events after resourceVersion ``since`` until ``timeout``; ``ApiError(410)`` when too old."""
        self._check_version(since)
        return self._events(resource, ns, selector, since, timeout)

    def _check_version(self, since: int) -> None:
        with self.cond:
            full = len(self.history) == self.history.maxlen
            oldest = max(self.compacted, self.history[0][0] - 1 if full else 0)
            if since < oldest:
                raise ApiError(410, "Expired", f"too old resource version: {since} ({oldest})")

    def _events(self, resource: str, ns: str | None, selector: str, since: int,
                timeout: float) -> Iterator[dict]:
        deadline = time.monotonic() + timeout
        position, epoch = since, self._epoch
        while time.monotonic() < deadline and not self.closed and epoch == self._epoch:
            if not self._watching.wait(0.2):
                continue
            self._check_version(position)
            with self.cond:
                batch = [e for e in self.history if e[0] > position]
                if not batch:
                    self.cond.wait(0.2)
                    continue
            for rv, res, kind, obj in batch:
                position = rv
                if res == resource and ns in (None, obj["metadata"]["namespace"]) and \
                        matches(obj["metadata"].get("labels", {}), selector):
                    yield {"type": kind, "object": obj}

    def drop_watches(self) -> None:
        """End every open watch stream now; clients must watch again from their last version."""
        with self.cond:
            self._epoch += 1
            self.cond.notify_all()

    def pause_watches(self) -> None:
        """Watches send nothing until ``resume_watches`` (as a partitioned client would see)."""
        self._watching.clear()

    def resume_watches(self) -> None:
        self._watching.set()

    def compact(self) -> None:
        """Forget the event history, as etcd compaction does: older watches get 410 Gone."""
        with self.cond:
            self.compacted = self.rv
            self.history.clear()

    # -- writing -----------------------------------------------------------------------------
    def create(self, resource: str, ns: str, body: dict) -> dict:
        """Store a new object with the fields the API server sets; 409 if the name is taken."""
        api_version, kind = KINDS[resource]
        obj = copy.deepcopy(body)
        obj.setdefault("apiVersion", api_version)
        obj.setdefault("kind", kind)
        self._validate(obj)
        meta = obj.setdefault("metadata", {})
        meta.update(namespace=ns, uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1)
        if resource == "secrets":
            data = {k: base64.b64encode(v.encode()).decode() for k, v in obj.pop("stringData", {}).items()}
            obj["data"] = {**obj.get("data", {}), **data}
        obj.setdefault("status", {}) if resource != "secrets" else None
        with self.cond:
            key = (resource, ns, meta["name"])
            if key in self.objects:
                raise ApiError(409, "AlreadyExists", f'{resource} "{meta["name"]}" already exists')
            return self._commit(key, obj, "ADDED")

    def update(self, resource: str, ns: str, name: str, change: Callable[[dict], None]) -> dict:
        """Apply ``change`` to the stored object (as a controller writing status would)."""
        with self.cond:
            key = (resource, ns, name)
            if key not in self.objects:
                raise ApiError(404, "NotFound", f'{resource} "{name}" not found')
            obj = copy.deepcopy(self.objects[key])
            change(obj)
            return self._commit(key, obj, "MODIFIED")

    def delete(self, resource: str, ns: str, name: str, propagation: str | None = None,
               grace: int | None = None) -> dict:
        """Delete as the API server does: pods go through their grace period, owners propagate."""
        with self.cond:
            obj = self.get(resource, ns, name)
            meta = obj["metadata"]
            policy = propagation or ("Background" if resource == "pods" else "Orphan")
            if resource == "pods" and grace != 0 and self._pod_running(obj):
                if meta.get("deletionTimestamp"):
                    return obj
                return self.update(resource, ns, name, lambda o: o["metadata"].update(
                    deletionTimestamp=now(), deletionGracePeriodSeconds=grace if grace is not None else
                    o["spec"].get("terminationGracePeriodSeconds", 30)))
            if policy != "Orphan":  # the garbage collector: objects other than pods owned by it go at once
                for res, owned in self._owned(meta["uid"]):
                    self.remove(res, ns, owned)
            dependents = self._dependents(meta["uid"]) if policy != "Orphan" else []
            if policy == "Foreground" and dependents:
                obj = self.update(resource, ns, name, lambda o: o["metadata"].update(
                    deletionTimestamp=now(), finalizers=["foregroundDeletion"]))
            else:
                obj = self.remove(resource, ns, name)
            for dep in dependents:
                self.delete("pods", ns, dep, "Background", grace)
            return obj

    def remove(self, resource: str, ns: str, name: str) -> dict:
        """Drop an object for good; finish the foreground deletion of owners waiting for it."""
        with self.cond:
            obj = self.objects.get((resource, ns, name))
            if obj is None:
                raise ApiError(404, "NotFound", f'{resource} "{name}" not found')
            obj = copy.deepcopy(obj)
            self._commit((resource, ns, name), obj, "DELETED")
            for owner in obj["metadata"].get("ownerReferences", []):
                self._finish_foreground(ns, owner["uid"])
            return obj

    # -- internals -----------------------------------------------------------------------------
    def _commit(self, key: tuple[str, str, str], obj: dict, kind: str) -> dict:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        if kind == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        self.history.append((self.rv, key[0], kind, copy.deepcopy(obj)))
        self.cond.notify_all()
        for listener in self.listeners:
            listener(key[0], kind, copy.deepcopy(obj))
        return copy.deepcopy(obj)

    def _validate(self, obj: dict) -> None:
        if not self.validate:
            return
        import kubernetes_validate
        try:
            kubernetes_validate.validate(obj, SCHEMA_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            raise ApiError(422, "Invalid", f"{obj['kind']} is invalid: {path}: {exc.message}") from None

    def _owned(self, uid: str) -> list[tuple[str, str]]:
        """(resource, name) of the objects other than pods that ``uid`` owns (a Job's Service)."""
        return [(res, name) for (res, _, name), o in self.objects.items()
                if res != "pods" and any(r["uid"] == uid for r in o["metadata"].get("ownerReferences", []))]

    def _dependents(self, uid: str) -> list[str]:
        return [name for (res, _, name), o in self.objects.items()
                if res == "pods" and any(r["uid"] == uid for r in o["metadata"].get("ownerReferences", []))]

    def _finish_foreground(self, ns: str, uid: str) -> None:
        for (res, n, name), o in list(self.objects.items()):
            if o["metadata"]["uid"] == uid and "foregroundDeletion" in o["metadata"].get("finalizers", []) \
                    and not self._dependents(uid):
                self.remove(res, n, name)

    @staticmethod
    def _pod_running(pod: dict) -> bool:
        """Whether a kubelet must stop the pod's container before the pod can go."""
        status = pod.get("status") or {}
        return bool(pod["spec"].get("nodeName")) and status.get("phase") not in ("Succeeded", "Failed")
