"""The training command: its environment, its hyperparameters, and running it."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Mapping, Optional

from wml_core.metric_line import METRICS_FILE_ENV, STOP_FILE_ENV
from wml_core.models import RunSpec
from wml_runner.isolation import RunUser, Sandbox, open_inside
from wml_runner.workspace import Workspace
from wml_runner.zygote import ColdStart, WarmProcess, spawn, warm_argv

#: Seconds between SIGTERM and SIGKILL when a run is stopped.
TERM_GRACE_S = 1.0
#: The runner's variables the training command is given (by name; none holds a secret): the
#: rest of its environment is set for it (FfDL's variables, torch.distributed's, ours).
PASSED_ENV = ("PATH", "LANG", "LANGUAGE", "TZ", "TERM", "PYTHONPATH", "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES",
              "WML_VIRTUAL_GPUS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
PASSED_PREFIXES = ("LC_", "NVIDIA_", "NCCL_")
#: Passed too when the command runs as the runner's own user; a user of its own gets its own.
OWN_USER_ENV = ("HOME", "USER", "LOGNAME", "TMPDIR")

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def substitute(command: str, hparams: dict[str, Any]) -> str:
    """``${name}`` of each hyperparameter replaced by its (shell-quoted) value; others left."""
    def value(match: re.Match) -> str:
        name = match.group(1)
        return shlex.quote(str(hparams[name])) if name in hparams else match.group(0)
    return _PLACEHOLDER.sub(value, " ".join(command.split("\n")))


def environment(spec: RunSpec, ws: Workspace, data_dir: Path, learner: int = 1,
                master: tuple[str, int] = ("127.0.0.1", 29500), share_gpus: bool = True,
                user: Optional[RunUser] = None) -> dict[str, str]:
    """FfDL's variables, torch.distributed's and ours, and the few of the runner's that are no
    secret (``PASSED_ENV``); a command run as ``user`` has its own HOME and TMPDIR.

    Each learner is a node of one process: RANK = NODE_RANK = LEARNER_ID - 1, LOCAL_RANK = 0,
    and its own share of the run's GPUs in CUDA_VISIBLE_DEVICES (unless ``share_gpus`` is False:
    a learner alone in its pod has all of the pod's GPUs).
    """
    env = passed_env(os.environ, user)
    if user is not None:
        env.update(HOME=str(ws.home), TMPDIR=str(ws.home), USER=user.name, LOGNAME=user.name)
    env.update({
        "DATA_DIR": str(data_dir), "RESULT_DIR": str(ws.results), "LOG_DIR": str(ws.logs),
        "JOB_STATE_DIR": str(ws.state), "CHECKPOINT_DIR": str(ws.checkpoints), "MODEL_DIR": str(ws.model),
        "TRAINING_ID": spec.run_id, "GPU_COUNT": str(spec.gpus), "NUM_LEARNERS": str(spec.learners),
        "LEARNER_ID": str(learner), "WML_EXPERIMENT_ID": spec.experiment_id,
        "WML_HPARAMS": json.dumps(spec.hparams), METRICS_FILE_ENV: str(ws.metrics_file(learner)),
        STOP_FILE_ENV: str(ws.stop_file),
        "WML_ATTEMPT": str(spec.attempt),
        "MASTER_ADDR": master[0], "MASTER_PORT": str(master[1]), "WORLD_SIZE": str(spec.learners),
        "RANK": str(learner - 1), "NODE_RANK": str(learner - 1), "LOCAL_RANK": "0",
    })
    env.update(interpreter_env(env, spec.cpus))
    devices = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
    if devices and spec.learners > 1 and share_gpus:
        share = devices[(learner - 1) * spec.gpus:learner * spec.gpus]
        env["CUDA_VISIBLE_DEVICES"] = ",".join(share)
    return env


def interpreter_env(env: Mapping[str, str], cpus: float) -> dict[str, str]:
    """What a command's interpreter gets beyond ``env`` (the runner's variables it is passed):
    unbuffered output, this Python first on PATH, and math libraries' threads by ``cpus`` (they
    would otherwise take every core) unless ``env`` says."""
    threads = str(max(1, int(cpus)))
    return {"PYTHONUNBUFFERED": "1", "PATH": os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
            **{name: env.get(name, threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}}


def passed_env(env, user: Optional[RunUser]) -> dict[str, str]:
    """The variables of ``env`` a command is given: ``PASSED_ENV`` (and ``OWN_USER_ENV`` unless
    it runs as a ``user`` of its own)."""
    names = PASSED_ENV if user is not None else PASSED_ENV + OWN_USER_ENV
    return {k: v for k, v in env.items() if k in names or k.startswith(PASSED_PREFIXES)}


class Command:
    """The training command as a process group of its own, stoppable from a signal handler.

    With a ``sandbox`` it runs as the sandbox's user, and its log (in a folder of that user's,
    under ``root``) is opened following no link."""

    def __init__(self, command: str, env: dict[str, str], cwd: Path, log_path: Path,
                 sandbox: Optional[Sandbox] = None, root: Optional[Path] = None, zygote: Optional[str] = None):
        self.command, self.env, self.cwd, self.log_path = command, env, cwd, log_path
        self.sandbox, self.root = sandbox, root
        #: The socket of the warm interpreter to fork ``python SCRIPT`` from (None: always cold).
        self.zygote = zygote
        self._proc: Optional[subprocess.Popen | WarmProcess] = None
        self._lock = threading.Lock()
        self.stopped = False
        #: Whether it was signalled to stop (it had not ended by itself, nor at a step when asked).
        self.signalled = False

    def start(self) -> None:
        """Start the command (unless it was stopped already)."""
        with os.fdopen(self._open_log(), "ab") as log, self._lock:
            if not self.stopped:
                self._proc = self._warm(log) or self._cold(log)

    def _cold(self, log) -> subprocess.Popen:
        """``bash -c COMMAND`` in a fresh process."""
        argv, popen = ["bash", "-c", self.command], {"stdin": subprocess.DEVNULL, "stdout": log,
                                                     "stderr": subprocess.STDOUT, "process_group": 0}
        if self.sandbox:
            return self.sandbox.popen(argv, self.env, self.cwd, **popen)
        return subprocess.Popen(argv, env=self.env, cwd=self.cwd, **popen)

    def _warm(self, log) -> Optional[WarmProcess]:
        """``python SCRIPT`` forked from the zygote, if there is one and the command is that; why it
        could not be, noted in the log, when the zygote refused it."""
        argv = warm_argv(self.command, self.env, self.cwd) if self.zygote else None
        if argv is None:
            return None
        try:
            return spawn(self.zygote, argv, self.env, self.cwd, log.fileno(), self.sandbox)
        except ColdStart as why:
            log.write(f"wml-runner: this run starts cold: {why}\n".encode())
            log.flush()
            return None

    def _open_log(self) -> int:
        """The log file, for appending (under ``root``: following no link)."""
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        if self.root is None:
            return os.open(self.log_path, flags, 0o644)
        return open_inside(self.root, self.log_path, flags, 0o644)

    def poll(self) -> Optional[int]:
        """Its exit code (negative: killed by that signal) once it has ended, else None."""
        if self._proc is None:
            return -signal.SIGTERM if self.stopped else None
        return self._proc.poll()

    def run(self) -> int:
        """Run to the end; return its exit code."""
        self.start()
        return self.wait()

    def wait(self) -> int:
        """Its exit code, once it has ended (started, or stopped before it could be)."""
        return self._proc.wait() if self._proc else -signal.SIGTERM

    def stop(self, grace_s: float = 0.0) -> None:
        """Let the command stop by itself within ``grace_s`` (asked through the stop file), then
        SIGTERM its process group, and SIGKILL it after ``TERM_GRACE_S``."""
        with self._lock:
            self.stopped = True
            proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        if grace_s > 0:
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is not None:
            return
        self.signalled = True
        _signal_group(proc.pid, signal.SIGTERM)
        threading.Timer(TERM_GRACE_S, _signal_group, args=(proc.pid, signal.SIGKILL)).start()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except OSError:
        pass
