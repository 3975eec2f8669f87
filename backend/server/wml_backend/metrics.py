"""``GET /metrics``: how the backend is doing, in Prometheus' text format, for the operator.

What every replica reads alike from the run store (runs by account and state, GPUs held and
quotas, queues) is read at each scrape. Timings, event streams and executor errors are this
replica's own: sum them over replicas (``sum by (le) (rate(wml_admission_seconds_bucket[5m]))``).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator, Optional

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.types import ASGIApp, Receive, Scope, Send

from wml_core.models import Transition
from wml_core.states import RunState
from wml_backend.eventbus import EventBus
from wml_backend.leadership import Leadership
from wml_backend.lifecycle import Lifecycle
from wml_backend.rundb import RunRow, RunStore

#: The Content-Type of the text format.
CONTENT_TYPE = CONTENT_TYPE_LATEST
#: Buckets (seconds) of the latency histograms: from a fast API read to a long wait in the queue.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200)
#: Routes whose requests last as long as the client wants (the event stream): not timed.
UNTIMED = {"/v1/events"}


class Metrics:
    """This replica's registry: the store's census at each scrape, and the timings it observed."""

    def __init__(self, store: RunStore, lifecycle: Lifecycle, events: EventBus, leadership: Leadership):
        self.registry = CollectorRegistry()
        self.api = Histogram("wml_api_request_seconds", "Seconds the API took to answer, by route and method.",
                             ["route", "method"], buckets=BUCKETS, registry=self.registry)
        self.admission = Histogram("wml_admission_seconds", "Seconds runs waited in the queue before "
                                   "admission (QUEUED to PENDING).", buckets=BUCKETS, registry=self.registry)
        self.start = Histogram("wml_run_start_seconds", "Seconds from admission to training "
                               "(PENDING to PROCESSING).", buckets=BUCKETS, registry=self.registry)
        self.registry.register(_Census(store, lifecycle, events, leadership))
        lifecycle.on_move.append(self.observe)

    def observe(self, run: RunRow) -> None:
        """Time the run's admission or start, if its last transition was one."""
        last = run.transitions[-1] if run.transitions else None
        if last is not None and last.state is RunState.PENDING and len(run.transitions) > 1:
            self.admission.observe(_seconds(run.transitions[-2], last))
        elif last is not None and last.state is RunState.PROCESSING:
            admitted = _last(run.transitions, RunState.PENDING, last.attempt)
            if admitted is not None:
                self.start.observe(_seconds(admitted, last))

    def render(self) -> bytes:
        """The registry in the text format."""
        return generate_latest(self.registry)

    def time_call(self, route: str, method: str, seconds: float) -> None:
        """Note a call to ``route`` that took ``seconds``, however it came (HTTP, or a runner's pipe)."""
        if route not in UNTIMED:
            self.api.labels(route, method).observe(seconds)

    def timing(self, app: ASGIApp, route_of: Callable[[Scope], Optional[str]]) -> ASGIApp:
        """``app`` with each HTTP request timed by its route (``route_of``: its path template)."""
        async def timed(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            try:
                await app(scope, receive, send)
            finally:
                self.time_call(route_of(scope) or "unknown", scope["method"], time.perf_counter() - started)
        return timed


def _seconds(since: Transition, until: Transition) -> float:
    return max(0.0, until.time.timestamp() - since.time.timestamp())


def _last(transitions: list[Transition], state: RunState, attempt: int) -> Optional[Transition]:
    """The last transition to ``state`` in ``attempt``."""
    return next((t for t in reversed(transitions) if t.state is state and t.attempt == attempt), None)


class _Census:
    """Collects, at each scrape, what the run store says and what this replica counts."""

    def __init__(self, store: RunStore, lifecycle: Lifecycle, events: EventBus, leadership: Leadership):
        self.store, self.lifecycle, self.events, self.leadership = store, lifecycle, events, leadership

    def collect(self) -> Iterator[Metric]:
        yield from self._runs()
        yield GaugeMetricFamily("wml_event_subscribers", "Event streams (GET /v1/events) this replica serves.",
                                value=self.events.subscribers)
        yield CounterMetricFamily("wml_executor_errors", "Runs this replica's executor could not start.",
                                  value=self.lifecycle.executor_errors)
        yield GaugeMetricFamily("wml_leader", "1 on the replica that leads (admits runs, keeps timers).",
                                value=int(self.leadership.leading))

    def _runs(self) -> Iterator[Metric]:
        now, accounts = time.time(), self.store.accounts()
        runs = _gauge("wml_runs", "Runs by account and state.", "state")
        in_use = _gauge("wml_gpus_in_use", "GPUs held by an account's runs (PENDING to STORING).")
        quota = _gauge("wml_gpu_quota", "GPUs an account's runs may hold at once.")
        queued = _gauge("wml_queue_length", "An account's QUEUED runs.")
        oldest = _gauge("wml_queue_oldest_seconds", "Seconds the longest waiting QUEUED run of an account has waited.")
        totals: dict[str, dict[str, Any]] = {a.name: {"gpus": 0, "queued": 0} for a in accounts}
        for account in accounts:
            quota.add_metric([account.name], account.gpu_quota)
        for count in self.store.census():
            runs.add_metric([count.account, count.state.value], count.runs)
            total = totals.setdefault(count.account, {"gpus": 0, "queued": 0})
            total["gpus"] += count.gpus
            if count.state is RunState.QUEUED:
                total["queued"] = count.runs
                oldest.add_metric([count.account], max(0.0, now - count.oldest) if count.oldest else 0.0)
        for account, total in totals.items():
            in_use.add_metric([account], total["gpus"])
            queued.add_metric([account], total["queued"])
        yield from (runs, in_use, quota, queued, oldest)


def _gauge(name: str, documentation: str, *labels: str) -> GaugeMetricFamily:
    """A gauge family labelled by account (and ``labels``)."""
    return GaugeMetricFamily(name, documentation, labels=["account", *labels])
