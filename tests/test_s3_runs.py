"""Runs whose data and results live on an S3 server (moto over HTTP), through the CLI.

Covers the default store configured by environment, FfDL's `connection` with literal
credentials, early errors at submit, and a planted secret that must appear nowhere.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from backend_process import BackendProcess
from s3server import ANY_KEY, ANY_SECRET, running_moto
from test_cli_e2e import TINY

SECRET = "PLANTED-s3cr3t-9f3a1c77"


@pytest.fixture(scope="module")
def moto():
    with running_moto() as server:
        yield server


@pytest.fixture
def s3_backend(tmp_path, moto):
    env = {"WML_STORAGE": "s3://results/team-a", "AWS_ENDPOINT_URL": moto.endpoint,
           "AWS_ACCESS_KEY_ID": ANY_KEY, "AWS_SECRET_ACCESS_KEY": ANY_SECRET, "AWS_DEFAULT_REGION": "us-east-1"}
    moto.client().create_bucket(Bucket="results")
    backend = BackendProcess(tmp_path / "home", gpus=2, extra_env=env).start()
    yield backend
    backend.close()


def write_manifest(folder: Path, data_stores: list) -> Path:
    manifest = yaml.safe_load((TINY / "manifest.yml").read_text())
    manifest.update(hyperparameters={"lr": [0.4]}, data_stores=data_stores)
    path = folder / "manifest.yml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def test_run_reads_data_from_and_writes_results_to_s3(s3_backend, moto, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "data.txt").write_text("data on s3")
    upload = s3_backend.cli("upload", str(data), "training-data")
    assert upload.returncode == 0, upload.stderr
    assert "1 files sent" in upload.stdout
    assert "0 files sent, 1 unchanged skipped" in s3_backend.cli("upload", str(data), "training-data").stdout
    manifest = write_manifest(tmp_path, [{"id": "s3", "type": "s3_datastore",
                                          "training_data": {"container": "training-data"}}])
    result = s3_backend.cli("train", str(manifest), str(TINY), "--wait")
    assert result.returncode == 0, result.stderr
    run_id = f"{result.stdout.strip().splitlines()[-1]}-01"
    run = s3_backend.cli_json("show", run_id)
    assert run["state"] == "COMPLETED" and run["results"] == f"results/team-a/training-{run_id}/"
    keys = {o["Key"] for o in moto.client().list_objects_v2(Bucket="results", Prefix="team-a/")["Contents"]}
    prefix = f"team-a/training-{run_id}/"
    assert {prefix + k for k in ("data-seen.txt", "learner-1/training-log.txt",
                                 "_submitted_code/model.zip")} <= keys
    body = moto.client().get_object(Bucket="results", Key=prefix + "data-seen.txt")["Body"].read()
    assert body == b"data on s3"
    dest = tmp_path / "pulled"
    assert s3_backend.cli("download", run_id, str(dest)).returncode == 0
    assert (dest / "data-seen.txt").read_text() == "data on s3"
    logs = tmp_path / "logs"
    assert s3_backend.cli("download", run_id, str(logs), "--logs-only").returncode == 0
    assert [p.relative_to(logs).as_posix() for p in logs.rglob("*") if p.is_file()] == [
        "learner-1/training-log.txt"]
    model = tmp_path / "model"
    assert s3_backend.cli("download", run_id, str(model), "--model").returncode == 0
    assert (model / "_submitted_code" / "model.zip").is_file()


def test_ffdl_connection_credentials_never_leak(s3_backend, moto, tmp_path):
    key_id, secret = moto.user("trainer", {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]})
    moto.client().create_bucket(Bucket="ffdl-data")
    moto.client().put_object(Bucket="ffdl-data", Key="data.txt", Body=b"ffdl data")
    manifest = write_manifest(tmp_path, [{
        "id": "cos", "type": "mount_cos", "training_data": {"container": "ffdl-data"},
        "training_results": {"container": "ffdl-results"},
        "connection": {"auth_url": moto.endpoint, "user_name": key_id, "password": "${PLANTED_SECRET}"}}])
    env = dict(s3_backend.env, PLANTED_SECRET=secret)
    with moto.iam_checks():
        result = subprocess.run([*s3_backend.cli_args("train", str(manifest), str(TINY), "--wait")],
                                env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        run_id = f"{result.stdout.strip().splitlines()[-1]}-01"
        outputs = [result.stdout, result.stderr, s3_backend.cli("show", run_id, "--json").stdout,
                   s3_backend.cli("show", run_id.rsplit("-", 1)[0], "--json").stdout,
                   s3_backend.cli("logs", run_id).stdout, s3_backend.cli("list", "--json").stdout]
    assert s3_backend.cli_json("show", run_id)["state"] == "COMPLETED"
    for text in outputs:
        assert secret not in text
    for path in s3_backend.home.rglob("*"):
        if path.is_file() and not path.name.startswith("wml.db"):
            assert secret.encode() not in path.read_bytes(), f"secret found in {path}"
    import sqlite3
    db = sqlite3.connect(s3_backend.home / "backend" / "wml.db")
    for table, in db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name != 'secrets'"):
        for row in db.execute(f'SELECT * FROM "{table}"'):
            assert secret not in repr(row), f"secret in table {table}"


def test_missing_bucket_and_unreachable_endpoint_fail_at_submit(s3_backend, tmp_path):
    missing = write_manifest(tmp_path, [{"id": "s3", "type": "s3_datastore",
                                         "training_data": {"container": "no-such-bucket"}}])
    result = s3_backend.cli("train", str(missing), str(TINY))
    assert result.returncode != 0 and "no-such-bucket" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    unreachable = write_manifest(tmp_path, [{
        "id": "s3", "type": "mount_cos", "training_data": {"container": "d"},
        "connection": {"auth_url": "http://127.0.0.1:9", "user_name": "AKIAEXAMPLE", "password": SECRET}}])
    result = s3_backend.cli("train", str(unreachable), str(TINY))
    assert result.returncode != 0 and "127.0.0.1:9" in result.stderr
    assert SECRET not in result.stderr and "Traceback" not in result.stderr
    assert s3_backend.cli_json("list") == [], "a refused submission leaves nothing behind"
