"""The run-store contract: ``SqliteRunStore`` (the embedded backend) and ``PostgresRunStore``
(a shared install, several replicas) implement it, and ``tests/test_store_contract.py`` holds both to it.

Every method is atomic, also across connections and processes on the same database: several
backend replicas may share one store. Times are UNIX seconds (floats) inside the store.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ContextManager, Iterable, Optional, TypeVar

from pydantic import BaseModel, Field

from wml_core.billing import run_gpu_seconds
from wml_core.definition import StoredDefinition
from wml_core.models import MetricPoint, Run, Transition
from wml_core.states import RunState


class Account(BaseModel):
    """An account: its name, GPU quota, whether it may administer others, and its own limits
    (None: the operator's default holds; ``wml_backend.accounts.limits_of``)."""

    name: str
    gpu_quota: int
    admin: bool = False
    #: Most runs it may hold at once.
    slots: Optional[int] = None
    #: Most CPUs (summed over learners) its runs may hold at once.
    cpus: Optional[float] = None
    #: Most memory its runs may hold at once, in bytes.
    memory_bytes: Optional[int] = None
    #: Most runs it may have QUEUED.
    max_queued: Optional[int] = None
    #: A disabled account's tokens are refused and its runs are not admitted.
    disabled: bool = False


class ExperimentRow(BaseModel):
    """An experiment as stored: the redacted definition (typed, read back with its defaults)
    and its search settings."""

    id: str
    account: str
    name: str
    definition: StoredDefinition
    metric: Optional[str] = None
    mode: str = "max"
    created: float


Model = TypeVar("Model", bound=BaseModel)


def trusted(cls: type[Model], values: dict[str, Any]) -> Model:
    """What ``cls.model_construct(**values)`` makes, for ``values`` that give every field of ``cls``
    (a model with no private attributes) already of its type, without its per-field work: most
    of the time of reading a long list of runs went there."""
    model = cls.__new__(cls)
    object.__setattr__(model, "__dict__", values)
    object.__setattr__(model, "__pydantic_fields_set__", set(values))
    object.__setattr__(model, "__pydantic_extra__", None)
    object.__setattr__(model, "__pydantic_private__", None)
    return model


#: The fields of the wire ``Run`` (``RunRow.wire``).
_WIRE_FIELDS = tuple(Run.model_fields)
#: A state by its stored name (``RunState(name)`` costs a dozen times more).
_STATES = {state.value: state for state in RunState}


class RunRow(Run):
    """A run as stored: the wire ``Run`` plus what only the backend needs."""

    seq: int = 0
    gpu_ids: list[int] = Field(default_factory=list)
    #: What the executor needs to find the run again after a restart (pid, job name...).
    handle: dict[str, Any] = Field(default_factory=dict)
    runner_token_hash: Optional[str] = None
    max_retries: int = 0
    #: CPUs and memory (bytes; None: not said) each learner asks for: they count against its account's limits.
    cpus: float = 1.0
    memory_bytes: Optional[int] = None
    #: The end that was decided for the run while it ran (e.g. HALTED: a user's cancel; STOPPED:
    #: its search stopped it early), recorded before its runner was told to stop, and why
    #: (``request_stop``): the runner's HALTED report, or its loss, ends the run so.
    stop_state: Optional[RunState] = None
    stop_reason: Optional[str] = None
    #: The end its runner reported (its exit code, reason and log tail stored with it): the run
    #: ends so when the executor says the runner has exited, not before (its GPUs are held and
    #: billed until then).
    reported_state: Optional[RunState] = None
    #: When (UNIX seconds) its runner, asked to stop or having reported its end, must have
    #: exited: past it, the leader kills the runner and ends the run as asked or reported. Kept
    #: here, not in a timer of one process, so that it holds whichever replica leads.
    deadline: Optional[float] = None

    def wire(self) -> Run:
        """The public view of this run (its fields are validated already: no second validation)."""
        mine = self.__dict__
        return trusted(Run, {name: mine[name] for name in _WIRE_FIELDS})

    def view(self, now: Optional[float] = None) -> Run:
        """What users see of this run: ``wire`` with its GPU time as of ``now`` (ended runs keep
        the GPU time stored with their end)."""
        run = self.wire()
        if not (self.state.terminal and not self.transitions):
            run.gpu_seconds = round(run_gpu_seconds(self, now), 3)
        return run


def run_event(row: RunRow, now: Optional[float] = None) -> dict[str, Any]:
    """The event that says what a run became (``type: run``, the run as users see it)."""
    return {"type": "run", "run": row.view(now).model_dump(mode="json")}


class Replica(BaseModel):
    """One backend process serving a store, as it last said it was alive (``heartbeat``)."""

    id: str
    url: str
    host: str
    pid: int
    version: str
    #: When it started and when it was last heard of (UNIX seconds, the database's clock).
    started: float = 0.0
    seen: float = 0.0
    #: Whether it holds the leader's lease now.
    leader: bool = False


class StateCount(BaseModel):
    """How many of an account's runs are in a state, the GPUs they hold (gpus x learners), and for
    QUEUED runs since when the longest waiting one waits (UNIX seconds)."""

    account: str
    state: RunState
    runs: int
    gpus: int = 0
    oldest: Optional[float] = None


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
    def account(self, name: str) -> Optional[Account]:
        """The account called ``name``, if any."""

    @abstractmethod
    def accounts(self) -> list[Account]:
        """Every account, by name."""

    @abstractmethod
    def update_account(self, name: str, **fields: Any) -> Account:
        """Set fields of an account (``gpu_quota``, ``slots``, ``disabled``...); return it as now stored.

        ``NotFound`` for an unknown account; ``ValueError`` for a name that is not an account field.
        """

    @abstractmethod
    def set_token(self, name: str, token_hash: str) -> None:
        """Give an account a new token: from this call on, the old one finds no account.
        ``NotFound`` for an unknown account."""

    @abstractmethod
    def count_runs(self, account: str, states: Iterable[RunState]) -> int:
        """How many runs of ``account`` are in one of ``states``."""

    @abstractmethod
    def held(self, account: str, states: Iterable[RunState]) -> tuple[int, int]:
        """How many runs of ``account`` are in one of ``states``, and the GPUs they hold or ask for
        (gpus x learners), counted from the queue index, without reading the runs."""

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
    def experiment_ids(self, account: str, limit: Optional[int] = None, after: Optional[str] = None) -> list[str]:
        """The ids of ``experiments(account, limit)``, in the same order, without reading the rows;
        ``after``: only those listed after experiment ``after`` (a page's last), none if it is unknown."""

    @abstractmethod
    def experiments_by_id(self, experiment_ids: list[str]) -> dict[str, ExperimentRow]:
        """The experiments of those ids that exist, by id."""

    @abstractmethod
    def run(self, run_id: str, account: Optional[str] = None, transitions: str = "all") -> Optional[RunRow]:
        """One run with its transitions in order, or None; None too if it is not ``account``'s.
        ``transitions`` as ``runs`` takes it: ``none`` when the reader needs none (most of what
        reading a run costs).

        Every run read has its ``queue_position`` when QUEUED: its 1-based place in its account's
        FIFO queue, as of the same instant as the rest of the row.
        """

    @abstractmethod
    def runs(self, account: Optional[str] = None, experiment: Optional[str | list[str]] = None,
             states: Optional[Iterable[RunState]] = None, transitions: str = "all",
             positions: bool = False, after: Optional[str] = None, limit: Optional[int] = None) -> list[RunRow]:
        """Runs matching every filter given (``experiment``: one id or a list), in submission order.

        ``transitions``: load each run's transitions for ``all`` runs, only ``live`` (not ended)
        ones, or ``none`` (lists that show no GPU time or history need none). ``positions``: fill
        the QUEUED runs' ``queue_position`` (as ``run`` does), which costs a count per queued run.
        ``after`` and ``limit`` page: only runs submitted after run ``after`` (a page's last; none if
        it is unknown, or not ``account``'s), at most ``limit`` of them. The order's key, ``seq``,
        never changes, so pages neither skip nor repeat a run whose state changes meanwhile.
        """

    @abstractmethod
    def queue_heads(self, wanted: dict[str, int]) -> dict[str, list[RunRow]]:
        """The first ``wanted[account]`` QUEUED runs of each account, in submission order, without
        transitions or positions: what admission considers, read from the queue index whatever
        its length."""

    @abstractmethod
    def queue(self, account: str, limit: int) -> list[tuple[str, str]]:
        """The first ``limit`` QUEUED runs of ``account`` in queue order, as (run id, experiment id):
        the queue's order from its index, without reading the runs."""

    @abstractmethod
    def requeued(self, account: str) -> list[str]:
        """The ids of ``account``'s QUEUED runs that ran before (an attempt past the first, or a
        preemption), in queue order: their GPU time so far is in their transitions."""

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
    def request_stop(self, run_id: str, state: RunState, reason: str) -> bool:
        """Record that run ``run_id`` is to end as ``state`` with ``reason`` once its runner stops
        (its ``stop_state`` and ``stop_reason``); whether this call recorded it.

        A compare-and-set, as ``transition``: only a run that has not ended and has no stop
        recorded yet gets one, so of any number of callers racing to stop a run (a user's cancel,
        the search, backend replicas) exactly one records its end and the others get False.
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
    def metrics_of(self, since: dict[str, int]) -> dict[str, list[MetricPoint]]:
        """For each run id of ``since``, its points with ``seq > since[run_id]`` in order: ``metrics``
        of many runs in one read."""

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
        """The credentials stored with an experiment, if any. They are stored encrypted
        (``secretbox``): the database alone, a dump or a backup of it, holds none in clear."""

    # -- data ownership ---------------------------------------------------------------------
    # An account owns the keys of a bucket of the default store that start with a prefix when it
    # claimed them (``wml upload`` claims its destination first) or when they are its runs'
    # results (``RunRow.results``). Prefixes are plain text: ``data/`` owns ``data/x``, not ``data2``.
    @abstractmethod
    def claim_data(self, account: str, bucket: str, prefix: str) -> set[str]:
        """Record that ``account`` owns the keys of ``bucket`` that start with ``prefix``, unless another
        account owns any of them: then the accounts that do, and nothing is recorded (an empty set:
        recorded, or already its own). A compare-and-set, as ``transition``: of accounts racing to
        claim overlapping prefixes, one gets its claim."""

    @abstractmethod
    def data_owners(self, bucket: str, prefix: str, inside: bool = False) -> set[str]:
        """The accounts that own any key of ``bucket`` starting with ``prefix``, or a key that ``prefix``
        starts with (a claim or a run's results that overlaps it either way); ``inside``: only those
        whose claim or run's results ``prefix`` lies inside (starts with)."""

    # -- events ----------------------------------------------------------------------------
    # What ``GET /v1/events`` streams, on every replica: each transition and each new run
    # records a ``run`` event (``run_event``) and each batch of new metric points a ``metrics``
    # event, in the transaction that makes the change, so no change is ever without its event.
    @abstractmethod
    def add_event(self, account: str, event: dict) -> int:
        """Record an event of ``account`` that no write records by itself (a note on a run); its seq."""

    @abstractmethod
    def events(self, after: int, account: Optional[str] = None, limit: int = 500) -> list[tuple[int, dict]]:
        """Up to ``limit`` events (of ``account``, when given) with ``seq > after``, as (seq, event), by seq.

        Seqs grow in commit order: once an event is readable, no event with a lower seq becomes
        readable later, so a reader that resumes after the last seq it read misses nothing.
        """

    @abstractmethod
    def event_log(self, after: int, limit: int = 500) -> list[tuple[int, str, dict]]:
        """Up to ``limit`` events of every account with ``seq > after``, as (seq, account, event),
        by seq (as ``events``)."""

    @abstractmethod
    def latest_event(self) -> int:
        """The highest seq recorded (0 before the first event)."""

    @abstractmethod
    def prune_events(self, before: float) -> int:
        """Delete the events recorded before ``before`` (UNIX seconds); how many."""

    # -- replicas and their leader --------------------------------------------------------------
    @abstractmethod
    def heartbeat(self, replica: Replica, ttl_s: float) -> bool:
        """Say that ``replica`` is alive, and renew or take the leader's lease for ``ttl_s``
        seconds; whether it leads now.

        A compare-and-set, as ``transition``: at most one replica holds an unexpired lease. The
        lease is free when nobody holds it, when it expired, or when its holder is known dead:
        its database session (PostgreSQL) or its process (SQLite) is gone, so a replica killed
        outright is replaced at the next heartbeat of another, not only after ``ttl_s``.
        """

    @abstractmethod
    def leave(self, replica_id: str) -> None:
        """Forget a replica that stops, and free its lease if it held it (another takes it at once)."""

    @abstractmethod
    def replicas(self) -> list[Replica]:
        """The live replicas (their session still lives), oldest first, with which one leads."""

    @abstractmethod
    def census(self) -> list[StateCount]:
        """Runs by account and state, the GPUs they hold, and each account's longest queued wait."""

    @staticmethod
    def transitions_of(rows: list[tuple[str, str, float, int]]) -> dict[str, list[Transition]]:
        """Group (run_id, state, time, attempt) rows into transition lists."""
        from datetime import datetime, timezone
        out: dict[str, list[Transition]] = {}
        for run_id, state, time, attempt in rows:
            out.setdefault(run_id, []).append(trusted(Transition, {
                "state": _STATES[state], "time": datetime.fromtimestamp(time, timezone.utc), "attempt": attempt}))
        return out
