"""Run lifecycle: state changes, admission, runner reports and runner exits, in one place.

Every state change goes through ``Lifecycle.move`` so that it is stored, published as an
event, and wakes the scheduler when GPUs are freed.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, Optional

from .billing import run_gpu_seconds
from .errors import Conflict
from .events import EventBus
from .executors import Executor, Launch
from .models import Transition
from .scheduler import plan_admissions
from .settings import Settings
from .states import ACTIVE, RunState
from .storage import StoreConfig
from .store import RunRow, RunStore
from .views import run_view

log = logging.getLogger("wml_backend")

#: Runner variables holding the run's store credentials (the runner prefers them to the spec's).
STORE_CREDENTIAL_ENV = ("WML_STORE_ACCESS_KEY", "WML_STORE_SECRET_KEY")
#: Lines of the training log kept with a failed run.
LOG_TAIL_LINES = 20
#: A cancelled runner that has not reported HALTED after this long is killed.
CANCEL_GRACE_S = 10.0


def store_credentials(secret: Optional[dict], default: StoreConfig) -> dict[str, str]:
    """The run's store credentials as runner variables, which executors deliver as secrets
    (a per-run Kubernetes Secret); the default S3 store's come from the backend's boto3 chain."""
    keys = (secret or {}).get("access_key"), (secret or {}).get("secret_key")
    if secret is None and default.kind == "s3":
        import boto3
        found = boto3.Session().get_credentials()
        frozen = found.get_frozen_credentials() if found else None
        keys = (frozen.access_key, frozen.secret_key) if frozen else (None, None)
    return {name: value for name, value in zip(STORE_CREDENTIAL_ENV, keys) if value}


def launch_of(run: RunRow, definition: dict, gpu_ids: tuple[int, ...], env: dict[str, str]) -> Launch:
    """What the executor needs to start ``run`` of an experiment with ``definition`` on ``gpu_ids``."""
    return Launch(
        run_id=run.id, experiment_id=run.experiment_id, account=run.account, attempt=run.attempt, gpus=run.gpus,
        gpu_ids=gpu_ids, learners=run.learners, cpus=definition.get("cpus", 1),
        memory_bytes=definition.get("memory_bytes"), framework=definition.get("framework", "custom"),
        framework_version=definition.get("framework_version"), gpu_type=definition.get("gpu_type"), env=env)


def token_hash(token: str) -> str:
    """How tokens are stored: never in plain text."""
    return hashlib.sha256(token.encode()).hexdigest()


def _waited(run: RunRow, until: float) -> float:
    """The run's unbilled wait for GPUs, with the current one ending at ``until``."""
    return run.gpu_wait_seconds + max(0.0, until - run.waiting_since.timestamp())


class Lifecycle:
    """Moves runs through their states and keeps the executor busy within quotas."""

    def __init__(self, settings: Settings, store: RunStore, executor: Executor, events: EventBus):
        self.settings, self.store, self.executor, self.events = settings, store, executor, events
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._admit_lock = threading.Lock()
        #: Runs asked to stop, with the state and reason they end with (HALTED or STOPPED).
        self._stopping: dict[str, tuple[RunState, str]] = {}
        self._thread: Optional[threading.Thread] = None
        #: Called with each run that has just ended (a sequential search adds runs then).
        self.on_end: list[Callable[[RunRow], None]] = []
        executor.on_exit = self.runner_exited
        executor.on_note = self.note
        executor.on_bound = self.gpus_bound

    # -- state changes ---------------------------------------------------------------------
    def move(self, run_id: str, state: RunState, at: Optional[float] = None, **fields: Any) -> RunRow:
        """Store a transition (now, or ``at``), publish it, and wake the scheduler if GPUs were freed."""
        stamp = time.time() if at is None else at
        if state.terminal:  # in the same write as the end: a crash between two writes loses no GPU time
            fields = {**self._bill(run_id, state, stamp), **fields}
        row = self.store.transition(run_id, state, stamp, **fields)
        if row.waiting_since is not None and state is not RunState.PENDING:
            row = self._end_wait(row, stamp)  # its runner runs, so its GPUs are bound; or it ended
        self.events.publish(row.account, {"type": "run", "run": run_view(row).model_dump(mode="json")})
        if state.terminal:
            self._stopping.pop(run_id, None)
            for hook in self.on_end:
                hook(row)
        if not state.active:
            self._wake.set()
        return row

    def _bill(self, run_id: str, state: RunState, stamp: float) -> dict[str, Any]:
        """The fields that close a run's GPU time if it ends in ``state`` at ``stamp``."""
        run = self.store.run(run_id)
        if run is None:
            return {}  # the transition says it is not found
        end = Transition(state=state, time=datetime.fromtimestamp(stamp, timezone.utc), attempt=run.attempt)
        bill = {"gpu_seconds": round(run_gpu_seconds(run.model_copy(update={"transitions": [*run.transitions, end]}),
                                                     stamp), 3)}
        if run.waiting_since is not None:  # it ends still waiting for its GPUs
            bill.update(gpu_wait_seconds=_waited(run, stamp), waiting_since=None)
        return bill

    def gpus_bound(self, run_id: str, attempt: int, at: float) -> None:
        """The cluster has bound the GPUs of the run's ``attempt`` (at ``at``): billing starts."""
        run = self.store.run(run_id)
        if run is not None and run.attempt == attempt and run.waiting_since is not None:
            self._end_wait(run, at)

    def _end_wait(self, run: RunRow, at: float) -> RunRow:
        """Count the wait for GPUs that ends at ``at`` as not billed."""
        run.gpu_wait_seconds, run.waiting_since = _waited(run, at), None
        self.store.update_run(run.id, gpu_wait_seconds=run.gpu_wait_seconds, waiting_since=None)
        return run

    def fail(self, run: RunRow, reason: str, exit_code: Optional[int] = None,
             log_tail: Optional[list[str]] = None) -> RunRow:
        """End a run as FAILED, or queue it again while it has retries left."""
        fields = {"reason": reason, "exit_code": exit_code, "log_tail": log_tail or run.log_tail}
        if run.attempt <= run.max_retries:
            return self.move(run.id, RunState.QUEUED, attempt=run.attempt + 1, gpu_ids=[], handle={},
                             **fields)
        return self.move(run.id, RunState.FAILED, **fields)

    # -- admission -------------------------------------------------------------------------
    def start(self) -> None:
        """Re-attach runs that survived a restart, then start admitting."""
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="wml-scheduler", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        """Stop admitting (running runs go on)."""
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=5)
        self.executor.close()

    def wake(self) -> None:
        """Ask the scheduler to look at the queue now."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            try:
                self.admit()
            except Exception:  # keep scheduling whatever one bad run did
                log.exception("admission failed")

    def admit(self) -> None:
        """Start every queued run that fits now."""
        with self._admit_lock, self.store.admission_lock():
            active = self.store.runs(states=ACTIVE, transitions="none")
            capacity = self.executor.capacity()
            if len(active) >= capacity.slots:
                return  # nothing can start: the queue, however long, need not be read
            queued = self.store.runs(states=[RunState.QUEUED], transitions="none")
            quotas = {a.name: a.gpu_quota for a in self.store.accounts()}
            for admission in plan_admissions(queued, active, quotas, capacity):
                self._launch(admission.run, admission.gpu_ids)

    def _launch(self, run: RunRow, gpu_ids: tuple[int, ...]) -> None:
        token, now = secrets.token_urlsafe(24), time.time()
        # An executor whose cluster binds GPUs later (Kueue, the pod scheduler) bills from then.
        waiting = {"waiting_since": now} if self.executor.binds_gpus_later else {}
        try:
            row = self.move(run.id, RunState.PENDING, at=now, gpu_ids=list(gpu_ids),
                            runner_token_hash=token_hash(token), **waiting)
        except Conflict:
            return  # cancelled, or admitted by another replica, since the plan was made
        definition = self.store.experiment(run.experiment_id).definition
        launch = launch_of(run, definition, gpu_ids, {
            "WML_RUN_ID": run.id, "WML_RUNNER_TOKEN": token, "WML_BACKEND_URL": self.settings.url,
            **store_credentials(self.store.secret(run.experiment_id), self.settings.store_config)})
        try:
            handle = self.executor.start(launch)
        except Exception as exc:  # the executor could not start it: say why on the run
            log.exception("could not start %s", run.id)
            self.fail(row, f"could not start the run: {exc}")
            return
        self.store.update_run(run.id, handle=handle)

    # -- cancellation and early stopping ------------------------------------------------------
    def cancel(self, run: RunRow) -> None:
        """HALT a queued run at once; ask a running one's runner to stop and store its results."""
        self.stop(run, RunState.HALTED, "cancelled by the user")

    def stop(self, run: RunRow, state: RunState, reason: str) -> None:
        """End a run as ``state`` (HALTED or STOPPED): at once if queued, else through its runner."""
        if run.state.terminal or run.id in self._stopping:
            return
        if run.state is RunState.QUEUED:
            try:
                self.move(run.id, state, reason=reason)
                return
            except Conflict:  # admitted meanwhile: stop it as a running run
                run = self.store.run(run.id)
        self._stopping[run.id] = (state, reason)
        self.executor.cancel(run.id, run.handle)
        grace = getattr(self.executor, "cancel_grace_s", CANCEL_GRACE_S)  # Kubernetes: the pods' grace
        threading.Timer(grace, self._force_stop, args=(run.id,)).start()

    def stopped_as(self, run_id: str) -> Optional[tuple[RunState, str]]:
        """The state and reason a run asked to stop ends with, if it was asked."""
        return self._stopping.get(run_id)

    def _force_stop(self, run_id: str) -> None:
        run = self.store.run(run_id)
        if run and not run.state.terminal:
            kill = getattr(self.executor, "kill", None)
            if kill:
                kill(run_id, run.handle)
            self._end_lost(run, None)

    # -- runner reports and exits -------------------------------------------------------------
    def note(self, run_id: str, text: str) -> None:
        """Say on a started run why it still waits (e.g. no free GPU in the cluster)."""
        run = self.store.run(run_id)
        if run is not None and run.state.active:
            self.store.update_run(run_id, reason=text)
            row = self.store.run(run_id)
            self.events.publish(row.account, {"type": "run", "run": run_view(row).model_dump(mode="json")})

    def runner_exited(self, run_id: str, attempt: int, exit_code: Optional[int],
                      reason: Optional[str] = None, log_tail: Optional[list[str]] = None) -> None:
        """The runner ended: if it did not report an end, the run failed (or halted).

        ``reason`` and ``log_tail`` are what the executor knows of why (out of memory, evicted...).
        """
        run = self.store.run(run_id)
        current = run is not None and run.attempt == attempt  # not a retry's earlier runner
        if current and not run.state.terminal and run.state is not RunState.QUEUED:
            self._end_lost(run, exit_code, reason, log_tail)
        self._wake.set()

    def _end_lost(self, run: RunRow, exit_code: Optional[int], reason: Optional[str] = None,
                  log_tail: Optional[list[str]] = None) -> None:
        try:
            if run.id in self._stopping:
                state, why = self._stopping[run.id]
                self.move(run.id, state, reason=why)
            else:
                self.fail(run, reason or f"the runner ended without reporting (exit code {exit_code})",
                          exit_code, log_tail)
        except Conflict:
            pass  # it reported an end meanwhile

    def recover(self) -> None:
        """After a restart: watch runs whose runners still live; fail or requeue the others."""
        for run in self.store.runs(states=ACTIVE):
            if run.handle and self.executor.reattach(run.id, run.handle):
                continue
            if not run.handle:  # admitted but never started: it simply waits again
                self.move(run.id, RunState.QUEUED, gpu_ids=[], reason="requeued after a backend restart")
            else:
                self.fail(run, "the run's process was lost while the backend was down")
