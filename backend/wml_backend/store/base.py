"""The run-store contract. ``SqliteRunStore`` implements it; a PostgreSQL store can too.

Every method is atomic. Times are UNIX seconds (floats) inside the store.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Iterable, Optional

from pydantic import BaseModel, Field

from ..models import MetricPoint, Run, Transition
from ..states import RunState


class Account(BaseModel):
    """An account: its name, GPU quota and whether it may administer others."""

    name: str
    gpu_quota: int
    admin: bool = False


class ExperimentRow(BaseModel):
    """An experiment as stored: the redacted definition and its search settings."""

    id: str
    account: str
    name: str
    definition: dict[str, Any]
    metric: Optional[str] = None
    mode: str = "max"
    created: float


class RunRow(Run):
    """A run as stored: the wire ``Run`` plus what only the backend needs."""

    seq: int = 0
    gpu_ids: list[int] = Field(default_factory=list)
    #: What the executor needs to find the run again after a restart (pid, job name...).
    handle: dict[str, Any] = Field(default_factory=dict)
    runner_token_hash: Optional[str] = None
    max_retries: int = 0

    def wire(self) -> Run:
        """The public view of this run."""
        return Run(**self.model_dump(include=set(Run.model_fields)))


class RunStore(ABC):
    """Durable state of the backend. Implementations must pass ``tests/test_store_contract.py``."""

    # -- accounts ---------------------------------------------------------------------------
    @abstractmethod
    def create_account(self, account: Account, token_hash: str) -> None:
        """Add an account; ``Conflict`` if the name is taken."""

    @abstractmethod
    def account_by_token(self, token_hash: str) -> Optional[Account]:
        """The account whose token hashes to ``token_hash``, if any."""

    @abstractmethod
    def accounts(self) -> list[Account]:
        """Every account."""

    # -- experiments and runs ------------------------------------------------------------
    @abstractmethod
    def insert_experiment(self, experiment: ExperimentRow, runs: list[RunRow], code: bytes,
                          secret: Optional[dict]) -> None:
        """Store an experiment, its QUEUED runs, its code zip and its credentials in one transaction."""

    @abstractmethod
    def code(self, experiment_id: str) -> bytes:
        """The code zip submitted with an experiment."""

    @abstractmethod
    def experiment(self, experiment_id: str, account: Optional[str] = None) -> Optional[ExperimentRow]:
        """One experiment (of ``account`` when given)."""

    @abstractmethod
    def experiments(self, account: str) -> list[ExperimentRow]:
        """An account's experiments, newest first."""

    @abstractmethod
    def run(self, run_id: str, account: Optional[str] = None) -> Optional[RunRow]:
        """One run with its transitions (of ``account`` when given)."""

    @abstractmethod
    def runs(self, account: Optional[str] = None, experiment: Optional[str] = None,
             states: Optional[Iterable[RunState]] = None) -> list[RunRow]:
        """Runs matching every filter given, in submission order."""

    @abstractmethod
    def transition(self, run_id: str, state: RunState, time: float, **fields: Any) -> RunRow:
        """Move a run to ``state`` and set ``fields``; ``Conflict`` if the move is illegal."""

    @abstractmethod
    def update_run(self, run_id: str, **fields: Any) -> None:
        """Set fields of a run without changing its state (handle, gpu_ids...)."""

    # -- metrics and logs ------------------------------------------------------------------
    @abstractmethod
    def add_metrics(self, run_id: str, points: list[MetricPoint]) -> list[MetricPoint]:
        """Store points (idempotent by ``seq``); return those that were new."""

    @abstractmethod
    def metrics(self, run_id: str, since: int = -1) -> list[MetricPoint]:
        """Points with ``seq > since``, in order."""

    @abstractmethod
    def append_log(self, run_id: str, learner: int, offset: int, data: bytes) -> int:
        """Store log bytes at ``offset`` (idempotent); return the log's length."""

    @abstractmethod
    def read_log(self, run_id: str, learner: int, offset: int, limit: int) -> bytes:
        """Up to ``limit`` bytes of the log from ``offset``."""

    # -- secrets ----------------------------------------------------------------------------
    @abstractmethod
    def secret(self, experiment_id: str) -> Optional[dict]:
        """The credentials stored with an experiment, if any."""

    @staticmethod
    def transitions_of(rows: list[tuple[str, str, float, int]]) -> dict[str, list[Transition]]:
        """Group (run_id, state, time, attempt) rows into transition lists."""
        from datetime import datetime, timezone
        out: dict[str, list[Transition]] = {}
        for run_id, state, time, attempt in rows:
            out.setdefault(run_id, []).append(Transition(
                state=RunState(state), time=datetime.fromtimestamp(time, timezone.utc), attempt=attempt))
        return out
