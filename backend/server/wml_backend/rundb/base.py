"""The run-store contract: ``SqliteRunStore`` (the embedded backend) and ``PostgresRunStore``
(a shared install, several replicas) implement it, and ``tests/test_store_contract.py`` holds both to it.

Every method is atomic, also across connections and processes on the same database: several
backend replicas may share one store. Times are UNIX seconds (floats) inside the store.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ContextManager, Iterable, Optional

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
        """The public view of this run (its fields are validated already: no second validation)."""
        return Run.model_construct(**{name: getattr(self, name) for name in Run.model_fields})


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
        """Every account, by name."""

    # -- experiments and runs ------------------------------------------------------------
    @abstractmethod
    def insert_experiment(self, experiment: ExperimentRow, runs: list[RunRow], code: bytes,
                          secret: Optional[dict]) -> None:
        """Store an experiment, its QUEUED runs (each with its QUEUED transition at the experiment's
        ``created`` time), its code zip and its credentials in one transaction: all or nothing."""

    @abstractmethod
    def add_runs(self, runs: list[RunRow]) -> None:
        """Add QUEUED runs to an existing experiment (a sequential search's new points), atomically."""

    @abstractmethod
    def code(self, experiment_id: str) -> bytes:
        """The code zip submitted with an experiment; ``NotFound`` if there is none."""

    @abstractmethod
    def experiment(self, experiment_id: str, account: Optional[str] = None) -> Optional[ExperimentRow]:
        """One experiment, or None; None too if it is not ``account``'s (when given)."""

    @abstractmethod
    def experiments(self, account: str, limit: Optional[int] = None) -> list[ExperimentRow]:
        """An account's experiments, newest first (by ``created``, then the later stored); at most ``limit``."""

    @abstractmethod
    def experiment_ids(self, account: str, limit: Optional[int] = None) -> list[str]:
        """The ids of ``experiments(account, limit)``, in the same order, without reading the rows."""

    @abstractmethod
    def experiments_by_id(self, experiment_ids: list[str]) -> dict[str, ExperimentRow]:
        """The experiments of those ids that exist, by id."""

    @abstractmethod
    def run(self, run_id: str, account: Optional[str] = None) -> Optional[RunRow]:
        """One run with its transitions in order, or None; None too if it is not ``account``'s.

        Every run read has its ``queue_position`` when QUEUED: its 1-based place in its account's
        FIFO queue, as of the same instant as the rest of the row.
        """

    @abstractmethod
    def runs(self, account: Optional[str] = None, experiment: Optional[str | list[str]] = None,
             states: Optional[Iterable[RunState]] = None, transitions: str = "all",
             positions: bool = False) -> list[RunRow]:
        """Runs matching every filter given (``experiment``: one id or a list), in submission order.

        ``transitions``: load each run's transitions for ``all`` runs, only ``live`` (not ended)
        ones, or ``none`` (lists that show no GPU time or history need none). ``positions``: fill
        the QUEUED runs' ``queue_position`` (as ``run`` does), which costs a count per queued run.
        """

    @abstractmethod
    def state_counts(self, experiment_ids: list[str]) -> dict[str, dict[str, int]]:
        """For each experiment, how many of its runs are in each state."""

    @abstractmethod
    def transition(self, run_id: str, state: RunState, time: float, **fields: Any) -> RunRow:
        """Move a run to ``state``, set ``fields`` and record the transition at ``time``.

        The transition's attempt is ``fields["attempt"]`` when given, else the run's. ``NotFound``
        for an unknown run; ``Conflict`` if ``states.can_move`` forbids the move from the run's
        current state (a terminal state is never left).

        This is a compare-and-set on the run's state: the check and the write happen in one
        transaction that holds the run's row (or the database) locked, so of any number of callers
        racing to make the same move (threads, connections, backend replicas), exactly one
        succeeds and the others get ``Conflict``. Admission relies on it: QUEUED → PENDING is
        legal only from QUEUED, so a run is admitted once per time it is queued.
        """

    @abstractmethod
    def update_run(self, run_id: str, **fields: Any) -> None:
        """Set fields of a run without changing its state (handle, gpu_ids...).

        ``ValueError`` for a name that is not a stored run field; nothing for an unknown run.
        """

    @abstractmethod
    def admission_lock(self) -> ContextManager[None]:
        """Hold the store-wide admission lock for a block, waiting while anyone else holds it.

        Only one holder at a time, across threads, connections and backend replicas, so each
        replica plans admissions against the runs the others admitted: quotas and capacity
        are checked against a settled view, not two views taken at once. The lock is released
        when the block ends, or when its holder's connection or process dies.
        """

    # -- metrics and logs ------------------------------------------------------------------
    @abstractmethod
    def add_metrics(self, run_id: str, points: list[MetricPoint]) -> list[MetricPoint]:
        """Store points (idempotent by ``seq``: resent ones are ignored); return those that were new.

        The new points' values (and ``step``) are merged into the run's ``metrics``, its latest values.
        """

    @abstractmethod
    def metrics(self, run_id: str, since: int = -1) -> list[MetricPoint]:
        """Points with ``seq > since``, in order."""

    @abstractmethod
    def append_log(self, run_id: str, learner: int, offset: int, data: bytes) -> int:
        """Append bytes to a learner's log if ``offset`` is its length; return the length after.

        Idempotent: a chunk resent at an offset already stored (or any offset but the end) is
        ignored, so a runner that retries never duplicates lines.
        """

    @abstractmethod
    def read_log(self, run_id: str, learner: int, offset: int, limit: int) -> bytes:
        """Up to ``limit`` bytes of a learner's log from any byte ``offset`` (empty past the end)."""

    # -- summaries of ended experiments --------------------------------------------------------
    @abstractmethod
    def save_summaries(self, summaries: dict[str, dict]) -> None:
        """Keep ended experiments' summaries, by id (they never change again); the first kept stays."""

    @abstractmethod
    def summaries(self, experiment_ids: list[str]) -> dict[str, dict]:
        """The kept summaries of those of ``experiment_ids`` that have one."""

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
