"""A small Kubernetes API client: JSON over HTTPS with a client certificate, and watches.

The agent talks to the API server as each of its nodes (``system:node:<name>``), so that the
Node authorizer and the NodeRestriction admission plugin judge every call as they judge a
kubelet's. Objects stay plain dicts; a watch is a generator of events that ends when the server
closes the stream (the caller lists and watches again).
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator
from typing import Any, Optional
from urllib.parse import quote, urlencode

import urllib3

#: Content types of the three kinds of patch.
MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"


class ApiError(Exception):
    """A failed call: the HTTP status and the API's own reason and message (a ``Status``)."""

    def __init__(self, status: int, body: Any):
        body = body if isinstance(body, dict) else {}
        self.status, self.reason = status, body.get("reason", "")
        self.message = body.get("message", "") or f"HTTP {status}"
        super().__init__(f"{status} {self.reason}: {self.message}")


class Gone(ApiError):
    """A watch's resourceVersion is too old (410): list again."""


def transient(exc: BaseException) -> bool:
    """Whether a failed call may succeed if tried again: no answer, or the server was busy."""
    if isinstance(exc, ApiError):
        return exc.status >= 500 or exc.status == 429
    return isinstance(exc, (urllib3.exceptions.HTTPError, OSError))


def retrying(call, attempts: int = 8, first_delay: float = 0.25):
    """``call()``, tried again with back-off (up to ~30 s in all) while it fails ``transient``-ly."""
    delay = first_delay
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:
            if attempt == attempts - 1 or not transient(exc):
                raise
            time.sleep(delay)
            delay = min(delay * 2, 8.0)


def path(*parts: str) -> str:
    return "/" + "/".join(quote(p, safe="") for p in parts)


class Api:
    """Calls to one API server as one client certificate."""

    def __init__(self, server: str, ca_file: str, cert_file: str, key_file: str, agent: str = "nodeagent"):
        self.server = server.rstrip("/")
        context = ssl.create_default_context(cafile=ca_file)
        context.load_cert_chain(cert_file, key_file)
        self.http = urllib3.PoolManager(num_pools=2, maxsize=4, ssl_context=context, retries=False,
                                        headers={"User-Agent": f"{agent} (wml node agent)",
                                                 "Accept": "application/json"})

    def request(self, method: str, url_path: str, body: Any = None, params: Optional[dict] = None,
                content_type: str = "application/json", timeout: float = 30.0) -> dict:
        url = self.server + url_path + ("?" + urlencode(params) if params else "")
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": content_type} if data is not None else {}
        resp = self.http.request(method, url, body=data, headers=headers,
                                 timeout=urllib3.Timeout(connect=5.0, read=timeout))
        payload = _json(resp.data)
        if resp.status >= 400:
            raise (Gone if resp.status == 410 else ApiError)(resp.status, payload)
        return payload if isinstance(payload, dict) else {}

    def get(self, url_path: str, **params) -> dict:
        return self.request("GET", url_path, params=params or None)

    def create(self, url_path: str, body: dict) -> dict:
        return self.request("POST", url_path, body)

    def patch(self, url_path: str, body: dict, kind: str = STRATEGIC) -> dict:
        return self.request("PATCH", url_path, body, content_type=kind)

    def delete(self, url_path: str, body: Optional[dict] = None) -> dict:
        return self.request("DELETE", url_path, body)

    def watch(self, url_path: str, params: dict, timeout_s: int) -> Iterator[dict]:
        """The events of one watch call that the server ends after ``timeout_s`` (it may end
        earlier). A read that hears nothing for ``timeout_s`` + 30 s means the link is dead."""
        params = {**params, "watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": timeout_s}
        resp = self.http.request("GET", self.server + url_path + "?" + urlencode(params), preload_content=False,
                                 timeout=urllib3.Timeout(connect=5.0, read=timeout_s + 30.0))
        try:
            if resp.status >= 400:
                raise (Gone if resp.status == 410 else ApiError)(resp.status, _json(resp.read()))
            buffer = b""
            for chunk in (resp.read_chunked() if resp.chunked else resp.stream(4096)):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        event = json.loads(line)
                        if event.get("type") == "ERROR":
                            status = event.get("object") or {}
                            raise (Gone if status.get("code") == 410 else ApiError)(status.get("code", 500), status)
                        yield event
        finally:
            resp.release_conn()


def _json(data: bytes) -> Any:
    try:
        return json.loads(data) if data else {}
    except ValueError:
        return {"message": data[:200].decode("utf-8", "replace")}
