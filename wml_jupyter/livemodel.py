"""The live state of one experiment, and the feed that keeps it current.

``ExperimentModel`` is plain Python: every run, the latest metrics, and every metric point
(columnar arrays, so 100 runs × 10,000 points is a few MB). ``ExperimentFeed`` fills it: the
runs and their points over REST when the event stream (re)connects, then ``run`` and
``metrics`` events as they come, filling any gap in a run's point sequence over REST.
Both are thread-safe: the feed writes from the stream's thread, views read from theirs.
"""

from __future__ import annotations

import threading
from array import array
from collections import Counter
from typing import Any, Callable, Optional, Protocol

import numpy as np

from wml_core import models
from wml_core.metric_line import PROGRESS_KEYS
from wml_core.ranking import best_run

PointListener = Callable[[str, list[dict]], None]


class ExperimentModel:
    """Runs, their latest metrics and every metric point of one experiment; thread-safe."""

    def __init__(self, experiment: models.Experiment, metric: Optional[str] = None):
        self.experiment, self._metric = experiment, metric
        self.lock = threading.RLock()
        self.runs: dict[str, models.Run] = {}
        #: run id → metric name → (steps, values), every point ever received.
        self.series: dict[str, dict[str, tuple[array, array]]] = {}
        self.latest: dict[str, dict[str, float]] = {}
        self.last_seq: dict[str, int] = {}
        #: Bumped on every change; ``series_version`` only when points arrive.
        self.version = self.series_version = 0
        self.changed = threading.Event()
        self.listeners: list[PointListener] = []

    @property
    def id(self) -> str:
        """The experiment's id."""
        return self.experiment.id

    @property
    def metric(self) -> Optional[str]:
        """The metric drawn: as asked, else the experiment's, else the first one logged (drawn
        only: without the experiment's metric no run is best, see ``best``)."""
        if self._metric or self.experiment.metric:
            return self._metric or self.experiment.metric
        names = sorted({k for values in self.latest.values() for k in values} - PROGRESS_KEYS)
        return names[0] if names else None

    def _touch(self, points: bool = False) -> None:
        self.version += 1
        self.series_version += points
        self.changed.set()

    def set_run(self, run: models.Run) -> bool:
        """Take a newer view of a run (an older one, e.g. a late event, is ignored). What only a
        re-read says (why it waits, when it should start) stays until the run moves on."""
        with self.lock:
            old = self.runs.get(run.id)
            if old is not None and (run.attempt, len(run.transitions)) < (old.attempt, len(old.transitions)):
                return False
            if old is not None and (run.attempt, len(run.transitions)) == (old.attempt, len(old.transitions)):
                run.queued_reason = run.queued_reason or old.queued_reason
                run.eta_seconds = run.eta_seconds if run.eta_seconds is not None else old.eta_seconds
            self.runs[run.id] = run
            latest, logged = self.latest.setdefault(run.id, {}), self.series.get(run.id, {})
            # the points are newer than the run's latest values, its step included
            latest.update((k, v) for k, v in run.metrics.items()
                          if k not in logged and not (k == "step" and logged))
            self._touch()
            return True

    def add_points(self, run_id: str, points: list[dict], complete: bool = False) -> bool:
        """Append the points not seen yet (by ``seq``). Streamed points must follow the last one
        seen: if some are missing this returns False and the caller fetches them, as ``complete``
        (every point after the last seen: sequence numbers may jump, e.g. at a retry)."""
        with self.lock:
            last = self.last_seq.get(run_id, -1)
            fresh = [p for p in points if p["seq"] > last]
            if not fresh:
                return True
            if fresh[0]["seq"] > last + 1 and not complete:
                return False
            series, latest = self.series.setdefault(run_id, {}), self.latest.setdefault(run_id, {})
            for point in fresh:
                x = point["step"] if point.get("step") is not None else point["seq"]
                for name, value in point["values"].items():
                    steps, values = series.get(name) or series.setdefault(name, (array("d"), array("d")))
                    steps.append(x)
                    values.append(value)
                latest.update(point["values"])
                if point.get("step") is not None:
                    latest["step"] = point["step"]
            self.last_seq[run_id] = fresh[-1]["seq"]
            self._touch(points=True)
        for listener in self.listeners:
            listener(run_id, fresh)
        return True

    def counts(self) -> Counter:
        """Runs by state name."""
        with self.lock:
            return Counter(r.state.value for r in self.runs.values())

    @property
    def done(self) -> bool:
        """Whether every run has ended."""
        with self.lock:
            return bool(self.runs) and all(r.state.terminal for r in self.runs.values())

    def count(self, run_id: str, metric: Optional[str]) -> int:
        """How many points of ``metric`` the run logged."""
        with self.lock:
            return len(self.series.get(run_id, {}).get(metric, ((), ()))[0])

    def curve(self, run_id: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """Copies of every (step, value) of ``metric`` the run logged."""
        with self.lock:
            steps, values = self.series.get(run_id, {}).get(metric, (array("d"), array("d")))
            return np.array(steps, dtype=float), np.array(values, dtype=float)

    def best(self) -> Optional[models.BestRun]:
        """The best run by the experiment's metric and mode, as the backend judges it
        (``wml_core.ranking``): None when the experiment has no metric."""
        with self.lock:
            runs = [self.runs[run_id] for run_id in sorted(self.runs)]
            return best_run(runs, self.experiment.metric, self.experiment.mode, self.latest)


class FeedSource(Protocol):
    """What a feed asks of its client (``wml_jupyter.Client`` is one)."""

    def events(self, on_event: Callable[[dict], None], on_connect: Optional[Callable[[], None]] = None) -> Any: ...
    def runs(self, experiment: Optional[str] = None, state: Optional[str] = None) -> list[Any]: ...
    def metrics(self, run_id: str, since: int = -1) -> list[models.MetricPoint]: ...
    def experiment(self, experiment_id: str) -> Any: ...


class ExperimentFeed:
    """Keeps an ``ExperimentModel`` current: REST state on (re)connection, then the stream.

    Runs come whole in ``run`` events; metric points are appended by sequence number, and a
    gap (points the stream dropped) is filled from ``GET /v1/runs/{id}/metrics?since=``.
    Nothing here raises into the caller's thread: a failed request is kept in ``error``.
    """

    def __init__(self, client: FeedSource, model: ExperimentModel):
        self.client, self.model = client, model
        self.synced = threading.Event()
        self._error: Optional[str] = None
        self.stream = client.events(self._on_event, on_connect=self.sync)

    @property
    def error(self) -> Optional[str]:
        """Why the display may be behind (None while it is current)."""
        return self._error or self.stream.error

    def start(self) -> "ExperimentFeed":
        """Start following the experiment."""
        self.stream.start()
        return self

    def close(self) -> None:
        """Stop following."""
        self.stream.close()

    def _guard(self, action: Callable[[], Any]) -> bool:
        try:
            action()
            self._error = None
            return True
        except Exception as exc:  # the display must outlive a failed request
            self._error = f"{type(exc).__name__}: {exc}"
            return False

    def sync(self) -> None:
        """Fetch every run and the metric points not yet seen."""
        if self._guard(self._sync):
            self.synced.set()

    def _sync(self) -> None:
        for run in self.client.runs(experiment=self.model.id):
            self.model.set_run(run.model)
            self._fill(run.id)

    def _fill(self, run_id: str) -> None:
        since = self.model.last_seq.get(run_id, -1)
        points = [p.model_dump() for p in self.client.metrics(run_id, since=since)]
        if points:
            self.model.add_points(run_id, points, complete=True)

    def reconcile(self) -> None:
        """Re-read the runs (queue positions and reasons, ETAs, GPU time, anything an event may have
        missed) and the experiment (its ETA)."""
        def runs() -> None:
            for run in self.client.runs(experiment=self.model.id):
                self.model.set_run(run.model)
            self.model.experiment = self.client.experiment(self.model.id).model
        self._guard(runs)

    def finish(self) -> bool:
        """If the experiment has ended: take the last points, stop following and say True."""
        ended = []

        def check() -> None:
            self._sync()
            experiment = self.client.experiment(self.model.id).model
            self.model.experiment = experiment
            ended.append(experiment.state.terminal)
        if self._guard(check) and ended[0]:
            self.close()
            return True
        return False

    def _on_event(self, kind: str, payload: dict) -> None:
        if kind == "metrics" and payload.get("experiment_id") == self.model.id:
            if not self.model.add_points(payload["run_id"], payload["points"]):
                self._guard(lambda: self._fill(payload["run_id"]))
        elif kind == "run" and payload.get("run", {}).get("experiment_id") == self.model.id:
            self.model.set_run(models.Run.model_validate(payload["run"]))
