"""All the server extension's state: one backend ``Client`` and the sparkline cache.

Handlers stay thin: they parse the request and await one method here. Each method runs the
blocking ``Client`` calls in a worker thread, so the Jupyter server never waits on the backend.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional

from traitlets import Unicode
from traitlets.config import LoggingConfigurable

import httpx

from wml_core.errors import BackendUnavailable, Conflict, Unauthorized
from wml_core.models import Experiment, LogChunk, Run
from wml_jupyter.client import error_of
from wml_jupyter.codezip import zip_directory
from wml_jupyter.event_stream import CONNECT_TIMEOUT_S, READ_TIMEOUT_S

from .wire import PAGE_SIZE, Snapshot, SnapshotQuery, TrainRequest

#: Errors after which the client is rebuilt on the next call, so that a fixed configuration
#: (a new token, a restarted backend) is picked up by the sidebar's "Retry".
RECONNECT_ERRORS = (Unauthorized, BackendUnavailable)
#: A first line that makes a cell a ``%%wml train`` cell.
CELL_MAGIC = "%%wml"


class WmlManager(LoggingConfigurable):
    """Talks to the WML backend on the browser's behalf, with the user's wml configuration."""

    profile = Unicode(None, allow_none=True, config=True,
                      help="wml configuration profile to use (default: the current one, as `wml config show`)")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._client = None
        self._lock = threading.Lock()

    # -- the backend ----------------------------------------------------------------------
    def client(self):
        """The backend client, built from the configuration on first use."""
        with self._lock:
            if self._client is None:
                from wml_jupyter.client import Client
                self._client = Client(profile=self.profile)
            return self._client

    async def _call(self, work: Callable[..., Any], *args: Any) -> Any:
        """``work(client, *args)`` in a worker thread; drop the client if it cannot be used."""
        def run() -> Any:
            client = self.client()
            try:
                return work(client, *args)
            except RECONNECT_ERRORS:
                with self._lock:
                    self._client = None
                raise
        return await asyncio.to_thread(run)

    # -- what the sidebar asks ------------------------------------------------------------
    async def snapshot(self, query: SnapshotQuery) -> Snapshot:
        """Usage, a page of experiments and a page of runs of each expanded experiment: one
        request to the backend, which computes the sparklines too."""
        summary, url = await self._call(lambda c: (c.summary(query.offset, query.expanded, PAGE_SIZE), c.url))
        return Snapshot(backend=url, page_size=PAGE_SIZE, usage=summary.usage, experiments=summary.experiments,
                        runs=summary.runs)

    async def relay_events(self, last_event_id: Optional[str], start: Callable[[], None],
                           write: Callable[[bytes], Awaitable[None]]) -> None:
        """Pass the backend's server-sent events to ``write`` as they come, resuming after
        ``last_event_id``, until either side closes. ``start()`` runs once the backend has accepted
        the stream; before then a refusal is raised as its ``WmlError``."""
        url, headers = await self._call(lambda c: (f"{c.url}/v1/events", c.auth_headers()))
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        timeout = httpx.Timeout(CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S)
        try:
            async with httpx.AsyncClient(timeout=timeout) as http, http.stream("GET", url, headers=headers) as answer:
                if answer.status_code >= 400:
                    await answer.aread()
                    raise error_of(answer)
                start()
                async for chunk in answer.aiter_raw():
                    await write(chunk)
        except httpx.TransportError as exc:
            raise BackendUnavailable(f"cannot reach the backend's events at {url} ({type(exc).__name__})") from None

    async def cancel_run(self, run_id: str) -> Run:
        """Cancel one run (HALTED)."""
        return await self._call(lambda c: Run.model_validate(c.request("POST", f"/v1/runs/{run_id}/cancel")))

    async def cancel_experiment(self, experiment_id: str) -> Experiment:
        """Cancel every live run of an experiment."""
        return await self._call(lambda c: Experiment.model_validate(
            c.request("POST", f"/v1/experiments/{experiment_id}/cancel")))

    async def logs(self, run_id: str, offset: int, learner: int) -> LogChunk:
        """A run's training log from byte ``offset``."""
        return await self._call(lambda c: c.logs(run_id, offset, learner))

    async def results_zip(self, run_id: str) -> bytes:
        """A run's results (outputs, log, submitted code) as one zip, fetched by the server."""
        return await self._call(_results_zip, run_id)

    async def train(self, request: TrainRequest) -> Experiment:
        """Submit a notebook cell as an experiment, exactly as ``%%wml train`` would."""
        options = request.model_dump(exclude={"code"})
        return await self._call(lambda c: c.train_code(cell_source(request.code), **options).model)


def cell_source(code: str) -> str:
    """The cell's Python code, without a leading ``%%wml train ...`` line (the dialog gives options)."""
    first, _, rest = code.partition("\n")
    return rest if first.strip().startswith(CELL_MAGIC) else code


def _results_zip(client, run_id: str) -> bytes:
    if client.run(run_id).results is None:
        raise Conflict(f"run {run_id} has stored no results yet")
    with tempfile.TemporaryDirectory(prefix="wml-results-") as tmp:
        client.download(run_id, tmp)
        return zip_directory(Path(tmp))
