"""Each run's metric history, downsampled for the sidebar's sparklines: read from the run store
incrementally (only the points logged since the last read, of every run of a page in one read)
and kept in memory, so a summary costs the same however long the runs have logged."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Optional

from cachetools import LRUCache

from wml_core.models import Run
from wml_backend.rundb import RunStore

#: Points a sparkline shows at most; longer histories are downsampled evenly.
SPARKLINE_POINTS = 40
#: Values kept per run; past this the history is halved (every other point), keeping its shape.
HISTORY_LIMIT = 400
#: Runs whose history is kept in memory, the last shown.
RUNS_KEPT = 20_000


@dataclass
class _History:
    """One run's values of one metric, how far they have been read, and the latest values then."""

    metric: str
    last_seq: int = -1
    latest: dict = field(default_factory=dict)
    values: list[float] = field(default_factory=list)


class Sparklines:
    """Run id → the downsampled history of a metric, kept up to date from ``store``."""

    def __init__(self, store: RunStore):
        self.store = store
        self._lock = threading.Lock()  # one reader at a time, so two summaries never add a point twice
        self._runs: LRUCache[str, _History] = LRUCache(RUNS_KEPT)

    def of(self, runs: list[Run], metric: Optional[str]) -> dict[str, list[float]]:
        """``metric``'s values for each of ``runs`` that logged it (at most ``SPARKLINE_POINTS``), oldest first."""
        shown = [r for r in runs if metric and metric in r.metrics]
        with self._lock:
            histories = {r.id: self._history(r.id, metric) for r in shown}
            stale = {r.id: histories[r.id].last_seq for r in shown if histories[r.id].latest != r.metrics}
            for run_id, points in (self.store.metrics_of(stale) if stale else {}).items():
                _extend(histories[run_id], points)
            for run in shown:
                if run.id in stale:
                    histories[run.id].latest = dict(run.metrics)
            return {run_id: downsample(h.values, SPARKLINE_POINTS) for run_id, h in histories.items()}

    def _history(self, run_id: str, metric: str) -> _History:
        history = self._runs.get(run_id)
        if history is None or history.metric != metric:
            history = self._runs[run_id] = _History(metric)
        return history


def _extend(history: _History, points: list) -> None:
    """Append the values of ``points`` (read after ``history.last_seq``), halving a history grown too long."""
    history.values.extend(p.values[history.metric] for p in points if history.metric in p.values)
    if points:
        history.last_seq = points[-1].seq
    if len(history.values) > HISTORY_LIMIT:
        history.values[:] = history.values[::2]


def downsample(values: list[float], limit: int) -> list[float]:
    """At most ``limit`` evenly spaced values of ``values``, always keeping the first and the last."""
    if len(values) <= limit:
        return list(values)
    step = (len(values) - 1) / (limit - 1)
    return [values[round(i * step)] for i in range(limit)]
