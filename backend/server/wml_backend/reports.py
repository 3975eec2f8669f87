"""What runners may do: fetch their spec and code, and report states, logs and metrics."""

from __future__ import annotations

import hmac
import time
from typing import Optional

from wml_core.errors import BackendUnavailable, Conflict, NotFound, Unauthorized
from wml_core.objectstore import SCOPED_STORE
from wml_backend import scoped_credentials
from wml_backend.tokens import token_hash
from wml_core.models import LogAppend, MetricPoint, RunSpec, StateReport, StoreCredential
from wml_backend.service import Service
from wml_core.states import RunState
from wml_backend.rundb import RunRow


#: What a runner may report: its run's progress and its end. Never QUEUED or PENDING (the
#: backend's to decide: a run that said QUEUED was started again), nor STOPPED (its search's).
RUNNER_STATES = frozenset({RunState.DOWNLOADING, RunState.PROCESSING, RunState.STORING,
                           RunState.COMPLETED, RunState.FAILED, RunState.HALTED})
#: Those a report may say the run passed through before the one it reports (``StateReport.entered``).
PASSED_STATES = frozenset(state for state in RUNNER_STATES if not state.terminal)


#: How long a runner's ask for its spec waits for its start to be recorded before it is refused
#: (it asks again later), and how often the run is read meanwhile (a start this process records
#: wakes the wait at once): a runner may ask before its executor's ``start`` has returned (the
#: local executor's start is recorded before its runner holds the launch: ``Executor.on_handle``).
SPEC_WAIT_S, SPEC_POLL_S = 0.05, 0.002


class RunnerReports:
    """The runner side of the API; each run authenticates with its own token."""

    def __init__(self, service: Service):
        self.service = service
        self.store = service.store

    def authenticate(self, run_id: str, token: Optional[str]) -> RunRow:
        """The run whose runner presents ``token``; an unknown run is refused as a wrong token is,
        so that a caller without one learns nothing (not even which runs exist)."""
        # None of a runner's calls needs the run's transitions: reading them is most of reading it.
        run = self.store.run(run_id, transitions="none") if token else None
        if run is None or not run.runner_token_hash or not hmac.compare_digest(
                token_hash(token), run.runner_token_hash):
            raise Unauthorized("missing or unknown runner token")
        return run

    def spec(self, run: RunRow) -> RunSpec:
        """The run's command, hyperparameters, store and buckets; not before its start is recorded
        (its handle), which the runner waits for: the runner of a start its leader died before
        recording never gets it (the run is queued again, and its token forgotten)."""
        run = self._started(run)
        definition = self.store.experiment(run.experiment_id).definition
        secret = self.store.secret(run.experiment_id)
        store = secret or {**self.service.settings.store_config.public(),
                           "access_key": self.service.settings.store_config.access_key,
                           "secret_key": self.service.settings.store_config.secret_key}
        if scoped_credentials.scoped(self.service.settings, secret):  # the runner asks ``credential``
            store = {**self.service.settings.store_config.public(), SCOPED_STORE: True}
        data = definition.data_store.training_data if definition.data_store else None
        metrics = definition.evaluation_metrics
        bucket, _, prefix = run.results.partition("/")
        return RunSpec(run_id=run.id, experiment_id=run.experiment_id, attempt=run.attempt,
                       command=definition.command, hparams=run.hparams, gpus=run.gpus,
                       learners=run.learners, cpus=definition.cpus, framework=definition.framework,
                       evaluation_metrics=metrics.model_dump() if metrics else None, store=store,
                       data_bucket=data.bucket if data else None, data_prefix=data.prefix if data else "",
                       results_bucket=bucket, results_prefix=prefix)

    def _started(self, run: RunRow) -> RunRow:
        """``run`` (read again) once its start is recorded, waiting ``SPEC_WAIT_S`` at most for it;
        still the attempt whose runner asks (its token)."""
        deadline = time.monotonic() + SPEC_WAIT_S
        life = self.service.lifecycle
        while not run.handle:
            seen = life.starts_recorded  # before the read: a start recorded after it wakes the wait
            again = self.store.run(run.id, transitions="none")
            if again is None or again.runner_token_hash != run.runner_token_hash:
                raise Unauthorized("missing or unknown runner token")
            run = again
            if run.handle:
                break
            if time.monotonic() > deadline:
                raise BackendUnavailable(f"the start of run {run.id} is not recorded yet; try again")
            life.wait_for_start(seen, SPEC_POLL_S)  # woken by this process's record; another replica's is read
        return run

    def credential(self, run: RunRow) -> StoreCredential:
        """A fresh credential of the default store scoped to the run's data and results (for its
        attempt's runner only: its token is revoked when the attempt ends)."""
        if not scoped_credentials.scoped(self.service.settings, self.store.secret(run.experiment_id)):
            raise NotFound(f"run {run.id} has no scoped store credential: its store's credentials come with it")
        definition = self.store.experiment(run.experiment_id).definition
        data = definition.data_store.training_data if definition.data_store else None
        return scoped_credentials.issue(self.service.settings, run, (data.bucket, data.prefix) if data else None)

    def code(self, run: RunRow) -> bytes:
        """The experiment's code zip."""
        return self.store.code(run.experiment_id)

    def state(self, run: RunRow, report: StateReport, last: bool = False) -> None:
        """Record the progress a runner reports (forward only); its end is recorded as reported and
        the run ends so once the executor says the runner has exited, or at once when the report
        is the runner's ``last`` word (``Lifecycle.reported_end``)."""
        if report.state not in RUNNER_STATES:
            raise Conflict(f"run {run.id}: a runner reports DOWNLOADING, PROCESSING, STORING or how its run "
                           f"ended, never {report.state.value}")
        passed = next((e.state for e in report.entered if e.state not in PASSED_STATES), None)
        if passed is not None:
            raise Conflict(f"run {run.id}: a run passes through DOWNLOADING, PROCESSING or STORING, never {passed.value}")
        if run.state is report.state:
            return  # a resent report
        life = self.service.lifecycle
        now = time.time()
        for entered in report.entered:
            try:
                life.move(run.id, entered.state, at=now - entered.ago_s)
            except Conflict:
                pass  # the run is past it: recorded by an earlier try of this report (or it ended)
        if report.state.terminal:
            life.reported_end(run, report.state, report.exit_code, report.reason, report.log_tail, last=last)
            return
        try:
            life.move(run.id, report.state, at=now - report.ago_s, exit_code=report.exit_code, reason=report.reason,
                      log_tail=report.log_tail)
        except Conflict:
            if not self.store.run(run.id).state.terminal:
                raise

    def metrics(self, run: RunRow, points: list[MetricPoint]) -> int:
        """Store points (with their event); return how many were new."""
        new = self.store.add_metrics(run.id, points)
        if new:
            self.service.events.poke()
            self.service.sweeps.on_metrics(run, new)
        return len(new)

    def log(self, run: RunRow, chunk: LogAppend) -> int:
        """Append log text; return the log's length (where the runner continues)."""
        return self.store.append_log(run.id, chunk.learner, chunk.offset, chunk.data.encode())
