"""The local executor's warm interpreters (``wml_runner.zygote``): one per framework, version and
start-up environment, started on the first run that needs it, stopped with the executor."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Mapping, Optional

from wml_core.private_files import private_open
from wml_runner.command import interpreter_env, passed_env
from wml_runner.zygote import FRAMEWORK_MODULES, startup_env

#: The folder (in the work folder) of the zygotes' sockets and logs: the backend's user's alone.
ZYGOTES = ".zygotes"


class Zygotes:
    """The zygotes of one executor, by name; each holds no secret: its environment is only the
    start-up variables (``startup_env``) a run's command would have."""

    def __init__(self, work_dir: Path, frameworks: Mapping[str, tuple[str, ...]] = FRAMEWORK_MODULES):
        self.folder, self.frameworks = Path(work_dir) / ZYGOTES, dict(frameworks)
        self._running: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()

    def socket_for(self, framework: str, version: Optional[str], runner_env: Mapping[str, str],
                   cpus: float) -> Optional[str]:
        """The socket of the zygote for a run of ``framework`` whose runner has ``runner_env``
        (started now if there is none); None when the framework has none."""
        modules = self.frameworks.get(framework)
        if not modules:
            return None
        passed = passed_env(runner_env, None)
        env = startup_env({**passed, **interpreter_env(passed, cpus)})
        digest = hashlib.sha1(json.dumps([modules, sorted(env.items())]).encode()).hexdigest()[:10]
        name = re.sub(r"[^A-Za-z0-9._-]", "_", f"{framework}-{version or 'any'}-{digest}")
        with self._lock:
            proc = self._running.get(name)
            if proc is None or proc.poll() is not None:
                self._running[name] = self._start(name, modules, env)
        return str(self.folder / f"{name}.sock")

    def _start(self, name: str, modules: tuple[str, ...], env: dict[str, str]) -> subprocess.Popen:
        """A fresh interpreter (nothing of this process's memory) importing ``modules``; it stops
        when this process closes, or loses, the pipe of its standard input."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        with private_open(self.folder / f"{name}.log", "ab") as log:
            return subprocess.Popen([sys.executable, "-m", "wml_runner.zygote", f"{name}.sock", *modules],
                                    cwd=self.folder, env=env, stdin=subprocess.PIPE, stdout=log, stderr=log,
                                    start_new_session=True)

    def close(self) -> None:
        """Ask every zygote to stop: it stops accepting, and ends once its runs' commands have."""
        with self._lock:
            for proc in self._running.values():
                proc.stdin.close()
            self._running.clear()
