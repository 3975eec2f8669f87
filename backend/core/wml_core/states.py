"""Run states, in FfDL's order, and which moves between them are allowed."""

from __future__ import annotations

from enum import Enum


class RunState(str, Enum):
    """Where a training run is in its life. A run never leaves a terminal state."""

    QUEUED = "QUEUED"            # accepted, waiting for quota or capacity
    PENDING = "PENDING"          # GPUs assigned, runner starting
    DOWNLOADING = "DOWNLOADING"  # code and data to the run
    PROCESSING = "PROCESSING"    # the training command runs
    STORING = "STORING"          # results to object storage
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    HALTED = "HALTED"            # cancelled by the user
    STOPPED = "STOPPED"          # stopped early by the search

    @property
    def terminal(self) -> bool:
        """Whether the run is over."""
        return self in TERMINAL

    @property
    def active(self) -> bool:
        """Whether the run holds its GPUs (PENDING through STORING)."""
        return self in ACTIVE


class ExperimentState(str, Enum):
    """One word for an experiment: how its runs stand together."""

    QUEUED = "QUEUED"        # every live run waits
    RUNNING = "RUNNING"      # some run lives
    COMPLETED = "COMPLETED"  # every run ended, none failed or was cancelled
    FAILED = "FAILED"        # every run ended, one failed
    HALTED = "HALTED"        # every run ended, one was cancelled

    @property
    def terminal(self) -> bool:
        """Whether every run of the experiment has ended."""
        return self not in (ExperimentState.QUEUED, ExperimentState.RUNNING)


TERMINAL = frozenset({RunState.COMPLETED, RunState.FAILED, RunState.HALTED, RunState.STOPPED})
ACTIVE = frozenset({RunState.PENDING, RunState.DOWNLOADING, RunState.PROCESSING, RunState.STORING})
_ORDER = [RunState.QUEUED, RunState.PENDING, RunState.DOWNLOADING, RunState.PROCESSING,
          RunState.STORING]


def can_move(current: RunState, new: RunState) -> bool:
    """Whether ``current`` → ``new`` is a legal transition.

    Forward through the pipeline, to any terminal state from a live one, and back to QUEUED
    from an active state (a retry, or a run whose start was lost in a backend crash).
    """
    if current.terminal:
        return False
    if new.terminal:
        return True
    if new is RunState.QUEUED:
        return current.active
    return _ORDER.index(new) > _ORDER.index(current)
