"""GPU time: gpus × (time its outputs were stored − time its GPUs were assigned), per attempt."""

from __future__ import annotations

import time as _time
from typing import Iterable, Optional

from wml_core.models import Run, Transition
from wml_core.states import RunState


def gpu_seconds(transitions: Iterable[Transition], gpus: int, now: Optional[float] = None) -> float:
    """GPU-seconds of every span from PENDING to leaving the active states.

    A span that went from PENDING straight back to QUEUED never started (the backend stopped
    between assigning GPUs and starting the run) and is not billed.
    """
    total, start, previous = 0.0, None, None
    for t in transitions:
        stamp = t.time.timestamp()
        if t.state is RunState.PENDING and start is None:
            start = stamp
        elif start is not None and not t.state.active:
            never_started = t.state is RunState.QUEUED and previous is RunState.PENDING
            total += 0.0 if never_started else stamp - start
            start = None
        previous = t.state
    if start is not None:
        total += _now(now) - start
    return gpus * total


def run_gpu_seconds(run: Run, now: Optional[float] = None) -> float:
    """A run's GPU time: its active spans less the time it waited for the cluster to bind its GPUs
    (a Job suspended in Kueue, a pod no node can take yet)."""
    waiting = run.gpu_wait_seconds + (_now(now) - run.waiting_since.timestamp() if run.waiting_since else 0.0)
    gpus = run.gpus * run.learners
    return max(0.0, gpu_seconds(run.transitions, gpus, now) - gpus * waiting)


def _now(now: Optional[float]) -> float:
    return now if now is not None else _time.time()


def format_gpu_time(seconds: float) -> str:
    """GPU time (or any duration) for people: ``0 s``, ``4.2 s``, ``42 s``, ``3 min 4 s``, ``2.5 h``.

    Hours from one hour up, so large totals read as GPU-hours. The sidebar's ``formatGpuTime``
    (``labextension/src/format.ts``) writes the same.
    """
    if seconds < 0.05:
        return "0 s"
    if seconds < 9.95:
        return f"{seconds:.1f} s"
    whole = int(seconds + 0.5)  # halves up, as JavaScript's Math.round
    if whole < 3600:
        minutes, rest = divmod(whole, 60)
        return f"{minutes} min {rest} s" if minutes else f"{rest} s"
    hours = seconds / 3600
    return f"{hours:.1f} h" if hours < 99.95 else f"{hours:.0f} h"
