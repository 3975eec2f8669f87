"""JupyterLab in a subprocess for browser tests: 127.0.0.1, no token, isolated settings.

It serves the sidebar built in this checkout (``wml_jupyter/labextension``), whatever copy
``pip install`` left in the environment, and passes the backend's environment to the server
extension so its ``Client`` finds the test backend.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from backend_process import REPO, free_port

#: The sidebar as built in this checkout.
BUILT_LABEXTENSION = REPO / "wml_jupyter" / "labextension"
#: What the build is made from.
SOURCES = [REPO / "labextension" / "src", REPO / "labextension" / "style"]
#: Settings that keep JupyterLab quiet in tests (no news or update toasts).
QUIET_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False},
}


def check_build_is_fresh() -> None:
    """Fail when the built sidebar is missing or older than its sources (a stale build tests old code)."""
    built = BUILT_LABEXTENSION / "package.json"
    if not built.exists():
        raise RuntimeError("the sidebar is not built: run `npm run build:prod` in labextension/")
    sources = [p for folder in SOURCES for p in folder.rglob("*") if p.is_file()]
    newer = [p for p in sources if p.stat().st_mtime > built.stat().st_mtime]
    if newer:
        raise RuntimeError(f"{newer[0]} is newer than the built sidebar: run `npm run build:prod` in labextension/")


class LabProcess:
    """``jupyter lab`` with its own config, settings, workspaces and notebook directory."""

    def __init__(self, home: Path, env: dict[str, str]):
        self.home = Path(home)
        self.root = self.home / "notebooks"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.env = {**env, "JUPYTER_CONFIG_DIR": str(self.home / "config"),
                    "JUPYTER_RUNTIME_DIR": str(self.home / "runtime")}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> LabProcess:
        """Start JupyterLab and wait until its API answers."""
        check_build_is_fresh()
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_path = self.home / "jupyterlab.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self._args(), env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.root)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}api/status", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"JupyterLab did not answer in {timeout} s")

    def _args(self) -> list[str]:
        settings, extensions = self._write_settings(), self._link_extension()
        return [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
                "--ip=127.0.0.1", f"--port={self.port}", "--ServerApp.token=", "--ServerApp.password=",
                f"--ServerApp.root_dir={self.root}", "--LabApp.expose_app_in_browser=True",
                f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={self.home / 'workspaces'}",
                f"--LabApp.extra_labextensions_path={extensions}"]

    def _write_settings(self) -> Path:
        settings = self.home / "settings"
        for name, values in QUIET_SETTINGS.items():
            path = settings / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        return settings

    def _link_extension(self) -> Path:
        """A labextensions folder whose ``wml-jupyter`` is this checkout's build (found first)."""
        folder = self.home / "labextensions"
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / "wml-jupyter"
        if not link.exists():
            os.symlink(BUILT_LABEXTENSION, link)
        return folder

    def stop(self) -> None:
        """Stop JupyterLab (and the kernels it started)."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
