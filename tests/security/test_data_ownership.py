"""Data belongs to accounts (issue 13, items 2 and 3), tried by an attacker with an account of
their own, through the real backend and the ``wml`` CLI.

Before: buckets and prefixes of the default store belonged to nobody, so a manifest could name
another account's uploaded data, or its results (``training-<run id>/``), as its training data;
and a manifest naming an S3 endpoint of its own with no credentials made the backend (and the
run) call it signed with the backend's own keys.
"""

from __future__ import annotations

import hashlib
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import yaml
from backend_process import BackendProcess
from checks import assert_clear

TINY = Path(__file__).parents[1] / "definitions" / "tiny"
#: The backend's own S3 key pair, as its environment holds it (the operator's).
BACKEND_KEY, BACKEND_SECRET = "AKIABACKENDOWNKEY0001", "backend-own-secret-9c1f"
#: Alice's key pair, which she names in her own manifest.
ALICE_KEY, ALICE_SECRET = "AKIAALICEOWNKEY00002", "alice-own-secret-41d7"


@pytest.fixture(scope="module")
def backend(tmp_path_factory) -> Iterator[BackendProcess]:
    """A backend on its embedded file store, with the operator's S3 keys in its environment."""
    proc = BackendProcess(tmp_path_factory.mktemp("ownership") / "wml-home", gpus=2, extra_env={
        "AWS_ACCESS_KEY_ID": BACKEND_KEY, "AWS_SECRET_ACCESS_KEY": BACKEND_SECRET}).start()
    yield proc
    proc.close()


@pytest.fixture(scope="module")
def tokens(backend) -> dict[str, str]:
    """Two accounts: alice (the victim) and bob (the attacker)."""
    return {name: backend.cli("accounts", "create", name, "--gpus", "1", check=True).stdout.strip().splitlines()[-1]
            for name in ("alice", "bob")}


def manifest(folder: Path, **store) -> Path:
    """The tiny definition (one run) with one data store of the default store (``store``'s fields)."""
    data = yaml.safe_load((TINY / "manifest.yml").read_text())
    data.update(hyperparameters={"lr": [0.3]}, data_stores=[{"id": "s", "type": "file", **store}])
    path = folder / f"manifest-{len(list(folder.glob('manifest-*')))}.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def upload(backend: BackendProcess, folder: Path, target: str, token: str, text: str = "secret data"):
    """``wml upload`` of a folder holding one file, as the holder of ``token``."""
    folder.mkdir(exist_ok=True)
    (folder / "data.txt").write_text(text)
    return backend.cli("upload", str(folder), target, token=token)


def refusal(backend: BackendProcess, folder: Path, token: str, **store) -> str:
    """The one line ``wml train`` answers a manifest with ``store`` that it refuses."""
    done = backend.cli("train", str(manifest(folder, **store)), str(TINY), token=token)
    assert done.returncode != 0, f"accepted: {store}"
    assert_clear(done.stderr)
    return done.stderr.strip()


def as_missing(message: str, bucket: str) -> str:
    """``message`` with the bucket it names replaced, to compare refusals of different buckets."""
    return message.replace(repr(bucket), "'<bucket>'")


def trains(backend: BackendProcess, folder: Path, token: str, **store) -> dict:
    """The run of a manifest with ``store``, once it ended."""
    done = backend.cli("train", str(manifest(folder, **store)), str(TINY), "--wait", token=token)
    assert done.returncode == 0, done.stderr
    return backend.cli_json("show", f"{done.stdout.strip().splitlines()[-1]}-01", token=token)


def test_another_accounts_uploaded_data_is_refused_as_a_missing_bucket(backend, tokens, tmp_path):
    assert upload(backend, tmp_path / "a", "alice-data", tokens["alice"]).returncode == 0
    assert upload(backend, tmp_path / "a2", "shared/alice", tokens["alice"]).returncode == 0
    assert upload(backend, tmp_path / "b", "shared/bob", tokens["bob"], "bob's").returncode == 0
    missing = refusal(backend, tmp_path, tokens["bob"], training_data={"container": "no-such-data"})
    for bucket, container in [("alice-data", "alice-data"), ("shared", "shared/alice"), ("shared", "shared")]:
        refused = refusal(backend, tmp_path, tokens["bob"], training_data={"container": container})
        assert as_missing(refused, bucket) == as_missing(missing, "no-such-data"), container
    run = trains(backend, tmp_path, tokens["bob"], training_data={"container": "shared/bob"})
    results = backend.home / "storage" / "wml-results" / f"training-{run['id']}"
    assert run["state"] == "COMPLETED" and (results / "data-seen.txt").read_text() == "bob's"
    run = trains(backend, tmp_path, tokens["alice"], training_data={"container": "alice-data"})
    assert run["state"] == "COMPLETED"


def test_another_accounts_results_are_refused_as_a_missing_bucket(backend, tokens, tmp_path):
    run = trains(backend, tmp_path, tokens["alice"])
    mine = f"wml-results/training-{run['id']}"
    missing = refusal(backend, tmp_path, tokens["bob"], training_data={"container": "no-such-results"})
    for container in (mine, "wml-results"):
        refused = refusal(backend, tmp_path, tokens["bob"], training_data={"container": container})
        assert as_missing(refused, "wml-results") == as_missing(missing, "no-such-results"), container
    refused = refusal(backend, tmp_path, tokens["bob"], training_results={"container": mine})
    assert as_missing(refused, "wml-results") == as_missing(missing, "no-such-results")
    again = trains(backend, tmp_path, tokens["alice"], training_data={"container": mine})
    assert again["state"] == "COMPLETED"  # her own results are her data


def test_another_accounts_bucket_cannot_be_claimed(backend, tokens, tmp_path):
    assert upload(backend, tmp_path / "a", "alice-claimed", tokens["alice"]).returncode == 0
    taken = upload(backend, tmp_path / "b", "alice-claimed", tokens["bob"], "overwritten")
    assert taken.returncode != 0
    assert_clear(taken.stderr, ("alice-claimed",))
    assert (backend.home / "storage" / "alice-claimed" / "data.txt").read_text() == "secret data", "overwritten"
    http = httpx.Client(base_url=backend.url, headers={"Authorization": f"Bearer {tokens['bob']}"})
    for body in ({"bucket": "alice-claimed"}, {"bucket": "alice-claimed", "prefix": "a/inner"}):
        answer = http.post("/v1/data/claims", json=body)
        assert answer.status_code == 404 and answer.json()["code"] == "not_found", answer.text
    for body in ({"bucket": "wml-results"}, {"bucket": "bob-data", "prefix": "x/training-abcdef-01"}):
        assert http.post("/v1/data/claims", json=body).status_code == 422, body  # where runs' results go
    assert http.post("/v1/data/claims", json={"bucket": "bob-data", "prefix": "x"}).status_code == 201


@contextmanager
def recording_s3() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """An S3 endpoint on 127.0.0.1 with empty buckets that takes every write, and the headers of
    every request it got."""
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, body: bytes = b"", **headers: str) -> None:
            seen.append(dict(self.headers))
            self.send_response(200)
            for name, value in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self):  # a listing: no objects
            self._answer(b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns='
                         b'"http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><KeyCount>0</KeyCount>'
                         b"<IsTruncated>false</IsTruncated></ListBucketResult>", **{"Content-Type": "application/xml"})

        def do_HEAD(self):
            self._answer()

        def do_PUT(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._answer(ETag=f'"{hashlib.md5(body).hexdigest()}"')

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_a_user_named_endpoint_never_receives_the_backends_keys_nor_another_users(backend, tokens, tmp_path):
    with recording_s3() as (endpoint, seen):
        own = {"auth_url": endpoint, "region": "us-east-1"}
        run = trains(backend, tmp_path, tokens["alice"], training_data={"container": "in"},
                     training_results={"container": "out"},
                     connection={**own, "user_name": ALICE_KEY, "password": ALICE_SECRET})
        assert run["state"] == "COMPLETED", run["reason"]
        alices = list(seen)
        assert alices and all(ALICE_KEY in h.get("Authorization", "") for h in alices)  # hers, signed
        seen.clear()
        run = trains(backend, tmp_path, tokens["bob"], training_data={"container": "in"},
                     training_results={"container": "out"}, connection=own)
        assert run["state"] == "COMPLETED", run["reason"]
        assert seen, "the backend and the run never called the user's endpoint"
        for headers in seen:  # the submission's checks and the run's transfers: unsigned, no one's keys
            assert "Authorization" not in headers, headers
            assert not {BACKEND_KEY, ALICE_KEY} & set(" ".join(headers.values()).replace(",", " ").replace("/", " ")
                                                     .split()), headers
