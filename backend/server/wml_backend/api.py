"""The REST API (JSON over HTTP, bearer tokens, OpenAPI at /openapi.json).

Routes are thin: they call ``Service`` or ``RunnerReports`` for the caller that the ``gate``
authenticated before reading the body, and return wire models. Domain errors become HTTP codes
in exactly one place, ``gate.error_response``.
"""


import functools
import ipaddress
from typing import Annotated, Awaitable, Callable, Optional

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from wml_backend import __version__
from wml_backend.gate import (SMALL_BODY_BYTES, Gate, Rule, error_response, http_error_response, no_route_message,
                              route_of, validation_response)
from wml_core.errors import ERRORS_BY_CODE, Forbidden, InvalidInput, WmlError, quoted
from wml_backend.eventbus import Subscription
from wml_backend.health import not_ready
from wml_core.models import (AccountCreated, AccountInfo, AccountLimits, AccountToken, DataClaim, Experiment,
                             ExperimentRequest, LogChunk, MetricPoint, Run, Usage)
from wml_backend.reports import RunnerReports
from wml_backend.runner_calls import RUNNER_CALLS, RunnerCall, answer_channel, respond
from wml_backend.listing import MAX_PAGE, EndedRuns, json_response, key_of, next_link, page_of
from wml_backend.service import EXPERIMENTS_PAGE, Service
from wml_backend.summary import Summaries, expanded_of
from wml_core.pages import PAGE_SIZE, Summary
from wml_backend.settings import MAX_CODE_BYTES
from wml_backend.metrics import CONTENT_TYPE
from wml_backend.rundb import Account, RunRow
from wml_backend.rundb.base import Replica

_bearer = HTTPBearer(auto_error=False)
Token = Annotated[Optional[HTTPAuthorizationCredentials], Depends(_bearer)]
#: ``?limit=N`` of a paged listing (``listing``).
PageLimit = Annotated[Optional[int], Query(ge=1, le=MAX_PAGE)]


class Error(BaseModel):
    """Every error response: a machine code and a one-line message."""

    code: str
    message: str


#: Every error status a route may answer, each with an ``Error`` body.
ERROR_RESPONSES = {status: {"model": Error}
                   for status in sorted({cls.http_status for cls in ERRORS_BY_CODE.values()} | {400, 404, 413})}
#: The largest request body read: a code zip at its limit, base64-encoded, and its manifest.
MAX_BODY_BYTES = MAX_CODE_BYTES * 4 // 3 + (4 << 20)
#: Body limits of the routes that take more than ``SMALL_BODY_BYTES``, by path.
BODY_LIMITS = {"/v1/experiments": MAX_BODY_BYTES,
               **{call.path: call.max_body for call in RUNNER_CALLS if call.max_body > SMALL_BODY_BYTES}}
#: Routes anyone may call: health and the API's own description.
PUBLIC_ROUTES = {"/healthz", "/livez", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
#: Routes for the operator: the administrator's token, or any caller on this host (not through a proxy).
OPERATOR_ROUTES = {"/metrics", "/v1/replicas"}
#: Headers a proxy adds: a request that has one came from elsewhere, whatever its address says.
PROXY_HEADERS = (b"forwarded", b"x-forwarded-for", b"x-real-ip")
#: An account's name: what ``wml accounts create`` accepts.
ACCOUNT_NAME = r"^[a-z][a-z0-9_-]{0,62}$"


class AccountRequest(AccountLimits):
    """A new account's name, GPU quota and (optional) own limits."""

    name: str = Field(pattern=ACCOUNT_NAME)
    gpus: int = Field(ge=0, le=10_000)


def create_app(service: Service) -> FastAPI:
    """The ASGI application serving ``service``."""
    app = FastAPI(title="wml backend", version=__version__, responses=ERROR_RESPONSES)
    reports = RunnerReports(service)
    summaries = Summaries(service)
    ended_runs = EndedRuns(service)
    app.add_middleware(Gate, rule_for=lambda scope: _rule(app, service, reports, scope))
    app.add_middleware(service.telemetry.timing, route_of=lambda scope: route_of(app.router.routes, scope)[0])

    @app.exception_handler(WmlError)
    async def _domain_error(request: Request, exc: WmlError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_response(exc.errors())

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = {404: no_route_message(request.method, request.url.path),
                   405: f"{request.method} is not allowed on {quoted(request.url.path)}"}.get(exc.status_code,
                                                                                           str(exc.detail))
        return http_error_response(exc.status_code, message, exc.headers)

    async def caller(request: Request, _: Token) -> Account | RunRow:
        """Who the gate authenticated (``Token`` only documents the bearer scheme in the OpenAPI).
        Async: it only reads the request, so it costs no trip to a worker thread."""
        return request.state.caller

    Caller = Annotated[Account, Depends(caller)]

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True, "version": __version__, "executor": service.executor.name,
                "replica": service.leadership.replica.id, "leader": service.leadership.leading}

    @app.get("/livez")
    async def livez() -> dict:
        """Alive: answered on the event loop (async), so slow requests holding every worker thread
        or the run store do not make it fail (``health``)."""
        return {"ok": True}

    @app.get("/readyz", responses={503: {"model": Error}})
    def readyz() -> JSONResponse:
        """Ready for traffic: the run store answers with a schema this replica knows; else 503."""
        why = not_ready(service.store)
        if why is not None:
            return JSONResponse({"code": "not_ready", "message": why}, status_code=503)
        return JSONResponse({"ok": True})

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        return Response(service.telemetry.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/replicas")
    def replicas() -> list[Replica]:
        return service.replicas()

    @app.post("/v1/experiments", status_code=201)
    def submit(caller: Caller, body: ExperimentRequest) -> Experiment:
        return service.submit(caller, body)

    @app.get("/v1/experiments", response_model=list[Experiment])
    def experiments(caller: Caller, request: Request, limit: PageLimit = None,
                    cursor: Optional[str] = None) -> Response:
        size = limit or EXPERIMENTS_PAGE  # no limit: the newest page, as before paging
        page = page_of(service.experiments(caller, size + 1, key_of(cursor)), size, lambda e: e.id)
        return json_response(list[Experiment], page.items, next_link(request.url, page))

    @app.get("/v1/experiments/{experiment_id}")
    def experiment(caller: Caller, experiment_id: str) -> Experiment:
        return service.experiment(caller, experiment_id)

    @app.post("/v1/experiments/{experiment_id}/cancel")
    def cancel_experiment(caller: Caller, experiment_id: str) -> Experiment:
        return service.cancel_experiment(caller, experiment_id)

    @app.get("/v1/runs", response_model=list[Run])
    def runs(caller: Caller, request: Request, experiment: Optional[str] = None, state: Optional[str] = None,
             limit: PageLimit = None, cursor: Optional[str] = None) -> Response:
        if limit is None and cursor is None:  # every run, as before paging
            if experiment and not state:
                return ended_runs.response(caller, experiment)
            return json_response(list[Run], service.runs(caller, experiment, state))
        size = limit or EXPERIMENTS_PAGE
        page = page_of(service.runs(caller, experiment, state, key_of(cursor), size + 1), size, lambda r: r.id)
        return json_response(list[Run], page.items, next_link(request.url, page))

    @app.get("/v1/runs/{run_id}", response_model=Run)
    def run(caller: Caller, run_id: str) -> Response:
        return json_response(Run, service.run(caller, run_id))

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

    @app.get("/v1/summary", response_model=Summary)
    def summary(caller: Caller, offset: Annotated[int, Query(ge=0, le=2**53)] = 0,
                limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = PAGE_SIZE,
                expand: Annotated[list[str], Query()] = []) -> Response:
        """What the sidebar shows at once; ``expand=EXPERIMENT:OFFSET`` adds a page of its runs."""
        return json_response(Summary, summaries.summary(caller, offset, limit, expanded_of(expand)))

    @app.post("/v1/data/claims", status_code=201)
    def claim_data(caller: Caller, body: DataClaim) -> DataClaim:
        return service.claim_data(caller, body)

    @app.post("/v1/accounts", status_code=201)
    def create_account(caller: Caller, body: AccountRequest) -> AccountCreated:
        return service.accounts.create(caller, body.name, AccountLimits(**body.model_dump(exclude={"name"})))

    @app.patch("/v1/accounts/{name}")
    def update_account(caller: Caller, name: str, body: AccountLimits) -> AccountInfo:
        return service.accounts.update(caller, name, body)

    @app.post("/v1/accounts/{name}/disable")
    def disable_account(caller: Caller, name: str) -> AccountInfo:
        return service.accounts.disable(caller, name)

    @app.post("/v1/accounts/{name}/token", status_code=201)
    def rotate_token(caller: Caller, name: str) -> AccountToken:
        return service.accounts.rotate_token(caller, name)

    @app.get("/v1/events", response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}}}})
    async def events(request: Request, caller: Caller, experiment: Optional[str] = None) -> StreamingResponse:
        after = _event_id(request.headers.get("last-event-id"))
        subscription = await service.events.subscribe(caller.name, after)  # before the response starts
        return StreamingResponse(_sse(subscription, experiment), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # -- runners (the local executor's runners make the same calls over its pipe) ---------
    service.executor.on_runner_call = functools.partial(answer_channel, reports, timer=service.telemetry.time_call)
    for call in RUNNER_CALLS:
        app.add_api_route(call.path, _runner_route(call, reports, caller), methods=[call.method],
                          include_in_schema=False)

    return app


def _runner_route(call: RunnerCall, reports: RunnerReports, caller) -> Callable[..., Awaitable[Response]]:
    """The HTTP route of ``call``: its body is read as it comes (within the gate's limit), and
    answered in a worker thread."""
    async def route(request: Request, run: Annotated[RunRow, Depends(caller)]) -> Response:
        return await run_in_threadpool(respond, call, reports, run, await request.body())
    return route


def _rule(app: FastAPI, service: Service, reports: RunnerReports, scope: dict) -> Rule:
    """What the route a request asks for needs before its body: a runner's token on runner
    routes, none on public ones, an account's on every other (unknown routes too)."""
    path, params = route_of(app.router.routes, scope)
    limit = BODY_LIMITS.get(path, SMALL_BODY_BYTES)
    if path in PUBLIC_ROUTES:
        return Rule(None, limit)
    if path in OPERATOR_ROUTES:
        return Rule(lambda token: None if _on_this_host(scope) else _administrator(service, token), limit)
    if path and path.startswith("/v1/runner/"):
        return Rule(lambda token: reports.authenticate(params["run_id"], token), limit)
    return Rule(service.authenticate, limit)


def _on_this_host(scope: dict) -> bool:
    """Whether a request comes from this host itself, not through a proxy."""
    headers = dict(scope["headers"])
    client = scope.get("client")
    try:
        loopback = bool(client) and ipaddress.ip_address(client[0]).is_loopback
    except ValueError:  # not an IP address (a Unix socket)
        loopback = False
    return loopback and not any(name in headers for name in PROXY_HEADERS)


def _administrator(service: Service, token: Optional[str]) -> Account:
    """The administrator's account, from its token; ``Forbidden`` for any other account."""
    account = service.authenticate(token)
    if not account.admin:
        raise Forbidden("only the administrator (or a caller on the backend's host) may read this")
    return account


def _event_id(header: Optional[str]) -> Optional[int]:
    """The seq a ``Last-Event-ID`` header resumes after (None: no header, start from now)."""
    if not header:
        return None
    if not header.strip().isdigit():
        raise InvalidInput(f"Last-Event-ID: {quoted(header)} is not an id this stream sent")
    return int(header)


async def _sse(subscription: Subscription, experiment: Optional[str]):
    """Server-sent events, each with its seq as ``id``: run changes and new metrics (of one
    experiment if given), with heartbeats."""
    yield ": connected\n\n"
    async for sent in subscription.stream():
        if sent is None:
            yield ": heartbeat\n\n"
        elif experiment is None or _experiment_of(sent.event) == experiment:
            yield f"id: {sent.seq}\nevent: {sent.event['type']}\ndata: {sent.text}\n\n"


def _experiment_of(event: dict) -> Optional[str]:
    return event.get("experiment_id") or (event.get("run") or {}).get("experiment_id")
