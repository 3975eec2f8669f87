"""Containers as local processes: what a container runtime would do, on this host.

Each container's ``command`` + ``args`` runs as a process of this host, as the user, groups and
capabilities its ``securityContext`` asks for (see ``security``), with the project's venv first in
``PATH``; its image is not pulled (an image whose registry host ends in
``.invalid`` fails to pull, for tests of ``ErrImagePull``). Where ``unshare`` can make
namespaces (root, or user namespaces allowed), the command is PID 1 of a PID namespace of its
own, with its own ``/proc``, hostname and ``/etc/hosts`` (mount and UTS namespaces): as in a
container, a SIGTERM it has no handler for does nothing, and when it exits every process it left
is killed. Elsewhere it leads a process group, which is killed when it exits.

Stopping a container (pod deletion, eviction, ``activeDeadlineSeconds``) is the kubelet's: SIGTERM
to the container's main process, SIGKILL after the grace period. A container above its memory
limit (the resident memory of its processes, sampled) is killed: ``OOMKilled``, exit code 137.
Restart policies ``Never``, ``OnFailure`` and ``Always`` are honoured, with the kubelet's
back-off (10 s, doubling, at most 5 min).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional

from .api import transient
from .dns import Member
from .pods import PodWorker, exit_code, log, now, terminated, waiting
from .podenv import POD_IP, ConfigError, PodFiles, container_env, expand, remap
from .quantity import parse
from .security import Identity, identity, own_volumes

try:
    import psutil
except ImportError:  # memory limits are then not enforced
    psutil = None

#: How often a running container is looked at (exit, memory, deletion).
POLL_S = 0.25
BACKOFF_S, BACKOFF_MAX_S = 10.0, 300.0
#: A missing Secret or ConfigMap is looked for again after 1 s, doubling up to 10 s.
CONFIG_RETRY_S = 1.0
GPU = "nvidia.com/gpu"


class ImagePullError(Exception):
    pass


def check_image(image: str) -> None:
    """Images are never pulled; one from a registry under ``.invalid`` (RFC 2606) "fails"."""
    first = image.split("/", 1)[0]
    if "/" in image and ("." in first or ":" in first) and first.split(":")[0].endswith(".invalid"):
        raise ImagePullError(f'failed to pull and unpack image "{image}": failed to resolve reference '
                             f'"{image}": dial tcp: lookup {first.split(":")[0]}: no such host')


class Container:
    """One container of a pod: its process and the status the kubelet reports for it."""

    def __init__(self, spec: dict, logs_dir: Path, isolation: list[str]):
        self.spec, self.name = spec, spec["name"]
        self.logs_dir, self.isolation = logs_dir, isolation
        self.state: dict = waiting("ContainerCreating")
        self.last_state: dict = {}
        self.restarts = 0
        self.proc: Optional[subprocess.Popen] = None
        self.started_at: Optional[str] = None
        self.oom = False
        self.not_before = 0.0  # restart back-off
        self.limit = _memory_limit(spec)
        self.log_path: Optional[Path] = None
        self.term_sent = False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def done(self) -> bool:
        return "terminated" in self.state

    def start(self, argv: list[str], env: dict[str, str], cwd: str, procs_dir: Path, hostname: str,
              hosts_file: Path, user: Identity, shown: list[Path]) -> None:
        """Start the container's process as ``user``, seeing of the folders it cannot pass only
        ``shown`` (its pod's folder, volumes, working directory)."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.logs_dir / f"{self.name}-{self.restarts}.log"
        setup = self.isolation + [hostname, str(hosts_file)] if self.isolation else []
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(setup + user.argv() + argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=user.preexec([*shown, Path(cwd)]))
        (procs_dir / str(self.proc.pid)).touch()  # for kube-down, should the agent be killed
        self.started_at, self.oom, self.term_sent = now(), False, False
        self.state = {"running": {"startedAt": self.started_at}}

    def main_pid(self) -> Optional[int]:
        """The container's own first process (PID 1 of its namespace, under ``unshare``)."""
        if self.proc is None:
            return None
        if not self.isolation or psutil is None:
            return self.proc.pid
        for _ in range(20):
            try:
                children = psutil.Process(self.proc.pid).children()
            except psutil.Error:
                return None
            if children:
                return children[0].pid
            time.sleep(0.01)
        return None

    def term(self) -> None:
        """SIGTERM to the main process, as a runtime stops a container (once)."""
        if self.running and not self.term_sent:
            self.term_sent = True
            pid = self.main_pid()
            if pid:
                _signal(pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to everything the container runs."""
        if self.proc is not None:
            _signal_group(self.proc.pid, signal.SIGKILL)

    def over_limit(self) -> bool:
        if not self.limit or psutil is None or not self.running:
            return False
        try:
            root = psutil.Process(self.proc.pid)
            return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) > self.limit
        except psutil.Error:
            return False

    def reap(self, procs_dir: Path) -> int:
        """After the main process ended: kill what is left, record the terminated state."""
        code = exit_code(self.proc.returncode)
        _signal_group(self.proc.pid, signal.SIGKILL)
        (procs_dir / str(self.proc.pid)).unlink(missing_ok=True)
        if self.oom:
            code, reason = 137, "OOMKilled"
        else:
            reason = "Completed" if code == 0 else "Error"
        self.state = terminated(code, reason, self.started_at)
        self.state["terminated"]["containerID"] = self.container_id()
        return code

    def container_id(self) -> str:
        return f"nodeagent://{self.proc.pid}" if self.proc else ""

    def restart_later(self) -> None:
        delay = min(BACKOFF_S * 2 ** self.restarts, BACKOFF_MAX_S)
        self.last_state, self.restarts = self.state, self.restarts + 1
        self.proc, self.not_before = None, time.monotonic() + delay
        self.state = waiting("CrashLoopBackOff", f"back-off {delay:.0f}s restarting failed container={self.name}")


def _memory_limit(spec: dict) -> Optional[int]:
    value = ((spec.get("resources") or {}).get("limits") or {}).get("memory")
    return int(parse(value)) if value else None


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except OSError:
        pass


class ProcessPod(PodWorker):
    """A pod whose containers run as processes of this host (see the module's docstring)."""

    def run(self) -> None:
        node = self.node
        self.dir = node.agent.pods_dir / f"{self.ns}_{self.name}_{self.uid}"
        self.procs_dir = node.agent.procs_dir
        spec = self.pod["spec"]
        isolation = node.agent.isolation
        self.init = [Container(c, self.dir / "logs", isolation) for c in spec.get("initContainers") or []]
        self.main = [Container(c, self.dir / "logs", isolation) for c in spec["containers"]]
        for c in self.init + self.main:
            node.agent.logs.register(self.ns, self.name, c)
        self.gpus: list[int] = []
        self.t0 = time.monotonic()
        try:
            envs = self._prepare()
            if envs is None:
                return self._never_started()
            self.gpus = node.allocate_gpus(self._gpu_count())
            if self._run_init(envs) and not self.gone:
                self._run_main(envs)
        finally:
            for c in self.init + self.main:
                if c.running:
                    c.kill()
            node.release_gpus(self.gpus)
            if spec.get("subdomain"):
                node.agent.headless.leave(self.ns, spec["subdomain"], self.uid)

    # -- before the first process ---------------------------------------------------------------
    def _prepare(self) -> Optional[dict[str, tuple]]:
        """Pull (check) images, set up volumes, resolve every container's command line, env and
        working directory; retried like the kubelet while something is missing. None: the pod
        was deleted meanwhile."""
        attempt = 0
        while not (self.deleting or self.gone):
            attempt += 1
            try:
                for c in self.init + self.main:
                    check_image(c.spec.get("image", ""))
                files = PodFiles(self.api, self.pod, self.dir, self.node.name)
                files.prepare()
                own_volumes(self.pod, files.volumes, self.dir)
                self._write_hosts()
                return {c.name: self._command(files, c) for c in self.init + self.main}
            except ImagePullError as exc:  # ErrImagePull, then ImagePullBackOff until the next try
                self._all_waiting("ErrImagePull", str(exc))
                if not self._pause(1.0):
                    break
                self._all_waiting("ImagePullBackOff", f'Back-off pulling image "{self._image(exc)}"')
                delay = min(BACKOFF_S * 2 ** (attempt - 1), BACKOFF_MAX_S)
            except ConfigError as exc:
                self._all_waiting(exc.reason, str(exc))
                delay = min(CONFIG_RETRY_S * 2 ** (attempt - 1), 10.0)
            except Exception as exc:  # the API server did not answer: try again
                if not transient(exc):
                    raise
                log.warning("%r: %s", self, exc)
                delay = min(CONFIG_RETRY_S * 2 ** (attempt - 1), 10.0)
            self._pause(delay)
        return None

    def _write_hosts(self) -> None:
        """The pod's ``/etc/hosts``, as the kubelet writes it: its own names, its ``hostAliases``;
        for a pod of a headless Service, the names of the Service's other pods too (see ``dns``)."""
        spec = self.pod["spec"]
        self.hostname = spec.get("hostname") or self.name
        own = self.hostname
        if spec.get("subdomain"):
            own = f"{self.hostname}.{spec['subdomain']}.{self.ns}.svc.cluster.local\t{self.hostname}"
        lines = ["# Kubernetes-managed hosts file (node agent).", "127.0.0.1\tlocalhost",
                 "::1\tlocalhost ip6-localhost ip6-loopback", f"{POD_IP}\t{own}"]
        aliases = spec.get("hostAliases") or []
        if aliases:
            lines.append("# Entries added by HostAliases.")
            lines += [f"{a['ip']}\t{' '.join(a.get('hostnames') or [])}" for a in aliases]
        self.hosts_file = self.dir / "etc-hosts"
        own_lines = "\n".join(lines) + "\n"
        self.hosts_file.write_text(own_lines)
        if spec.get("subdomain"):
            member = Member(self.hostname, self.hosts_file, own_lines)
            self.node.agent.headless.join(self.ns, spec["subdomain"], self.uid, member)

    def _pause(self, seconds: float) -> bool:
        """Wait ``seconds`` unless the pod is deleted first; False if it was."""
        with self.lock:
            return not self.lock.wait_for(lambda: self.deleting or self.gone, seconds)

    def _image(self, exc: Exception) -> str:
        return str(exc).split('"')[1]

    def _command(self, files: PodFiles, c: Container) -> tuple[list[str], dict, str, Identity, list[Path]]:
        """The container's command line, env, working directory, identity, and the folders
        it sees (its pod's and its mounts')."""
        user = identity(self.pod, c.spec)
        mounts = files.mounts(c.spec)
        env = container_env(files, c.spec, self.node.agent.image_env(self.pod, self.dir), self.node.allocatable)
        if not c.spec.get("command"):
            raise ConfigError(f'container "{c.name}": no command: the node agent runs no image entrypoint')
        argv = [remap(expand(a, env), mounts) for a in c.spec["command"] + (c.spec.get("args") or [])]
        cwd = self._working_dir(c.spec.get("workingDir"), mounts)
        shown = [self.dir, *(host for _, host in mounts)]
        return argv, {k: remap(v, mounts) for k, v in env.items()}, cwd, user, shown

    def _working_dir(self, working_dir: Optional[str], mounts: list) -> str:
        """``workingDir`` under a mount is the mount's directory; another one is made in the pod's
        own directory (an image's file system), unless this host has it."""
        root = self.dir / "rootfs"
        if not working_dir:
            root.mkdir(parents=True, exist_ok=True)
            return str(root)
        mapped = remap(working_dir, mounts)
        if mapped != working_dir or Path(working_dir).is_dir():
            Path(mapped).mkdir(parents=True, exist_ok=True)
            return mapped
        own = root / working_dir.lstrip("/")
        own.mkdir(parents=True, exist_ok=True)
        return str(own)

    def _gpu_count(self) -> int:
        return sum(int(parse(((c.spec.get("resources") or {}).get("limits") or {}).get(GPU, 0)))
                   for c in self.main)

    def _all_waiting(self, reason: str, message: str) -> None:
        for c in self.init + self.main:
            c.state = waiting(reason, message)
        self._report("Pending")

    def _never_started(self) -> None:
        if self.gone:
            return
        for c in self.init + self.main:
            c.state = terminated(137, "ContainerStatusUnknown", None,
                                 "The container could not be located when the pod was deleted.  "
                                 "The container used to be Running")
        self._report("Failed")

    # -- running ---------------------------------------------------------------------------------
    def _start(self, c: Container, envs: dict) -> None:
        argv, env, cwd, user, shown = envs[c.name]
        gpus = int(parse(((c.spec.get("resources") or {}).get("limits") or {}).get(GPU, 0)))
        if gpus and self.gpus:  # the device plugin's variable (it wins over the pod's own)
            env = {**env, "NVIDIA_VISIBLE_DEVICES": ",".join(map(str, self.gpus[:gpus]))}
        try:
            c.start(argv, env, cwd, self.procs_dir, self.hostname, self.hosts_file, user, shown)
        except OSError as exc:  # no such command, say: the runtime's StartError
            c.state = terminated(128, "StartError", None, f"failed to start container: {exc}")

    def _restart_policy(self) -> str:
        return self.pod["spec"].get("restartPolicy", "Always")

    def _run_init(self, envs: dict) -> bool:
        """Init containers one after the other; False if the pod failed or stopped among them."""
        for c in self.init:
            while True:
                self._start(c, envs)
                self._report("Pending")
                if not self._wait([c]):
                    return False
                if c.state["terminated"]["exitCode"] == 0:
                    break
                if self._restart_policy() == "Never":
                    self._report("Failed")
                    return False
                c.restart_later()
                self._report("Pending")
                if not self._backoff(c):
                    return False
        return True

    def _run_main(self, envs: dict) -> None:
        for c in self.main:
            self._start(c, envs)
        self._report("Running")
        while self._wait(self.main, until_all=False):
            policy = self._restart_policy()
            for c in self.main:
                if c.done and self._restarts(c, policy):
                    c.restart_later()
            for c in self.main:
                if c.proc is None and "waiting" in c.state and time.monotonic() >= c.not_before:
                    self._start(c, envs)
            self._report(self._phase())
            if all(c.done for c in self.main):
                return

    def _restarts(self, c: Container, policy: str) -> bool:
        if self.deleting or self.gone or self._deadline_passed():
            return False
        return policy == "Always" or (policy == "OnFailure" and c.state["terminated"]["exitCode"] != 0)

    def _phase(self) -> str:
        if not all(c.done for c in self.main):
            return "Running"
        return "Succeeded" if all(c.state["terminated"]["exitCode"] == 0 for c in self.main) else "Failed"

    def _deadline_passed(self) -> bool:
        deadline = self.pod["spec"].get("activeDeadlineSeconds")
        return deadline is not None and time.monotonic() - self.t0 > float(deadline)

    def _wait(self, containers: list[Container], until_all: bool = True) -> bool:
        """Watch running ``containers`` until all (or one) ended; stop them when the pod is
        deleted or past its deadline. False: the pod is over (gone, deleted or failed)."""
        stop_at: Optional[float] = None
        while True:
            if stop_at is None and all(c.done for c in containers):
                return True
            with self.lock:
                if self.gone:
                    for c in containers:
                        c.kill()
                    return False
                if (self.deleting or self._deadline_passed()) and stop_at is None:
                    stop_at = time.monotonic() + (self.grace_s() if self.deleting else self._termination_grace())
                    for c in containers:
                        c.term()
            ended = False
            for c in containers:
                if c.proc is not None and not c.done and c.proc.poll() is not None:
                    c.reap(self.procs_dir)
                    ended = True
                elif c.over_limit():
                    c.oom = True
                    c.kill()
                elif c.proc is None and "waiting" in c.state and time.monotonic() >= c.not_before:
                    ended = True  # its restart back-off is over
            if stop_at is not None:
                if all(c.done or c.proc is None for c in containers):
                    return self._stopped()
                if time.monotonic() >= stop_at:
                    for c in containers:
                        c.kill()
            elif ended and (not until_all or all(c.done for c in containers)):
                return True
            elif ended:
                self._report(self._phase() if containers is self.main else "Pending")
            with self.lock:
                self.lock.wait(POLL_S)

    def _termination_grace(self) -> float:
        return float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))

    def _stopped(self) -> bool:
        """Every container stopped because of a deletion or the deadline: the final status."""
        for c in self.init + self.main:
            if not c.done:
                c.state = terminated(137, "ContainerStatusUnknown", None, "The container was never started")
        if self._deadline_passed() and not self.deleting:
            self._report("Failed", reason="DeadlineExceeded",
                         message="Pod was active on the node longer than the specified deadline")
        else:
            self._report("Succeeded" if all(c.state["terminated"]["exitCode"] == 0 for c in self.main) else "Failed")
        return False

    def _backoff(self, c: Container) -> bool:
        return self._sleep_until(c.not_before)

    def _sleep_until(self, when: float) -> bool:
        """Wait (a back-off) until ``when``; False if the pod was deleted meanwhile."""
        with self.lock:
            self.lock.wait_for(lambda: self.deleting or self.gone, max(0.0, when - time.monotonic()))
            stopped, gone = self.deleting or self.gone, self.gone
        if stopped and not gone:
            self._stopped()
        return not stopped

    def _report(self, phase: str, reason: str = "", message: str = "") -> None:
        statuses = [self.container_status(c.spec, c.state, c.restarts, c.last_state, c.container_id())
                    for c in self.main]
        init = ([self.container_status(c.spec, c.state, c.restarts, c.last_state, c.container_id())
                 for c in self.init] if self.init else None)
        self.report(phase, statuses, init, reason, message)
