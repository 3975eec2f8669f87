"""The local executor's pipe to its runners (``wml_core.runner_channel``): a runner's calls over
it are answered exactly as over HTTP (the same routes, token checks, limits and errors), and a
runner whose pipe is gone (its backend restarted) calls over HTTP instead.

``tests/security/test_run_isolation.py`` checks that a run's command holds no end of the pipe;
``test_backend_restart.py`` that runs live through a backend killed and restarted (their runners'
pipes gone, they report over HTTP).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import Pipe

import anyio
import httpx
import pytest
from executor_worlds import RunnerBackend
from test_executor_contract import backend, tiny_run  # noqa: F401  (the backend whose runs are called for: a fixture)
from wml_backend.api import create_app
from wml_backend.executors.local import LocalExecutor
from wml_backend.tokens import token_hash
from wml_backend.rundb import SqliteRunStore
from wml_backend.service import Service
from wml_backend.settings import Settings
from wml_core.runner_channel import (ChannelAnswer, ChannelCall, decode_answer, decode_call, encode_answer,
                                     encode_call, last_word)
from wml_core.states import RunState
from wml_runner import reporter as reporter_module
from wml_runner.channel import PipeTransport

#: What a runner may send, right and wrong: (method, call, body), each sent with the run's token.
CALLS = [
    ("GET", "spec", b""),
    ("GET", "code", b""),
    ("GET", "credential", b""),                                   # none to give: 404
    ("POST", "state", b'{"state": "DOWNLOADING"}'),
    ("POST", "state", b'{"state": "DOWNLOADING"}'),               # resent
    ("POST", "state", b'{"state": "QUEUED"}'),                    # never a runner's to say: 409
    ("POST", "state", b'{"state": "TRAINING"}'),                    # no such state: 422
    ("POST", "state", b'{"state": '),                             # not JSON: 422
    ("POST", "state", b""),                                       # no body: 422
    ("POST", "state", b'{"state": "PROCESSING", "reason": "' + b"x" * (300 << 10) + b'"}'),  # over 256 KiB: 413
    ("POST", "metrics", b'[{"seq": 1, "time": 1.5, "step": 1, "values": {"loss": 0.5}}]'),
    ("POST", "metrics", b'[{"seq": 1, "time": 1.5, "step": 1, "values": {"loss": 0.5}}]'),  # resent: 0 new
    ("POST", "metrics", b'[{"seq": "one"}]'),                     # 422
    ("POST", "logs", b'{"offset": 0, "data": "hello\\n"}'),
    ("POST", "logs", b'{"offset": -1, "data": "x"}'),             # 422
    ("POST", "state", b'{"state": "PROCESSING"}'),
    ("POST", "state", b'{"state": "COMPLETED", "exit_code": 0}'),
]


@pytest.fixture
def service(backend: RunnerBackend) -> Iterator[Service]:
    """A service in this process over the backend's own store (its API and its executor's pipe)."""
    settings = Settings(home=backend.process.home)
    executor = LocalExecutor(settings.work_dir, gpus=0, slots=1, warm={})
    service = Service(settings, SqliteRunStore(settings.database), executor)
    yield service
    executor.close()
    service.store.close()


def started(backend: RunnerBackend, tmp_path, name: str) -> tuple[str, str]:
    """A run started as the lifecycle starts one (PENDING, its token's hash, its handle); its id and token."""
    (tmp_path / name).mkdir()
    run, token = tiny_run(backend, tmp_path / name), secrets.token_urlsafe(16)
    backend.store.transition(run.id, RunState.PENDING, time.time(), attempt=1, gpu_ids=[],
                             runner_token_hash=token_hash(token))
    backend.store.update_run(run.id, handle={"pid": 1, "create_time": 0.0, "attempt": 1})
    return run.id, token


def over_http(app, run_id: str, token: str) -> list[tuple[int, str, bytes]]:
    async def calls() -> list[tuple[int, str, bytes]]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return [_seen(await client.request(method, f"/v1/runner/{run_id}/{name}", content=body,
                                               headers={"Authorization": f"Bearer {token}"}))
                    for method, name, body in CALLS]
    return anyio.run(calls)


def _seen(response: httpx.Response) -> tuple[int, str, bytes]:
    return response.status_code, response.headers["content-type"], response.content


def over_pipe(service: Service, run_id: str, token: str) -> list[tuple[int, str, bytes]]:
    answer = service.executor.on_runner_call
    return [tuple(decode_answer(answer(encode_call(ChannelCall(method, f"/v1/runner/{run_id}/{name}", token, body)))))
            for method, name, body in CALLS]


def test_a_runners_calls_over_the_pipe_are_answered_as_over_http(backend, service, tmp_path):
    app = create_app(service)  # which answers the executor's pipe too
    http_run, http_token = started(backend, tmp_path, "http")
    pipe_run, pipe_token = started(backend, tmp_path, "pipe")
    http = over_http(app, http_run, http_token)
    piped = over_pipe(service, pipe_run, pipe_token)

    experiment_of = {run_id: backend.store.run(run_id).experiment_id for run_id in (http_run, pipe_run)}
    for (method, name, _), by_http, by_pipe in zip(CALLS, http, piped):
        status, content_type, body = by_pipe
        same = body.replace(pipe_run.encode(), http_run.encode()).replace(
            experiment_of[pipe_run].encode(), experiment_of[http_run].encode())
        assert (status, content_type, same) == by_http, f"{method} {name}: {by_pipe[:2]} vs {by_http[:2]}"
    assert [status for status, _, _ in piped] == [200, 200, 404, 200, 200, 409, 422, 422, 422, 413,
                                                  200, 200, 422, 200, 422, 200, 200]
    assert json.loads(piped[10][2]) == {"count": 1} and json.loads(piped[11][2]) == {"count": 0}
    timed = service.telemetry.render().decode()
    for method, name in {(method, name) for method, name, _ in CALLS}:
        count = 2 * sum(1 for call in CALLS if call[:2] == (method, name))  # over HTTP, then over the pipe
        assert f'wml_api_request_seconds_count{{method="{method}",route="/v1/runner/{{run_id}}/{name}"}} {count}.0' \
            in timed, f"{method} {name}: each call is timed, however it came"
    for run_id in (http_run, pipe_run):
        run = backend.store.run(run_id)
        assert (run.state, run.reported_state) == (RunState.PROCESSING, RunState.COMPLETED.value)
        assert [p.values for p in backend.store.metrics(run_id)] == [{"loss": 0.5}]


def test_the_pipe_refuses_what_http_refuses_a_wrong_token_another_runs_token_an_unknown_call(
        backend, service, tmp_path):
    create_app(service)
    run_id, token = started(backend, tmp_path, "mine")
    other, other_token = started(backend, tmp_path, "other")
    answer = service.executor.on_runner_call

    def status(method: str, path: str, token: str | None) -> int:
        return decode_answer(answer(encode_call(ChannelCall(method, path, token, b"")))).status

    assert status("GET", f"/v1/runner/{run_id}/spec", "guessed") == 401
    assert status("GET", f"/v1/runner/{run_id}/spec", None) == 401
    assert status("GET", f"/v1/runner/{run_id}/spec", other_token) == 401, "one run's token for another run"
    assert status("GET", f"/v1/runner/{run_id}/nothing", token) == 404
    assert status("GET", f"/v1/runs/{run_id}", token) == 404, "the pipe serves runner calls only"
    assert decode_answer(answer(b"not a call")).status == 400


def test_an_end_report_saying_the_last_word_ends_the_run_in_the_step_that_answers_it(backend, service, tmp_path):
    """No call follows a runner's last word, so its end report, saying it, ends the run as it is
    answered (with what it reported, billed), not at the runner's exit, which then changes
    nothing; a failure ends as it would at an exit. Over HTTP the same report waits for the exit
    (the first test)."""
    create_app(service)

    def report(run_id: str, token: str, state: str, last: bool, **fields) -> int:
        return reported(service, run_id, token, {"state": state, **fields}, last)

    for name, end in (("completed", {"state": "COMPLETED", "exit_code": 0}),
                      ("failed", {"state": "FAILED", "exit_code": 3, "reason": "the command exited with code 3",
                                  "log_tail": ["Traceback...", "ValueError: nan"]})):
        run_id, token = started(backend, tmp_path, name)
        assert report(run_id, token, "PROCESSING", last=False) == 200
        assert report(run_id, token, **end, last=True) == 200
        run = backend.store.run(run_id)
        assert run.state.value == end["state"], "the run waited for its runner's exit"
        assert (run.exit_code, run.reason, run.log_tail) == (end["exit_code"], end.get("reason"), end.get("log_tail", []))
        assert run.gpu_seconds is not None and run.runner_token_hash is None
        service.lifecycle.runner_exited(run_id, 1, 0)
        assert backend.store.run(run_id).state.value == end["state"]
        assert report(run_id, token, **end, last=True) == 401, "the ended attempt's token still moves its run"


def reported(service: Service, run_id: str, token: str, report: dict, last: bool = False) -> int:
    """The status of the state ``report`` of a run's runner over its pipe (saying its last word if ``last``)."""
    call = ChannelCall("POST", f"/v1/runner/{run_id}/state", token, json.dumps(report).encode(), 0 if last else None)
    return decode_answer(service.executor.on_runner_call(encode_call(call))).status


def test_the_states_a_report_says_the_run_passed_through_are_recorded_first_at_the_times_they_were_entered(
        backend, service, tmp_path):
    """A runner holds back a state its run may leave soon (``Reporter.state(hold=True)``); the next
    report says it, with how long ago it was entered by the runner's clock (not compared with
    the backend's). Resent, it changes nothing; an end is never a state passed through."""
    create_app(service)
    run_id, token = started(backend, tmp_path, "held")
    time.sleep(0.3)
    said = time.time()
    assert reported(service, run_id, token, {"state": "PROCESSING", "entered": [{"state": "DOWNLOADING", "ago_s": 0.2}]}) == 200
    assert reported(service, run_id, token, {"state": "PROCESSING", "entered": [{"state": "DOWNLOADING", "ago_s": 0.2}]}) == 200
    run = backend.store.run(run_id)
    assert [t.state for t in run.transitions] == [RunState.QUEUED, RunState.PENDING, RunState.DOWNLOADING, RunState.PROCESSING]
    downloading, processing = (t.time.timestamp() for t in run.transitions[2:])
    assert said - 0.2 <= downloading <= said - 0.2 + 0.1 and downloading + 0.2 <= processing + 0.001
    for wrong in ({"state": "STORING", "entered": [{"state": "COMPLETED", "ago_s": 0}]},
                  {"state": "STORING", "entered": [{"state": "QUEUED", "ago_s": 0}]}):
        assert reported(service, run_id, token, wrong) == 409
    assert reported(service, run_id, token, {"state": "STORING", "entered": [{"state": "STORING", "ago_s": -1}]}) == 422
    assert backend.store.run(run_id).state is RunState.PROCESSING


def test_a_state_held_is_said_by_the_next_report_or_on_its_own_once_it_has_lasted():
    """A state held is not a call of its own when the run leaves it soon: the next report says
    it (the end report too); one the run stays in is reported once it has lasted ``HOLD_S``."""
    ours, theirs = Pipe()
    reporter_module.warm_up(theirs)
    reporter = reporter_module.Reporter("http://backend", "r1", "t0k3n", deadline_s=10)
    ok = encode_answer(ChannelAnswer(200, "application/json", b'{"count": 1}'))

    def next_report() -> dict:
        assert ours.poll(5), "no report came"
        message = ours.recv_bytes()
        ours.send_bytes(ok)
        return json.loads(decode_call(message).body)

    reporter.state(RunState.DOWNLOADING, hold=True)
    time.sleep(0.02)
    reporter.state(RunState.PROCESSING, wait=False)
    body = next_report()
    assert body["state"] == "PROCESSING" and [e["state"] for e in body["entered"]] == ["DOWNLOADING"]
    assert 0.02 <= body["entered"][0]["ago_s"] < reporter_module.HOLD_S

    held = time.monotonic()
    reporter.state(RunState.STORING, hold=True)
    body = next_report()
    assert (body["state"], body["entered"]) == ("STORING", []), "a state the run stays in went unreported"
    assert time.monotonic() - held >= reporter_module.HOLD_S and body["ago_s"] >= reporter_module.HOLD_S
    assert not ours.poll(2 * reporter_module.HOLD_S), "a held state was reported twice"

    reporter.state(RunState.STORING, hold=True)
    with ThreadPoolExecutor(1) as pool:
        end = pool.submit(reporter.state, RunState.COMPLETED, exit_code=0, last_word=0)
        body = next_report()
        end.result(10)
    assert body["state"] == "COMPLETED" and [e["state"] for e in body["entered"]] == ["STORING"]
    with pytest.raises(EOFError):  # the end report said the last word: nothing more comes
        ours.recv_bytes()


def test_a_runner_whose_pipe_is_gone_calls_over_http(tmp_path):
    """The backend restarted (the pipe closed), or went away while a call was on its way: the
    call, and every one after it, goes over HTTP to the backend's URL (another process serves it)."""
    over_http_calls: list[str] = []

    def http(request: httpx.Request) -> httpx.Response:
        over_http_calls.append(request.url.path)
        return httpx.Response(200, json={"by": "http"})

    ours, theirs = Pipe()
    client = httpx.Client(base_url="http://backend/v1/runner/r1", headers={"Authorization": "Bearer t0k3n"},
                          transport=PipeTransport(theirs, httpx.MockTransport(http)))
    ours.send_bytes(encode_answer(ChannelAnswer(200, "application/json", b'{"by": "pipe"}')))  # answered ahead
    assert client.get("/spec").json() == {"by": "pipe"}
    call = decode_call(ours.recv_bytes())
    assert (call.method, call.path, call.token) == ("GET", "/v1/runner/r1/spec", "t0k3n")

    ours.close()  # the backend is gone, its answer with it
    assert client.post("/state", json={"state": "STORING"}).json() == {"by": "http"}
    assert client.get("/code").json() == {"by": "http"}
    assert over_http_calls == ["/v1/runner/r1/state", "/v1/runner/r1/code"]


def test_calls_from_several_threads_are_sent_at_once_and_each_gets_its_own_answer():
    """The code is fetched while the spec is asked for, a state report goes in the background: none
    waits for another's answer to be sent, and the answers (in the order of the calls) reach
    the calls they answer."""
    ours, theirs = Pipe()
    client = httpx.Client(base_url="http://backend/v1/runner/r1", headers={"Authorization": "Bearer t0k3n"},
                          transport=PipeTransport(theirs, httpx.MockTransport(lambda request: httpx.Response(503))))
    names = [f"call{k}" for k in range(5)]
    with ThreadPoolExecutor(len(names)) as pool, ours:  # (closed first: a call still waiting goes over HTTP)
        answers = [pool.submit(lambda name=name: client.get(f"/{name}").json()) for name in names]
        sent = []
        while len(sent) < len(names):  # every call arrives before any is answered
            assert ours.poll(10), f"only {len(sent)} of {len(names)} calls were sent before an answer"
            sent.append(decode_call(ours.recv_bytes()).path)
        for path in sent:
            ours.send_bytes(encode_answer(ChannelAnswer(200, "application/json", json.dumps({"path": path}).encode())))
        assert [answer.result(10) for answer in answers] == [{"path": f"/v1/runner/r1/{name}"} for name in names]


def test_the_spec_asked_for_the_runner_at_its_launch_answers_its_own_ask_which_is_not_sent():
    """The executor asks for the spec as it launches the runner: its answer, the first on the pipe,
    answers the runner's ask for its spec at once, though another thread (fetching the code
    meanwhile) reads the pipe and still waits for its own answer; only the other calls are sent."""
    ours, theirs = Pipe()
    transport = PipeTransport(theirs, httpx.MockTransport(lambda request: httpx.Response(503)))
    transport.expect("GET", "/spec")
    client = httpx.Client(base_url="http://backend/v1/runner/r1", transport=transport)

    def answer(body: dict) -> bytes:
        return encode_answer(ChannelAnswer(200, "application/json", json.dumps(body).encode()))
    with ThreadPoolExecutor(2) as pool, ours:
        code = pool.submit(lambda: client.get("/code").json())  # sent first: its thread reads the pipe
        assert decode_call(ours.recv_bytes()).path == "/v1/runner/r1/code"
        ours.send_bytes(answer({"the": "spec"}))
        spec = pool.submit(lambda: client.get("/spec").json())
        assert spec.result(5) == {"the": "spec"}, "the spec waited for the code's answer"
        assert not code.done()
        ours.send_bytes(answer({"the": "code"}))
        assert code.result(10) == {"the": "code"}
        later = pool.submit(lambda: client.get("/spec").json())  # a second ask is sent, as any call
        assert decode_call(ours.recv_bytes()).path == "/v1/runner/r1/spec"
        ours.send_bytes(answer({"the": "next spec"}))
        assert later.result(10) == {"the": "next spec"}
        assert not ours.poll(0.1), "the spec asked for the runner was asked again"


def test_what_was_asked_at_the_launch_is_read_without_a_request_and_only_once():
    """The runner reads the answers to the calls made for it at its launch as they are (no HTTP
    request is made of them, nothing is sent); once read, the same call is an ordinary one."""
    ours, theirs = Pipe()
    transport = PipeTransport(theirs, httpx.MockTransport(lambda request: httpx.Response(503)))
    transport.expect("GET", "/spec")
    transport.expect("GET", "/code")
    spec, code = (ChannelAnswer(200, "application/json", b'{"the": "spec"}'), ChannelAnswer(200, "application/zip", b"PK"))
    for answer in (spec, code):
        ours.send_bytes(encode_answer(answer))
    assert transport.asked_at_launch("GET", "/code") == code, "the code's answer, though the spec's came first"
    assert transport.asked_at_launch("GET", "/spec") == spec
    assert transport.asked_at_launch("GET", "/spec") is None
    assert transport.asked_at_launch("POST", "/state") is None
    assert not ours.poll(0.1), "something was sent for what was asked at the launch"


def test_a_runner_closing_its_pipe_says_its_last_word_which_no_call_can_be_taken_for():
    """Its last word says the exit code it exits with; a call, or a message that only looks like a
    last word, is not one (the executor answers it as a call)."""
    ours, theirs = Pipe()
    PipeTransport(theirs, httpx.MockTransport(lambda request: httpx.Response(503))).say_last_word(0)
    assert last_word(ours.recv_bytes()) == 0
    with pytest.raises(EOFError):  # nothing more: the pipe is closed
        ours.recv_bytes()

    call = encode_call(ChannelCall("POST", "/v1/runner/r1/state", "t0k3n", b'{"exit": 0, "last": 0}'))
    assert last_word(call) is None
    assert [last_word(message) for message in (b'{"exit":"0"}\n', b'{"exit":true}\n', b'{"exit":', b'{"exit":1}')] \
        == [None, None, None, None]


def test_the_end_report_says_the_last_word_itself_which_counts_once_the_report_is_answered_with_success():
    """The end report says the runner's last word itself (one hop less at the end of every run);
    a report the backend failed is made again, last word and all, and the pipe is closed once one
    succeeds."""
    ours, theirs = Pipe()
    reporter_module.warm_up(theirs)
    reporter = reporter_module.Reporter("http://backend", "r1", "t0k3n", deadline_s=10)
    with ThreadPoolExecutor(1) as pool:
        end = pool.submit(reporter.state, RunState.COMPLETED, exit_code=0, last_word=0)
        for status in (503, 200):
            message = ours.recv_bytes()
            call = decode_call(message)
            assert (call.path, json.loads(call.body)["state"]) == ("/v1/runner/r1/state", "COMPLETED")
            assert call.last_word == last_word(message) == 0
            ours.send_bytes(encode_answer(ChannelAnswer(status, "application/json", b'{"count": 1}')))
        end.result(10)
    with pytest.raises(EOFError):  # it counted: nothing more comes over the pipe
        ours.recv_bytes()


def test_a_runner_whose_backend_is_gone_closes_its_pipe_without_a_last_word_or_a_failure():
    ours, theirs = Pipe()
    transport = PipeTransport(theirs, httpx.MockTransport(lambda request: httpx.Response(503)))
    ours.close()
    transport.say_last_word(0)  # nothing raised: the executor sees its exit instead
