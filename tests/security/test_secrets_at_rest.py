"""Secrets at rest (issue 13, item 8), as someone who got hold of the backend's files tries it.

Before: an S3 secret key from a manifest lay in clear in the run database (found in
``wml.db-wal``), and ``backend.log`` was created world-readable while everything else was 0600.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import uuid
from contextlib import closing
from pathlib import Path

import httpx
import pytest
import yaml
from backend_process import REPO, BackendProcess, free_port
from s3server import ANY_KEY, running_moto

TINY = Path(__file__).parents[1] / "definitions" / "tiny"


@pytest.fixture(scope="module")
def moto():
    with running_moto() as server:
        yield server


def s3_manifest(folder: Path, endpoint: str, **changes) -> Path:
    """The tiny definition reading and writing an S3 server with the credentials ``${PLANTED}``."""
    data = yaml.safe_load((TINY / "manifest.yml").read_text())
    data.update(hyperparameters={"lr": [0.1]}, data_stores=[{
        "id": "s3", "type": "mount_cos", "training_data": {"container": "vault-data"},
        "training_results": {"container": "vault-results"},
        "connection": {"auth_url": endpoint, "user_name": ANY_KEY, "password": "${PLANTED}"}}], **changes)
    path = folder / "manifest.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_manifests_secret_key_is_nowhere_in_clear_in_the_database(tmp_path, moto):
    secret = f"planted-{uuid.uuid4().hex}"
    for bucket in ("vault-data", "vault-results"):
        moto.client().create_bucket(Bucket=bucket)
    backend = BackendProcess(tmp_path / "wml-home", gpus=1).start()
    try:
        env = dict(backend.env, PLANTED=secret)
        done = subprocess.run(backend.cli_args("train", str(s3_manifest(tmp_path, moto.endpoint)), str(TINY), "--wait"),
                              env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
        assert done.returncode == 0, done.stderr  # the sealed secret still reaches the run
        database = backend.home / "backend" / "wml.db"
        files = [p for p in database.parent.glob("wml.db*") if p.is_file()]
        assert database.with_name("wml.db-wal") in files
        for path in files:
            assert secret.encode() not in path.read_bytes(), f"the secret is in clear in {path.name}"
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            assert db.execute("SELECT COUNT(*) FROM secrets").fetchone() == (1,), "nothing was stored"
            assert secret not in "\n".join(db.iterdump()), "a dump of the database holds the secret"
        key = database.with_name("secrets.key")
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    finally:
        backend.close()


def test_every_file_under_wml_home_is_its_owners_alone_logs_included(tmp_path):
    """The daemon's log was created 0644; a log an older version left readable is made private too."""
    home = tmp_path / "wml-home"
    (home / "backend").mkdir(parents=True)
    (home / "backend" / "backend.log").write_text("an older version's log\n")
    os.chmod(home / "backend" / "backend.log", 0o644)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WML_", "AWS_"))}
    env["WML_HOME"] = str(home)
    port = str(free_port())
    wml(env, "backend", "start", "--port", port, "--gpus", "1")
    try:
        env.update(WML_BACKEND=f"http://127.0.0.1:{port}", WML_TOKEN=(home / "backend" / "token").read_text().strip())
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "data.txt").write_text("data")
        wml(env, "upload", str(tmp_path / "data"), "tinydata")
        wml(env, "train", str(TINY / "manifest.yml"), str(TINY), "--wait")
        assert httpx.get(f"{env['WML_BACKEND']}/healthz").status_code == 200
        readable = [f"{oct(stat.S_IMODE(p.stat().st_mode))} {p.relative_to(home)}" for p in [home, *home.rglob("*")]
                    if not p.is_symlink() and p.stat().st_mode & 0o077]
        assert not readable, f"readable by others under $WML_HOME: {readable[:10]}"
    finally:
        wml(env, "backend", "stop")


def wml(env: dict, *args: str) -> str:
    """Run ``wml ARGS`` with ``env``; its output, or the test fails with its error."""
    done = subprocess.run([sys.executable, "-m", "wml_jupyter", *args], env=env, capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert done.returncode == 0, f"wml {' '.join(args)}: {done.stderr}"
    return done.stdout
