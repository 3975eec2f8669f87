"""All the server extension's state: one backend ``Client`` and the sparkline cache.

Handlers stay thin: they parse the request and await one method here. Each method runs the
blocking ``Client`` calls in a worker thread, so the Jupyter server never waits on the backend.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Optional

from traitlets import Unicode
from traitlets.config import LoggingConfigurable

from wml_core.errors import BackendUnavailable, Conflict, Unauthorized
from wml_core.models import Experiment, LogChunk, Run
from wml_jupyter.codezip import zip_directory

from .sparklines import MetricHistory
from .wire import PAGE_SIZE, ExperimentPage, RunPage, Snapshot, SnapshotQuery, TrainRequest

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
        self._history = MetricHistory()

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
        """Usage, a page of experiments and a page of runs of each expanded experiment.

        The backend calls run concurrently: with a thousand runs each takes a noticeable time.
        """
        (usage, url), experiments = await asyncio.gather(
            self._call(lambda c: (c.usage(), c.url)), self._call(lambda c: [e.model for e in c.experiments()]))
        known = {e.id: e for e in experiments}
        expanded = [(known[exp_id], offset) for exp_id, offset in query.expanded.items() if exp_id in known]
        pages = await asyncio.gather(*(self._call(self._run_page, exp, offset) for exp, offset in expanded))
        page = experiments[query.offset:query.offset + PAGE_SIZE]
        return Snapshot(backend=url, usage=usage,
                        runs={exp.id: runs for (exp, _), runs in zip(expanded, pages)},
                        experiments=ExperimentPage(total=len(experiments), offset=query.offset, items=page))

    def _run_page(self, client, experiment: Experiment, offset: int) -> RunPage:
        runs = [r.model for r in client.runs(experiment=experiment.id)]
        page = runs[offset:offset + PAGE_SIZE]
        metric = experiment.metric or _first_metric(page)
        return RunPage(total=len(runs), offset=offset, items=page, metric=metric,
                       sparklines={r.id: self._history.sparkline(client, r, metric) for r in page})

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


def _first_metric(runs: list[Run]) -> Optional[str]:
    """The first metric name any run logged (``step`` is a position, not a metric)."""
    return next((k for r in runs for k in r.metrics if k != "step"), None)


def _results_zip(client, run_id: str) -> bytes:
    if client.run(run_id).results is None:
        raise Conflict(f"run {run_id} has stored no results yet")
    with tempfile.TemporaryDirectory(prefix="wml-results-") as tmp:
        client.download(run_id, tmp)
        return zip_directory(Path(tmp))
