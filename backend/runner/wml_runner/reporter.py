"""The runner's side of the backend API, patient with a backend that restarts."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from concurrent.futures import Future
from multiprocessing.connection import Connection
from typing import Any, Callable, Optional

import httpx

from wml_core.errors import StorageError
from wml_core.models import LogAppend, MetricPoint, RunSpec, StateEntered, StateReport, StoreCredential
from wml_core.states import RunState
from wml_core.runner_channel import (ASKED_AT_LAUNCH, ChannelAnswer, ChannelCall, decode_answer, decode_call,
                                     encode_answer, encode_call)
from wml_runner.channel import PipeTransport, as_response
from wml_runner.spare_threads import in_background, in_thread, start_spares
from wml_runner.workspace import REHEARSAL_SPEC

log = logging.getLogger("wml_runner")

#: How long a report keeps being retried while the backend is unreachable.
REPORT_DEADLINE_S = 600.0
#: Seconds before the first retry of a call (doubling up to a second): short, because the
#: likeliest refusal is the spec asked for a few milliseconds before the runner's start is recorded.
FIRST_RETRY_S = 0.005
#: How long a state the run may leave soon (``Reporter.state(..., hold=True)``) goes unreported:
#: left sooner, it is said by the next report (``StateReport.entered``), so that a quick run's
#: DOWNLOADING and STORING cost no call, and no wait for one, of their own.
HOLD_S = 0.1
#: What the sender finds in its outbox when a state is held: the time to report it is now counted.
_HELD = object()


#: The HTTP client ``warm_up`` made ahead, for this process's first Reporter to a plain-HTTP
#: backend, and its pipe transport (if it has one).
_spare: Optional[tuple[httpx.Client, Optional[PipeTransport]]] = None
#: The pipe to the executor that started this runner, if it has one (``wml_runner.channel``).
_channel: Optional[Connection] = None


def warm_up(channel: Optional[Connection] = None) -> None:
    """Make now, with no run in view, what a Reporter of this process needs first (its HTTP
    client to a plain-HTTP backend, its threads and the shipper's: ``spare_threads``), so that it
    starts at once. ``channel``: the Reporter calls over this pipe to the executor, while it
    is open, instead of over HTTP."""
    global _spare, _channel
    _channel = channel
    _spare = _new_client(https=False)
    _rehearse()
    start_spares()


def _rehearse() -> None:
    """Go once through what a run's first calls do (a request over the pipe's encoding and its
    answer, the spec's and a report's models), with nothing of a run: the memory they touch is
    this process's own before a run waits on it (a forked runner copies each page it first
    writes to: ~4 ms of a run's start otherwise)."""
    answer = encode_answer(ChannelAnswer(200, "application/json", REHEARSAL_SPEC.model_dump_json().encode()))

    def backend(request: httpx.Request) -> httpx.Response:
        decode_call(encode_call(ChannelCall(request.method, request.url.path, None, request.read())))
        status, content_type, body = decode_answer(answer)
        return httpx.Response(status, headers={"content-type": content_type}, content=body, request=request)
    with httpx.Client(base_url="http://warm-up/v1/runner/warm-up", transport=httpx.MockTransport(backend)) as client:
        RunSpec.model_validate_json(client.get("/spec").content)
        client.post("/state", json=StateReport(state=RunState.DOWNLOADING).model_dump(mode="json"))


def _take_client(https: bool) -> tuple[httpx.Client, Optional[PipeTransport]]:
    """The client ``warm_up`` made (once, and for plain HTTP), else a new one; its pipe transport."""
    global _spare
    if https or _spare is None:
        return _new_client(https)
    made, _spare = _spare, None
    return made


def _new_client(https: bool) -> tuple[httpx.Client, Optional[PipeTransport]]:
    # Loading CA certificates costs ~40 ms a runner; plain HTTP (the local backend) needs none.
    pipe = PipeTransport(_channel, httpx.HTTPTransport(verify=https)) if _channel is not None else None
    return httpx.Client(timeout=30.0, verify=https, transport=pipe), pipe


class Reporter:
    """Calls the backend as one run's runner; retries through connection errors and 5xx.

    State reports are sent in order by a thread of their own on the kept-alive connection, so
    that the run goes on meanwhile (``state(..., wait=False)``); a report that waits (its end)
    is sent by the thread that waits, once those are answered (the first of them that failed
    fails it), and returns once it is answered itself. A state held (``hold``) is said by the
    next report, or by one of its own once it has lasted ``HOLD_S``."""

    def __init__(self, url: str, run_id: str, token: str, deadline_s: float = REPORT_DEADLINE_S,
                 asked_at_launch: bool = False):
        """``asked_at_launch``: the executor made this runner's first calls for it, over its pipe
        (``ASKED_AT_LAUNCH``: their answers are the first there)."""
        self.run_id, self.deadline_s = run_id, deadline_s
        self._http, self._pipe = _take_client(https=url.startswith("https://"))
        self._asked_at_launch = asked_at_launch and self._pipe is not None
        for method, name in ASKED_AT_LAUNCH if self._asked_at_launch else ():
            self._pipe.expect(method, f"/{name}")
        self._http.base_url = f"{url.rstrip('/')}/v1/runner/{run_id}"
        #: What a call over the pipe needs that the HTTP client adds to its requests.
        self._path, self._token = self._http.base_url.path.rstrip("/"), token
        self._http.headers["Authorization"] = f"Bearer {token}"
        self._code: Optional[Future] = None
        self._outbox: queue.Queue = queue.Queue()
        self._sending = False
        self._failure: Optional[Exception] = None
        #: The states held, not reported yet, each with when it was entered (``time.monotonic``).
        self._held: list[tuple[RunState, float]] = []
        self._held_lock = threading.Lock()

    def _call(self, method: str, path: str, json: Any = None, last_word: Optional[int] = None) -> httpx.Response:
        deadline, delay = time.monotonic() + self.deadline_s, FIRST_RETRY_S
        while True:
            late = time.monotonic() > deadline
            try:
                response = self._try(method, path, json, last_word)
            except httpx.TransportError as exc:
                if late:
                    raise
                log.warning("backend unreachable (%s); retrying", type(exc).__name__)
            else:
                if response.status_code < 500 or late:
                    response.raise_for_status()
                    return response
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _try(self, method: str, path: str, json: Any, last_word: Optional[int] = None) -> httpx.Response:
        """One try of a call: over the pipe while it lasts (made as it is, not through the HTTP
        client; saying ``last_word``, if any: ``PipeTransport.call``), else over HTTP."""
        if self._pipe is not None:
            body = b"" if json is None else json_bytes(json)
            answer = self._pipe.call(ChannelCall(method, self._path + path, self._token, body, last_word))
            if answer is not None:
                return as_response(answer, httpx.Request(method, self._http.base_url.join(path.lstrip("/"))))
        return self._http.request(method, path, json=json)

    def spec(self) -> RunSpec:
        """What to run."""
        asked = self._asked_at_launch_ok("GET", "/spec")
        if asked is not None:
            return RunSpec.model_validate_json(asked)
        return RunSpec.model_validate(self._call("GET", "/spec").json())

    def prefetch_code(self) -> None:
        """Ask for the code zip now, in the background, while the spec is asked for (``code``);
        unless it was asked at the launch (its answer is on its way)."""
        if self._asked_at_launch:
            return
        self._code = in_background(lambda: self._call("GET", "/code").content, "wml-prefetch")

    def code(self) -> bytes:
        """The code zip (as ``prefetch_code`` got it, if it was asked for)."""
        if self._code is not None:
            return self._code.result()
        asked = self._asked_at_launch_ok("GET", "/code")
        return asked if asked is not None else self._call("GET", "/code").content

    def _asked_at_launch_ok(self, method: str, path_end: str) -> Optional[bytes]:
        """The body of the successful answer to the call the executor made for this runner as it
        launched it (read as it is: no HTTP request is made of it); None if there is none (not
        asked, or it failed: the call is made again, as any call)."""
        if not self._asked_at_launch:
            return None
        answer = self._pipe.asked_at_launch(method, path_end)
        return answer.body if answer is not None and answer.status == 200 else None

    def credential(self) -> dict:
        """A fresh store credential scoped to this run (botocore's refresh format); a one-line
        ``StorageError`` with the backend's reason when it has none to give."""
        try:
            found = StoreCredential.model_validate(self._call("GET", "/credential").json())
        except httpx.HTTPStatusError as exc:
            raise StorageError(_message(exc.response)) from None
        return {"access_key": found.access_key, "secret_key": found.secret_key, "token": found.session_token,
                "expiry_time": found.expires.isoformat()}

    def state(self, state: RunState, exit_code: Optional[int] = None, reason: Optional[str] = None,
              log_tail: Optional[list[str]] = None, wait: bool = True, last_word: Optional[int] = None,
              hold: bool = False) -> None:
        """Report that the run entered ``state``, after the reports before it; ``wait`` False:
        return at once (the report is sent in the background; a failure surfaces at the next).
        ``last_word`` (with ``wait``): this report is the runner's last call, and it exits with
        this code; over a pipe, the report says its last word (``PipeTransport.call``).
        ``hold``: a state the run may leave soon, reported by the next report or after ``HOLD_S``."""
        self._raise_failure()
        with self._held_lock:
            if hold:
                self._held.append((state, time.monotonic()))
            body = _HELD if hold else self._report(state, exit_code, reason, log_tail)
        if hold or not wait:
            self._start_sender()
            self._outbox.put(body)
            return
        # Sent from this thread once those before it are answered: not handed to the sender and back.
        self.flush()
        self._call("POST", "/state", json=body, last_word=last_word)

    def _report(self, state: RunState, exit_code: Optional[int] = None, reason: Optional[str] = None,
                log_tail: Optional[list[str]] = None, ago_s: float = 0.0) -> dict:
        """The body of a report of ``state``, saying the states held so far (no longer held);
        called holding ``_held_lock``."""
        now, held, self._held = time.monotonic(), self._held, []
        entered = [StateEntered(state=passed, ago_s=now - at) for passed, at in held]
        return StateReport(state=state, exit_code=exit_code, reason=reason, log_tail=log_tail or [], ago_s=ago_s,
                           entered=entered).model_dump(mode="json")

    def _until_release(self) -> Optional[float]:
        """Seconds until the first state held has lasted ``HOLD_S`` (None: none is held)."""
        with self._held_lock:
            return max(0.0, self._held[0][1] + HOLD_S - time.monotonic()) if self._held else None

    def _release_held(self) -> None:
        """Report the states held (the last one as the report's state) once the first has lasted ``HOLD_S``."""
        with self._held_lock:
            if self._held and time.monotonic() >= self._held[0][1] + HOLD_S:
                state, at = self._held.pop()
                self._outbox.put(self._report(state, ago_s=time.monotonic() - at))

    def flush(self) -> None:
        """Wait until every report sent in the background is answered; raise the first failure."""
        self._outbox.join()
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _start_sender(self) -> None:
        if not self._sending:
            self._sending = True
            in_thread(self._send, "wml-reports")

    def _send(self) -> None:
        """Send the reports put in the outbox, in order (after a failure: none); and those of the
        states held for ``HOLD_S`` that no report said meanwhile."""
        while True:
            try:
                body = self._outbox.get(timeout=self._until_release())
            except queue.Empty:
                self._release_held()
                continue
            try:
                if body is not _HELD and self._failure is None:  # (_HELD: the wait above is counted again)
                    self._call("POST", "/state", json=body)
            except Exception as exc:  # said by the next report, or the end
                log.warning("reporting %s failed: %s", body["state"], exc)
                self._failure = exc
            finally:
                self._outbox.task_done()

    def metrics(self, points: list[MetricPoint]) -> None:
        """Ship metric points (idempotent by sequence number)."""
        self._call("POST", "/metrics", json=[p.model_dump() for p in points])

    def log(self, learner: int, offset: int, text: str) -> int:
        """Append log text at ``offset``; return the log's length on the backend."""
        body = LogAppend(learner=learner, offset=offset, data=text).model_dump()
        return self._call("POST", "/logs", json=body).json()["count"]

    def close(self, exit_code: Optional[int] = None) -> None:
        """Close the connection, once the reports sent in the background are answered; with
        ``exit_code``, over a pipe, as the runner's last word (``PipeTransport.say_last_word``)."""
        self._outbox.join()
        if self._pipe is not None and exit_code is not None:
            self._pipe.say_last_word(exit_code)
        self._http.close()


def _message(response: httpx.Response) -> str:
    """The backend's one-line reason for refusing a request (its JSON ``message``), or the status."""
    try:
        return str(response.json()["message"])
    except (ValueError, KeyError, TypeError):
        return f"the backend answered {response.status_code}"


def json_bytes(value: Any) -> bytes:
    """``value`` as a JSON body, encoded as the HTTP client encodes one."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
