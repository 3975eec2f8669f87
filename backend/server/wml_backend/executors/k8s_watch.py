"""List-then-watch of one kind of object: the executor's only view of the cluster.

An ``Informer`` keeps every object it was told of, by name, and reports each change; the
executor runs one for Jobs and one for Pods (with our labels) and one for the Jobs' FailedCreate
events, so no run is ever polled. Every request has a client timeout (a watch longer than the
server's ``timeoutSeconds``), so a connection that died silently is noticed; a watch whose
resourceVersion expired (410 Gone) lists again; any other failure backs off, doubling up to
``MAX_BACKOFF_S``, so an unreachable API server is never called in a tight loop.
"""

from __future__ import annotations

import json
import random
import threading
import time
from typing import Callable, Optional

from wml_backend.executors.k8s_client import ClusterError, log, why
from wml_backend.executors.k8s_names import SELECTOR

#: Seconds one watch request lasts (the server's ``timeoutSeconds``, give or take a fifth, so that
#: watches do not all renew at once) before it is renewed from the last resourceVersion.
WATCH_TIMEOUT_S = 300
#: Seconds the client waits beyond that for a word (an event, a bookmark, the end) before it
#: takes the connection for dead.
WATCH_SLACK_S = 30
#: Seconds to connect, and to read a whole listing.
CONNECT_TIMEOUT_S, LIST_TIMEOUT_S = 10, 60
#: The first and the longest wait after a failed list or watch (doubling in between).
FIRST_BACKOFF_S, MAX_BACKOFF_S = 0.5, 30.0


class Gone(Exception):
    """The watch's resourceVersion is too old (410): list again."""


class Backoff:
    """Waits that double after each failure (with jitter), and start again after a success."""

    def __init__(self) -> None:
        self.first, self.longest = FIRST_BACKOFF_S, MAX_BACKOFF_S
        self.next = self.first

    def wait(self, stop: threading.Event) -> None:
        """Wait the current delay (or until ``stop``), and double it for the next failure."""
        stop.wait(self.next * random.uniform(0.8, 1.2))
        self.next = min(self.next * 2, self.longest)

    def reset(self) -> None:
        self.next = self.first


class Informer:
    """List, then watch, one kind of object; ``handle(type, obj)`` per change.

    ``objects`` (by name) is kept under ``lock``. A watch that ends is renewed from the last
    resourceVersion; one that expired (410 Gone) lists again and reports what vanished meanwhile.
    """

    def __init__(self, list_fn, namespace: str, handle: Callable[[str, dict], None], lock: threading.RLock,
                 label_selector: Optional[str] = SELECTOR, field_selector: Optional[str] = None):
        self._list, self.namespace, self._handle, self._lock = list_fn, namespace, handle, lock
        self._selectors = {k: v for k, v in (("label_selector", label_selector), ("field_selector", field_selector))
                           if v}
        self.objects: dict[str, dict] = {}
        self.version: Optional[str] = None
        self._resp = None

    def sync(self) -> None:
        """List everything; report changes (and deletions) against what was known."""
        resp = self._list(self.namespace, **self._selectors, _preload_content=False,
                          _request_timeout=(CONNECT_TIMEOUT_S, LIST_TIMEOUT_S))
        data = json.loads(resp.data)
        listed = {item["metadata"]["name"]: item for item in data["items"]}
        with self._lock:
            gone = [obj for name, obj in self.objects.items() if name not in listed]
            self.objects, self.version = listed, data["metadata"]["resourceVersion"]
        for obj in gone:
            self._handle("DELETED", obj)
        for obj in listed.values():
            self._handle("MODIFIED", obj)

    def run(self, stop: threading.Event) -> None:
        """Watch until ``stop``: renew a watch that ended, list again after a 410 (at once the
        first time) or before the watch after a failure (backing off)."""
        backoff, expired = Backoff(), False
        while not stop.is_set():
            try:
                if self.version is None:
                    self.sync()
                began = time.monotonic()
                self._watch(stop)
                expired = False
                if time.monotonic() - began < FIRST_BACKOFF_S:  # a server that ends watches at once
                    backoff.wait(stop)
                else:
                    backoff.reset()
            except Gone:  # the events since our version are gone: list again, at once the first time
                self.version = None
                if expired:
                    backoff.wait(stop)
                expired = True
            except Exception as exc:
                if stop.is_set():
                    return
                log.warning("kubernetes: %s failed (%s); listing again in about %.1f s",
                            self._list.__name__, why(exc), backoff.next)
                self.version = None
                backoff.wait(stop)

    def _watch(self, stop: threading.Event) -> None:
        from kubernetes.watch.watch import iter_resp_lines
        timeout = round(WATCH_TIMEOUT_S * random.uniform(0.8, 1.2))
        self._resp = self._list(self.namespace, **self._selectors, watch=True, resource_version=self.version,
                                timeout_seconds=timeout, allow_watch_bookmarks=True, _preload_content=False,
                                _request_timeout=(CONNECT_TIMEOUT_S, timeout + WATCH_SLACK_S))
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
