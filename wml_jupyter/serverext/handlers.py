"""The ``/wml/`` routes: thin handlers over ``WmlManager``, behind Jupyter's authentication.

Every route needs a logged-in Jupyter user (and, for POST, Jupyter's XSRF check, which
``APIHandler`` applies to cookie-authenticated requests). Domain errors become HTTP codes in
exactly one place, ``error_status``, with a JSON ``{code, message}`` body.
"""

from __future__ import annotations

import functools
from typing import Any, Awaitable, Callable

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from pydantic import BaseModel
from tornado import web
from tornado.iostream import StreamClosedError

from wml_core.errors import Forbidden, InvalidInput, Unauthorized, WmlError

from .manager import WmlManager
from .wire import SnapshotQuery, TrainDefaults, TrainRequest, parse_body

#: An experiment or run id in a route.
ID = r"([a-z0-9][a-z0-9_-]*)"
#: The backend refused the *server's* credentials: a gateway problem, not the Jupyter user's
#: login, so it must not read as 401/403 (JupyterLab would take those as "log in again").
BAD_GATEWAY = 502


def error_status(err: WmlError) -> int:
    """The HTTP status the sidebar gets for a domain error."""
    if isinstance(err, (Unauthorized, Forbidden)):
        return BAD_GATEWAY
    return err.http_status


def route(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[None]]:
    """Authenticate, run the handler, and send its result (a model) or its ``WmlError`` as JSON."""
    @web.authenticated
    @functools.wraps(method)
    async def wrapper(self: "WmlHandler", *args: str) -> None:
        try:
            result = await method(self, *args)
        except WmlError as err:
            self.set_status(error_status(err))
            self.finish({"code": err.code, "message": str(err)})
            return
        if isinstance(result, BaseModel):
            self.finish(result.model_dump_json())
    return wrapper


class WmlHandler(APIHandler):
    """Base of every ``/wml/`` handler: holds the manager."""

    def initialize(self, manager: WmlManager) -> None:
        self.manager = manager


class SnapshotHandler(WmlHandler):
    """``GET /wml/snapshot?offset=N&expand=EXP:OFFSET``: what the sidebar shows."""

    @route
    async def get(self) -> BaseModel:
        query = SnapshotQuery.from_args(self.get_argument("offset", "0"), self.get_arguments("expand"))
        return await self.manager.snapshot(query)


class EventsHandler(WmlHandler):
    """``GET /wml/events``: the backend's server-sent events (run changes, new metrics), relayed
    chunk by chunk as they come, nothing buffered; ``Last-Event-ID`` resumes after an event."""

    @route
    async def get(self) -> None:
        try:
            await self.manager.relay_events(self.request.headers.get("Last-Event-ID"), self._start, self._send)
        except StreamClosedError:
            pass  # the browser left
        except WmlError:
            if not self._headers_written:
                raise
            # the stream had started: end it, and the browser reconnects with its Last-Event-ID
        if not self._finished:
            self.finish()

    def _start(self) -> None:
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")  # no proxy in front of Jupyter buffers it either

    async def _send(self, chunk: bytes) -> None:
        self.write(chunk)
        await self.flush()


class CancelRunHandler(WmlHandler):
    """``POST /wml/runs/ID/cancel``."""

    @route
    async def post(self, run_id: str) -> BaseModel:
        return await self.manager.cancel_run(run_id)


class CancelExperimentHandler(WmlHandler):
    """``POST /wml/experiments/ID/cancel``."""

    @route
    async def post(self, experiment_id: str) -> BaseModel:
        return await self.manager.cancel_experiment(experiment_id)


class LogsHandler(WmlHandler):
    """``GET /wml/runs/ID/logs?offset=N&learner=K``: a chunk of the training log."""

    @route
    async def get(self, run_id: str) -> BaseModel:
        offset, learner = self._int_argument("offset", 0), self._int_argument("learner", 1)
        return await self.manager.logs(run_id, offset, learner)

    def _int_argument(self, name: str, default: int) -> int:
        try:
            return int(self.get_argument(name, str(default)))
        except ValueError:
            raise InvalidInput(f"{name} must be a whole number") from None


class ResultsHandler(WmlHandler):
    """``GET /wml/runs/ID/results``: the run's results as a zip download."""

    @route
    async def get(self, run_id: str) -> None:
        data = await self.manager.results_zip(run_id)
        self.set_header("Content-Disposition", f'attachment; filename="{run_id}-results.zip"')
        self.finish(data, set_content_type="application/zip")


class TrainHandler(WmlHandler):
    """``GET /wml/train``: the dialog's defaults; ``POST``: a cell submitted with the dialog's options."""

    @route
    async def get(self) -> BaseModel:
        return TrainDefaults()

    @route
    async def post(self) -> BaseModel:
        request = parse_body(TrainRequest, self.request.body)
        experiment = await self.manager.train(request)
        self.set_status(201)
        return experiment


#: The route table (paths relative to ``BASE_URL/wml/``).
ROUTES = [
    (r"snapshot", SnapshotHandler),
    (r"events", EventsHandler),
    (rf"runs/{ID}/cancel", CancelRunHandler),
    (rf"runs/{ID}/logs", LogsHandler),
    (rf"runs/{ID}/results", ResultsHandler),
    (rf"experiments/{ID}/cancel", CancelExperimentHandler),
    (r"train", TrainHandler),
]


def setup_handlers(web_app: web.Application, manager: WmlManager) -> None:
    """Register ``ROUTES`` under the server's base URL."""
    base = url_path_join(web_app.settings["base_url"], "wml")
    web_app.add_handlers(".*$", [(url_path_join(base, path), handler, {"manager": manager})
                                 for path, handler in ROUTES])
