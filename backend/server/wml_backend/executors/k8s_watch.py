"""List-then-watch of one kind of object with our labels: the executor's only view of the cluster.

An ``Informer`` keeps every object it was told of, by name, and reports each change; the
executor runs one for Jobs and one for Pods, so no run is ever polled.
"""

from __future__ import annotations

import json
import threading
from typing import Optional

from .k8s_client import ClusterError, log, why
from .k8s_names import SELECTOR

#: Seconds one watch request lasts before it is renewed from the last resourceVersion.
WATCH_TIMEOUT_S = 300


class Gone(Exception):
    """The watch's resourceVersion is too old (410): list again."""


class Informer:
    """List, then watch, one kind of object with our labels; ``handle(type, obj)`` per change.

    ``objects`` (by name) is kept under ``lock``. A watch that ends is renewed from the last
    resourceVersion; one that expired (410 Gone) lists again and reports what vanished meanwhile.
    """

    def __init__(self, list_fn, namespace: str, handle, lock: threading.RLock):
        self._list, self.namespace, self._handle, self._lock = list_fn, namespace, handle, lock
        self.objects: dict[str, dict] = {}
        self.version: Optional[str] = None
        self._resp = None

    def sync(self) -> None:
        """List everything; report changes (and deletions) against what was known."""
        data = json.loads(self._list(self.namespace, label_selector=SELECTOR, _preload_content=False).data)
        listed = {item["metadata"]["name"]: item for item in data["items"]}
        with self._lock:
            gone = [obj for name, obj in self.objects.items() if name not in listed]
            self.objects, self.version = listed, data["metadata"]["resourceVersion"]
        for obj in gone:
            self._handle("DELETED", obj)
        for obj in listed.values():
            self._handle("MODIFIED", obj)

    def run(self, stop: threading.Event) -> None:
        """Watch until ``stop``; re-list after a 410 or an error (backing off)."""
        delay = 0.5
        while not stop.is_set():
            try:
                self._watch(stop)
                delay = 0.5
            except Gone:
                self._resync(stop)
            except Exception as exc:
                if stop.is_set():
                    return
                log.warning("kubernetes: watch failed (%s); listing again in %.1f s", why(exc), delay)
                stop.wait(delay)
                delay = min(delay * 2, 30.0)
                self._resync(stop)

    def _resync(self, stop: threading.Event) -> None:
        try:
            self.sync()
        except Exception as exc:
            if not stop.is_set():
                log.warning("kubernetes: list failed: %s", why(exc))

    def _watch(self, stop: threading.Event) -> None:
        from kubernetes.watch.watch import iter_resp_lines
        self._resp = self._list(self.namespace, label_selector=SELECTOR, watch=True, resource_version=self.version,
                                timeout_seconds=WATCH_TIMEOUT_S, allow_watch_bookmarks=True, _preload_content=False)
        try:
            for line in iter_resp_lines(self._resp):
                if stop.is_set():
                    return
                self._event(json.loads(line))
        finally:
            self._resp.release_conn()

    def _event(self, event: dict) -> None:
        obj = event["object"]
        if event["type"] == "ERROR":
            if obj.get("code") == 410:
                raise Gone()
            raise ClusterError(f"kubernetes: watch error {obj.get('code')}: {obj.get('message')}")
        with self._lock:
            self.version = obj["metadata"]["resourceVersion"]
            if event["type"] == "BOOKMARK":
                return
            name = obj["metadata"]["name"]
            if event["type"] == "DELETED":
                self.objects.pop(name, None)
            else:
                self.objects[name] = obj
        self._handle(event["type"], obj)

    def stop(self) -> None:
        """End the current watch request now."""
        resp = self._resp
        if resp is not None:
            try:
                resp.shutdown()
            except Exception:
                pass
