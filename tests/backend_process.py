"""A real backend process for tests: its own $WML_HOME, a free port, killable with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence

import httpx
import psutil
from wml_core.private_files import private_open

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def backend_in_environment(home: Path, **extra_env: str) -> Iterator["BackendProcess"]:
    """A running backend (2 GPU slots) that this process's clients and magics find through
    the environment (WML_HOME, WML_BACKEND, WML_TOKEN, and ``extra_env``), for a test module."""
    proc = BackendProcess(home, gpus=2).start()
    saved = dict(os.environ)
    for name in [n for n in os.environ if n.startswith("WML_")]:
        del os.environ[name]
    os.environ.update({"WML_HOME": str(proc.home), "WML_BACKEND": proc.url, "WML_TOKEN": proc.token,
                       **extra_env})
    try:
        yield proc
    finally:
        os.environ.clear()
        os.environ.update(saved)
        proc.close()


@contextmanager
def started_backend(home: Path, gpus: int = 2) -> Iterator["BackendProcess"]:
    """A running backend with ``gpus`` GPU slots for the block, closed after it."""
    proc = BackendProcess(home, gpus=gpus).start()
    try:
        yield proc
    finally:
        proc.close()


class BackendProcess:
    """``wml backend serve`` in a subprocess, plus helpers to drive it like a user would."""

    def __init__(self, home: Path, gpus: int = 2, slots: Optional[int] = None, extra_env: Optional[dict] = None,
                 flags: Sequence[str] = ()):
        """``flags``: more of ``wml backend serve``'s flags (``--account-slots 1``...)."""
        self.home, self.gpus, self.slots, self.flags = Path(home), gpus, slots, list(flags)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("WML_", "AWS_"))}
        self.env.update({"WML_HOME": str(self.home), "WML_BACKEND": self.url, **(extra_env or {})})
        self.proc: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 30.0) -> "BackendProcess":
        """Start the server and wait until it answers."""
        args = [sys.executable, "-m", "wml_backend.daemon", "serve", "--port", str(self.port),
                "--gpus", str(self.gpus)]
        if self.slots:
            args += ["--slots", str(self.slots)]
        args += self.flags
        self.home.mkdir(parents=True, exist_ok=True)
        self._log = private_open(self.home / "backend-test.log", "ab")  # as private as the backend's own files
        self.proc = subprocess.Popen(args, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"backend exited: {(self.home / 'backend-test.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    self.env["WML_TOKEN"] = self.token
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("backend did not answer in time")

    @property
    def token(self) -> str:
        """The admin account's token, as the backend wrote it."""
        return (self.home / "backend" / "token").read_text().strip()

    def kill(self) -> None:
        """SIGKILL the server (runs it started keep going)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM the server and wait for it."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def close(self) -> None:
        """Stop the server and every process of its $WML_HOME that outlived it: runners wait up to
        10 minutes for a stopped backend to come back, which a finished test never does."""
        self.stop()
        for proc in psutil.process_iter():
            try:
                if proc.environ().get("WML_HOME") == str(self.home):
                    proc.kill()
            except psutil.Error:
                pass

    @staticmethod
    def cli_args(*args: str) -> list[str]:
        """The command line of ``wml ARGS``."""
        return [sys.executable, "-m", "wml_jupyter", *args]

    def cli(self, *args: str, check: bool = False, token: Optional[str] = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
        """Run ``wml ARGS`` as a user would, against this backend."""
        env = dict(self.env)
        if token is not None:
            env["WML_TOKEN"] = token
        result = subprocess.run(self.cli_args(*args), env=env, capture_output=True,
                                text=True, timeout=timeout, cwd=REPO)
        if check and result.returncode != 0:
            raise AssertionError(f"wml {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result

    def cli_json(self, *args: str, token: Optional[str] = None):
        """``wml ARGS --json``, parsed."""
        return json.loads(self.cli(*args, "--json", check=True, token=token).stdout)

    def client(self, token: Optional[str] = None):
        """A ``Client`` for this backend."""
        from wml_jupyter import Client
        return Client(backend=self.url, token=token or self.token)

    def wait_state(self, run_id: str, state: str, timeout: float = 60, token: Optional[str] = None) -> dict:
        """Poll until run ``run_id`` is in ``state``; return the run object."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.cli_json("show", run_id, token=token)
            if run["state"] == state:
                return run
            time.sleep(0.1)
        raise AssertionError(f"run {run_id} did not reach {state} in {timeout} s")

    def wait_experiment(self, experiment_id: str, timeout: float = 180, token: Optional[str] = None) -> dict:
        """Poll until every run of the experiment has ended; return the experiment object."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            exp = self.cli_json("show", experiment_id, token=token)
            if exp["state"] not in ("QUEUED", "RUNNING"):
                return exp
            time.sleep(0.3)
        raise AssertionError(f"experiment {experiment_id} did not end in {timeout} s")


#: The smallest training definition of the tests (a manifest and its train.py).
TINY = Path(__file__).parent / "definitions" / "tiny"


def tiny_manifest(folder: Path, **changes) -> Path:
    """A copy of the tiny definition's manifest with top-level fields changed, in a file of its own."""
    import yaml
    data = yaml.safe_load((TINY / "manifest.yml").read_text())
    data.update(changes)
    path = folder / f"manifest-{len(list(folder.glob('manifest-*')))}.yml"
    path.write_text(yaml.safe_dump(data))
    return path
