"""The operator's way back in (``python -m wml_backend.admin_token``): with only the database, the
administrator gets a new token that works on the running backend at once, and the old one stops."""

from __future__ import annotations

import subprocess
import sys

from backend_process import BackendProcess


def _admin_token(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wml_backend.admin_token"], env=env, capture_output=True,
                          text=True, timeout=60)


def test_a_lost_administrator_token_is_replaced_from_the_database(tmp_path):
    backend = BackendProcess(tmp_path / "home").start()
    try:
        old = backend.token
        (backend.home / "backend" / "token").unlink()  # the pod that had it is gone
        done = _admin_token(backend.env)
        assert done.returncode == 0, done.stderr
        new = done.stdout.strip()
        assert new and new != old
        assert backend.cli("accounts", "create", "bob", "--gpus", "0", token=new).returncode == 0  # administrators only
        refused = backend.cli("accounts", "create", "eve", "--gpus", "0", token=old)
        assert refused.returncode != 0 and "unknown token" in refused.stderr
    finally:
        backend.close()


def test_an_empty_database_gets_a_one_line_error(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "WML_HOME": str(tmp_path / "home")}
    done = _admin_token(env)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "has no account 'local'" in done.stderr
