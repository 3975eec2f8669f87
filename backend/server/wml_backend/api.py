"""The REST API (JSON over HTTP, bearer tokens, OpenAPI at /openapi.json).

Routes are thin: they authenticate, call ``Service`` or ``RunnerReports``, and return wire
models. Domain errors become HTTP codes in exactly one place, ``_domain_error``.
"""


import json
from typing import Annotated, Optional

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from . import __version__
from .body_limit import BodyLimit
from .errors import ERRORS_BY_CODE, WmlError, quoted
from .events import Subscription
from .models import (AccountCreated, Experiment, ExperimentRequest, LogAppend, LogChunk, MetricPoint,
                     Run, RunSpec, StateReport, Usage)
from .reports import RunnerReports
from .service import Service
from .settings import MAX_CODE_BYTES
from .store import Account, RunRow

_bearer = HTTPBearer(auto_error=False)
Token = Annotated[Optional[HTTPAuthorizationCredentials], Depends(_bearer)]


class Error(BaseModel):
    """Every error response: a machine code and a one-line message."""

    code: str
    message: str


#: Every error status a route may answer, each with an ``Error`` body.
ERROR_RESPONSES = {status: {"model": Error}
                   for status in sorted({cls.http_status for cls in ERRORS_BY_CODE.values()} | {400, 404, 413})}
#: Codes of the errors the framework itself raises (unknown route, wrong method, unreadable body).
HTTP_CODES = {400: "invalid", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}
#: The largest request body read: a code zip at its limit, base64-encoded, and its manifest.
MAX_BODY_BYTES = MAX_CODE_BYTES * 4 // 3 + (4 << 20)


class AccountRequest(BaseModel):
    """A new account's name and GPU quota."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    gpus: int = Field(ge=0, le=10_000)


class Count(BaseModel):
    """How many items an operation accepted, or where a log continues."""

    count: int


def create_app(service: Service) -> FastAPI:
    """The ASGI application serving ``service``."""
    app = FastAPI(title="wml backend", version=__version__, responses=ERROR_RESPONSES)
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    reports = RunnerReports(service)

    @app.exception_handler(WmlError)
    async def _domain_error(request: Request, exc: WmlError) -> JSONResponse:
        return JSONResponse({"code": exc.code, "message": str(exc)}, status_code=exc.http_status)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"code": "invalid", "message": _validation_message(exc.errors())}, status_code=422)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        path = quoted(request.url.path)
        message = {404: f"no such route: {request.method} {path}",
                   405: f"{request.method} is not allowed on {path}"}.get(exc.status_code, str(exc.detail))
        code = HTTP_CODES.get(exc.status_code, "error")
        return JSONResponse({"code": code, "message": message}, status_code=exc.status_code, headers=exc.headers)

    def account(token: Token) -> Account:
        return service.authenticate(token.credentials if token else None)

    Caller = Annotated[Account, Depends(account)]

    def runner(run_id: str, token: Token) -> RunRow:
        return reports.authenticate(run_id, token.credentials if token else None)

    RunnerRun = Annotated[RunRow, Depends(runner)]

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True, "version": __version__, "executor": service.executor.name}

    @app.post("/v1/experiments", status_code=201)
    def submit(caller: Caller, body: ExperimentRequest) -> Experiment:
        return service.submit(caller, body)

    @app.get("/v1/experiments")
    def experiments(caller: Caller) -> list[Experiment]:
        return service.experiments(caller)

    @app.get("/v1/experiments/{experiment_id}")
    def experiment(caller: Caller, experiment_id: str) -> Experiment:
        return service.experiment(caller, experiment_id)

    @app.post("/v1/experiments/{experiment_id}/cancel")
    def cancel_experiment(caller: Caller, experiment_id: str) -> Experiment:
        return service.cancel_experiment(caller, experiment_id)

    @app.get("/v1/runs")
    def runs(caller: Caller, experiment: Optional[str] = None, state: Optional[str] = None) -> list[Run]:
        return service.runs(caller, experiment, state)

    @app.get("/v1/runs/{run_id}")
    def run(caller: Caller, run_id: str) -> Run:
        return service.run(caller, run_id)

    @app.post("/v1/runs/{run_id}/cancel")
    def cancel_run(caller: Caller, run_id: str) -> Run:
        return service.cancel_run(caller, run_id)

    @app.post("/v1/runs/{run_id}/rerun", status_code=201)
    def rerun(caller: Caller, run_id: str) -> Experiment:
        return service.rerun(caller, run_id)

    @app.get("/v1/runs/{run_id}/logs")
    def logs(caller: Caller, run_id: str, offset: Annotated[int, Query(ge=0, le=2**53)] = 0,
             learner: Annotated[int, Query(ge=1, le=10_000)] = 1) -> LogChunk:
        return service.logs(caller, run_id, offset, learner)

    @app.get("/v1/runs/{run_id}/metrics")
    def metrics(caller: Caller, run_id: str,
                since: Annotated[int, Query(ge=-1, le=2**53)] = -1) -> list[MetricPoint]:
        return service.metrics(caller, run_id, since)

    @app.get("/v1/usage")
    def usage(caller: Caller) -> Usage:
        return service.usage(caller)

    @app.post("/v1/accounts", status_code=201)
    def create_account(caller: Caller, body: AccountRequest) -> AccountCreated:
        return service.create_account(caller, body.name, body.gpus)

    @app.get("/v1/events", response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}}}})
    async def events(caller: Caller, experiment: Optional[str] = None) -> StreamingResponse:
        subscription = service.events.subscribe(caller.name)  # before the response starts: nothing missed
        return StreamingResponse(_sse(subscription, experiment), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # -- runners --------------------------------------------------------------------------
    @app.get("/v1/runner/{run_id}/spec", include_in_schema=False)
    def runner_spec(run: RunnerRun) -> RunSpec:
        return reports.spec(run)

    @app.get("/v1/runner/{run_id}/code", include_in_schema=False)
    def runner_code(run: RunnerRun) -> Response:
        return Response(reports.code(run), media_type="application/zip")

    @app.post("/v1/runner/{run_id}/state", include_in_schema=False)
    def runner_state(run: RunnerRun, body: StateReport) -> Count:
        reports.state(run, body)
        return Count(count=1)

    @app.post("/v1/runner/{run_id}/metrics", include_in_schema=False)
    def runner_metrics(run: RunnerRun, body: list[MetricPoint]) -> Count:
        return Count(count=reports.metrics(run, body))

    @app.post("/v1/runner/{run_id}/logs", include_in_schema=False)
    def runner_logs(run: RunnerRun, body: LogAppend) -> Count:
        return Count(count=reports.log(run, body))

    return app


def _validation_message(errors: list[dict]) -> str:
    """The first problem of a request that does not parse, as ``field: problem``."""
    if not errors:
        return "body: invalid request"
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    if first.get("type") == "json_invalid":
        return "body: not valid JSON"
    if first.get("type") == "extra_forbidden":
        return f"{where}: unknown field"
    return f"{where}: {first['msg']}"


async def _sse(subscription: Subscription, experiment: Optional[str]):
    """Server-sent events: run changes and new metrics (of one experiment if given), with heartbeats."""
    yield ": connected\n\n"
    async for event in subscription.stream():
        if event is None:
            yield ": heartbeat\n\n"
        elif experiment is None or _experiment_of(event) == experiment:
            yield f"event: {event['type']}\ndata: {json.dumps(event, default=str)}\n\n"


def _experiment_of(event: dict) -> Optional[str]:
    return event.get("experiment_id") or (event.get("run") or {}).get("experiment_id")
