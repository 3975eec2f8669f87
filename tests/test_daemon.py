"""`wml backend start|stop|status` and a client that starts the backend on first use."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from backend_process import REPO, free_port


def wml(home, *args, **extra_env):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WML_")}
    env.update(WML_HOME=str(home), **{name: str(value) for name, value in extra_env.items()})
    return subprocess.run([sys.executable, "-m", "wml_jupyter", *args], env=env, capture_output=True,
                          text=True, timeout=120, cwd=REPO)


def test_start_status_stop(wml_home, tmp_path):
    port, temporary = str(free_port()), tmp_path / "tmp"
    temporary.mkdir()
    try:
        started = wml(wml_home, "backend", "start", "--gpus", "3", "--port", port, "--json", TMPDIR=temporary)
        assert started.returncode == 0, started.stderr
        info = json.loads(started.stdout)
        assert info["running"] and info["url"] == f"http://127.0.0.1:{port}" and info["executor"] == "local"
        assert info["gpus"] == 3 and info["pid"] > 0
        status = json.loads(wml(wml_home, "backend", "status", "--json").stdout)
        assert status["running"] and status["pid"] == info["pid"]
        human = wml(wml_home, "backend", "status").stdout
        assert "running at" in human and "3 GPU" in human
        assert (wml_home / "backend" / "token").stat().st_mode & 0o077 == 0, "the admin token must be private"
        assert (wml_home / "backend" / "wml.db").stat().st_mode & 0o077 == 0
        assert list(temporary.iterdir()), "the backend's fork server keeps its socket in a temporary folder"
    finally:
        stop = wml(wml_home, "backend", "stop")
    assert stop.returncode == 0 and stop.stdout.strip() == "backend stopped"
    assert wml(wml_home, "backend", "stop").stdout.strip() == "backend: was not running"
    stopped = json.loads(wml(wml_home, "backend", "status", "--json").stdout)
    assert stopped["running"] is False
    assert "Traceback" not in (wml_home / "backend" / "backend.log").read_text(), "a clean shutdown"
    assert list(temporary.iterdir()) == [], "a stopped backend leaves nothing in the temporary folder"
    assert wml(wml_home, "backend", "status").returncode == 1


def test_client_without_configuration_starts_the_backend(wml_home):
    try:
        listed = wml(wml_home, "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout) == []
        assert json.loads(wml(wml_home, "backend", "status", "--json").stdout)["running"]
    finally:
        wml(wml_home, "backend", "stop")
