"""The sidebar's server extension, through a real Jupyter server (``jp_fetch``) and a real backend.

pytest-jupyter's fixtures are imported into this module rather than loaded as a plugin: as a
plugin its autouse event-loop fixture and test-call hook would apply to every test of the
session (breaking Playwright's sync API in tests/browser). Tests here are plain functions that
run ``jp_fetch`` on the server's loop.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
import sys
import time
import zipfile

import pytest
from pytest_jupyter.jupyter_server import *  # noqa: F401,F403 (its fixtures, for this module only)
from tornado.httpclient import HTTPClientError

from backend_process import REPO, BackendProcess, free_port

#: A cell that logs a metric three times and prints a line: quick, with logs, metrics and results.
QUICK_CELL = """\
from wml_jupyter import run
for step in range(3):
    run.log(step=step, acc=0.5 + step / 10)
print("hello from the cell")
"""
#: A cell that keeps its GPU long enough to be seen running, queued and cancelled.
SLOW_CELL = "import time\ntime.sleep(60)\n"


@pytest.fixture(scope="module")
def shared_backend(tmp_path_factory):
    """One backend (2 GPU slots) for the whole module: starting one per test costs seconds."""
    proc = BackendProcess(tmp_path_factory.mktemp("wml-home"), gpus=2).start()
    yield proc
    proc.close()


@pytest.fixture
def wml_env(shared_backend, monkeypatch):
    """The environment the server extension's ``Client`` reads its configuration from."""
    for name, value in shared_backend.env.items():
        if name.startswith("WML_"):
            monkeypatch.setenv(name, value)
    return shared_backend


@pytest.fixture
def jp_server_config():
    """A Jupyter server with the extension enabled (as the shipped config file does)."""
    return {"ServerApp": {"jpserver_extensions": {"wml_jupyter": True}}}


@pytest.fixture
def fetch(jp_fetch, jp_asyncio_loop):
    """``fetch(*parts, **kwargs)``: ``jp_fetch`` a ``/wml/`` route and wait for the response."""
    return lambda *parts, **kwargs: jp_asyncio_loop.run_until_complete(jp_fetch("wml", *parts, **kwargs))


def fetch_json(fetch, *parts, **kwargs):
    """A route's status and parsed JSON."""
    response = fetch(*parts, **kwargs)
    return response.code, json.loads(response.body)


def error_of(fetch, *parts, **kwargs):
    """The HTTP code and ``{code, message}`` body of a route that must fail."""
    with pytest.raises(HTTPClientError) as info:
        fetch(*parts, **kwargs)
    return info.value.code, json.loads(info.value.response.body)


def train(fetch, **request):
    """Submit a cell through ``POST /wml/train``; return the experiment object."""
    code, experiment = fetch_json(fetch, "train", method="POST", body=json.dumps(request))
    assert code == 201
    return experiment


def snapshot(fetch, expand=()):
    """``GET /wml/snapshot`` with the given experiments expanded from their first run."""
    return fetch_json(fetch, "snapshot", params=[("expand", f"{exp}:0") for exp in expand])[1]


def wait_for(predicate, fetch, expand, timeout=60.0):
    """Poll snapshots until ``predicate(snapshot)`` holds; return that snapshot."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = snapshot(fetch, expand)
        if predicate(body):
            return body
        time.sleep(0.3)
    raise AssertionError(f"condition not met in {timeout} s: {json.dumps(body)[:2000]}")


def test_package_import_stays_cheap():
    """Jupyter's discovery functions are on the package, which imports no Jupyter server code."""
    code = ("import sys, wml_jupyter as w; "
            "assert w._jupyter_server_extension_points() == [{'module': 'wml_jupyter.serverext'}]; "
            "assert w._jupyter_labextension_paths()[0]['dest'] == 'wml-jupyter'; "
            "assert not [m for m in sys.modules if m.startswith(('jupyter_server', 'IPython', 'tornado'))]")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_typescript_model_mirrors_the_wire_model():
    """labextension/src/model.ts declares every field of the Python wire model, and no other."""
    from wml_core import models
    from wml_jupyter.serverext import wire
    source = (REPO / "labextension" / "src" / "model.ts").read_text()
    interfaces: dict[str, set[str]] = {}
    for name, parent, body in re.findall(r"^export interface (\w+)(?: extends (\w+))? \{(.*?)^\}", source, re.M | re.S):
        interfaces[name] = set(re.findall(r"^  (\w+)\??:", body, re.M)) | interfaces.get(parent, set())
    python = [models.Transition, models.Run, models.BestRun, models.Experiment, models.MetricPoint,
              models.LogChunk, models.ExperimentUsage, models.Usage, wire.ExperimentPage, wire.RunPage,
              wire.Snapshot, wire.TrainDefaults, wire.TrainRequest]
    for model in python:
        assert interfaces.get(model.__name__) == set(model.model_fields), model.__name__


def test_events_stream_through_the_extension_as_they_come(jp_fetch, jp_asyncio_loop, wml_env):
    """A new experiment's runs reach the browser's event stream within a second of the submission:
    the extension relays each event as it comes, buffering nothing."""
    chunks: list[tuple[float, bytes]] = []
    connected = asyncio.Event()

    def received(chunk: bytes) -> None:
        chunks.append((time.monotonic(), chunk))
        connected.set()

    async def submit_and_listen() -> tuple[str, float]:
        stream = asyncio.ensure_future(jp_fetch("wml", "events", streaming_callback=received, request_timeout=60))
        await asyncio.wait_for(connected.wait(), 10)  # the stream's first comment: it is open
        client = wml_env.client()
        experiment = await asyncio.to_thread(client.train_code, QUICK_CELL, name="streamed", gpus=0)
        submitted = time.monotonic()
        deadline = submitted + 5
        while time.monotonic() < deadline and not _seen(chunks, experiment.id):
            await asyncio.sleep(0.02)
        stream.cancel()
        return experiment.id, submitted

    experiment_id, submitted = jp_asyncio_loop.run_until_complete(submit_and_listen())
    arrived = _seen(chunks, experiment_id)
    assert arrived is not None, f"no event of {experiment_id} reached the stream: {chunks[-3:]}"
    assert arrived - submitted <= 1.0, f"the first event came {arrived - submitted:.2f} s after the submission"


def _seen(chunks: list[tuple[float, bytes]], experiment_id: str):
    """When the first chunk naming ``experiment_id`` in a run event arrived (None: not yet)."""
    text = ""
    for at, chunk in chunks:
        text += chunk.decode()
        if f'"experiment_id": "{experiment_id}"' in text and "event: run" in text:
            return at
    return None


def test_sparklines_are_downsampled_keeping_first_and_last():
    from wml_backend.sparklines import downsample
    values = [float(i) for i in range(1000)]
    assert downsample(values, 40)[0] == 0.0 and downsample(values, 40)[-1] == 999.0
    assert len(downsample(values, 40)) == 40 and downsample(values[:3], 40) == [0.0, 1.0, 2.0]


def test_installed_extensions_are_enabled():
    """``pip install`` put both extensions where Jupyter looks, enabled."""
    commands = [["jupyter", "labextension", "list"], ["jupyter", "server", "extension", "list"]]
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c in commands]
    lab, server = (proc.communicate(timeout=120)[0].splitlines() for proc in procs)
    assert any("wml-jupyter" in line and "enabled" in line and "OK" in line for line in lab), lab
    assert any("wml_jupyter" in line and "enabled" in line for line in server), server


def test_routes_need_jupyter_login(jp_serverapp, http_server_client, jp_base_url, jp_asyncio_loop):
    """Without Jupyter's token a route answers 403, GET and POST alike."""
    for method, path, body in (("GET", "wml/snapshot", None), ("GET", "wml/train", None), ("POST", "wml/train", "{}")):
        response = jp_asyncio_loop.run_until_complete(http_server_client.fetch(
            f"{jp_base_url}{path}", method=method, body=body, raise_error=False))
        assert response.code == 403, (method, path)


def test_posts_from_a_browser_session_need_the_xsrf_token(jp_serverapp, http_server_client, jp_base_url,
                                                          jp_asyncio_loop):
    """A cookie-authenticated POST (as the browser sends) is refused without Jupyter's XSRF token."""
    def get(path, **kwargs):
        return jp_asyncio_loop.run_until_complete(http_server_client.fetch(
            f"{jp_base_url}{path}", follow_redirects=False, raise_error=False, **kwargs))
    login = get(f"login?token={jp_serverapp.identity_provider.token}")
    session = login.headers.get_list("Set-Cookie")[0].split(";")[0]
    page = get("tree", headers={"Cookie": session})
    xsrf = next(c.split(";")[0] for c in page.headers.get_list("Set-Cookie") if c.startswith("_xsrf="))
    body = json.dumps({"code": "pass", "gpus": -1})  # refused by the handler itself: no backend needed
    without = get("wml/train", method="POST", body=body, headers={"Cookie": session})
    assert without.code == 403
    with_token = get("wml/train", method="POST", body=body,
                     headers={"Cookie": f"{session}; {xsrf}", "X-XSRFToken": xsrf.partition("=")[2]})
    assert with_token.code == 422 and json.loads(with_token.body)["code"] == "invalid"


def test_the_train_dialog_starts_from_the_magics_defaults(fetch):
    """``GET /wml/train`` gives the dialog ``%%wml train``'s defaults (no backend needed), and the
    sidebar's jest tests read the same answer from ``labextension/test/train_defaults.json``."""
    from wml_jupyter.magics import train_cell
    code, served = fetch_json(fetch, "train")
    magic = vars(train_cell.parser.parse_args([]))
    assert code == 200 and served == {name: magic[name] for name in served}
    assert served["gpus"] == 0
    assert json.loads((REPO / "labextension" / "test" / "train_defaults.json").read_text()) == served


def test_snapshot_of_a_sweep_with_queue_and_cancel(fetch, wml_env):
    """A 3-run sweep on 2 GPUs: 2 run, 1 queues (#1); cancelling a run and the rest ends HALTED."""
    exp = train(fetch, code=SLOW_CELL, name="slow-sweep", gpus=1, sweep=["x=[1,2,3]"], runs=3)
    assert exp["name"] == "slow-sweep" and sum(exp["runs"].values()) == 3

    def two_running(body):
        states = [r["state"] for r in body["runs"][exp["id"]]["items"]]
        return states.count("QUEUED") == 1 and body["usage"]["gpus_in_use"] == 2
    body = wait_for(two_running, fetch, [exp["id"]])
    assert body["usage"] == {**body["usage"], "account": "local", "gpu_quota": 2, "queued_gpus": 1}
    assert body["experiments"]["items"][0]["id"] == exp["id"]  # newest first
    page = body["runs"][exp["id"]]
    assert page["total"] == 3 and page["offset"] == 0
    queued = next(r for r in page["items"] if r["state"] == "QUEUED")
    assert queued["queue_position"] == 1 and queued["hparams"]["x"] in (1, 2, 3)

    _, halted = fetch_json(fetch, "runs", queued["id"], "cancel", method="POST", body="")
    assert halted["state"] == "HALTED"
    _, cancelled = fetch_json(fetch, "experiments", exp["id"], "cancel", method="POST", body="")
    assert cancelled["id"] == exp["id"]
    body = wait_for(lambda b: b["experiments"]["items"][0]["state"] == "HALTED", fetch, [exp["id"]])
    assert {r["state"] for r in body["runs"][exp["id"]]["items"]} == {"HALTED"}


def test_logs_metrics_and_results_of_a_finished_run(fetch, wml_env):
    """A finished cell's log, its metric sparkline, and its results zip come through the server."""
    exp = train(fetch, code="%%wml train --gpus 1\n" + QUICK_CELL, name="quick", gpus=0)
    body = wait_for(lambda b: b["experiments"]["items"][0]["state"] not in ("QUEUED", "RUNNING"),
                    fetch, [exp["id"]])
    page = body["runs"][exp["id"]]
    run = page["items"][0]
    assert run["state"] == "COMPLETED", run
    assert page["metric"] == "acc" and page["sparklines"][run["id"]] == [0.5, 0.6, 0.7]

    _, chunk = fetch_json(fetch, "runs", run["id"], "logs", params={"offset": 0})
    assert "hello from the cell" in chunk["data"] and chunk["complete"]
    response = fetch("runs", run["id"], "results")
    assert response.headers["Content-Type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(response.body)).namelist()
    assert any(name.endswith("training-log.txt") for name in names), names


def test_domain_errors_are_json_with_one_mapping(fetch, wml_env):
    """Unknown ids are 404, bad input 422, each with the backend's code and message."""
    code, body = error_of(fetch, "runs", "nosuch-1", "cancel", method="POST", body="")
    assert code == 404 and body["code"] == "not_found"
    code, body = error_of(fetch, "train", method="POST", body=json.dumps({"code": "x", "gpus": -1}))
    assert code == 422 and body == {"code": "invalid", "message": body["message"]} and "gpus" in body["message"]
    code, body = error_of(fetch, "train", method="POST", body=json.dumps({"code": "pass", "sweep": ["nonsense"]}))
    assert code == 422 and "--sweep" in body["message"]
    code, body = error_of(fetch, "train", method="POST", body=json.dumps({"code": "print(lr)"}))
    assert code == 422 and "line 1: name 'lr'" in body["message"]
    code, body = error_of(fetch, "snapshot", params={"offset": "x"})
    assert code == 422 and body["code"] == "invalid"


def test_backend_down_is_503_with_a_message(fetch, monkeypatch, tmp_path):
    """A backend that does not answer reads as ``unavailable``, naming its URL."""
    monkeypatch.setenv("WML_HOME", str(tmp_path))
    monkeypatch.setenv("WML_BACKEND", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("WML_TOKEN", "whatever")
    code, body = error_of(fetch, "snapshot")
    assert code == 503 and body["code"] == "unavailable" and "127.0.0.1" in body["message"]


def test_rejected_token_is_502_not_a_jupyter_401(fetch, wml_env, monkeypatch):
    """The backend refusing the configured token is a gateway error, not the Jupyter user's login."""
    monkeypatch.setenv("WML_TOKEN", "not-the-token")
    code, body = error_of(fetch, "snapshot")
    assert code == 502 and body["code"] == "unauthorized"
