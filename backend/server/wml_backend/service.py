"""The backend's operations, as the REST API offers them: one method per route."""

from __future__ import annotations

import importlib
import logging
import threading
import time
from typing import Optional

from cachetools import LRUCache

from wml_core.errors import Conflict, InvalidInput, NotFound, Unauthorized, quoted
from wml_backend import scoped_credentials
from wml_backend.accounts import ADMIN_ACCOUNT, Accounts
from wml_backend.eventbus import EventBus
from wml_backend.executors import Executor
from wml_backend.leadership import Leadership, this_replica
from wml_backend.lifecycle import Lifecycle
from wml_backend.tokens import new_account_token, token_hash
from wml_backend.metrics import Metrics
from wml_backend.ownership import DataOwnership
from wml_core.models import (DataClaim, Experiment, ExperimentRequest, LogChunk, MetricPoint, Run, Usage)
from wml_core.private_files import write_private
from wml_backend.settings import Settings
from wml_core.states import RunState
from wml_backend.rundb import Account, RunRow, RunStore
from wml_backend.rundb.base import Replica
from wml_backend.submit import NewExperiment, build_experiment, rerun_of
from wml_backend.search.driver import SweepDriver
from wml_backend.outlook import Outlook, outlook_of, queue_usage
from wml_backend.scheduler import limits_of
from wml_backend.views import experiment_view, run_view, step_seconds

log = logging.getLogger("wml_backend")

#: Experiments one listing returns (the newest).
EXPERIMENTS_PAGE = 200
#: Summaries of ended experiments kept in memory (they never change), the last used.
ENDED_CACHE = 2_000
#: Most bytes of log one request returns.
LOG_PAGE_BYTES = 1 << 20


class Service:
    """Accounts, experiments, runs, logs, metrics and usage over a run store and an executor."""

    def __init__(self, settings: Settings, store: RunStore, executor: Executor):
        self.settings, self.store, self.executor = settings, store, executor
        self.events = EventBus(store)
        self.lifecycle = Lifecycle(settings, store, executor, self.events)
        self.lifecycle.follow()  # until the leader's lease is this replica's
        self.events.listeners.append(self.lifecycle.wake)  # runs queued or freed by any replica
        self.leadership = Leadership(store, this_replica(settings.listen_url), self.lifecycle.lead,
                                     self.lifecycle.follow)
        self.sweeps = SweepDriver(store, self.lifecycle)
        self.accounts = Accounts(settings, store, self.lifecycle.stop, executor.isolation_gap, executor.sync_account)
        self.data = DataOwnership(settings, store)
        self._ended_cache: LRUCache[str, Experiment] = LRUCache(ENDED_CACHE)
        self._summarising = threading.Lock()
        self._cache_lock = threading.Lock()  # an LRU cache reorders itself on reads too
        self.lifecycle.on_end.append(self.sweeps.on_end)
        self.lifecycle.on_move.append(scoped_credentials.revoker(settings))
        self.telemetry = Metrics(store, self.lifecycle, self.events, self.leadership)

    def start(self) -> None:
        """Create the admin account on first start, join the replicas; as their leader, recover
        runs and start admitting."""
        self.bootstrap_admin()
        self.accounts.sync_all()  # the cluster's quotas (Kueue) as the accounts have them
        self.events.start()
        self.leadership.start()
        self.lifecycle.start()
        # Importing Optuna takes ~0.5 s: do it now, not in the first submission.
        threading.Thread(target=importlib.import_module, args=("optuna",), daemon=True).start()

    def stop(self) -> None:
        """Leave the replicas (another takes the lead at once) and stop admitting runs."""
        self.leadership.stop()
        self.lifecycle.shutdown()
        self.events.close()

    def replicas(self) -> list[Replica]:
        """The replicas serving this store, and which one leads."""
        return self.store.replicas()

    # -- accounts ---------------------------------------------------------------------------
    def bootstrap_admin(self) -> None:
        """On first start, create account ``local`` and write its token to ``$WML_HOME``."""
        token_file = self.settings.home / "backend" / "token"
        if self.store.accounts() and token_file.exists():
            return
        token = new_account_token()
        quota = max(len(self.executor.capacity().gpu_ids), 1)
        if not self.store.accounts():
            try:
                self.store.create_account(Account(name=ADMIN_ACCOUNT, gpu_quota=quota, admin=True),
                                          token_hash(token))
            except Conflict:
                return  # a replica starting at the same time created it: its token is in its home
            write_private(token_file, token)

    def authenticate(self, token: Optional[str]) -> Account:
        """The account a bearer token belongs to, unless it is disabled."""
        account = self.store.account_by_token(token_hash(token)) if token else None
        if account is None:
            raise Unauthorized("missing or unknown token")
        if account.disabled:
            raise Unauthorized(f"account {account.name!r} is disabled; ask an administrator")
        return account

    # -- data ---------------------------------------------------------------------------------
    def claim_data(self, account: Account, claim: DataClaim) -> DataClaim:
        """Make a bucket or prefix of the default store the account's, before ``wml upload`` fills it."""
        return self.data.claim(account, claim)

    # -- experiments ------------------------------------------------------------------------
    def submit(self, account: Account, request: ExperimentRequest) -> Experiment:
        """Validate and store an experiment; its runs wait in the queue."""
        new = build_experiment(account, request, self.settings,
                               check_data=lambda definition: self.data.check(account, definition))
        return self._queue(account, new)

    def _queue(self, account: Account, new: NewExperiment) -> Experiment:
        """Store a new experiment whose runs fit the account's limits and queue; wake the scheduler."""
        total = max(len(new.runs), new.experiment.definition.search.runs or 0)  # a sequential search adds later
        self.accounts.check_submission(account, new.runs, total)
        self.store.insert_experiment(new.experiment, new.runs, new.code, new.secret)
        self.lifecycle.wake()
        return self.experiment(account, new.experiment.id)

    def experiment(self, account: Account, experiment_id: str) -> Experiment:
        """One experiment with its run counts and best run."""
        row = self.store.experiment(experiment_id, account.name)
        if row is None:
            raise NotFound(f"no experiment {quoted(experiment_id)}")
        runs = self.runs(account, experiment=experiment_id)
        view = experiment_view(row, runs, self._step_times(runs))
        view.eta_seconds = self.outlook(account, runs).experiment_eta(experiment_id)
        return view

    def outlook(self, account: Account, shown: list[Run | Experiment]) -> Outlook:
        """Why the account's queued runs wait and when its runs should start and its experiments end
        (``wml_backend.outlook``); nothing to say (nothing read) when none of ``shown`` is live."""
        if all(item.state.terminal for item in shown):
            return Outlook()
        return outlook_of(self.store, account.name, limits_of(account, self.settings), self.executor.capacity())

    def _step_times(self, runs: list[Run]) -> dict[str, float]:
        """Seconds per step of completed runs, when early stopping saved time to estimate."""
        if not any(r.state is RunState.STOPPED for r in runs):
            return {}
        times = {r.id: step_seconds(self.store.metrics(r.id)) for r in runs if r.state is RunState.COMPLETED}
        return {k: v for k, v in times.items() if v is not None}

    def experiments(self, account: Account, limit: int = EXPERIMENTS_PAGE,
                    after: Optional[str] = None) -> list[Experiment]:
        """The account's ``limit`` newest experiments (listed after experiment ``after``), newest first."""
        return self.experiments_of(account, self.store.experiment_ids(account.name, limit, after))

    def experiments_of(self, account: Account, ids: list[str]) -> list[Experiment]:
        """The experiments of ``ids`` (the account's, as its listing gave them), in that order."""
        ended = self._ended(ids)
        rows = self.store.experiments_by_id([i for i in ids if i not in ended])
        counts = self.store.state_counts(list(rows))
        # A waiting experiment is summed up by its counts alone: only started ones need their runs.
        waiting = {i: experiment_view(row, [], counts=counts[i]) for i, row in rows.items()
                   if set(counts[i]) == {RunState.QUEUED.value}}
        with self._summarising:  # one request at a time loads runs; the next reuses what it found ended
            ended.update(self._cached([i for i in rows if i not in waiting]))
            summaries = self._summaries(account, [r for i, r in rows.items() if i not in ended and i not in waiting])
        listed = [ended.get(i) or waiting.get(i) or summaries[i] for i in ids if i in ended or i in rows]
        outlook = self.outlook(account, listed)
        for experiment in listed:
            if not experiment.state.terminal:  # an ended one is a cached summary: left as it is
                experiment.eta_seconds = outlook.experiment_eta(experiment.id)
        return listed

    def _ended(self, experiment_ids: list[str]) -> dict[str, Experiment]:
        """The summaries of the ended ones among ``experiment_ids``: kept in memory, else in the store."""
        found = self._cached(experiment_ids)
        stored = self.store.summaries([i for i in experiment_ids if i not in found])
        for experiment_id, summary in stored.items():
            found[experiment_id] = Experiment.model_validate(summary)
        self._keep({i: found[i] for i in stored})
        return found

    def _cached(self, experiment_ids: list[str]) -> dict[str, Experiment]:
        with self._cache_lock:
            return {i: self._ended_cache[i] for i in experiment_ids if i in self._ended_cache}

    def _keep(self, summaries: dict[str, Experiment]) -> None:
        with self._cache_lock:
            self._ended_cache.update(summaries)

    def _summaries(self, account: Account, rows: list) -> dict[str, Experiment]:
        """Summaries of ``rows`` from their runs; the ended ones are kept, in memory and in the store."""
        by_exp: dict[str, list[Run]] = {}
        now = time.time()
        for run in self.store.runs(account=account.name, experiment=[r.id for r in rows], transitions="live"):
            by_exp.setdefault(run.experiment_id, []).append(run_view(run, now))
        summaries = {}
        for row in rows:
            runs = by_exp.get(row.id, [])
            summaries[row.id] = experiment_view(row, runs, self._step_times(runs))
        ended = {i: s for i, s in summaries.items() if s.state.terminal}
        self.store.save_summaries({i: s.model_dump(mode="json") for i, s in ended.items()})
        self._keep(ended)
        return summaries

    def cancel_experiment(self, account: Account, experiment_id: str) -> Experiment:
        """Halt every live run of an experiment."""
        self.experiment(account, experiment_id)
        for run in self.store.runs(account=account.name, experiment=experiment_id):
            self.lifecycle.cancel(run)
        return self.experiment(account, experiment_id)

    # -- runs -------------------------------------------------------------------------------
    def _row(self, account: Account, run_id: str) -> RunRow:
        row = self.store.run(run_id, account.name)
        if row is None:
            raise NotFound(f"no run {quoted(run_id)}")
        return row

    def run(self, account: Account, run_id: str) -> Run:
        """One run, with queue position, GPU time and what reproduces it."""
        row = self._row(account, run_id)
        run = self.outlook(account, [row]).apply(run_view(row))
        origin = self.store.experiment(row.experiment_id).definition.provenance
        run.provenance = {**origin, "hparams": row.hparams}
        return run

    def rerun(self, account: Account, run_id: str) -> Experiment:
        """Submit a run again: same code, data, definition and hyperparameters, as a new experiment."""
        row = self._row(account, run_id)
        experiment = self.store.experiment(row.experiment_id)
        new = rerun_of(account, experiment, row.hparams, self.store.code(experiment.id),
                       self.store.secret(experiment.id))
        return self._queue(account, new)

    def runs(self, account: Account, experiment: Optional[str] = None, state: Optional[str] = None,
             after: Optional[str] = None, limit: Optional[int] = None) -> list[Run]:
        """The account's runs, filtered by experiment and state; at most ``limit``, submitted after run ``after``."""
        if experiment and self.store.experiment(experiment, account.name) is None:
            raise NotFound(f"no experiment {quoted(experiment)}")
        states = None
        if state:
            try:
                states = [RunState(state.upper())]
            except ValueError:
                known = ", ".join(s.value for s in RunState)
                raise InvalidInput(f"state: {quoted(state)} is not one of {known}") from None
        rows = self.store.runs(account=account.name, experiment=experiment, states=states, positions=True,
                               after=after, limit=limit)
        now = time.time()
        outlook = self.outlook(account, rows)
        return [outlook.apply(run_view(r, now)) for r in rows]

    def cancel_run(self, account: Account, run_id: str) -> Run:
        """Halt one run (stored partial results included)."""
        self.lifecycle.cancel(self._row(account, run_id))
        return self.run(account, run_id)

    def logs(self, account: Account, run_id: str, offset: int = 0, learner: int = 1) -> LogChunk:
        """The run's training log from ``offset``."""
        row = self._row(account, run_id)
        data = self.store.read_log(run_id, learner, max(offset, 0), LOG_PAGE_BYTES)
        return LogChunk(offset=offset, next_offset=offset + len(data), data=data.decode("utf-8", "replace"),
                        learner=learner, complete=row.state.terminal and len(data) < LOG_PAGE_BYTES)

    def metrics(self, account: Account, run_id: str, since: int = -1) -> list[MetricPoint]:
        """Every metric point the run logged after ``since``."""
        self._row(account, run_id)
        return self.store.metrics(run_id, since)

    def usage(self, account: Account) -> Usage:
        """The account's quota, GPUs in use and queued, and GPU time per experiment."""
        experiments = self.experiments_of(account, self.store.experiment_ids(account.name))
        return queue_usage(self.store, account, experiments, limits_of(account, self.settings),
                           self.executor.capacity())


