"""The executor seam: start, cancel, re-attach. Every executor runs the same runner."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

#: Called with (run_id, attempt, exit_code or None) when a run's runner has ended, however it ended.
ExitCallback = Callable[[str, int, Optional[int]], None]


@dataclass(frozen=True)
class Capacity:
    """What an executor can hold at once: GPU ids to hand out and concurrent runs."""

    gpu_ids: tuple[int, ...]
    slots: int
    #: False when the GPUs are counted slots on a machine without GPUs (said in `status`).
    real_gpus: bool = True


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


class Executor(ABC):
    """Starts runners, stops them, and says when one has ended (``on_exit``)."""

    name: str = "executor"
    #: False: a run's GPUs are its own from admission. True: the cluster binds them later
    #: (``on_bound``), and the run is billed from then.
    binds_gpus_later: bool = False

    def __init__(self) -> None:
        self.on_exit: ExitCallback = lambda run_id, attempt, code, reason=None, log_tail=None: None
        #: Called with (run_id, text) when the executor learns why a started run still waits.
        self.on_note: Callable[[str, str], None] = lambda run_id, note: None
        #: Called with (run_id, attempt, time) when the cluster has bound a started run's GPUs.
        self.on_bound: Callable[[str, int, float], None] = lambda run_id, attempt, at: None

    @abstractmethod
    def capacity(self) -> Capacity:
        """GPUs and run slots this executor can hold at once."""

    @abstractmethod
    def start(self, launch: Launch) -> dict[str, Any]:
        """Start the runner of ``launch``; return a JSON handle (with ``attempt``) to find it again."""

    @abstractmethod
    def cancel(self, run_id: str, handle: dict[str, Any]) -> None:
        """Ask the run's runner to stop (it stores partial results and reports HALTED)."""

    @abstractmethod
    def reattach(self, run_id: str, handle: dict[str, Any]) -> bool:
        """After a backend restart: watch the run again; False if it is gone."""

    def close(self) -> None:  # noqa: B027 - optional hook; most executors hold nothing
        """Stop watching runs (runners themselves keep running)."""
