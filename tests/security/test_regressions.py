"""One test per problem the bad-input corpus and the fuzzer found, as a user would meet it."""

from __future__ import annotations

import base64
import json
import socket
import time

import corpus
import httpx
import pytest
from checks import assert_clear
from wml_backend.api import MAX_BODY_BYTES
from wml_core.errors import InvalidInput
from wml_core.manifest import ManifestError, load_manifest
from wml_core.search_space import parse_sweep_flag
from wml_backend.submit import decode_code

from wml_jupyter import cli
from wml_jupyter.client import Client

GOOD_CODE = base64.b64encode(corpus._zip()).decode()


@pytest.fixture
def http(server):
    """Requests to the corpus' backend with the admin token."""
    with httpx.Client(base_url=server.url, timeout=60, headers={"Authorization": f"Bearer {server.token}"}) as c:
        yield c


def error_of(response: httpx.Response) -> str:
    assert 400 <= response.status_code < 500, response.text[:300]
    body = response.json()
    assert set(body) == {"code", "message"}, body
    return body["message"]


# -- the REST API -------------------------------------------------------------------------------

def test_framework_errors_have_the_error_shape(http):
    """Unknown routes, wrong methods and unparseable bodies answered ``{"detail": ...}``."""
    assert http.get("/v1/nothing").json() == {"code": "not_found", "message": "no such route: GET '/v1/nothing'"}
    assert http.delete("/v1/experiments").json()["code"] == "method_not_allowed"
    garbage = http.post("/v1/experiments", content=b"\x00\xff", headers={"Content-Type": "application/json"})
    assert garbage.json()["code"] == "invalid"


def test_every_error_status_is_documented(server):
    """403, 409 and 503 were undocumented, and 422 was documented with FastAPI's own body."""
    spec = httpx.get(f"{server.url}/openapi.json").json()
    responses = spec["paths"]["/v1/accounts"]["post"]["responses"]
    for status in ("400", "401", "403", "404", "409", "422", "503"):
        assert responses[status]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


def test_a_body_of_the_wrong_type_names_the_body(http):
    """A list instead of an object read ``: Input should be a valid dictionary...``."""
    assert error_of(http.post("/v1/experiments", json=[1, 2])).startswith("body: ")


@pytest.mark.parametrize("path, body", [
    ("/v1/experiments", {"manifest": corpus.GOOD_MANIFEST, "code_zip_b64": GOOD_CODE, "colour": "blue"}),
    ("/v1/accounts", {"name": "eve", "gpus": 1, "admin": True}),
])
def test_unknown_fields_are_refused_not_ignored(http, probe, path, body):
    assert error_of(http.post(path, json=body)).split(":")[0] in ("colour", "admin")
    probe.assert_untouched()


def test_a_body_over_the_limit_is_refused_before_it_is_read(http, probe):
    """A 200 MiB submission was read whole into the backend's memory before its size was checked."""
    with socket.create_connection((http.base_url.host, http.base_url.port), timeout=30) as raw:
        raw.sendall(f"POST /v1/experiments HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    f"Authorization: {http.headers['Authorization']}\r\n"  # without it: 401 before any size
                    f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n{{".encode())  # announced, not sent
        answer = b""
        while b"}" not in answer and (chunk := raw.recv(65536)):  # up to the end of the JSON error
            answer += chunk
        answer = answer.decode()
    assert answer.startswith("HTTP/1.1 413") and "over the limit" in answer
    chunk = b"x" * (1 << 20)
    started = time.monotonic()
    sent = http.post("/v1/experiments", content=(chunk for _ in range(MAX_BODY_BYTES // len(chunk) + 2)),
                     headers={"Content-Type": "application/json"})
    assert sent.status_code == 413 and "over the limit" in error_of(sent)
    assert time.monotonic() - started < 30
    assert http.get("/v1/experiments").status_code == 200  # and the backend goes on
    probe.assert_untouched()


def test_runs_of_a_missing_experiment_are_not_found(http):
    """``wml list --experiment nope`` printed an empty table and exited 0."""
    response = http.get("/v1/runs", params={"experiment": "nope"})
    assert response.status_code == 404 and "nope" in response.json()["message"]


def test_a_long_id_is_quoted_not_echoed(http):
    assert_clear(error_of(http.get("/v1/runs/" + "x" * 10_000)))


def test_a_manifest_with_lone_surrogates_is_refused_not_a_server_error(http, probe):
    """Text decoded from non-UTF-8 bytes crashed libyaml (UnicodeEncodeError → 500)."""
    body = json.dumps({"manifest": corpus.GOOD_MANIFEST + "description: caf\udce9\n", "code_zip_b64": GOOD_CODE})
    response = http.post("/v1/experiments", content=body, headers={"Content-Type": "application/json"})
    assert "manifest.yml:3: manifest: not valid Unicode text" in error_of(response)
    probe.assert_untouched()


# -- manifests and sweeps ------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, problem", [
    ("memory", "1" + "0" * 400, "more memory than any machine has"),           # OverflowError → 500
    ("hyperparameters", "{n: {int: [0, 1" + "0" * 400 + "]}}", "must be finite"),  # OverflowError → 500
    ("hyperparameters", "{x: {quniform: [0, 1.0e+300, 1.0e-300]}}", "too many steps"),  # OverflowError → 500
    ("learners", "1" + "0" * 400, "between 1 and 1024"),                        # accepted, then unstorable
    ("gpus", "1" + "0" * 400, "between 0 and 1024"),                            # a 400-digit quota message
])
def test_huge_numbers_in_a_manifest_are_refused(field, value, problem):
    with pytest.raises(ManifestError) as info:
        load_manifest(f"{corpus.GOOD_MANIFEST}{field}: {value}\n")
    assert problem in str(info.value)
    assert_clear(str(info.value))


@pytest.mark.parametrize("container", ["data/../../etc", "..", "./x"])
def test_a_bucket_path_cannot_leave_its_bucket(container):
    """``training_results: {container: r/../../x}`` wrote results outside the store."""
    with pytest.raises(ManifestError, match="must not contain . or .. segments"):
        load_manifest(f"{corpus.GOOD_MANIFEST}data_stores: [{{training_results: {{container: {container}}}}}]\n")


@pytest.mark.parametrize("flag, problem", [
    ("x=quniform(0,1e300,1e-300)", "too many steps"),  # OverflowError → 500
    ("lr=[" + ",".join(["1"] * 50_000) + "]x", "cannot read"),  # the 100 KB flag was quoted whole
])
def test_a_bad_sweep_flag_is_one_short_line(flag, problem):
    with pytest.raises(InvalidInput) as info:
        parse_sweep_flag(flag)
    assert problem in str(info.value)
    assert_clear(str(info.value))


# -- code zips -----------------------------------------------------------------------------------

@pytest.mark.parametrize("case_id, problem", [
    ("zip-symlink-entry", "is a symbolic link"), ("zip-bomb-declared-size", "unpacks to"),
    ("zip-bomb-real", "unpacks to"), ("zip-encrypted-flag", "is encrypted"),
    ("zip-unknown-compression", "not a readable zip"),
    ("zip-bad-crc", "is corrupt"), ("zip-oversized", "64.0 MiB; the limit is 64 MiB"),
])
def test_a_hostile_code_zip_is_refused_at_submit(case_id, problem):
    """These were accepted, to fail in the run (or fill its disk) later."""
    [case] = [c for c in corpus.zip_cases() if c.id == case_id]
    with pytest.raises(InvalidInput, match=problem):
        decode_code(base64.b64encode(case.data).decode())


# -- the client and the command line --------------------------------------------------------------

def wml(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case_id, problem", [
    ("cli-train-manifest-is-dir", "Is a directory"),           # IsADirectoryError traceback
    ("cli-train-model-dangling-link", "No such file"),          # FileNotFoundError traceback
    ("cli-train-runs-zero", "runs: "),                           # pydantic ValidationError traceback
    ("cli-train-model-with-fifo", "not a regular file"),        # hung forever reading the pipe
    ("cli-download-dest-is-file", "not a directory"),           # NotADirectoryError traceback
    ("cli-show-dotdot", "is not a run or experiment id"),        # asked GET /v1/x: "Not Found"
    ("cli-cancel-query", "is not a run or experiment id"),       # the id's ? started a query string
    ("cli-accounts-exists", "already exists"),                   # exit 1, not 2
    ("cli-backend-port-out-of-range", "not between 1 and 65535"),  # OverflowError traceback from bind()
])
def test_the_cli_refuses_with_one_line_and_exit_2(server, paths, capsys, case_id, problem):
    [case] = [c for c in corpus.argv_cases() if c.id == case_id]
    code, err = wml(paths.fill(case.argv), capsys)
    assert code == 2 and problem in err
    assert_clear(err)


def test_an_upload_outside_its_bucket_leaves_no_empty_bucket(server, probe, paths):
    """``wml upload DIR data/../../x`` created bucket ``data``, then failed with exit 1."""
    with pytest.raises(InvalidInput, match="must not contain . or .. segments"):
        Client(backend=server.url, token=server.token).upload(paths.model, "data/../../x")
    probe.assert_untouched()
