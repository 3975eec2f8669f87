"""Run lifecycle: state changes, admission, runner reports and runner exits, in one place.

Every state change goes through ``Lifecycle.move`` so that it is stored with its event and
wakes the scheduler when GPUs are freed. Of several replicas on one store, only the leader
(``leadership``) admits runs, recovers them after a takeover, keeps the pending timeout and
kills the runners past their deadline (stored with their runs: they hold through a takeover).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, Optional

from wml_core.billing import run_gpu_seconds
from wml_core.definition import Definition
from wml_core.errors import Conflict
from wml_backend.eventbus import EventBus
from wml_backend.executors import Executor, Launch
from wml_core.models import Transition
from wml_backend.scheduler import Limits, limits_of, over_limits, plan_from_heads
from wml_backend.settings import Settings
from wml_core.states import ACTIVE, RunState
from wml_core.objectstore import StoreConfig
from wml_backend.logs import run_fields
from wml_backend.rundb import RunRow, RunStore
from wml_backend.rundb.base import run_event
from wml_backend.tokens import new_runner_token, token_hash

log = logging.getLogger("wml_backend")

#: Runner variables holding the run's store credentials (the runner prefers them to the spec's).
STORE_CREDENTIAL_ENV = ("WML_STORE_ACCESS_KEY", "WML_STORE_SECRET_KEY")
#: Lines of the training log kept with a failed run.
LOG_TAIL_LINES = 20
#: Seconds between two admission passes when nothing wakes the scheduler, and at least between
#: two passes however often it is woken (every event recorded by any replica wakes it), unless a
#: runner exited since the last pass began: its slot is filled at once.
PASS_EVERY_S, PASS_GAP_S = 1.0, 0.1
#: Why the runs of a backend stopped with ``--drain`` were preempted (the reason of their attempt).
DRAINED = "the backend was stopped with --drain"
#: Seconds a drain waits, after killing the runners that outlived their grace, for their ends.
DRAIN_KILL_WAIT_S = 5.0
#: Seconds the event log keeps events (a client reconnecting later resumes from its REST reads),
#: and between two prunings by the leader.
EVENT_RETENTION_S, PRUNE_EVERY_S = 3600.0, 60.0


def store_credentials(secret: Optional[dict], default: StoreConfig, operator_keys: bool = False) -> dict[str, str]:
    """The run's store credentials as runner variables, which executors deliver as secrets
    (a per-run Kubernetes Secret): a manifest's own. The default S3 store's are the backend's
    (its boto3 chain) only with ``operator_keys`` (``WML_STORE_CREDENTIALS=operator``); else the
    runner asks for a scoped one (``scoped_credentials``)."""
    keys = (secret or {}).get("access_key"), (secret or {}).get("secret_key")
    if secret is None and default.kind == "s3" and operator_keys:
        import boto3
        found = boto3.Session().get_credentials()
        frozen = found.get_frozen_credentials() if found else None
        keys = (frozen.access_key, frozen.secret_key) if frozen else (None, None)
    return {name: value for name, value in zip(STORE_CREDENTIAL_ENV, keys) if value}


def launch_of(run: RunRow, definition: Definition, gpu_ids: tuple[int, ...], env: dict[str, str]) -> Launch:
    """What the executor needs to start ``run`` of an experiment with ``definition`` on ``gpu_ids``."""
    return Launch(
        run_id=run.id, experiment_id=run.experiment_id, account=run.account, attempt=run.attempt, gpus=run.gpus,
        gpu_ids=gpu_ids, learners=run.learners, cpus=definition.cpus, memory_bytes=definition.memory_bytes,
        framework=definition.framework, framework_version=definition.framework_version,
        gpu_type=definition.gpu_type, timeout_s=definition.timeout_s, volume_path=_volume_path(definition), env=env)


def _volume_path(definition: Definition) -> Optional[str]:
    """The directory of a ``mount_volume`` data store, if the definition has one."""
    connection = definition.data_store.connection if definition.data_store else None
    return connection.path if connection else None


def _waited(run: RunRow, until: float) -> float:
    """The run's unbilled wait for GPUs, with the current one ending at ``until``."""
    return run.gpu_wait_seconds + max(0.0, until - run.waiting_since.timestamp())


class Lifecycle:
    """Moves runs through their states and keeps the executor busy within quotas."""

    def __init__(self, settings: Settings, store: RunStore, executor: Executor, events: EventBus):
        self.settings, self.store, self.executor, self.events = settings, store, executor, events
        self._wake = threading.Event()
        #: Set when a runner exits, freeing its slot: the next pass starts at once.
        self._freed = threading.Event()
        self._stop = threading.Event()
        self._admit_lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        #: Called with each run that has just ended (a sequential search adds runs then).
        self.on_end: list[Callable[[RunRow], None]] = []
        #: Called with each run that has just changed state (``metrics`` times admissions and starts).
        self.on_move: list[Callable[[RunRow], None]] = []
        #: Runs the executor could not start, since this process started.
        self.executor_errors = 0
        self._leading = threading.Event()
        self._leading.set()  # a lone backend leads; replicas are told (``lead``, ``follow``)
        self._recovered = False
        #: Set by ``drain``: nothing is admitted any more, and runners that end were disrupted.
        self._draining = threading.Event()
        self._pruned = 0.0
        #: The runs whose start is in flight, and whether the executor said meanwhile that their
        #: runner exited (then the run ended so: ``_stop_if_asked`` has nothing to stop).
        self._starting: dict[str, bool] = {}
        self._starting_lock = threading.Lock()
        #: How many runs' starts this process recorded (their handles), and who waits for the next.
        self.starts_recorded = 0
        self._start_recorded = threading.Condition()
        #: The handle recorded for each run whose start is in flight, said early (``_record_early``).
        self._recorded: dict[str, dict[str, Any]] = {}
        executor.on_exit = self.runner_exited
        executor.on_handle = self._record_early
        executor.on_note = self.note
        executor.on_bound = self.gpus_bound
        executor.on_stopping = self.stopped_by_cluster

    # -- state changes ---------------------------------------------------------------------
    def move(self, run_id: str, state: RunState, at: Optional[float] = None, **fields: Any) -> RunRow:
        """Store a transition (now, or ``at``) with its event, and wake the scheduler if GPUs were freed."""
        stamp = time.time() if at is None else at
        if state.terminal:  # in the same write as the end: a crash between two writes loses no GPU time
            fields = {**self._bill(run_id, state, stamp), **fields}
        if not state.active:  # its attempt is over: that attempt's token moves nothing any more
            fields = {"runner_token_hash": None, **({"reported_state": None} if state is RunState.QUEUED else {}),
                      **fields}
        if state is RunState.PENDING or not state.active:  # a new attempt, or none: no runner to wait for
            fields = {"deadline": None, **fields}
        row = self.store.transition(run_id, state, stamp, **fields)
        if row.waiting_since is not None and state is not RunState.PENDING:
            row = self._end_wait(row, stamp)  # its runner runs, so its GPUs are bound; or it ended
        self.events.poke()
        log.info("run %s is %s", run_id, state.value, extra=run_fields(row))
        for hook in self.on_move:
            hook(row)
        if state.terminal:
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
        """End a run as FAILED, or queue it again while it has retries left (and no stop was asked)."""
        fields = {"reason": reason, "exit_code": exit_code, "log_tail": log_tail or run.log_tail}
        if run.attempt - run.preemptions <= run.max_retries and run.stop_state is None:
            return self.move(run.id, RunState.QUEUED, attempt=run.attempt + 1, gpu_ids=[], handle={},
                             **fields)
        return self.move(run.id, RunState.FAILED, **fields)

    def preempt(self, run: RunRow, why: Optional[str]) -> RunRow:
        """Queue again a run whose attempt a disruption ended (a node drain, Kueue preemption, its
        pod deleted by anyone but the backend: a SIGTERM the backend did not ask for). Its next
        attempt resumes from the checkpoint the runner stored, and is not a retry (``max_retries``)."""
        step = run.metrics.get("step")
        where = f"resumed at step {step:g}" if step is not None else "resumed from its last checkpoint"
        text = f"preempted: {why or 'stopped by a signal the backend did not send'}; {where}"
        log.info("run %s: %s", run.id, text, extra=run_fields(run))
        return self.move(run.id, RunState.QUEUED, attempt=run.attempt + 1, gpu_ids=[], handle={},
                         preemptions=run.preemptions + 1, preempted=text, reason=text, exit_code=None)

    # -- admission -------------------------------------------------------------------------
    def start(self) -> None:
        """Re-attach runs that survived a restart (when leading), then start admitting."""
        if self._leading.is_set():
            self._recover_once()
        self._thread = threading.Thread(target=self._loop, name="wml-scheduler", daemon=True)
        self._thread.start()

    def lead(self) -> None:
        """This replica has become the leader: recover the runs, then admit."""
        self._recovered = False
        self._leading.set()
        self._wake.set()

    def follow(self) -> None:
        """Another replica leads: stop admitting and keeping timers (runs go on)."""
        self._leading.clear()

    def shutdown(self) -> None:
        """Stop admitting (running runs go on)."""
        self._stop.set()
        self._wake.set()
        self._freed.set()
        if self._thread:
            self._thread.join(timeout=5)
        self.executor.close()

    def wake(self) -> None:
        """Ask the scheduler to look at the queue now."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=PASS_EVERY_S)
            self._wake.clear()
            self._freed.clear()
            if not self._leading.is_set():
                continue
            try:
                self._recover_once()
                self.admit()  # first: a freed slot waits for nothing else
                self.expire_pending()
                self.enforce_deadlines()
                self._prune()
            except Exception:  # keep scheduling whatever one bad run did
                log.exception("admission failed")
            self._freed.wait(PASS_GAP_S)  # cut short by a runner's exit (or by shutdown)

    def _recover_once(self) -> None:
        """Recover the runs once per time this replica becomes the leader."""
        if not self._recovered:
            self.recover()
            self._recovered = True

    def _prune(self) -> None:
        """Forget events older than the retention, once in a while."""
        if time.monotonic() - self._pruned > PRUNE_EVERY_S:
            self._pruned = time.monotonic()
            self.store.prune_events(time.time() - EVENT_RETENTION_S)

    def drain(self) -> None:
        """Stop admitting, and stop every started run as a disruption (``wml backend stop
        --drain``): its runner gets SIGTERM and stores its checkpoint, and the run is queued again
        as preempted, to resume from it at the next start. Returns once they all ended; runners
        still there after the executor's grace are killed (and their runs queued again too)."""
        self._draining.set()
        with self._admit_lock:  # an admission under way ends first
            runs = [run for run in self.store.runs(states=ACTIVE, transitions="none") if run.handle]
        for run in runs:
            self.executor.cancel(run.id, run.handle)
        if not self._ended(runs, self.executor.cancel_grace_s + 1.0):
            for run in runs:
                self.executor.kill(run.id, run.handle)
            self._ended(runs, DRAIN_KILL_WAIT_S)

    def _ended(self, runs: list[RunRow], timeout: float) -> bool:
        """Whether each of ``runs`` left its attempt within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while any((now := self.store.run(run.id)) is not None and now.attempt == run.attempt and now.state.active
                  for run in runs):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def admit(self) -> None:
        """Start every queued run that fits now."""
        if self._draining.is_set():
            return
        with self._admit_lock, self.store.admission_lock():
            active = self.store.runs(states=ACTIVE, transitions="none")
            capacity = self.executor.capacity()
            if len(active) >= capacity.slots:
                return  # nothing can start: the queue, however long, need not be read
            limits = {a.name: limits_of(a, self.settings) for a in self.store.accounts() if not a.disabled}
            for admission in plan_from_heads(lambda wanted: self._fitting_heads(wanted, limits), active, limits,
                                             capacity):
                self._launch(admission.run, admission.gpu_ids)

    def _fitting_heads(self, wanted: dict[str, int], limits: dict[str, Limits]) -> dict[str, list[RunRow]]:
        """The heads of the queues (``wanted`` of each) that could ever start, read again while some
        fail (those behind move up)."""
        while True:
            heads = self.store.queue_heads(wanted)
            fit = {account: self._within_limits(runs, limits) for account, runs in heads.items()}
            if all(len(fit[account]) == len(runs) for account, runs in heads.items()):
                return fit

    def _within_limits(self, queued: list[RunRow], limits: dict[str, Limits]) -> list[RunRow]:
        """The queued runs that could ever start; the others (their account's limits were lowered
        since they were queued) fail, saying why."""
        fit = []
        for run in queued:
            why = over_limits(run, limits[run.account]) if run.account in limits else None
            if why is None:
                fit.append(run)
                continue
            try:
                self.move(run.id, RunState.FAILED, reason=f"it can never start: {why}")
            except Conflict:
                pass  # cancelled meanwhile
        return fit

    def expire_pending(self, now: Optional[float] = None) -> None:
        """Fail the runs that have waited PENDING (started, not placed: no node has what they ask
        for, an image that never pulls...) longer than the pending timeout, and stop what is left of them."""
        limit = self.settings.pending_timeout_s
        if not limit:
            return
        now = time.time() if now is None else now
        for run in self.store.runs(states=[RunState.PENDING], transitions="live"):
            since = self.executor.pending_since(run.id, run.transitions[-1].time.timestamp()) \
                if run.transitions else None  # None: it waits in the cluster's own queue (Kueue)
            if since is not None and now - since > limit:
                self._expire(run, limit)

    def _expire(self, run: RunRow, limit: float) -> None:
        """End a run that was not placed within ``limit`` seconds as FAILED, then stop its runner."""
        why = f"it was not placed within the pending timeout ({limit:g} s)" + (f": {run.reason}" if run.reason else "")
        try:
            self.move(run.id, RunState.FAILED, reason=why)
        except Conflict:
            return  # it started, or ended, meanwhile
        self._stop_now(run)

    def _launch(self, run: RunRow, gpu_ids: tuple[int, ...]) -> None:
        token, now = new_runner_token(), time.time()
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
            **store_credentials(self.store.secret(run.experiment_id), self.settings.store_config,
                                self.settings.operator_store_keys)})
        with self._starting_lock:
            self._starting[run.id] = False
        try:
            handle = self.executor.start(launch)
        except Exception as exc:  # the executor could not start it: say why on the run (or end it as asked)
            with self._starting_lock:
                self._starting.pop(run.id, None)
                self._recorded.pop(run.id, None)
            self.executor_errors += 1
            log.exception("could not start %s", run.id, extra=run_fields(run))
            self._end_lost(self.store.run(run.id) or row, None, f"could not start the run: {exc}")
            return
        with self._starting_lock:
            recorded = self._recorded.pop(run.id, None)
        if recorded != handle:  # the executor did not say it before its runner held the launch
            self._record_start(run.id, handle)
        self._stop_if_asked(run.id)

    def _record_early(self, run_id: str, handle: dict[str, Any]) -> None:
        """Record a start the executor says before its runner holds the launch (``on_handle``), and
        remember it so that ``_launch`` does not record it again."""
        self._record_start(run_id, handle)
        with self._starting_lock:
            self._recorded[run_id] = handle

    def _record_start(self, run_id: str, handle: dict[str, Any]) -> None:
        """Record the handle of the run's runner (its start: the spec is given from now on) and
        wake the spec calls that wait for it."""
        self.store.update_run(run_id, handle=handle)
        with self._start_recorded:
            self.starts_recorded += 1
            self._start_recorded.notify_all()

    def wait_for_start(self, seen: int, timeout_s: float) -> None:
        """Return once this process records a run's start beyond the ``seen`` first
        (``starts_recorded``), or after ``timeout_s``."""
        with self._start_recorded:
            self._start_recorded.wait_for(lambda: self.starts_recorded > seen, timeout_s)

    def _stop_if_asked(self, run_id: str) -> None:
        """Carry out what was decided while the run's start was in flight (its runner had no handle
        to be stopped by): a stop asked is asked now; a run ended meanwhile is stopped at once,
        unless it ended as its runner exited (a quick run: what it left, a Job, is kept)."""
        # Read before the flag: ``runner_exited`` sets it before the end.
        run = self.store.run(run_id, transitions="none")
        with self._starting_lock:
            exited = self._starting.pop(run_id, False)
        if exited:
            return
        if run is not None and run.state.terminal:
            self._stop_now(run)
        elif run is not None and run.stop_state is not None:
            self._ask_to_stop(run)

    def _stop_now(self, run: RunRow) -> None:
        """Stop the runner of a run that has ended already, with no grace."""
        self.executor.cancel(run.id, run.handle)
        self.executor.kill(run.id, run.handle)

    # -- cancellation and early stopping ------------------------------------------------------
    def cancel(self, run: RunRow) -> None:
        """HALT a queued run at once; ask a running one's runner to stop and store its results."""
        self.stop(run, RunState.HALTED, "cancelled by the user")

    def stop(self, run: RunRow, state: RunState, reason: str) -> None:
        """End a run as ``state`` (HALTED or STOPPED): at once if queued, else through its runner.

        The end is recorded in the run store before the runner is told (``request_stop``), so a
        backend that restarts meanwhile still ends the run so (``recover``). The first end asked
        for a run is the one it gets."""
        if run.state.terminal:
            return
        if run.state is RunState.QUEUED:
            try:
                self.move(run.id, state, reason=reason)
                return
            except Conflict:  # admitted meanwhile: stop it as a running run
                run = self.store.run(run.id)
        if self.store.request_stop(run.id, state, reason):
            self._ask_to_stop(self.store.run(run.id))  # its handle as of now: a start may just have returned

    def stopped_by_cluster(self, run_id: str, attempt: int, reason: str) -> None:
        """The cluster stops the run's ``attempt`` (its time limit): it ends FAILED for ``reason``,
        not as its runner, told to stop, reports it (HALTED), and is not retried."""
        run = self.store.run(run_id)
        if run is not None and run.attempt == attempt and not run.state.terminal:
            self.store.request_stop(run_id, RunState.FAILED, reason)

    def _ask_to_stop(self, run: RunRow, renew: bool = True) -> None:
        """Tell the executor to stop the run's runner, which must exit within the grace (``_give_grace``)."""
        self._give_grace(run, renew)
        self.executor.cancel(run.id, run.handle)

    def _give_grace(self, run: RunRow, renew: bool = True) -> None:
        """Give the run's runner until a grace from now to exit (its ``deadline``, which the leader
        enforces: ``enforce_deadlines``); with ``renew`` false, keep a deadline already set (a new
        leader does not extend the grace its predecessor gave)."""
        if renew or run.deadline is None:
            self.store.update_run(run.id, deadline=time.time() + self.executor.cancel_grace_s)

    def enforce_deadlines(self, now: Optional[float] = None) -> None:
        """Kill the runners past their deadline (asked to stop, or having reported their end, a grace
        ago) and end their runs as asked or reported. A run with no handle yet is left to its start,
        which asks it to stop when it returns (``_stop_if_asked``)."""
        now = time.time() if now is None else now
        for run in self.store.runs(states=ACTIVE, transitions="none"):
            if run.deadline is not None and run.deadline <= now and run.handle:
                try:
                    self._end_overdue(run)
                except Exception:  # the others' deadlines hold whatever this one's runner did
                    log.exception("could not stop the runner of %s", run.id, extra=run_fields(run))

    def _end_overdue(self, run: RunRow) -> None:
        """Kill a runner still alive past its deadline, and end the run as reported or asked."""
        if run.reported_state is not None:
            log.warning("run %s: its runner still runs %g s after reporting its end; killed", run.id,
                        self.executor.cancel_grace_s, extra=run_fields(run))
        self.executor.kill(run.id, run.handle)
        self._end_lost(run, None)

    # -- runner reports and exits -------------------------------------------------------------
    def note(self, run_id: str, text: str) -> None:
        """Say on a started run why it still waits (e.g. no free GPU in the cluster)."""
        run = self.store.run(run_id)
        if run is not None and run.state.active:
            self.store.update_run(run_id, reason=text)
            row = self.store.run(run_id)
            self.store.add_event(row.account, run_event(row))
            self.events.poke()

    def reported_end(self, run: RunRow, state: RunState, exit_code: Optional[int] = None,
                     reason: Optional[str] = None, log_tail: Optional[list[str]] = None, last: bool = False) -> None:
        """Its runner says the run ended as ``state``: recorded now, and the run ends so when the
        executor says the runner has exited (until then it holds its GPUs and is billed, by the
        backend's clock); a runner still alive after the grace is killed. A report that is the
        runner's ``last`` word (it makes no more calls, and exits at once) ends the run now, in
        the same write."""
        if run.reported_state is not None or run.state.terminal:
            return  # a resent report
        if last:
            self._runner_gone(run.id, run.attempt)
            self._end_reported(run.model_copy(update={"reported_state": state, "exit_code": exit_code,
                                                      "reason": reason, "log_tail": log_tail or []}),
                               DRAINED if self._draining.is_set() else None)
            return
        self.store.update_run(run.id, reported_state=state.value, exit_code=exit_code, reason=reason,
                              log_tail=log_tail or [], deadline=time.time() + self.executor.cancel_grace_s)

    def runner_exited(self, run_id: str, attempt: int, exit_code: Optional[int],
                      reason: Optional[str] = None, log_tail: Optional[list[str]] = None,
                      disruption: Optional[str] = None) -> None:
        """The runner ended: if it did not report an end, the run failed (or halted).

        ``reason`` and ``log_tail`` are what the executor knows of why (out of memory, evicted...);
        ``disruption``: the cluster stopped it for reasons of its own (evicted from node X...).
        """
        run = self.store.run(run_id, transitions="none")
        current = run is not None and run.attempt == attempt  # not a retry's earlier runner
        if current:
            self._runner_gone(run_id, attempt)
        if self._draining.is_set():
            disruption = disruption or DRAINED
        if current and not run.state.terminal and run.state is not RunState.QUEUED:
            self._end_lost(run, exit_code, reason, log_tail, disruption)
        self._freed.set()
        self._wake.set()

    def _runner_gone(self, run_id: str, attempt: int) -> None:
        """The runner of the run's current ``attempt`` has ended (or ends now, its last word said):
        a start of it still in flight leaves it be (``_stop_if_asked``), and the scheduler looks
        at the queue at once (its GPUs are free)."""
        with self._starting_lock:
            if run_id in self._starting:
                self._starting[run_id] = True
        self._freed.set()

    def _end_lost(self, run: RunRow, exit_code: Optional[int], reason: Optional[str] = None,
                  log_tail: Optional[list[str]] = None, disruption: Optional[str] = None) -> None:
        """End a run whose runner is gone: as it reported, else as asked if it was asked to stop,
        else queued again if a disruption stopped it, else failed."""
        if run.reported_state is not None:
            self._end_reported(run, disruption)
            return
        try:
            if run.stop_state is not None:
                self.move(run.id, run.stop_state, reason=run.stop_reason)
            elif disruption is not None:
                self.preempt(run, disruption)
            else:
                self.fail(run, reason or f"the runner ended without reporting (exit code {exit_code})",
                          exit_code, log_tail)
        except Conflict:
            pass  # it reported an end meanwhile

    def _end_reported(self, run: RunRow, disruption: Optional[str] = None) -> None:
        """End a run as its runner reported, now that the runner has exited: a failure may be
        retried; a HALTED runner ends its run as it was asked to stop (STOPPED by its search...),
        and one that nobody here asked to stop (no stop recorded: a SIGTERM of a node drain, of
        Kueue, of a ``backend stop --drain``) was preempted: it is queued again."""
        state, reported = run.reported_state, {"exit_code": run.exit_code, "log_tail": run.log_tail}
        try:
            if state is RunState.FAILED:
                self.fail(run, run.reason or "the command failed", run.exit_code, run.log_tail)
            elif state is RunState.HALTED and run.stop_state is not None:
                self.move(run.id, run.stop_state, reason=run.stop_reason, **reported)
            elif state is RunState.HALTED:
                self.preempt(run, disruption)
            else:
                self.move(run.id, state, reason=run.reason, **reported)
        except Conflict:
            pass  # ended meanwhile

    def recover(self) -> None:
        """After a restart: watch runs whose runners still live (asking again those asked to
        stop: the runner may never have been told); requeue, end as asked, or fail the others."""
        for run in self.store.runs(states=ACTIVE):
            if run.handle and self.executor.reattach(run.id, run.handle):
                if run.reported_state is not None:
                    self._give_grace(run, renew=False)
                elif run.stop_state is not None:
                    self._ask_to_stop(run, renew=False)
            elif (not run.handle or run.state is RunState.PENDING) and run.stop_state is None:
                # Admitted but never started, it waits again: its start was not recorded (a runner
                # its dead leader forked gets no spec, and its token is forgotten), or its runner is
                # gone before it reported anything (its leader died before handing it the launch).
                self.move(run.id, RunState.QUEUED, gpu_ids=[], reason="requeued after a backend restart")
            else:
                self._end_lost(run, None, "the run's process was lost while the backend was down")
        self.executor.reconcile(self._attempt_live)

    def _attempt_live(self, run_id: str, attempt: int) -> bool:
        """Whether ``attempt`` of the run is still on (a run the store does not know counts as on:
        what is not ours is not deleted)."""
        run = self.store.run(run_id)
        return run is None or (run.attempt == attempt and run.state.active)
