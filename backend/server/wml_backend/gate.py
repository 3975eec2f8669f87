"""The API's front door: who is calling, and how much they may send, before any body is read.

A request without a valid token is answered 401 from its headers alone, and a body is capped
by its route (small for accounts and runner states, a few MB for metrics and logs, large only
for new experiments): an unauthenticated client cannot make the backend read, buffer or parse
anything. Who a token belongs to is still decided by ``Service.authenticate`` and
``RunnerReports.authenticate``; the gate only calls them earlier, and hands the caller to the
route in ``request.state.caller``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wml_core.errors import Unauthorized, WmlError, quoted

#: Codes of the errors the framework itself answers (unknown route, wrong method, unreadable body).
HTTP_CODES = {400: "invalid", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}
#: The largest body of a route that names no limit of its own (an account, a runner's state with
#: its log tail...).
SMALL_BODY_BYTES = 256 << 10

#: Checks a request's bearer token (None: none given); returns the caller (an account, or a
#: runner's run) or raises a ``WmlError`` (401, 404...).
Authenticator = Callable[[Optional[str]], Any]


@dataclass(frozen=True)
class Rule:
    """What a route asks of a request before its body: a caller (None: anyone) and a size."""

    authenticate: Optional[Authenticator]
    max_body: int


def error_response(exc: WmlError) -> JSONResponse:
    """A domain error as the API answers it: its HTTP status and ``{code, message}``."""
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    return JSONResponse({"code": exc.code, "message": str(exc)}, status_code=exc.http_status, headers=headers)


def http_error_response(status: int, message: str, headers: Optional[dict] = None) -> JSONResponse:
    """An error of the framework's own (no route, a body too large...) as the API answers it."""
    return JSONResponse({"code": HTTP_CODES.get(status, "error"), "message": message}, status_code=status,
                        headers=headers)


def no_route_message(method: str, path: str) -> str:
    """Why a request for a route that does not exist is refused (404)."""
    return f"no such route: {method} {quoted(path)}"


def validation_response(errors: list[dict]) -> JSONResponse:
    """A request whose body does not parse, as the API answers it: 422 and its first problem."""
    return JSONResponse({"code": "invalid", "message": validation_message(errors)}, status_code=422)


def validation_message(errors: list[dict]) -> str:
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


def too_large_message(limit: int) -> str:
    """Why a body over ``limit`` bytes is refused (413)."""
    return f"the request body is over the limit of {size_text(limit)}"


def bearer_token(scope: Scope) -> Optional[str]:
    """The token of an ``Authorization: Bearer TOKEN`` header, if there is one."""
    value = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
    scheme, _, token = value.partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def size_text(size: int) -> str:
    """A byte count as an error message says it (``16 KiB``, ``8 MiB``)."""
    return f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"


class Gate:
    """ASGI middleware: authenticate, then cap the body, by the rule ``rule_for`` finds for the route."""

    def __init__(self, app: ASGIApp, rule_for: Callable[[Scope], Rule]):
        self.app, self.rule_for = app, rule_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rule = self.rule_for(scope)
        if rule.authenticate is not None:
            try:
                caller = await run_in_threadpool(rule.authenticate, bearer_token(scope))
            except WmlError as exc:
                await error_response(exc)(scope, receive, send)
                return
            scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, _limited(receive, scope, rule.max_body), send)


def _limited(receive: Receive, scope: Scope, limit: int) -> Receive:
    """``receive`` that answers 413 at the first read of a body over ``limit`` bytes, as declared
    (Content-Length: before any of it is read) or as sent (chunked: before the rest is received)."""
    declared = dict(scope["headers"]).get(b"content-length", b"")
    received = int(declared) if declared.isdigit() else 0

    async def limited() -> Message:
        nonlocal received
        if received > limit:
            raise _too_large(limit)
        message = await receive()
        if not declared:
            received += len(message.get("body", b""))
            if received > limit:
                raise _too_large(limit)
        return message

    return limited


def _too_large(limit: int) -> HTTPException:
    return HTTPException(413, too_large_message(limit))


def route_of(routes: list, scope: Scope) -> tuple[Optional[str], dict[str, Any]]:
    """The path template (``/v1/runs/{run_id}``) of the route ``scope`` asks for, whatever its
    method, and its path parameters; (None, {}) when no route has that path."""
    for route in routes:
        match, child = route.matches(scope)
        if match is not Match.NONE:
            return route.path, child.get("path_params", {})
    return None, {}
