"""A stand-in kubelet: each pod bound to its node runs its container command as a local process.

The container's env is resolved as the kubelet does (``value``, ``secretKeyRef``,
``envFrom.secretRef``; a missing Secret is ``CreateContainerConfigError``), emptyDir mounts
become directories of their own, the memory limit is enforced (the whole process tree is
killed: ``OOMKilled``, exit 137), and deletion sends SIGTERM, then SIGKILL after the grace
period. Images are "pulled" when ``images(name)`` says they exist, else ``ErrImagePull``.
``valueFrom.fieldRef`` reads the pod's metadata (the index annotation of an Indexed Job's pod).

The stand-in's DNS and network: every pod is a process on this host, so a pod's name under a
headless Service (``<job>-<index>.<service>``, in ``MASTER_ADDR``) resolves to 127.0.0.1, and
the rendezvous port (``MASTER_PORT``), which each pod would have to itself in a cluster, is mapped
to a free port of this host, one per Service, the same for every pod of the Job.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from kubefake_api import ApiServer
from kubefake_store import ApiError, now

#: How often a running container's memory is measured.
MEMORY_CHECK_S = 0.05
#: How often an image pull or a container config is retried.
RETRY_S = 0.3
_UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "K": 10**3, "M": 10**6, "G": 10**9, "": 1}


def parse_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity in bytes."""
    number, unit = re.fullmatch(r"(\d+)([KMG]i?|)", quantity).groups()
    return int(number) * _UNITS[unit]


class Kubelet:
    """Starts, watches and stops the containers of the pods bound to one node."""

    def __init__(self, server: ApiServer, root: Path, images: Callable[[str], bool] = lambda image: True,
                 simulate_s: float | None = None, image_env: dict[str, str] | None = None):
        self.server, self.store, self.root = server, server.store, Path(root)
        self.images, self.simulate_s = images, simulate_s
        #: What every image's ENV lines would set: the "image" is this interpreter, with its import
        #: path; containers get nothing else of the host's environment.
        self.image_env = {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
                          "HOME": "/tmp", "LANG": "C.UTF-8", **(image_env or {})}
        if os.environ.get("PYTHONPATH"):
            self.image_env.setdefault("PYTHONPATH", os.environ["PYTHONPATH"])
        self.procs: dict[tuple[str, str], subprocess.Popen] = {}
        self._started: set[tuple[str, str]] = set()
        #: The host port standing for each headless Service's rendezvous port.
        self.ports: dict[tuple[str, str], int] = {}
        self._ports_lock = threading.Lock()
        self.dead = False  # the node was lost: nothing more is reported

    def sync(self, kind: str, pod: dict) -> None:
        """React to a pod event: start its container, stop it, or forget it."""
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        if kind == "DELETED":
            self.kill(key)
        elif meta.get("deletionTimestamp") and key in self._started and not self.dead:
            threading.Thread(target=self._terminate, args=(key, meta.get("deletionGracePeriodSeconds", 30)),
                             daemon=True).start()
        elif pod["spec"].get("nodeName") and key not in self._started and not meta.get("deletionTimestamp"):
            self._started.add(key)
            threading.Thread(target=self._run, args=(pod,), daemon=True).start()

    # -- a container's life ---------------------------------------------------------------------
    def _run(self, pod: dict) -> None:
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        container = pod["spec"]["containers"][0]
        env = self._prepare(key, container, pod)
        if env is None:
            return
        if self.simulate_s is not None:
            return self._simulate(key)
        work = self.root / key[1]
        mounts = {m["mountPath"]: work / m["name"] for m in container.get("volumeMounts", [])}
        for path in mounts.values():
            path.mkdir(parents=True, exist_ok=True)
        log = work / "container.log"
        self.server.logs[key] = log
        with open(log, "ab") as out:
            proc = subprocess.Popen(container["command"] + container.get("args", []),
                                    env={k: _remap(v, mounts) for k, v in env.items()},
                                    cwd=_remap(container.get("workingDir", str(work)), mounts),
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs[key] = proc
        self._status(key, "Running", {"running": {"startedAt": now()}})
        limit = container.get("resources", {}).get("limits", {}).get("memory")
        oom = self._wait(proc, parse_bytes(limit) if limit else None)
        if not self.dead:
            code = 137 if oom else proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
            reason = "OOMKilled" if oom else "Completed" if code == 0 else "Error"
            self._status(key, "Succeeded" if code == 0 else "Failed", _terminated(code, reason))

    def _simulate(self, key: tuple[str, str]) -> None:
        """A container that runs ``simulate_s`` and succeeds, unless stopped first (no process)."""
        self._status(key, "Running", {"running": {"startedAt": now()}})
        end = time.monotonic() + self.simulate_s
        while time.monotonic() < end and self._phase(key) == "Running" and not self.dead:
            time.sleep(0.05)
        if self._phase(key) == "Running" and not self.dead:
            self._status(key, "Succeeded", _terminated(0, "Completed"))

    def _phase(self, key: tuple[str, str]) -> str | None:
        try:
            pod = self.store.get("pods", *key)
        except ApiError:
            return None
        return None if pod["metadata"].get("deletionTimestamp") else pod["status"].get("phase")

    def _prepare(self, key: tuple[str, str], container: dict, pod: dict) -> dict | None:
        """Pull the image and resolve the env, retrying like a kubelet; None if the pod went."""
        attempts = 0
        while self._alive(key):
            if not self.images(container["image"]):
                reason = "ErrImagePull" if attempts % 2 == 0 else "ImagePullBackOff"
                self._waiting(key, reason, f'failed to pull image "{container["image"]}": not found')
            else:
                try:
                    return self._resolve(key[0], self._environment(key[0], container, pod))
                except ApiError as exc:
                    self._waiting(key, "CreateContainerConfigError", exc.message)
            attempts += 1
            time.sleep(RETRY_S)
        return None

    def _resolve(self, ns: str, env: dict[str, str]) -> dict[str, str]:
        """The stand-in's DNS: a pod's name under a Service of the namespace is this host; the
        Service's port is a free port of this host, one per Service (see the module docstring)."""
        _, _, service = env.get("MASTER_ADDR", "").partition(".")
        if service:
            name = service.split(".")[0]
            if not self._wait_for_service(ns, name):
                return env  # no such Service: the name does not resolve, as in a cluster
            env["MASTER_ADDR"] = "127.0.0.1"
            with self._ports_lock:
                if (ns, name) not in self.ports:
                    with socket.socket() as sock:
                        sock.bind(("127.0.0.1", 0))
                        self.ports[(ns, name)] = sock.getsockname()[1]
                env["MASTER_PORT"] = str(self.ports[(ns, name)])
        return env

    def _wait_for_service(self, ns: str, name: str, timeout: float = 10.0) -> bool:
        """Whether the Service exists (it is made just after its Job: DNS would retry meanwhile)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.store.get("services", ns, name)
                return True
            except ApiError:
                if time.monotonic() > deadline or self.dead:
                    return False
                time.sleep(0.05)

    def _environment(self, ns: str, container: dict, pod: dict | None = None) -> dict[str, str]:
        env = dict(self.image_env)
        for source in container.get("envFrom", []):
            secret = self.store.get("secrets", ns, source["secretRef"]["name"])
            env.update({k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()})
        for var in container.get("env", []):
            ref = (var.get("valueFrom") or {}).get("secretKeyRef")
            field = (var.get("valueFrom") or {}).get("fieldRef")
            if field:
                env[var["name"]] = _field(pod or {}, field["fieldPath"])
            elif ref:
                data = self.store.get("secrets", ns, ref["name"]).get("data", {})
                env[var["name"]] = base64.b64decode(data[ref["key"]]).decode()
            else:
                env[var["name"]] = var.get("value", "")
        return env

    def _wait(self, proc: subprocess.Popen, limit: int | None) -> bool:
        """Wait for the container's end; True if it went past its memory limit and was killed."""
        while proc.poll() is None:
            if limit and _tree_rss(proc.pid) > limit:
                _kill_tree(proc.pid)
                proc.wait()
                return True
            time.sleep(MEMORY_CHECK_S)
        return False

    def _terminate(self, key: tuple[str, str], grace: int) -> None:
        """Deletion: SIGTERM to the container's first process, SIGKILL after ``grace``, then go."""
        proc = self.procs.get(key)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                _kill_tree(proc.pid)
                proc.wait()
        try:
            self.store.remove("pods", *key)
        except ApiError:
            pass

    def kill(self, key: tuple[str, str]) -> None:
        """Kill a container's whole process tree at once (pod force-deleted, node lost, evicted)."""
        proc = self.procs.get(key)
        if proc is not None and proc.poll() is None:
            _kill_tree(proc.pid)

    def close(self) -> None:
        """Kill every container (the end of a test)."""
        self.dead = True
        for key in list(self.procs):
            self.kill(key)

    # -- status ---------------------------------------------------------------------------------
    def _alive(self, key: tuple[str, str]) -> bool:
        try:
            return not self.store.get("pods", *key)["metadata"].get("deletionTimestamp")
        except ApiError:
            return False

    def _waiting(self, key: tuple[str, str], reason: str, message: str) -> None:
        self._status(key, "Pending", {"waiting": {"reason": reason, "message": message}})

    def _status(self, key: tuple[str, str], phase: str, state: dict) -> None:
        def change(pod: dict) -> None:
            image = pod["spec"]["containers"][0]["image"]
            pod["status"].update(phase=phase, containerStatuses=[
                {"name": "runner", "image": image, "ready": "running" in state, "restartCount": 0,
                 "state": state}])
        try:
            self.store.update("pods", *key, change)
        except ApiError:
            pass


def _field(pod: dict, path: str) -> str:
    """A downward-API ``fieldPath`` of the pod: ``metadata.name``, ``metadata.annotations['k']``..."""
    match = re.fullmatch(r"metadata\.(annotations|labels)\['([^']+)'\]", path)
    if match:
        return pod["metadata"].get(match.group(1), {}).get(match.group(2), "")
    section, _, name = path.partition(".")
    return str(pod.get(section, {}).get(name, ""))


def _terminated(code: int, reason: str) -> dict:
    return {"terminated": {"exitCode": code, "reason": reason, "finishedAt": now()}}


def _remap(value: str, mounts: dict[str, Path]) -> str:
    """A path inside the container as the host directory behind its mount."""
    for mount, host in mounts.items():
        if value == mount or value.startswith(mount + "/"):
            return str(host) + value[len(mount):]
    return value


def _tree_rss(pid: int) -> int:
    try:
        proc = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
    except psutil.Error:
        return 0


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants, as a container's cgroup is killed."""
    try:
        proc = psutil.Process(pid)
        family = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return
    for member in family:
        try:
            member.kill()
        except psutil.Error:
            pass
