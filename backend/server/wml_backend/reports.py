"""What runners may do: fetch their spec and code, and report states, logs and metrics."""

from __future__ import annotations

import hmac
from typing import Optional

from .errors import Conflict, NotFound, Unauthorized
from .lifecycle import token_hash
from .models import LogAppend, MetricPoint, RunSpec, StateReport
from .service import Service
from .states import RunState
from .store import RunRow


class RunnerReports:
    """The runner side of the API; each run authenticates with its own token."""

    def __init__(self, service: Service):
        self.service = service
        self.store = service.store

    def authenticate(self, run_id: str, token: Optional[str]) -> RunRow:
        """The run whose runner presents ``token``."""
        run = self.store.run(run_id)
        if run is None:
            raise NotFound(f"no run {run_id!r}")
        if not token or not run.runner_token_hash or not hmac.compare_digest(
                token_hash(token), run.runner_token_hash):
            raise Unauthorized("missing or unknown runner token")
        return run

    def spec(self, run: RunRow) -> RunSpec:
        """The run's command, hyperparameters, store and buckets."""
        definition = self.store.experiment(run.experiment_id).definition
        secret = self.store.secret(run.experiment_id)
        store = secret or {**self.service.settings.store_config.public(),
                           "access_key": self.service.settings.store_config.access_key,
                           "secret_key": self.service.settings.store_config.secret_key}
        ds = definition.get("data_store") or {}
        data = ds.get("training_data") or {}
        bucket, _, prefix = run.results.partition("/")
        return RunSpec(run_id=run.id, experiment_id=run.experiment_id, attempt=run.attempt,
                       command=definition["command"], hparams=run.hparams, gpus=run.gpus,
                       learners=run.learners, cpus=definition.get("cpus", 1.0),
                       framework=definition.get("framework", "custom"),
                       evaluation_metrics=definition.get("evaluation_metrics"), store=store,
                       data_bucket=data.get("bucket"), data_prefix=data.get("prefix", ""),
                       results_bucket=bucket, results_prefix=prefix)

    def code(self, run: RunRow) -> bytes:
        """The experiment's code zip."""
        return self.store.code(run.experiment_id)

    def state(self, run: RunRow, report: StateReport) -> None:
        """Record the state a runner reports; a FAILED one may be retried."""
        if run.state is report.state:
            return  # a resent report
        life = self.service.lifecycle
        stopping = life.stopped_as(run.id)
        if report.state is RunState.HALTED and stopping:  # e.g. stopped early by the search
            report = report.model_copy(update={"state": stopping[0], "reason": stopping[1]})
        try:
            if report.state is RunState.FAILED:
                life.fail(run, report.reason or "the command failed", report.exit_code, report.log_tail)
            else:
                life.move(run.id, report.state, exit_code=report.exit_code, reason=report.reason,
                          log_tail=report.log_tail)
        except Conflict:
            if not self.store.run(run.id).state.terminal:
                raise

    def metrics(self, run: RunRow, points: list[MetricPoint]) -> int:
        """Store points and publish the new ones; return how many were new."""
        new = self.store.add_metrics(run.id, points)
        if new:
            self.service.events.publish(run.account, {
                "type": "metrics", "run_id": run.id, "experiment_id": run.experiment_id,
                "points": [p.model_dump() for p in new]})
            self.service.sweeps.on_metrics(run, new)
        return len(new)

    def log(self, run: RunRow, chunk: LogAppend) -> int:
        """Append log text; return the log's length (where the runner continues)."""
        return self.store.append_log(run.id, chunk.learner, chunk.offset, chunk.data.encode())
