"""Searching a space with Optuna: first points, sequential TPE, and early stopping (ASHA, median).

All Optuna use lives in this module, imported lazily (importing Optuna costs about half a
second). The backend keeps no Optuna state: a study is rebuilt from the stored runs whenever
a decision is needed, so a restarted backend decides the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from wml_core.definition import ParamSpec, Search
from wml_core.errors import InvalidInput
from wml_core.search_space import DEFAULT_RUNS, MAX_RUNS, TPE_STARTUP, grid, grid_size, is_finite
from wml_core.search_space import count_values


@dataclass
class Trial:
    """What a search knows of one run: its point, how it ended, and its metric per step."""

    hparams: dict[str, Any]
    state: str = "running"  # running | completed | stopped | failed
    curve: dict[float, float] = field(default_factory=dict)

    @property
    def value(self) -> Optional[float]:
        """The metric at the last step logged."""
        return self.curve[max(self.curve)] if self.curve else None


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def startup_runs(n: int) -> int:
    """How many of a TPE search's ``n`` runs are random startup points, created up front.

    TPE cannot model anything before it has results, so its first runs are random draws
    (Optuna's default is 10); a small experiment keeps half its runs for TPE, and at least 2
    startup points. The rest are asked one by one as results arrive (sequential TPE).
    """
    return min(n, max(2, min(TPE_STARTUP, n // 2)))


def sample(space: Mapping[str, ParamSpec], search: Search, n: int | None = None) -> list[dict]:
    """The hyperparameter assignments an experiment creates when it starts.

    ``n`` (else ``search.runs``, else :data:`DEFAULT_RUNS`) is how many runs the experiment
    has. ``grid``: the whole grid; ``n`` is a cap, and a grid larger than ``n`` is an error
    rather than a silently truncated grid. ``random``: ``n`` draws, reproducible for one
    ``search.seed`` (None: fresh randomness). ``tpe``: only the :func:`startup_runs` random
    draws, identical to the first draws of a random search with the same seed.
    """
    count = n if n is not None else search.runs
    if count is not None and not 1 <= count <= MAX_RUNS:
        raise InvalidInput(f"runs must be between 1 and {MAX_RUNS} (got {count})")
    if search.algorithm == "grid":
        points = grid(space)
        if count is not None and count < len(points):
            raise InvalidInput(f"the grid has {len(points)} points but runs is {count}: "
                               f"raise runs or shrink the grid")
        return points
    if not count:  # unsaid: DEFAULT_RUNS, but never more draws than a finite space has points
        count = min(DEFAULT_RUNS, grid_size(space)) if is_finite(space) else DEFAULT_RUNS
    if search.algorithm == "tpe":
        count = startup_runs(count)
    return random_points(space, count, search.seed)


def random_points(space: Mapping[str, ParamSpec], count: int, seed: int | None) -> list[dict]:
    """``count`` independent draws from Optuna's RandomSampler, parameters in space order.

    ``RandomSampler.sample_independent`` ignores its study and trial, so we call it directly:
    the draws equal ``study.ask(distributions(space))`` with the same seed (a test checks this)
    at a third of the cost (about 0.1 ms a point instead of 0.4 ms).
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.RandomSampler(seed=seed)
    dists = distributions(space)
    return [{name: _plain(sampler.sample_independent(None, None, name, dist), space[name])
             for name, dist in dists.items()} for _ in range(count)]


def distributions(space: Mapping[str, ParamSpec]) -> dict[str, Any]:
    """The space as Optuna distributions (for samplers, and for a sequential TPE study)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    def convert(spec: ParamSpec):
        if spec.kind == "choice":
            return CategoricalDistribution(spec.values)
        if spec.kind == "int":
            return IntDistribution(int(spec.low), int(spec.high), step=int(spec.step or 1))
        if spec.kind == "quniform":  # Optuna wants high on the step grid
            high = round(spec.low + (count_values(spec) - 1) * spec.step, 12)
            return FloatDistribution(spec.low, high, step=spec.step)
        return FloatDistribution(spec.low, spec.high, log=spec.kind == "loguniform")

    return {name: convert(spec) for name, spec in space.items()}


def _plain(value: Any, spec: ParamSpec) -> Any:
    """A sampled value as a plain JSON type: int for int ranges, rounded float for quniform."""
    if spec.kind == "int":
        return int(value)
    if spec.kind == "quniform":
        return round(float(value), 12)
    if spec.kind == "choice":
        return value
    return float(value)


# ---- sequential TPE --------------------------------------------------------------------

def next_points(space: Mapping[str, ParamSpec], search: Search, trials: list[Trial], count: int) -> list[dict]:
    """``count`` new points from TPE given every trial so far (reproducible for one seed)."""
    optuna = _optuna()
    seed = None if search.seed is None else search.seed + len(trials)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(TPE_STARTUP, len(trials)))
    study = _study(search, space, trials, sampler=sampler)
    dists = distributions(space)
    return [{name: _plain(value, space[name]) for name, value in study.ask(dists).params.items()}
            for _ in range(count)]


def _study(search: Search, space: Mapping[str, ParamSpec], trials: list[Trial], sampler=None, pruner=None,
           rung_attrs: Optional[list[dict[str, float]]] = None):
    optuna = _optuna()
    from optuna.trial import TrialState, create_trial
    study = optuna.create_study(direction="maximize" if search.mode == "max" else "minimize",
                                sampler=sampler, pruner=pruner)
    dists = distributions(space)
    states = {"running": TrialState.RUNNING, "completed": TrialState.COMPLETE, "stopped": TrialState.PRUNED}
    for index, trial in enumerate(trials):
        state = states.get(trial.state)
        if state is None or (state is TrialState.COMPLETE and trial.value is None):
            continue  # failed runs, and runs that never logged the metric, teach nothing
        params = {k: v for k, v in trial.hparams.items() if k in dists}
        study.add_trial(create_trial(
            params=params, distributions={k: dists[k] for k in params}, state=state,
            value=trial.value if state is TrialState.COMPLETE else None,
            intermediate_values={int(s): v for s, v in trial.curve.items()},
            system_attrs=rung_attrs[index] if rung_attrs else None))
    return study


# ---- early stopping --------------------------------------------------------------------

def rung_steps(search: Search, up_to: float) -> list[int]:
    """Steps at which runs are compared: min_steps × reduction_factor^k, up to ``up_to``."""
    stopping = search.early_stopping
    if stopping is None or up_to < stopping.min_steps:
        return []
    if stopping.max_steps is not None:  # a run that has trained to the end is not stopped
        up_to = min(up_to, stopping.max_steps - 1)
        if up_to < stopping.min_steps:
            return []
    if stopping.type == "median":
        return list(range(stopping.min_steps, int(up_to) + 1))
    count = int(math.log(up_to / stopping.min_steps, stopping.reduction_factor) + 1e-9) + 1
    return [stopping.min_steps * stopping.reduction_factor ** k for k in range(count)]


def awaits_evidence(search: Search, trials: dict[str, Trial], run_id: str) -> bool:
    """Whether ASHA must wait before judging run ``run_id`` at the rung it has just reached: fewer
    runs reached it than the bootstrap count, the reduction factor (or all the runs that can: those
    there and the running ones still on their way). Meanwhile the run trains on, neither promoted
    nor stopped: the first runs of a rung are not promoted on no evidence, and are judged, at that
    rung, once the evidence is there."""
    trial = trials[run_id]
    if search.early_stopping is None or search.early_stopping.type != "asha" or not trial.curve:
        return False
    rungs = rung_steps(search, max(trial.curve))
    if not rungs:
        return False
    arrived = sum(_value_at(t, rungs[-1]) is not None for t in trials.values())
    coming = sum(t.state == "running" and _value_at(t, rungs[-1]) is None for t in trials.values())
    return arrived < min(search.early_stopping.reduction_factor, arrived + coming)


def early_stop(search: Search, space: Mapping[str, ParamSpec], trials: dict[str, Trial],
               run_id: str) -> Optional[str]:
    """Why run ``run_id`` should stop now (it fell below its rung's cut-off), or None."""
    trial = trials[run_id]
    if search.early_stopping is None or not trial.curve:
        return None
    usable = [i for i in trials if _usable(trials[i])]
    attrs = [_completed_rungs(search, trials[i], current=i == run_id) for i in usable]
    study = _study(search, space, [trials[i] for i in usable], pruner=_pruner(search), rung_attrs=attrs)
    if not study.pruner.prune(study, study.get_trials(deepcopy=False)[usable.index(run_id)]):
        return None
    return _reason(search, trials, trial)


def _completed_rungs(search: Search, trial: Trial, current: bool) -> dict[str, float]:
    """What Optuna's successive halving would have recorded: the value at each rung passed.

    The run being decided gets only the rungs before its latest one, so that the pruner
    judges it at the rung it has just reached.
    """
    if search.early_stopping.type != "asha" or not trial.curve:
        return {}
    rungs = rung_steps(search, max(trial.curve))
    if current:
        rungs = rungs[:-1]
    return {f"completed_rung_{k}": _value_at(trial, step) for k, step in enumerate(rungs)}


def _usable(trial: Trial) -> bool:
    return trial.state in ("running", "stopped") or (trial.state == "completed" and trial.value is not None)


def _pruner(search: Search):
    optuna = _optuna()
    stopping = search.early_stopping
    if stopping.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=stopping.reduction_factor,
                                           n_warmup_steps=stopping.min_steps - 1)
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=stopping.min_steps,
                                                  reduction_factor=stopping.reduction_factor,
                                                  min_early_stopping_rate=0)


def _reason(search: Search, trials: dict[str, Trial], trial: Trial) -> str:
    """The sentence users read: the rung, the run's value and the cut-off it missed."""
    step = max(s for s in trial.curve if s <= max(trial.curve))
    rung = max([r for r in rung_steps(search, step)] or [step])
    peers = [_value_at(t, rung) for t in trials.values()]
    peers = sorted((v for v in peers if v is not None), reverse=search.mode == "max")
    keep = max(1, len(peers) // search.early_stopping.reduction_factor)
    cut = peers[keep - 1] if search.early_stopping.type == "asha" else peers[len(peers) // 2]
    rule = "ASHA" if search.early_stopping.type == "asha" else "the median rule"
    return (f"stopped by {rule} at step {rung:g}: {search.metric} {_value_at(trial, rung):.4g} is "
            f"{'below' if search.mode == 'max' else 'above'} the cut-off {cut:.4g} of the "
            f"{len(peers)} runs that reached it")


def _value_at(trial: Trial, step: float) -> Optional[float]:
    """The metric at the last step ≤ ``step``, if the trial got that far."""
    if not trial.curve or max(trial.curve) < step:
        return None
    return trial.curve[max(s for s in trial.curve if s <= step)]
