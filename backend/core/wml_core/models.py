"""The wire model: every object the REST API returns, defined once.

The client parses responses into these classes and the JupyterLab sidebar mirrors them
(``labextension/src/model.ts``), so a field is added here first.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

from wml_core.states import ExperimentState, RunState


class Transition(BaseModel):
    """A run entered ``state`` at ``time`` (UTC)."""

    state: RunState
    time: datetime
    attempt: int = 1


class Run(BaseModel):
    """One training run: one hyperparameter assignment of an experiment."""

    id: str
    experiment_id: str
    account: str
    name: str
    state: RunState
    hparams: dict[str, Any] = Field(default_factory=dict)
    gpus: int = 0
    learners: int = 1
    gpu_seconds: float = 0.0
    #: Seconds its active attempts waited for the cluster to bind their GPUs: not billed.
    gpu_wait_seconds: float = 0.0
    #: Since when the current attempt waits for the cluster to bind its GPUs (not billed), if it does.
    waiting_since: Optional[datetime] = None
    exit_code: Optional[int] = None
    reason: Optional[str] = None
    #: The last lines of the training log, kept when a run fails.
    log_tail: list[str] = Field(default_factory=list)
    #: Latest value of each metric the run logged (plus ``step``).
    metrics: dict[str, float] = Field(default_factory=dict)
    transitions: list[Transition] = Field(default_factory=list)
    #: Where its outputs are: ``bucket/training-<id>/``.
    results: Optional[str] = None
    #: 1-based place in its account's queue while QUEUED.
    queue_position: Optional[int] = None
    #: What it waits for while QUEUED (``a GPU: 1 of 1 in use``, ``a run slot: 2 of 2 busy``), or
    #: while started but not yet placed by its cluster (``Kueue admission``); None otherwise.
    queued_reason: Optional[str] = None
    #: While QUEUED: seconds until it should start, from the durations of runs that ended and the
    #: slots (None while unknown).
    eta_seconds: Optional[float] = None
    attempt: int = 1
    #: Attempts that a disruption ended (a node drain, Kueue preemption...): not retries.
    preemptions: int = 0
    #: Why its last disrupted attempt ended and where it resumes (``preempted: ...; resumed at step N``).
    preempted: Optional[str] = None
    created: datetime
    #: What reproduces the run (in ``show`` of one run): code hash, data checksums, framework, seed.
    provenance: dict[str, Any] = Field(default_factory=dict)


class BestRun(BaseModel):
    """The experiment's best run by its metric and mode (``wml_core.ranking``): the best completed
    run; until one completes, the leading live run, marked ``provisional``."""

    run_id: str
    metric: str
    value: float
    #: The run's latest step when the value was read, if it logs steps.
    step: Optional[float] = None
    #: No run has completed yet: this is the leader among live runs, and its value may change.
    provisional: bool = False


class Experiment(BaseModel):
    """A definition plus a hyperparameter search: N runs."""

    id: str
    account: str
    name: str
    #: A summary: QUEUED, RUNNING, COMPLETED (all ended well), FAILED (some failed), HALTED.
    state: ExperimentState
    runs: dict[str, int] = Field(default_factory=dict)
    best: Optional[BestRun] = None
    metric: Optional[str] = None
    mode: str = "max"
    gpu_seconds: float = 0.0
    #: GPU time the early-stopped runs did not use, estimated from the completed runs' step times.
    gpu_seconds_saved: float = 0.0
    #: Seconds until its last run should end, from the durations of runs that ended and the slots
    #: (None while unknown, and once it has ended).
    eta_seconds: Optional[float] = None
    created: datetime
    definition: dict[str, Any] = Field(default_factory=dict)


class MetricPoint(BaseModel):
    """One ``run.log()`` call: its sequence number in the run, time, step and values."""

    seq: int
    time: float
    step: Optional[float] = None
    values: dict[str, float]


class LogChunk(BaseModel):
    """Part of a run's training log from byte ``offset``; ``next_offset`` is where to ask next."""

    offset: int
    next_offset: int
    data: str
    learner: int = 1
    complete: bool = False


class ExperimentUsage(BaseModel):
    """GPU time of one experiment."""

    id: str
    name: str
    gpu_seconds: float


class Usage(BaseModel):
    """An account's quota, what it holds now and the GPU time it has used."""

    account: str
    gpu_quota: int
    gpus_in_use: int
    queued_gpus: int
    gpu_seconds: float
    #: False when the GPUs are counted slots on a machine without GPUs (shown as "slots").
    real_gpus: bool = True
    #: Most runs it may run at once, as admission counts them (its own limit, else the executor's).
    run_slots: Optional[int] = None
    #: Runs it runs now (started, not ended) and runs it has queued.
    runs_in_use: int = 0
    queued_runs: int = 0
    #: What the first of its queued runs waits for (as its ``queued_reason``); None with none queued.
    waiting_for: Optional[str] = None
    experiments: list[ExperimentUsage] = Field(default_factory=list)


class AccountCreated(BaseModel):
    """A new account and its token (shown once)."""

    name: str
    gpu_quota: int
    token: str


class AccountToken(BaseModel):
    """An account's new token (shown once): the one it had no longer works."""

    name: str
    token: str


class AccountLimits(BaseModel):
    """What an account may use, as an administrator sets it; a field left out is not changed,
    and None means the operator's default (``wml backend start --account-slots`` ...)."""

    model_config = ConfigDict(extra="forbid")
    gpus: Optional[int] = Field(None, ge=0, le=10_000)
    slots: Optional[int] = Field(None, ge=1, le=10_000)
    cpus: Optional[float] = Field(None, gt=0, le=1_000_000)
    memory_bytes: Optional[int] = Field(None, gt=0, le=2**60)
    max_queued: Optional[int] = Field(None, ge=0, le=1_000_000)


class AccountInfo(BaseModel):
    """An account and the limits in force for it (its own, else the operator's defaults);
    a limit of None is no limit of the account's own (the backend's capacity still holds)."""

    name: str
    admin: bool = False
    disabled: bool = False
    gpu_quota: int
    #: Most runs it may hold at once.
    slots: Optional[int] = None
    #: Most CPUs (summed over learners) its runs may hold at once.
    cpus: Optional[float] = None
    #: Most memory its runs may hold at once, in bytes.
    memory_bytes: Optional[int] = None
    #: Most runs it may have waiting in the queue.
    max_queued: Optional[int] = None


class ExperimentRequest(BaseModel):
    """What a client submits: a manifest's text, the code as a base64 zip, and overrides."""

    model_config = ConfigDict(extra="forbid")
    manifest: str
    #: Shown in error messages as ``file:line: field: problem``: one line of a sane length.
    manifest_name: str = Field("manifest.yml", max_length=4096, pattern=r"^[^\x00-\x1f\x7f]*$")
    code_zip_b64: str
    #: Hyperparameter flags (``lr=loguniform(1e-4,1e-1)``) added to the manifest's space.
    sweep: list[str] = Field(default_factory=list)
    runs: Optional[int] = Field(None, ge=1, le=1000)
    #: Environment for ``${VAR}`` credentials in the manifest, resolved client-side at submit.
    env: dict[str, str] = Field(default_factory=dict)


class DataClaim(BaseModel):
    """A bucket (``prefix`` empty), or a prefix in it, of the backend's default store, claimed for
    the caller's account: ``wml upload`` claims its destination before it sends anything, and then
    no other account may claim it or name it as its training data."""

    model_config = ConfigDict(extra="forbid")
    bucket: str = Field(min_length=1, max_length=255)
    prefix: str = Field("", max_length=1024)


class StateEntered(BaseModel):
    """A state a run entered ``ago_s`` seconds before its runner's report said so (by the runner's
    own clock, so that no two hosts' clocks are compared)."""

    state: RunState
    ago_s: float = Field(ge=0)


class StateReport(BaseModel):
    """A runner telling the backend its run entered ``state`` (``ago_s`` seconds ago: the state was
    held back, ``entered``'s says why); and, first, the states it passed through since its last
    report, which it left too soon to report each on its own (``entered``)."""

    state: RunState
    exit_code: Optional[int] = None
    reason: Optional[str] = None
    log_tail: list[str] = Field(default_factory=list)
    ago_s: float = Field(default=0.0, ge=0)
    entered: list[StateEntered] = Field(default_factory=list, max_length=4)


class LogAppend(BaseModel):
    """A runner appending log text at byte ``offset`` (idempotent: resent chunks are ignored)."""

    learner: int = 1
    offset: int = Field(ge=0)
    data: str


class RunSpec(BaseModel):
    """What a runner needs to run its run: the command, the hyperparameters, where data goes."""

    run_id: str
    experiment_id: str
    attempt: int
    command: str
    hparams: dict[str, Any]
    gpus: int
    learners: int
    cpus: float = 1.0
    framework: str
    evaluation_metrics: Optional[dict[str, Any]] = None
    #: The object store (with credentials: only runners see this), and the buckets/prefixes.
    store: dict[str, Any]
    data_bucket: Optional[str] = None
    data_prefix: str = ""
    results_bucket: str
    results_prefix: str


class StoreCredential(BaseModel):
    """A short-lived credential of the default store, scoped to one run attempt's data (read) and
    results (write): what a runner asks the backend for, and again before it expires."""

    access_key: str
    secret_key: str
    session_token: str
    #: When it stops working (UTC).
    expires: datetime
