"""Which run of an experiment is best: one rule for the backend, the live display and compare.

There is a best run only for a chosen metric (a sweep without ``--metric`` has none), and it is
judged among completed runs: a run still training may lead, but until a run completes that
leader is *provisional* (its value may still change). Failed, cancelled and early-stopped runs
are ranked after completed ones and never lead.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Optional

from wml_core.models import BestRun, Run
from wml_core.states import RunState

#: Run id → its latest values, where the caller knows newer ones than ``Run.metrics``.
Latest = Mapping[str, Mapping[str, float]]


def metric_value(run: Run, metric: Optional[str], latest: Optional[Latest] = None) -> Optional[float]:
    """The run's latest value of ``metric`` (None if it logged none, or only NaN)."""
    values = latest.get(run.id, run.metrics) if latest else run.metrics
    value = values.get(metric) if metric else None
    return None if value is None or math.isnan(value) else value


def ranked(runs: Iterable[Run], metric: Optional[str], mode: str, latest: Optional[Latest] = None) -> list[Run]:
    """Runs best first: completed runs that logged ``metric``, then the other runs that logged it,
    then the rest in their given order (ties keep that order too). No metric: the given order."""
    sign = -1.0 if mode == "max" else 1.0

    def key(item: tuple[int, Run]) -> tuple[int, float, int]:
        index, run = item
        value = metric_value(run, metric, latest)
        if value is None:
            return 2, 0.0, index
        return (0 if run.state is RunState.COMPLETED else 1), sign * value, index
    return [run for _, run in sorted(enumerate(runs), key=key)]


def best_run(runs: Iterable[Run], metric: Optional[str], mode: str,
             latest: Optional[Latest] = None) -> Optional[BestRun]:
    """The best completed run by ``metric``; until one completes, the leading live run (provisional)."""
    scored = [r for r in runs if metric_value(r, metric, latest) is not None]
    pool = ([r for r in scored if r.state is RunState.COMPLETED]
            or [r for r in scored if not r.state.terminal])
    if not pool:
        return None
    pick = ranked(pool, metric, mode, latest)[0]
    values = latest.get(pick.id, pick.metrics) if latest else pick.metrics
    return BestRun(run_id=pick.id, metric=metric, value=values[metric], step=values.get("step"),
                   provisional=pick.state is not RunState.COMPLETED)
