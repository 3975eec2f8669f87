"""The stand-in API server's HTTP side: the real REST paths of Jobs, Pods, Secrets, Services and pod logs.

Requests come from the official ``kubernetes`` client exactly as they would go to a cluster;
watches are chunked streams of JSON lines, as kube-apiserver sends them. Each request is
counted by verb (RBAC's: GET, LIST, WATCH, POST, PATCH, DELETE) and resource (``server.store.calls``).
"""

from __future__ import annotations

import json
import re
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from kubefake_store import KINDS, ApiError, Store

_PATH = re.compile(r"^/(?:api/v1|apis/batch/v1)/namespaces/(?P<ns>[^/]+)/(?P<res>pods|secrets|jobs|services|events)"
                   r"(?:/(?P<name>[^/]+)(?:/(?P<sub>log|status))?)?$")
WRITES = ("POST", "PUT", "PATCH", "DELETE")


class Handler(BaseHTTPRequestHandler):
    """One request: route it, answer JSON (or a chunked watch / log stream)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # as Go's net/http: no 40 ms stall between headers and body
    server: ApiServer

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        body = self._body()
        route = _PATH.match(url.path)
        try:
            if route is None:
                raise ApiError(404, "NotFound", f"the server could not find {url.path}")
            r = route.groupdict()
            verb = "WATCH" if query.get("watch") in ("true", "1") else method
            if verb == "GET" and not r["name"]:
                verb = "LIST"
            self.server.store.calls[(verb, r["res"] + (f"/{r['sub']}" if r["sub"] else ""))] += 1
            self._dispatch(verb, r, query, body)
        except ApiError as exc:
            self._json(exc.code, exc.status())
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _body(self) -> dict | None:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length)) if length else None

    def _dispatch(self, verb: str, r: dict, query: dict, body: dict | None) -> None:
        store, ns, res, name = self.server.store, r["ns"], r["res"], r["name"]
        if r["sub"] == "log":
            return self._log(ns, name, query)
        if verb == "WATCH":
            return self._watch(res, ns, query)
        if verb == "GET" and name:
            return self._json(200, store.get(res, ns, name))
        if verb == "LIST":
            items, rv = store.list(res, ns, query.get("labelSelector", ""))
            api_version, kind = KINDS[res]
            return self._json(200, {"apiVersion": api_version, "kind": f"{kind}List",
                                    "metadata": {"resourceVersion": str(rv)}, "items": items})
        if verb == "POST" and not name:
            return self._json(201, store.create(res, ns, body or {}))
        if verb == "PATCH" and name:
            return self._json(200, store.update(res, ns, name, lambda o: merge(o, body or {})))
        if verb == "DELETE" and name:
            options = {**(body or {}), **query}
            grace = options.get("gracePeriodSeconds")
            return self._json(200, store.delete(res, ns, name, options.get("propagationPolicy"),
                                                None if grace is None else int(grace)))
        raise ApiError(405, "MethodNotAllowed", f"{verb} is not supported on {self.path}")

    # -- responses ------------------------------------------------------------------------------
    def _json(self, code: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _start_stream(self, content_type: str) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _watch(self, res: str, ns: str, query: dict) -> None:
        store = self.server.store
        since = int(query.get("resourceVersion") or 0)
        timeout = float(query.get("timeoutSeconds") or 1800)
        self._start_stream("application/json")
        try:
            for event in store.watch(res, ns, query.get("labelSelector", ""), since, timeout):
                self._chunk(json.dumps(event).encode() + b"\n")
        except ApiError as exc:  # a real server answers 200 and an ERROR event
            self._chunk(json.dumps({"type": "ERROR", "object": exc.status()}).encode() + b"\n")
        self._chunk(b"")

    def _log(self, ns: str, name: str, query: dict) -> None:
        pod = self.server.store.get("pods", ns, name)
        path: Path | None = self.server.logs.get((ns, name))
        if path is None:
            raise ApiError(400, "BadRequest", f'container "runner" in pod "{name}" is waiting to start')
        lines = path.read_bytes().splitlines(keepends=True)
        if query.get("tailLines"):
            lines = lines[-int(query["tailLines"]):]
        self._start_stream("text/plain")
        sent = sum(len(x) for x in lines) if query.get("tailLines") else 0
        if lines:
            self._chunk(b"".join(lines))
        while query.get("follow") == "true" and self._pod_alive(ns, pod["metadata"]["name"]):
            sent = self._send_new(path, sent or sum(len(x) for x in lines))
            time.sleep(0.1)
        self._chunk(b"")

    def _send_new(self, path: Path, sent: int) -> int:
        data = path.read_bytes()[sent:]
        if data:
            self._chunk(data)
        return sent + len(data)

    def _pod_alive(self, ns: str, name: str) -> bool:
        try:
            return self.server.store.get("pods", ns, name)["status"].get("phase") in ("Pending", "Running")
        except ApiError:
            return False


def merge(target: dict, patch: dict) -> None:
    """A JSON merge patch (RFC 7386), applied in place."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = value


class ApiServer(ThreadingHTTPServer):
    """The stand-in server on 127.0.0.1; ``url`` is what a kubeconfig points at."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A client that hangs up mid-stream is normal (a watch being stopped): stay quiet."""

    def __init__(self, store: Store | None = None):
        super().__init__(("127.0.0.1", 0), Handler)
        self.store = store or Store()
        #: Container logs by (namespace, pod), written by the kubelet.
        self.logs: dict[tuple[str, str], Path] = {}
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    def start(self) -> ApiServer:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and end open watches."""
        self.store.closed = True
        with self.store.cond:
            self.store.cond.notify_all()
        self.shutdown()
        self.server_close()

    def kubeconfig(self, path: Path, namespace: str) -> Path:
        """Write a kubeconfig whose current context is this server and ``namespace``."""
        config = {"apiVersion": "v1", "kind": "Config", "current-context": "fake",
                  "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                  "users": [{"name": "fake", "user": {"token": "fake-token"}}],
                  "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake",
                                                            "namespace": namespace}}]}
        path.write_text(json.dumps(config))
        return path
