"""Build the wire objects users see from stored rows (derived fields computed here only)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from typing import Optional

from wml_core.models import Experiment, ExperimentUsage, Run, Usage
from wml_core.ranking import best_run
from wml_core.states import ExperimentState, RunState
from wml_backend.rundb import Account, ExperimentRow, RunRow


def run_view(row: RunRow, now: Optional[float] = None) -> Run:
    """The public ``Run`` with its GPU time filled in (its queue position comes with the row)."""
    return row.view(now)


def summary_state(counts: Counter) -> ExperimentState:
    """One word for an experiment: RUNNING while any run lives, else how it ended."""
    live = sum(counts[s.value] for s in RunState if not s.terminal)
    if live:
        queued_only = counts[RunState.QUEUED.value] == live
        return ExperimentState.QUEUED if queued_only else ExperimentState.RUNNING
    if counts[RunState.FAILED.value]:
        return ExperimentState.FAILED
    if counts[RunState.HALTED.value]:
        return ExperimentState.HALTED
    return ExperimentState.COMPLETED


def gpu_seconds_saved(runs: list[Run], step_seconds: Optional[dict[str, float]] = None) -> float:
    """GPU time stopped runs would have used to reach the completed runs' last step.

    ``step_seconds``: each completed run's seconds per step, timed from its metric points; without
    it a step costs the run's whole GPU time over its steps (start-up included: an overestimate).
    """
    done = [r for r in runs if r.state is RunState.COMPLETED and r.metrics.get("step") and r.gpus]
    stopped = [r for r in runs if r.state is RunState.STOPPED and r.gpus]
    if not done or not stopped:
        return 0.0
    timed = [step_seconds[r.id] for r in done if step_seconds and r.id in step_seconds]
    per_step = (sum(timed) / len(timed) if timed else
                sum(r.gpu_seconds / (r.gpus * r.learners) / r.metrics["step"] for r in done) / len(done))
    full = max(r.metrics["step"] for r in done)
    return sum(r.gpus * r.learners * per_step * max(0.0, full - r.metrics.get("step", 0)) for r in stopped)


def step_seconds(points: list) -> Optional[float]:
    """Seconds a step took on average, from a run's metric points (None with fewer than two steps)."""
    stepped = [p for p in points if p.step is not None]
    if len(stepped) < 2 or stepped[-1].step == stepped[0].step:
        return None
    return (stepped[-1].time - stepped[0].time) / (stepped[-1].step - stepped[0].step)


def experiment_view(row: ExperimentRow, runs: list[Run], step_times: Optional[dict[str, float]] = None,
                    counts: Optional[dict[str, int]] = None) -> Experiment:
    """The public ``Experiment``: state counts, summary state, best run, GPU time.

    ``counts`` (runs per state) stand for ``runs`` where no run has started, so none is needed.
    """
    counts = Counter(counts or (r.state.value for r in runs))
    state = summary_state(counts)
    search = row.definition.search
    if search.algorithm == "tpe" and counts.total() < (search.runs or 0) and state is ExperimentState.COMPLETED:
        state = ExperimentState.RUNNING  # between a run's end and the next points TPE draws
    return Experiment(
        id=row.id, account=row.account, name=row.name, state=state,
        runs=dict(counts), best=best_run(runs, row.metric, row.mode), metric=row.metric,
        mode=row.mode, gpu_seconds=round(sum(r.gpu_seconds for r in runs), 3),
        gpu_seconds_saved=round(gpu_seconds_saved(runs, step_times), 3),
        created=datetime.fromtimestamp(row.created, timezone.utc), definition=row.definition.redacted())


def usage_view(account: Account, experiments: list[Experiment], gpus_in_use: int, queued_gpus: int) -> Usage:
    """An account's quota, GPUs held and waited for, and GPU time per experiment (``experiments``:
    all of the account's, newest first)."""
    return Usage(
        account=account.name, gpu_quota=account.gpu_quota, gpus_in_use=gpus_in_use, queued_gpus=queued_gpus,
        gpu_seconds=round(sum(e.gpu_seconds for e in experiments), 3),
        experiments=[ExperimentUsage(id=e.id, name=e.name, gpu_seconds=e.gpu_seconds) for e in experiments])
