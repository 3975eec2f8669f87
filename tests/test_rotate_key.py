"""Rotating the key of the credentials kept in the run store (``python -m wml_backend.rotate_key``):
with the key file holding the new key then the old, every stored secret is sealed again with the
new one; the old key then opens nothing, and the new one alone opens everything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pgserver import postgres_server  # noqa: F401 (fixture)

from test_store_contract import add_experiment
from wml_backend.rundb import connect
from wml_core.errors import WmlError

SECRETS = {"e1": {"access_key": "AKIA-one", "secret_key": "first-5ecret"},
           "e2": {"access_key": "AKIA-two", "secret_key": "second-5ecret"}}


@pytest.fixture(params=["sqlite", "postgres"])
def backend_env(request, tmp_path) -> dict[str, str]:
    """The variables a backend (and the rotation) is run with: its home, key file and database."""
    env = {"PATH": "/usr/bin:/bin", "WML_HOME": str(tmp_path / "home"),
           "WML_SECRETS_KEY_FILE": str(tmp_path / "keys" / "secrets.key")}
    if request.param == "postgres":
        env["WML_DATABASE"] = request.getfixturevalue("postgres_server").dsn()
    return env


def _store(env: dict[str, str]):
    database = env.get("WML_DATABASE") or str(Path(env["WML_HOME"]) / "backend" / "wml.db")
    return connect(database, Path(env["WML_SECRETS_KEY_FILE"]))


def _secrets(env: dict[str, str]) -> dict[str, dict]:
    store = _store(env)
    try:
        return {experiment: store.secret(experiment) for experiment in SECRETS}
    finally:
        store.close()


def _rotate(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wml_backend.rotate_key"], env=env, capture_output=True, text=True,
                          timeout=60)


def test_secrets_are_sealed_again_with_the_new_key_and_the_old_one_opens_nothing(backend_env):
    store = _store(backend_env)
    for experiment, secret in SECRETS.items():
        add_experiment(store, exp_id=experiment, secret=secret)
    store.close()
    key_file = Path(backend_env["WML_SECRETS_KEY_FILE"])
    old, new = key_file.read_bytes().strip(), Fernet.generate_key()
    key_file.write_bytes(new + b"\n" + old + b"\n")  # step 1: replicas open both, seal with the new one
    assert _secrets(backend_env) == SECRETS
    done = _rotate(backend_env)
    assert (done.returncode, done.stdout.strip(), done.stderr) == \
        (0, f"2 stored secrets sealed again with the first key of {key_file}", "")
    key_file.write_bytes(new)  # step 3: the old key goes
    assert _secrets(backend_env) == SECRETS
    key_file.write_bytes(old)
    with pytest.raises(WmlError, match="cannot be decrypted"):
        _secrets(backend_env)


def test_a_rotation_without_the_key_file_changes_nothing_and_says_so_in_one_line(backend_env):
    done = _rotate(backend_env)
    assert (done.returncode, done.stderr.strip()) == \
        (2, f"rotate_key: no key file at {backend_env['WML_SECRETS_KEY_FILE']} (WML_SECRETS_KEY_FILE)")
    assert not Path(backend_env["WML_SECRETS_KEY_FILE"]).exists()
