"""The executor seam: start, cancel, kill, re-attach. Every executor runs the same runner."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

#: Seconds a cancelled runner has, unless its executor says otherwise, to store partial results
#: and report before it is killed.
CANCEL_GRACE_S = 10.0


class ExitCallback(Protocol):
    """Called when a run's runner has ended, however it ended."""

    def __call__(self, run_id: str, attempt: int, exit_code: Optional[int], reason: Optional[str] = None,
                 log_tail: Optional[list[str]] = None, disruption: Optional[str] = None) -> None:
        """``exit_code`` None: unknown (not our child, or never started). ``reason`` and
        ``log_tail``: what the executor knows of why it ended (out of memory, evicted...).
        ``disruption``: the cluster stopped it for a reason of its own, which the backend did
        not ask for (evicted from node X, its Job suspended by Kueue...): unless a stop was
        recorded for the run, it is queued again (``Lifecycle.preempt``)."""


#: Called with (run_id, handle) by an executor that knows a run's handle before its runner holds
#: the launch (the local executor): the start is recorded then, so that the runner's first calls
#: find it recorded rather than waiting for ``start`` to return.
HandleCallback = Callable[[str, dict[str, Any]], None]
#: Called with (run_id, text) when the executor learns why a started run still waits.
NoteCallback = Callable[[str, str], None]
#: Called with (run_id, attempt, UNIX time) when the cluster has bound a started run's GPUs.
BoundCallback = Callable[[str, int, float], None]
#: Called with (run_id, attempt, reason) when the cluster itself stops a started run (its time
#: limit): the run ends FAILED with ``reason``, whatever its runner, told to stop, then reports.
StoppingCallback = Callable[[str, int, str], None]
#: Answers a call a runner made over a channel of the executor's own, as the API would over HTTP
#: (a ``wml_core.runner_channel`` message in, its answer out).
RunnerCallCallback = Callable[[bytes], bytes]


@dataclass(frozen=True)
class Capacity:
    """What an executor can hold at once: GPU ids to hand out and concurrent runs."""

    gpu_ids: tuple[int, ...]
    slots: int
    #: False when the GPUs are counted slots on a machine without GPUs (said in `status`).
    real_gpus: bool = True
    #: False: the cluster holds each account's GPU quota (Kueue, ``Executor.sync_account``): the
    #: backend starts runs as slots allow, hands out no GPU ids, and the cluster admits them.
    counts_gpus: bool = True


@dataclass(frozen=True)
class Launch:
    """Everything needed to start one run's runner."""

    run_id: str
    experiment_id: str
    account: str
    attempt: int
    gpus: int
    gpu_ids: tuple[int, ...]
    learners: int
    cpus: float
    memory_bytes: Optional[int]
    #: Environment of the runner: backend URL, the run's token, its id.
    env: dict[str, str] = field(default_factory=dict, repr=False)
    framework: str = "custom"
    framework_version: Optional[str] = None
    gpu_type: Optional[str] = None
    #: Seconds the run may take before it is stopped as timed out; None: no limit.
    timeout_s: Optional[float] = None
    #: A ``mount_volume`` data store's directory (its ``connection.path``), read and written in
    #: place; None: the run's store is object storage (or the backend's default store).
    volume_path: Optional[str] = None


class Executor(ABC):
    """Starts runners, stops them, and says when one has ended (``on_exit``)."""

    name: str = "executor"
    #: False: a run's GPUs are its own from admission. True: the cluster binds them later
    #: (``on_bound``), and the run is billed from then.
    binds_gpus_later: bool = False
    #: Seconds after ``cancel`` before the caller may ``kill`` a runner that has not ended.
    cancel_grace_s: float = CANCEL_GRACE_S
    #: Why the runs of different accounts are not kept apart here (their commands could read each
    #: other's files, or the backend's); None: they are (a user of their own, a pod of their own).
    isolation_gap: Optional[str] = None

    def __init__(self) -> None:
        self.on_exit: ExitCallback = lambda run_id, attempt, code, reason=None, log_tail=None, disruption=None: None
        self.on_handle: HandleCallback = lambda run_id, handle: None
        self.on_note: NoteCallback = lambda run_id, note: None
        self.on_bound: BoundCallback = lambda run_id, attempt, at: None
        self.on_stopping: StoppingCallback = lambda run_id, attempt, reason: None
        #: None: runners call the API over HTTP only (an executor that has no channel of its own
        #: to them ignores it).
        self.on_runner_call: Optional[RunnerCallCallback] = None

    @abstractmethod
    def capacity(self) -> Capacity:
        """GPUs and run slots this executor can hold at once."""

    @abstractmethod
    def start(self, launch: Launch) -> dict[str, Any]:
        """Start the runner of ``launch``; return a JSON handle (with ``attempt``) to find it again
        (said to ``on_handle`` first, if the executor knows it before the runner holds the launch)."""

    @abstractmethod
    def cancel(self, run_id: str, handle: dict[str, Any]) -> None:
        """Ask the run's runner to stop (it stores partial results and reports HALTED).

        Asking again is harmless: a backend that restarted mid-stop asks again."""

    @abstractmethod
    def kill(self, run_id: str, handle: dict[str, Any]) -> None:
        """Stop the run's runner and all it started at once, with no grace (a runner that did
        not end within ``cancel_grace_s`` of ``cancel``); ``on_exit`` follows."""

    @abstractmethod
    def reattach(self, run_id: str, handle: dict[str, Any]) -> bool:
        """After a backend restart: watch the run again; False if it is gone."""

    def reconcile(self, live: Callable[[str, int], bool]) -> None:  # noqa: B027 - optional hook
        """After a backend restart, once every live run is re-attached: remove what earlier
        attempts left behind (a Kubernetes Job of a run that ended while no backend watched it).
        ``live(run_id, attempt)`` says whether that attempt of the run is still on."""

    def sync_account(self, name: str, gpus: int, cpus: Optional[float] = None,
                     memory_bytes: Optional[int] = None) -> None:  # noqa: B027 - optional hook
        """Make the cluster hold account ``name``'s quota as the backend has it (Kueue: its
        ClusterQueue and LocalQueue), after the account was created or changed and at start.
        Nothing to do where the backend alone admits runs."""

    def pending_since(self, run_id: str, started: float) -> Optional[float]:
        """Since when a started run has waited to be placed, for the pending timeout: ``started``,
        or later when it first waited in the cluster's own queue (Kueue admitted it since);
        None while it still waits there (the queue is a queue: no timeout runs)."""
        return started

    def close(self) -> None:  # noqa: B027 - optional hook; most executors hold nothing
        """Stop watching runs (runners themselves keep running)."""
