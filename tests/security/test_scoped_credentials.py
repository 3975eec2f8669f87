"""Runs never receive the operator's keys of the default store (issue 13, item 2), tried against
MinIO (``minioserver.py``: a real S3 that checks signatures and session policies) through the real
backend and runner on the local executor.

Before: every run on the default S3 store was handed the operator's long-lived keys (on Kubernetes
in its Secret), so training code could read and write every account's data and results. Now its
runner asks the backend for an STS credential scoped to the run's data (read) and results (write),
short-lived and refreshed; the training code gets the same credential, and nothing more.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from backend_process import BackendProcess
from botocore.exceptions import ClientError
from checks import assert_clear
from test_data_ownership import tokens, upload  # noqa: F401 (its two accounts, over this module's backend)

TINY = Path(__file__).parents[1] / "definitions" / "tiny"
#: Where results of definitions that name none go, in MinIO.
RESULTS_BUCKET, RESULTS_PREFIX = "results", "team"
#: Training code that tries, with the credential its run was given, what its account may and may
#: not do, and writes what the store answered (and what it could see) to its results.
ATTACKER = '''
import json, os, pathlib
import boto3
from botocore.exceptions import ClientError
s3 = boto3.client("s3")
run = os.environ["TRAINING_ID"]
out = pathlib.Path(os.environ["RESULT_DIR"])
mine = "RESULTS_PREFIX/training-" + run + "/"
tries = {
    "read own data": lambda: s3.get_object(Bucket="bob-data", Key="set/data.txt")["Body"].read(),
    "read another account's data": lambda: s3.get_object(Bucket="alice-data", Key="data.txt")["Body"].read(),
    "list another account's data": lambda: s3.list_objects_v2(Bucket="alice-data"),
    "read a sibling prefix": lambda: s3.get_object(Bucket="bob-data", Key="settle/data.txt")["Body"].read(),
    "write own results": lambda: s3.put_object(Bucket="RESULTS_BUCKET", Key=mine + "direct.txt", Body=b"mine"),
    "write outside own results": lambda: s3.put_object(Bucket="RESULTS_BUCKET", Key="RESULTS_PREFIX/evil.txt",
                                                       Body=b"evil"),
    "write into another account's data": lambda: s3.put_object(Bucket="alice-data", Key="evil.txt", Body=b"evil"),
    "create a bucket": lambda: s3.create_bucket(Bucket="bob-made-this"),
}
answers = {}
for name, attempt in tries.items():
    try:
        attempt()
        answers[name] = "allowed"
    except ClientError as exc:
        answers[name] = exc.response["Error"]["Code"]
(out / "answers.json").write_text(json.dumps(answers))
(out / "credential.json").write_text(json.dumps({k: os.environ.get(k) for k in
    ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")}))
seen = [json.dumps(dict(os.environ))]
for proc in pathlib.Path("/proc").glob("[0-9]*"):
    try:
        seen.append((proc / "environ").read_bytes().decode(errors="replace"))
    except OSError:
        pass
(out / "seen.txt").write_text("\\n".join(seen))
'''.replace("RESULTS_BUCKET", RESULTS_BUCKET).replace("RESULTS_PREFIX", RESULTS_PREFIX)
#: What the store answers a refused request with the scoped credential (MinIO: AccessDenied).
REFUSED = {"AccessDenied"}


@pytest.fixture(scope="module", params=["local", pytest.param("kubernetes", marks=[pytest.mark.k8s,
                                                                                  pytest.mark.nodeagent])])
def backend(request, minio, tmp_path_factory) -> Iterator[BackendProcess]:
    """A backend (local executor, or Kubernetes on the test cluster) whose default store is MinIO,
    with MinIO's root keys (the operator's) in its environment: what no run may be given."""
    if RESULTS_BUCKET not in buckets(minio):
        minio.client().create_bucket(Bucket=RESULTS_BUCKET)
    env = {**minio.env(), "WML_STORAGE": f"s3://{RESULTS_BUCKET}/{RESULTS_PREFIX}"}
    home = tmp_path_factory.mktemp("scoped") / "wml-home"
    if request.param == "kubernetes":
        yield from on_kubernetes(minio, env, home, tmp_path_factory.mktemp("kube"))
        return
    proc = BackendProcess(home, gpus=2, extra_env=env).start()
    yield proc
    proc.close()


def on_kubernetes(minio, env: dict[str, str], home: Path, kube: Path) -> Iterator[BackendProcess]:
    """A backend running its runs as Jobs of the test cluster (its pods: processes of this host
    that reach MinIO on loopback, as the backend does)."""
    if os.geteuid() != 0:
        pytest.skip("the node agent runs pods as their own users only as root")
    sys.path.insert(0, str(Path(__file__).parents[1] / "k8s"))  # the test cluster's helpers live beside its tests
    from test_k8s_backend import IMAGES, ClusterBackend
    from testcluster import backend_namespace, shared_cluster
    with backend_namespace(shared_cluster(), kube) as ns:
        proc = ClusterBackend(home, ns, minio, (minio.root_key, minio.root_secret), gpus=2,
                              extra_env={**env, "WML_K8S_IMAGE_MAP": json.dumps(IMAGES)})
        proc.start(timeout=180)
        try:
            yield proc
        finally:
            proc.close()


def code_folder(folder: Path, train: str) -> Path:
    """A definition folder: the tiny manifest (one run) with ``train`` as its ``train.py``."""
    folder.mkdir()
    manifest = yaml.safe_load((TINY / "manifest.yml").read_text())
    manifest.update(hyperparameters={"lr": [0.3]})
    (folder / "manifest.yml").write_text(yaml.safe_dump(manifest))
    (folder / "train.py").write_text(train)
    return folder


def train(backend: BackendProcess, folder: Path, token: str, **store) -> dict:
    """Run the definition in ``folder`` with one data store (``store``'s fields) and wait for its end."""
    manifest = yaml.safe_load((folder / "manifest.yml").read_text())
    manifest["data_stores"] = [{"id": "s3", "type": "s3_datastore", **store}]
    (folder / "manifest.yml").write_text(yaml.safe_dump(manifest))
    done = backend.cli("train", str(folder / "manifest.yml"), str(folder), "--wait", token=token)
    assert done.stdout.strip(), done.stderr
    return backend.cli_json("show", f"{done.stdout.strip().splitlines()[-1]}-01", token=token)


def result(minio, run_id: str, name: str) -> bytes:
    """An object of ``run_id``'s results, read with the root's keys."""
    key = f"{RESULTS_PREFIX}/training-{run_id}/{name}"
    return minio.client().get_object(Bucket=RESULTS_BUCKET, Key=key)["Body"].read()


def everything_stored(minio) -> bytes:
    """Every object of every bucket of the store, read with the root's keys."""
    root, found = minio.client(), []
    for bucket in root.list_buckets()["Buckets"]:
        for page in root.get_paginator("list_objects_v2").paginate(Bucket=bucket["Name"]):
            for item in page.get("Contents", ()):
                found.append(root.get_object(Bucket=bucket["Name"], Key=item["Key"])["Body"].read())
    return b"\n".join(found)


def test_a_runs_code_reaches_only_its_own_data_and_results_and_never_the_operators_key(
        backend, tokens, minio, tmp_path):
    alices, bobs = (f"{name}-data-{os.urandom(3).hex()}" for name in ("alice", "bob"))  # the store outlives backends
    assert upload(backend, tmp_path / "a", alices, tokens["alice"], "alice's secret data").returncode == 0
    assert upload(backend, tmp_path / "b", f"{bobs}/set", tokens["bob"], "bob's data").returncode == 0
    minio.client().put_object(Bucket=bobs, Key="settle/data.txt", Body=b"not bob's")  # data2/ is not data/
    code = ATTACKER.replace("alice-data", alices).replace("bob-data", bobs)
    run = train(backend, code_folder(tmp_path / "attack", code), tokens["bob"],
                training_data={"container": f"{bobs}/set"})
    assert run["state"] == "COMPLETED", run
    answers = json.loads(result(minio, run["id"], "answers.json"))
    assert answers.pop("read own data") == answers.pop("write own results") == "allowed", answers
    assert set(answers.values()) <= REFUSED, answers
    assert result(minio, run["id"], "direct.txt") == b"mine"
    root = minio.client()
    for bucket, key in ((RESULTS_BUCKET, f"{RESULTS_PREFIX}/evil.txt"), (alices, "evil.txt")):
        with pytest.raises(ClientError):
            root.head_object(Bucket=bucket, Key=key)
    assert "bob-made-this" not in buckets(minio)

    # Its credential dies with its attempt (MinIO revokes it; elsewhere it would expire).
    stolen = json.loads(result(minio, run["id"], "credential.json"))
    assert stolen["AWS_SESSION_TOKEN"], "the training code was given no credential"
    thief = minio.client(key=stolen["AWS_ACCESS_KEY_ID"], secret=stolen["AWS_SECRET_ACCESS_KEY"],
                         token=stolen["AWS_SESSION_TOKEN"])
    assert refused_within(10, lambda: thief.get_object(Bucket=bobs, Key="set/data.txt"))

    # The operator's keys are nowhere a run, its user or its logs can see.
    logs = backend.cli("logs", run["id"], token=tokens["bob"])
    home = b"".join(p.read_bytes() for p in backend.home.rglob("*") if p.is_file())  # logs, runs' folders
    for text in (everything_stored(minio), home, logs.stdout.encode(), logs.stderr.encode()):
        assert minio.root_secret.encode() not in text
    assert minio.root_key.encode() not in result(minio, run["id"], "seen.txt")


def refused_within(seconds: float, request) -> bool:
    """Whether ``request`` is refused by the store (403) within ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            request()
        except ClientError as exc:
            return exc.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def test_a_long_run_keeps_storing_after_its_first_credential_stops_working(minio, monkeypatch):
    """The refresh path a runner takes (``refreshing_credentials`` over the backend's issuer), with
    a clock moved on instead of an hour's wait: once the first credential is revoked, a run whose
    refresh time has come stores with a new one."""
    from wml_backend import scoped_credentials
    from wml_backend.settings import Settings
    from wml_core.objectstore import StoreConfig
    from wml_core.objectstore.s3 import S3Store, refreshing_credentials

    for name, value in minio.env().items():
        monkeypatch.setenv(name, value)
    settings = Settings(storage_url=f"s3://{RESULTS_BUCKET}/{RESULTS_PREFIX}", endpoint=minio.endpoint,
                        store_credential_s=900)

    class Run:  # the fields of a run row the issuer reads
        id, attempt, results = "refresh-01", 1, f"{RESULTS_BUCKET}/{RESULTS_PREFIX}/training-refresh-01/"

    if RESULTS_BUCKET not in buckets(minio):
        minio.client().create_bucket(Bucket=RESULTS_BUCKET)
    issued = []

    def fetch() -> dict:
        found = scoped_credentials.issue(settings, Run, None)
        issued.append(found)
        return {"access_key": found.access_key, "secret_key": found.secret_key, "token": found.session_token,
                "expiry_time": found.expires.isoformat()}

    now = [datetime.now(timezone.utc)]
    store = S3Store(StoreConfig(kind="s3", endpoint=minio.endpoint),
                    credentials=refreshing_credentials(fetch, time_fetcher=lambda: now[0]))
    mine = Run.results.split("/", 1)[1]
    store.put_bytes(RESULTS_BUCKET, f"{mine}first.txt", b"1")
    assert len(issued) == 1 and issued[0].expires - now[0] <= timedelta(seconds=901)
    scoped_credentials.revoke(settings, Run.id, Run.attempt)  # the first credential stops working...
    first = minio.client(key=issued[0].access_key, secret=issued[0].secret_key, token=issued[0].session_token)
    assert refused_within(5, lambda: first.put_object(Bucket=RESULTS_BUCKET, Key=f"{mine}late.txt", Body=b"x"))
    now[0] += timedelta(seconds=700)  # ...and its refresh time comes
    store.put_bytes(RESULTS_BUCKET, f"{mine}second.txt", b"2")
    assert len(issued) == 2 and issued[1].access_key != issued[0].access_key
    with pytest.raises(ClientError):  # still scoped: outside its results, refused
        store.client.put_object(Bucket=RESULTS_BUCKET, Key=f"{RESULTS_PREFIX}/outside.txt", Body=b"x")


def buckets(minio) -> set[str]:
    """The buckets MinIO has."""
    return {b["Name"] for b in minio.client().list_buckets()["Buckets"]}


def refused_manifest(backend, token: str, folder: Path, endpoint: str, key: str, secret: str) -> str:
    """What ``wml train`` says of a manifest whose own store (``endpoint``, with these keys) holds
    its data; it must refuse it."""
    folder = code_folder(folder, (TINY / "train.py").read_text())
    manifest = yaml.safe_load((folder / "manifest.yml").read_text())
    manifest["data_stores"] = [{"id": "s3", "type": "s3_datastore", "training_data": {"container": RESULTS_BUCKET},
                                "connection": {"auth_url": endpoint, "user_name": key, "password": secret,
                                               "region": "us-east-1"}}]
    (folder / "manifest.yml").write_text(yaml.safe_dump(manifest))
    done = backend.cli("train", str(folder / "manifest.yml"), str(folder), token=token)
    assert done.returncode != 0
    assert secret not in done.stderr + done.stdout
    return done.stderr


def test_wrong_keys_in_a_manifest_are_one_clear_line_without_the_secret(backend, tokens, minio, tmp_path):
    wrong = "wrong-secret-" + os.urandom(6).hex()
    said = refused_manifest(backend, tokens["bob"], tmp_path / "def", minio.endpoint, minio.root_key, wrong)
    assert_clear(said, ("credentials rejected", RESULTS_BUCKET, minio.endpoint))


def test_keys_of_a_manifest_that_the_store_denies_are_one_clear_line(backend, tokens, minio, tmp_path):
    key, secret = minio.user()  # a real user of the store, with no policy: denied everything
    said = refused_manifest(backend, tokens["bob"], tmp_path / "def", minio.endpoint, key, secret)
    assert_clear(said, ("access denied", RESULTS_BUCKET, minio.endpoint))


def test_a_store_without_sts_fails_the_run_saying_why_unless_the_operator_hands_out_its_keys(minio, tmp_path):
    """No scoped credential to be had (here: a lifetime the store refuses) fails the run with one
    line, never falling back to the operator's keys; ``WML_STORE_CREDENTIALS=operator`` is the
    explicit way back to them."""
    if RESULTS_BUCKET not in buckets(minio):
        minio.client().create_bucket(Bucket=RESULTS_BUCKET)
    folder = code_folder(tmp_path / "def", (TINY / "train.py").read_text())
    refused = run_with(minio, tmp_path / "refused", folder, WML_STORE_CREDENTIAL_SECONDS="60")
    assert refused["state"] == "FAILED", refused
    assert_clear(refused["reason"], ("gave no scoped credential", "WML_STORE_CREDENTIALS=operator"))
    assert run_with(minio, tmp_path / "operator", folder, WML_STORE_CREDENTIALS="operator")["state"] == "COMPLETED"


def run_with(minio, home: Path, folder: Path, **settings: str) -> dict:
    """The one run of the definition in ``folder`` on a backend of its own over MinIO, configured
    with ``settings`` (environment variables), once it ended."""
    proc = BackendProcess(home, gpus=1, extra_env={**minio.env(), "WML_STORAGE": f"s3://{RESULTS_BUCKET}/"
                                                   f"{RESULTS_PREFIX}", **settings}).start()
    try:
        done = proc.cli("train", str(folder / "manifest.yml"), str(folder), "--wait")
        return proc.cli_json("show", f"{done.stdout.strip().splitlines()[-1]}-01")
    finally:
        proc.close()
