"""Backend replicas on one PostgreSQL behind one address, on this host: ``Cluster`` starts them
(local executor, the first creates the administrator), kills and restarts them, and says which
leads. Runners and clients reach the replicas through ``Balancer``, as through a Service's address.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

import httpx

from backend_process import BackendProcess, free_port


class Replica(BackendProcess):
    """A backend replica; all but the first find the administrator created, with no token of
    their own: they are given the first one's."""

    admin_token: Optional[str] = None

    @property
    def token(self) -> str:
        return self.admin_token or super().token


class Balancer:
    """A TCP balancer on 127.0.0.1: each connection goes to the next upstream port that accepts it."""

    def __init__(self, ports: list[int]):
        self.ports, self.port = ports, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._next = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = self._connect()
        if upstream is None:
            client.close()
            return
        threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()
        _pipe(client, upstream)

    def _connect(self) -> Optional[socket.socket]:
        for _ in range(len(self.ports)):
            port = self.ports[self._next % len(self.ports)]
            self._next += 1
            try:
                return socket.create_connection(("127.0.0.1", port), timeout=1.0)
            except OSError:
                continue
        return None


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy ``source`` to ``sink`` until either end closes; then close both."""
    source.settimeout(None)
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    for end in (source, sink):
        try:
            end.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        end.close()


class Cluster:
    """``count`` backend replicas (local executor, ``gpus`` slots each) on ``database``, behind a balancer."""

    def __init__(self, root: Path, database: str, count: int = 3, gpus: int = 4, flags: Sequence[str] = ()):
        """``flags``: more flags of every replica (``--log-format json``...)."""
        self.root = root
        ports = [free_port() for _ in range(count)]
        self.balancer = Balancer(ports)
        env = {"WML_PUBLIC_URL": self.balancer.url, "WML_SECRETS_KEY_FILE": str(root / "secrets.key")}
        self.replicas = [Replica(root / f"replica-{n}", gpus=gpus, extra_env=env,
                                 flags=["--database", database, *flags]) for n in range(count)]
        for replica, port in zip(self.replicas, ports):
            replica.port, replica.url = port, f"http://127.0.0.1:{port}"
            replica.env["WML_BACKEND"] = replica.url
        self.killed: set[int] = set()

    @property
    def token(self) -> str:
        """The administrator's token, written by the first replica only."""
        return self.replicas[0].token

    def start(self) -> "Cluster":
        """The first replica (it creates the administrator), then the others."""
        self.replicas[0].start()
        for replica in self.replicas[1:]:
            replica.admin_token = self.token
            replica.start()
        return self

    def close(self) -> None:
        for replica in self.replicas:
            replica.close()
        self.balancer.close()

    def live_urls(self) -> list[str]:
        return [r.url for r in self.replicas if r.proc and r.proc.poll() is None]

    def leader(self) -> Optional[int]:
        """The index of the replica that says it leads, if one does."""
        for n, replica in enumerate(self.replicas):
            try:
                if httpx.get(f"{replica.url}/healthz", timeout=1.0).json().get("leader"):
                    return n
            except httpx.HTTPError:
                continue
        return None

    def wait_leader(self, timeout: float = 30.0, other_than: Optional[int] = None) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.leader()
            if found is not None and found != other_than:
                return found
            time.sleep(0.02)
        raise AssertionError(f"no replica took the lead within {timeout} s")

    def kill(self, n: int) -> None:
        self.replicas[n].kill()
        self.killed.add(n)

    def restart(self, n: int) -> None:
        self.replicas[n].start()

    def cli_json(self, *args: str):
        """``wml ARGS --json`` through the balancer."""
        replica = self.replicas[0]
        env = {**replica.env, "WML_BACKEND": self.balancer.url, "WML_TOKEN": self.token}
        done = subprocess.run(replica.cli_args(*args, "--json"), env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)
