"""The calls a runner makes (its spec, code and credential; its states, metrics and log), defined
once and answered alike whatever carries them: HTTP routes (``api``), or the pipe between the
local executor and a runner it started (``answer_channel``: ``wml_core.runner_channel`` messages).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.responses import Response

from wml_backend.gate import (SMALL_BODY_BYTES, error_response, http_error_response, no_route_message,
                              too_large_message, validation_response)
from wml_backend.reports import RunnerReports
from wml_backend.rundb import RunRow
from wml_core.errors import WmlError
from wml_core.models import LogAppend, MetricPoint, StateReport
from wml_core.runner_channel import REPORT_BODY_BYTES, ChannelAnswer, ChannelCall, decode_call, encode_answer

log = logging.getLogger("wml_backend")

#: A runner call's path: ``/v1/runner/<run id>/<call>``.
RUNNER_PATH = re.compile(r"/v1/runner/([^/]+)/([a-z]+)")


class Count(BaseModel):
    """How many items an operation accepted, or where a log continues."""

    count: int


@dataclass(frozen=True)
class RunnerCall:
    """One call: its method and name, what its body holds (None: none), how large it may be,
    and what it does for the run that makes it (its answer: a model, or bytes of a zip); and what
    it does instead when it says the runner's last word (``ChannelCall.last_word``: no call follows
    it), if that differs."""

    method: str
    name: str
    body: Optional[TypeAdapter]
    max_body: int
    do: Callable[[RunnerReports, RunRow, Any], Any]
    do_last: Optional[Callable[[RunnerReports, RunRow, Any], Any]] = None

    @property
    def path(self) -> str:
        """Its HTTP route's path template."""
        return f"/v1/runner/{{run_id}}/{self.name}"


def _state(reports: RunnerReports, run: RunRow, report: StateReport, last: bool = False) -> Count:
    reports.state(run, report, last=last)
    return Count(count=1)


RUNNER_CALLS = (
    RunnerCall("GET", "spec", None, SMALL_BODY_BYTES, lambda reports, run, _: reports.spec(run)),
    RunnerCall("GET", "code", None, SMALL_BODY_BYTES, lambda reports, run, _: reports.code(run)),
    RunnerCall("GET", "credential", None, SMALL_BODY_BYTES, lambda reports, run, _: reports.credential(run)),
    RunnerCall("POST", "state", TypeAdapter(StateReport), SMALL_BODY_BYTES, _state,
               lambda reports, run, report: _state(reports, run, report, last=True)),
    RunnerCall("POST", "metrics", TypeAdapter(list[MetricPoint]), REPORT_BODY_BYTES,
               lambda reports, run, points: Count(count=reports.metrics(run, points))),
    RunnerCall("POST", "logs", TypeAdapter(LogAppend), REPORT_BODY_BYTES,
               lambda reports, run, chunk: Count(count=reports.log(run, chunk))),
)
_BY_ROUTE = {(call.method, call.name): call for call in RUNNER_CALLS}


def respond(call: RunnerCall, reports: RunnerReports, run: RunRow, body: bytes, last: bool = False) -> Response:
    """The answer to ``call`` with ``body`` by the runner of ``run`` (authenticated); ``last``:
    the call says the runner's last word."""
    do = call.do_last if last and call.do_last else call.do
    try:
        value = do(reports, run, _parsed(call, body))
    except ValidationError as exc:
        return validation_response(exc.errors())
    except WmlError as exc:
        return error_response(exc)
    if isinstance(value, bytes):
        return Response(value, media_type="application/zip")
    return Response(value.model_dump_json(), media_type="application/json")


def _parsed(call: RunnerCall, body: bytes) -> Any:
    if call.body is None:
        return None
    if not body.strip():  # as FastAPI says of a missing body
        raise ValidationError.from_exception_data("body", [{"type": "missing", "loc": ("body",), "input": None}])
    return call.body.validate_json(body)


#: Notes how long a call to a route took: (path template, method, seconds).
CallTimer = Callable[[str, str, float], None]


def answer_channel(reports: RunnerReports, message: bytes, timer: CallTimer = lambda route, method, s: None) -> bytes:
    """The answer to a call a runner sent over its executor's pipe, as the API would answer it
    over HTTP (the same token, limits and errors); its time goes to ``timer`` as an HTTP
    request's would."""
    started = time.perf_counter()
    try:
        call = decode_call(message)
    except ValueError as exc:
        return _answer(http_error_response(400, f"not a runner call: {exc}"))
    found = RUNNER_PATH.fullmatch(call.path)
    route = _BY_ROUTE.get((call.method, found.group(2))) if found else None
    if route is None:
        return _answer(http_error_response(404, no_route_message(call.method, call.path)))
    try:
        answer = _answer(_response(reports, route, found.group(1), call))
    except Exception:  # as the web server answers a route that failed: the runner retries
        log.exception("a runner's call over the pipe failed")
        answer = _answer(http_error_response(500, "internal error"))
    timer(route.path, route.method, time.perf_counter() - started)
    return answer


def _response(reports: RunnerReports, route: RunnerCall, run_id: str, call: ChannelCall) -> Response:
    try:
        run = reports.authenticate(run_id, call.token)
    except WmlError as exc:
        return error_response(exc)
    if len(call.body) > route.max_body:
        return http_error_response(413, too_large_message(route.max_body))
    return respond(route, reports, run, call.body, last=call.last_word is not None)


def _answer(response: Response) -> bytes:
    return encode_answer(ChannelAnswer(response.status_code, response.media_type or "application/json",
                                       bytes(response.body)))
