"""Drive an experiment's search while it runs: stop runs that fall behind (ASHA, median)
and, for TPE, ask for new points as results come in (sequential-in-parallel)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Optional

from wml_core.definition import ParamSpec, Search
from wml_core.models import MetricPoint
from wml_backend.search.decisions import Trial, awaits_evidence, early_stop, next_points, rung_steps, startup_runs
from wml_core.states import RunState
from wml_backend.rundb import ExperimentRow, RunRow, RunStore
from wml_backend.submit import run_rows

if TYPE_CHECKING:
    from wml_backend.lifecycle import Lifecycle

_TRIAL_STATES = {RunState.COMPLETED: "completed", RunState.STOPPED: "stopped",
                 RunState.FAILED: "failed", RunState.HALTED: "failed"}


def search_of(experiment: ExperimentRow) -> tuple[Search, dict[str, ParamSpec]]:
    """An experiment's search settings and hyperparameter space, as stored."""
    return experiment.definition.search, dict(experiment.definition.hyperparameters)


def trials_of(store: RunStore, experiment_id: str, metric: str) -> dict[str, Trial]:
    """Every started run of an experiment as a search trial: its point, end and metric curve."""
    trials = {}
    for run in store.runs(experiment=experiment_id):
        if run.state is RunState.QUEUED:
            continue
        curve = {p.step: p.values[metric] for p in store.metrics(run.id)
                 if p.step is not None and metric in p.values}
        trials[run.id] = Trial(run.hparams, _TRIAL_STATES.get(run.state, "running"), curve)
    return trials


def _up_to(trials: dict[str, Trial], run_id: str, step: float) -> dict[str, Trial]:
    """The trials as they were when run ``run_id`` reached ``step``: its curve cut there."""
    trial = trials[run_id]
    cut = Trial(trial.hparams, trial.state, {s: v for s, v in trial.curve.items() if s <= step})
    return {**trials, run_id: cut}


class SweepDriver:
    """Early-stopping decisions when a run's metric reaches a new rung; new TPE points when runs end."""

    def __init__(self, store: RunStore, lifecycle: "Lifecycle"):
        self.store, self.lifecycle = store, lifecycle
        self._lock = threading.Lock()
        self._checked: dict[str, float] = {}  # run id → highest rung already decided

    def on_metrics(self, run: RunRow, points: list[MetricPoint]) -> None:
        """Stop ``run`` if its new points reach a rung where it falls below the cut-off."""
        experiment = self.store.experiment(run.experiment_id)
        search, space = search_of(experiment)
        if search.early_stopping is None or not search.metric:
            return
        steps = [p.step for p in points if p.step is not None and search.metric in p.values]
        with self._lock:
            due = [r for r in rung_steps(search, max(steps, default=0)) if r > self._checked.get(run.id, 0)]
            if not due:
                return
            trials = trials_of(self.store, run.experiment_id, search.metric)
            reason = self._judge(search, space, trials, run.id, due)
        if reason:
            self.lifecycle.stop(self.store.run(run.id), RunState.STOPPED, reason)

    def _judge(self, search: Search, space: dict[str, ParamSpec], trials: dict[str, Trial], run_id: str,
               due: list[float]) -> Optional[str]:
        """Why the run stops at one of the ``due`` rungs, or None. ASHA judges it at each rung it
        passed, in order, even when one batch of points carries several (its first cut-off
        applies), and not yet at a rung too few runs reached (``awaits_evidence``): that rung and
        those after it are judged again with its next points. The median rule: the latest step only."""
        if search.early_stopping.type != "asha":
            self._checked[run_id] = max(due)
            return early_stop(search, space, _up_to(trials, run_id, due[-1]), run_id)
        for rung in due:
            upto = _up_to(trials, run_id, rung)
            if awaits_evidence(search, upto, run_id):
                return None
            self._checked[run_id] = rung
            reason = early_stop(search, space, upto, run_id)
            if reason:
                return reason
        return None

    def on_end(self, run: RunRow) -> None:
        """A run ended: a TPE search draws new points from every result so far."""
        experiment = self.store.experiment(run.experiment_id)
        search, space = search_of(experiment)
        if search.algorithm != "tpe" or not search.runs or run.state is RunState.HALTED:
            return
        with self._lock:
            runs = self.store.runs(experiment=experiment.id)
            if any(r.state is RunState.HALTED for r in runs):
                return  # the user cancelled the search
            live = sum(not r.state.terminal for r in runs)
            count = min(search.runs - len(runs), max(1, startup_runs(search.runs) - live))
            if count <= 0:
                return
            trials = list(trials_of(self.store, experiment.id, search.metric).values())
            points = next_points(space, search, trials, count)
            self.store.add_runs(run_rows(experiment, points, first=len(runs) + 1, total=search.runs))
        self.lifecycle.wake()
