"""Each run's metric history for the sidebar's sparklines, fetched incrementally and cached."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Optional

from wml_core.models import Run

#: Points a sparkline shows at most; longer histories are downsampled evenly.
SPARKLINE_POINTS = 40
#: Values kept per run; past this the history is halved (every other point), keeping its shape.
HISTORY_LIMIT = 400


@dataclass
class _History:
    """One run's values of one metric, and how far they have been read."""

    metric: str
    last_seq: int = -1
    latest: dict = field(default_factory=dict)
    values: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class MetricHistory:
    """Run id → metric history; asks the backend only for runs whose latest metrics changed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, _History] = {}

    def sparkline(self, client, run: Run, metric: Optional[str]) -> list[float]:
        """``metric``'s values for ``run`` (at most ``SPARKLINE_POINTS``), oldest first."""
        if not metric or metric not in run.metrics:
            return []
        with self._lock:
            history = self._runs.get(run.id)
            if history is None or history.metric != metric:
                history = self._runs[run.id] = _History(metric)
        with history.lock:  # one reader per run, so two snapshots never add a point twice
            if history.latest != run.metrics:
                _read_new_points(client, run, history)
            return downsample(history.values, SPARKLINE_POINTS)


def _read_new_points(client, run: Run, history: _History) -> None:
    """Append the points ``run`` logged since ``history`` was last read."""
    points = client.metrics(run.id, since=history.last_seq)
    history.values.extend(p.values[history.metric] for p in points if history.metric in p.values)
    if points:
        history.last_seq = points[-1].seq
    history.latest = dict(run.metrics)
    if len(history.values) > HISTORY_LIMIT:
        history.values[:] = history.values[::2]


def downsample(values: list[float], limit: int) -> list[float]:
    """At most ``limit`` evenly spaced values of ``values``, always keeping the last one."""
    if len(values) <= limit:
        return list(values)
    step = (len(values) - 1) / (limit - 1)
    return [values[round(i * step)] for i in range(limit)]
