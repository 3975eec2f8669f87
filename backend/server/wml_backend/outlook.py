"""What an account's queue looks like from the outside: why its queued runs wait, and when its
runs should start and its experiments end (``queued_reason``, ``eta_seconds``), computed here only.

The reason mirrors admission (``scheduler``): the head of an account's FIFO queue waits for what it
lacks first, its account's limits, then the executor's GPUs and run slots; every run behind it
waits for the same. The estimate plays the queue forward: each run takes as long as the runs of
its experiment that ended took (from GPUs assigned to their end), and as many run at once as the
account's limits and the executor allow for one run of its size. Unknown (None) until a run of the
experiment has ended.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from statistics import mean
from typing import Optional

from wml_backend.executors import Capacity
from wml_backend.rundb import Account, RunRow, RunStore
from wml_backend.scheduler import Held, Limits
from wml_backend.views import usage_view
from wml_core.models import Experiment, Run, Usage
from wml_core.states import ACTIVE, ExperimentState, RunState

#: Queued runs played forward at most (past them, an estimate says nothing useful).
MOST_SIMULATED = 10_000
#: Ended runs read to time a run (the first ones: a mean needs no more).
MOST_TIMED = 500
#: The end states whose runs tell how long a run takes (a failure says little about it).
_TIMED_ENDS = (RunState.COMPLETED, RunState.STOPPED)


def waiting_for(head: RunRow, mine: list[RunRow], everyone: list[RunRow], limits: Limits,
                capacity: Capacity) -> str:
    """What the head of an account's queue waits for, in the words a queued run shows."""
    need, held = Held.of(head), Held()
    for run in mine:
        held = held.plus(Held.of(run))
    gpu = "a GPU" if capacity.real_gpus else "a GPU slot"
    if capacity.counts_gpus and limits.gpus is not None and held.gpus + need.gpus > limits.gpus:
        return f"{gpu}: {held.gpus} of {limits.gpus} in use"
    if limits.slots is not None and held.runs + 1 > limits.slots:
        return f"a run slot: {held.runs} of {limits.slots} busy"
    if limits.cpus is not None and held.cpus + need.cpus > limits.cpus:
        return f"CPUs: {held.cpus:g} of {limits.cpus:g} in use"
    if limits.memory_bytes is not None and held.memory_bytes + need.memory_bytes > limits.memory_bytes:
        return f"memory: {held.memory_bytes / 2**30:.3g} of {limits.memory_bytes / 2**30:.3g} GiB in use"
    busy = sum(len(run.gpu_ids) for run in everyone)
    if capacity.counts_gpus and need.gpus > len(capacity.gpu_ids) - busy:
        return f"{gpu}: {busy} of {len(capacity.gpu_ids)} in use"
    if len(everyone) >= capacity.slots:
        return f"a run slot: {len(everyone)} of {capacity.slots} busy"
    return "admission: it fits and starts next"


def lanes(run: RunRow, limits: Limits, capacity: Capacity) -> int:
    """How many runs of ``run``'s size its account may run at once."""
    need = Held.of(run)
    bounds = [capacity.slots, limits.slots]
    if capacity.counts_gpus and need.gpus:
        bounds += [len(capacity.gpu_ids) // need.gpus, None if limits.gpus is None else limits.gpus // need.gpus]
    if limits.cpus is not None and need.cpus:
        bounds.append(int(limits.cpus // need.cpus))
    return max(1, min(b for b in bounds if b is not None))


def run_seconds(run: RunRow) -> Optional[float]:
    """How long an ended run held its GPUs (its last attempt: assigned to its end)."""
    start = _started(run)
    end = run.transitions[-1].time.timestamp() if run.transitions and run.state.terminal else None
    return end - start if start is not None and end is not None else None


@dataclass
class Outlook:
    """An account's queue played forward: each queued run's reason and start, each experiment's end."""

    reasons: dict[str, str] = field(default_factory=dict)
    starts: dict[str, float] = field(default_factory=dict)
    ends: dict[str, float] = field(default_factory=dict)

    def apply(self, run: Run) -> Run:
        """``run`` with its ``queued_reason`` and (while queued) ``eta_seconds`` to its start filled in."""
        run.queued_reason = self.reasons.get(run.id)
        if run.state is RunState.QUEUED:
            run.eta_seconds = _rounded(self.starts.get(run.id))
        return run

    def experiment_eta(self, experiment_id: str) -> Optional[float]:
        """Seconds until the experiment's last run should end; None when unknown or ended."""
        return _rounded(self.ends.get(experiment_id))


def outlook_of(store: RunStore, account: str, limits: Limits, capacity: Capacity,
               now: Optional[float] = None) -> Outlook:
    """The account's queue as of ``now``: reasons, starts and experiment ends (see the module)."""
    now = time.time() if now is None else now
    everyone = store.runs(states=ACTIVE, transitions="live")
    mine = [r for r in everyone if r.account == account]
    queued = store.queue(account, MOST_SIMULATED)  # ids only: the queue may be long
    head = store.queue_heads({account: 1})[account][:1] if queued else []
    out = Outlook()
    if head:
        reason = waiting_for(head[0], mine, everyone, limits, capacity)
        out.reasons = {run_id: reason for run_id, _ in queued}
    for run in mine:
        if run.state is RunState.PENDING and run.waiting_since is not None:
            out.reasons[run.id] = "Kueue admission" if not capacity.counts_gpus else "the cluster to place it"
    durations = _durations(store, {r.experiment_id for r in mine} | {experiment for _, experiment in queued})
    _play(out, mine, queued, durations, lanes(head[0], limits, capacity) if head else 1, now)
    return out


def _durations(store: RunStore, experiment_ids: set[str]) -> dict[str, float]:
    """The mean time a run of each experiment took, from its runs that ended (completed or stopped)."""
    if not experiment_ids:
        return {}
    taken = defaultdict(list)
    for run in store.runs(experiment=sorted(experiment_ids), states=_TIMED_ENDS, limit=MOST_TIMED):
        seconds = run_seconds(run)
        if seconds is not None:
            taken[run.experiment_id].append(seconds)
    return {exp: mean(values) for exp, values in taken.items()}


def _play(out: Outlook, active: list[RunRow], queued: list[tuple[str, str]], durations: dict[str, float],
          width: int, now: float) -> None:
    """Fill ``out.starts`` and ``out.ends`` (seconds from ``now``; ``inf``: unknown) by running the
    queue (run id, experiment id) forward on ``width`` lanes, the first ones freed as the active runs should end."""
    ends: dict[str, float] = defaultdict(float)
    left = []
    for run in active:
        started = _started(run)
        took = durations.get(run.experiment_id, math.inf)
        remaining = math.inf if started is None else max(took - (now - started), 1.0)
        ends[run.experiment_id] = max(ends[run.experiment_id], remaining)
        left.append(remaining)
    lanes_free = [0.0] * max(0, width - len(left)) + sorted(left)[:width]  # sorted: a heap already
    for run_id, experiment_id in queued:
        start = heapq.heappop(lanes_free)
        end = start + durations.get(experiment_id, math.inf)
        heapq.heappush(lanes_free, end)
        out.starts[run_id] = start
        ends[experiment_id] = max(ends[experiment_id], end)
    out.ends = dict(ends)


def _started(run: RunRow) -> Optional[float]:
    """When the run's current attempt got its GPUs (UNIX seconds)."""
    pending = next((t.time for t in reversed(run.transitions) if t.state is RunState.PENDING), None)
    return pending.timestamp() if pending else None


def _rounded(seconds: Optional[float]) -> Optional[float]:
    """Seconds as shown (tenths), None when unknown (None or ``inf``)."""
    return None if seconds is None or math.isinf(seconds) else round(seconds, 1)


def queue_usage(store: RunStore, account: Account, experiments: list[Experiment], limits: Limits,
                capacity: Capacity) -> Usage:
    """The account's usage (``experiments``: all of its, newest first), with the run slots and queue
    counted as admission counts them, from counts and the queue's head: no run list is read whole."""
    runs_in_use, gpus_in_use = store.held(account.name, ACTIVE)
    queued_runs, queued_gpus = store.held(account.name, [RunState.QUEUED])
    usage = usage_view(account, _with_requeued(store, account.name, experiments), gpus_in_use, queued_gpus)
    usage.real_gpus = capacity.real_gpus
    usage.run_slots = min(s for s in (limits.slots, capacity.slots) if s is not None)
    usage.runs_in_use, usage.queued_runs = runs_in_use, queued_runs
    head = store.queue_heads({account.name: 1})[account.name] if queued_runs else []
    if head:
        everyone = store.runs(states=ACTIVE, transitions="none")
        mine = [r for r in everyone if r.account == account.name]
        usage.waiting_for = waiting_for(head[0], mine, everyone, limits, capacity)
    return usage


def _with_requeued(store: RunStore, account: str, experiments: list[Experiment]) -> list[Experiment]:
    """``experiments`` with the GPU time of the queued runs that ran before added to the experiments
    summed up by their counts alone (every run queued: their runs were not read)."""
    waiting = {e.id for e in experiments if e.state is ExperimentState.QUEUED}
    ids = store.requeued(account) if waiting else []
    spent: dict[str, float] = defaultdict(float)
    for run_id in ids:
        run = store.run(run_id)
        if run is not None and run.experiment_id in waiting:
            spent[run.experiment_id] += run.view().gpu_seconds
    return [e.model_copy(update={"gpu_seconds": round(e.gpu_seconds + spent[e.id], 3)}) if e.id in spent else e
            for e in experiments]
