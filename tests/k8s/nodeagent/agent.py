"""The agent: several nodes in one process, their heartbeats, and a clean stop."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Optional

from .api import Api
from .dns import HeadlessNames
from .logserver import LogRegistry, LogServer
from .node import RENEW_S, Node, NodeConfig
from .pods import now

log = logging.getLogger("nodeagent")
#: What every "image" sets: the project's venv first (``python3`` is its interpreter), a locale.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


#: Run inside a container's namespaces before its command: the pod's hostname, its hosts file.
_SETUP = 'hostname "$1" && mount --bind "$2" /etc/hosts && shift 2 && exec "$@"'


def isolation_prefix(probe_dir: Path) -> list[str]:
    """The command line that makes a container PID 1 of PID, mount and UTS namespaces of its own
    (its own ``/proc``, hostname and ``/etc/hosts``); it takes the hostname, the hosts file, then
    the command. [] where this host cannot (then a process group stands for the container)."""
    unshare = shutil.which("unshare")
    if not unshare:
        return []
    prefix = [unshare, "--pid", "--fork", "--kill-child", "--mount-proc", "--uts"]
    if os.geteuid() != 0:
        prefix.append("--map-current-user")
    prefix += ["--", "sh", "-c", _SETUP, "sh"]
    hosts = probe_dir / "hosts-probe"
    hosts.write_text("127.0.0.1 localhost\n")
    try:
        ok = subprocess.run(prefix + ["probe", str(hosts), "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    hosts.unlink(missing_ok=True)
    return prefix if ok else []


def kill_orphans(procs: Path) -> None:
    """Kill the containers of agents of this state dir that died without stopping them: they
    cannot be adopted (their pods are reported lost, as a kubelet reports containers it lost)."""
    for agent_dir in procs.iterdir():
        if not agent_dir.name.isdigit() or _alive(int(agent_dir.name)):
            continue
        for group in agent_dir.iterdir():
            try:
                os.killpg(int(group.name), signal.SIGKILL)
            except (OSError, ValueError):
                pass
            group.unlink(missing_ok=True)
        agent_dir.rmdir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class Agent:
    def __init__(self, state: Path, server: str, version: str, log_port: int = 0, isolate: bool = True):
        self.state = state
        self.pki = state / "pki"
        self.dir = state / "agent"
        self.pods_dir = self.dir / "pods"
        #: One empty file per running container, named by its process group (kube-down.sh's list).
        self.procs_dir = self.dir / "procs" / str(os.getpid())
        for d in (self.pods_dir, self.procs_dir):
            d.mkdir(parents=True, exist_ok=True)
        kill_orphans(self.dir / "procs")
        self.server, self.version = server, version
        self.started, self.boot_id = now(), str(uuid.uuid4())
        self.nodes: list[Node] = []
        self.logs = LogRegistry()
        self.headless = HeadlessNames()  # cluster DNS, for headless Services' pods
        self.log_server = LogServer(log_port, self.logs, str(self.pki / "node-serving.crt"),
                                    str(self.pki / "node-serving.key"), str(self.pki / "ca.crt"))
        self.log_port = self.log_server.port
        self.isolation = isolation_prefix(self.dir) if isolate else []
        self.api_port = server.rsplit(":", 1)[-1]
        self.stopped = threading.Event()

    def image_env(self, pod: dict, pod_dir: Path) -> dict[str, str]:
        """The environment an image and the kubelet give every container, before the pod's own."""
        home = pod_dir / "home"
        home.mkdir(parents=True, exist_ok=True)
        spec = pod["spec"]
        return {"PATH": f"{Path(sys.executable).parent}:{SYSTEM_PATH}", "HOME": str(home), "LANG": "C.UTF-8",
                "HOSTNAME": spec.get("hostname") or pod["metadata"]["name"],
                # The API server as pods reach it here (not the Service's cluster IP: no proxy).
                "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": self.api_port,
                "KUBERNETES_SERVICE_PORT_HTTPS": self.api_port,
                "KUBERNETES_PORT": f"tcp://127.0.0.1:{self.api_port}"}

    def node_api(self, name: str) -> Api:
        """A client that is the node ``name`` (its certificate is made if missing)."""
        cert = self.pki / "nodes" / f"{name}.crt"
        if not cert.exists():
            script = Path(__file__).resolve().parents[3] / "scripts" / "kube" / "pki.sh"
            subprocess.run(["bash", str(script), str(self.pki), "node", name], check=True)
        return Api(self.server, str(self.pki / "ca.crt"), str(cert), str(cert.with_suffix(".key")),
                   agent=f"nodeagent/{name}")

    def add_nodes(self, names: list[str], config: NodeConfig) -> None:
        for name in names:
            node = Node(self, name, self.node_api(name), config)
            node.register()
            self.nodes.append(node)
            threading.Thread(target=node.watch_pods, name=f"watch {name}", daemon=True).start()

    def run(self) -> None:
        """Heartbeats until ``stop()``: each node's Lease every RENEW_S, spread over the interval."""
        self.log_server.start()
        log.info("agent up: %d nodes, logs on 127.0.0.1:%d, containers %s", len(self.nodes), self.log_port,
                 "in PID namespaces" if self.isolation else "as process groups")
        while not self.stopped.is_set():
            if not self.nodes:
                self.stopped.wait(RENEW_S)
                continue
            started = time.monotonic()
            for i, node in enumerate(list(self.nodes)):
                node.heartbeat()
                pause = started + RENEW_S * (i + 1) / len(self.nodes) - time.monotonic()
                if pause > 0 and self.stopped.wait(pause):
                    break

    def stop(self, grace_s: float = 2.0) -> None:
        """Stop: every container gets SIGTERM, then SIGKILL after ``grace_s``; nothing is reported."""
        self.stopped.set()
        workers = [w for n in self.nodes for w in list(n.workers.values())]
        for node in self.nodes:
            node.stopping = True
        for w in workers:
            for c in getattr(w, "init", []) + getattr(w, "main", []):
                c.term()
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(
                c.running for w in workers for c in getattr(w, "init", []) + getattr(w, "main", [])):
            time.sleep(0.05)
        for node in self.nodes:
            node.stop()
        for w in workers:
            for c in getattr(w, "init", []) + getattr(w, "main", []):
                c.kill()
                if c.proc is not None:
                    (self.procs_dir / str(c.proc.pid)).unlink(missing_ok=True)
        self.log_server.shutdown()
        shutil.rmtree(self.procs_dir, ignore_errors=True)


def read_server(state: Path) -> Optional[str]:
    """The API server's URL, from the admin kubeconfig that kube-up.sh wrote."""
    config = state / "kubeconfig" / "admin"
    for line in config.read_text().splitlines() if config.exists() else []:
        if line.strip().startswith("server:"):
            return line.split(":", 1)[1].strip()
    return None
