"""The kubelet's log endpoint, so that ``kubectl logs`` and the API's ``pods/log`` work.

The API server reaches a node at its InternalIP and ``daemonEndpoints.kubeletEndpoint.Port``
with its kubelet client certificate (``--kubelet-client-certificate``) and checks the node's
serving certificate against the cluster CA (``--kubelet-certificate-authority``). Only
``GET /containerLogs/<namespace>/<pod>/<container>`` is served (``tailLines``, ``limitBytes``,
``follow``, ``previous``); a client other than the API server is refused.
"""

from __future__ import annotations

import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional
from urllib.parse import parse_qs, unquote, urlparse

#: The client certificate's common name the API server presents (scripts/kube/pki.sh).
API_SERVER_CN = "kube-apiserver-kubelet-client"


class LogRegistry:
    """Which containers have logs: (namespace, pod, container) -> the agent's Container."""

    def __init__(self) -> None:
        self._containers: dict[tuple[str, str, str], Any] = {}
        self._lock = threading.Lock()

    def register(self, ns: str, pod: str, container: Any) -> None:
        with self._lock:
            self._containers[(ns, pod, container.name)] = container

    def find(self, ns: str, pod: str, name: str) -> Optional[Any]:
        with self._lock:
            return self._containers.get((ns, pod, name))


def _tail(data: bytes, lines: Optional[int]) -> bytes:
    if lines is None:
        return data
    if lines <= 0:
        return b""
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:])


class _Handler(BaseHTTPRequestHandler):
    server: "LogServer"

    def log_message(self, *args) -> None:  # quiet: the agent's log is for the agent
        pass

    def do_GET(self) -> None:
        cert = self.connection.getpeercert() or {}
        subject = dict(item for rdn in cert.get("subject", ()) for item in rdn)
        if subject.get("commonName") != API_SERVER_CN:
            return self._fail(403, "only the API server may read logs here")
        url = urlparse(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        if len(parts) != 4 or parts[0] != "containerLogs":
            return self._fail(404, "not found")
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        container = self.server.registry.find(*parts[1:])
        if container is None:
            return self._fail(404, f"container {parts[3]} of pod {parts[1]}/{parts[2]} is not on this node")
        previous = query.get("previous") == "true"
        log_path = _log_path(container, previous)
        if log_path is None or not log_path.exists():
            return self._fail(400, f'previous terminated container "{parts[3]}" not found' if previous
                              else f'container "{parts[3]}" is waiting to start')
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        limit = int(query["limitBytes"]) if "limitBytes" in query else None
        lines = int(query["tailLines"]) if "tailLines" in query else None
        data = _tail(log_path.read_bytes(), lines)
        sent = self._send(data, limit)
        if query.get("follow") == "true" and not previous:
            self._follow(container, log_path, len(log_path.read_bytes()), sent, limit)

    def _send(self, data: bytes, limit: Optional[int], sent: int = 0) -> int:
        if limit is not None:
            data = data[: max(0, limit - sent)]
        self.wfile.write(data)
        self.wfile.flush()
        return sent + len(data)

    def _follow(self, container: Any, log_path: Path, offset: int, sent: int, limit: Optional[int]) -> None:
        with open(log_path, "rb") as f:
            f.seek(offset)
            while limit is None or sent < limit:
                chunk = f.read(65536)
                if chunk:
                    sent = self._send(chunk, limit, sent)
                elif container.log_path != log_path or not container.running:
                    return
                else:
                    time.sleep(0.2)

    def _fail(self, code: int, message: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(message.encode())


def _log_path(container: Any, previous: bool) -> Optional[Path]:
    if not previous:
        return container.log_path
    if container.restarts == 0:
        return None
    return container.logs_dir / f"{container.name}-{container.restarts - 1}.log"


class LogServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, registry: LogRegistry, cert: str, key: str, ca: str):
        super().__init__(("127.0.0.1", port), _Handler)
        self.registry = registry
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        context.load_verify_locations(ca)
        context.verify_mode = ssl.CERT_REQUIRED
        self.socket = context.wrap_socket(self.socket, server_side=True)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def start(self) -> None:
        threading.Thread(target=self.serve_forever, name="log server", daemon=True).start()
