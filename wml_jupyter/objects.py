"""``Experiment`` and ``Run``: what the API returns, live handles that render themselves."""

from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING, Any, Iterator, Optional, Protocol

from wml_core import models
from wml_core.billing import format_gpu_time
from wml_core.errors import WmlError

from .describe import (TEXT_COLUMNS, best_text, counts_text, html_table, joined, num, numeric_columns,
                       preempted_text, quota_text, why)

if TYPE_CHECKING:
    from .charts import Comparison
    from .display import LiveDisplay


class Backend(Protocol):
    """What runs and experiments ask of their client (``wml_jupyter.Client`` is one)."""

    def run(self, run_id: str) -> "Run": ...
    def runs(self, experiment: Optional[str] = None, state: Optional[str] = None) -> list["Run"]: ...
    def experiment(self, experiment_id: str) -> "Experiment": ...
    def metrics(self, run_id: str, since: int = -1) -> list[models.MetricPoint]: ...
    def logs(self, run_id: str, offset: int = 0, learner: int = 1) -> models.LogChunk: ...
    def follow_logs(self, run_id: str, learner: int = 1, poll_s: float = 0.5) -> Iterator[str]: ...
    def cancel(self, id: str) -> Any: ...

#: How often ``wait`` asks the backend.
WAIT_POLL_S = 0.5


class Run:
    """One training run: ``.id``, ``.state``, ``.hparams``, ``.metrics``, ``.gpu_seconds``..."""

    def __init__(self, model: models.Run, client: Backend):
        self.model, self._client = model, client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["model"], name)

    def refresh(self) -> "Run":
        """Fetch the current state from the backend."""
        self.model = self._client.run(self.id).model
        return self

    def history(self) -> list[models.MetricPoint]:
        """Every metric point this run logged."""
        return self._client.metrics(self.id)

    def logs(self) -> str:
        """The whole training log so far."""
        return "".join(self._client.follow_logs(self.id)) if self.state.terminal else self._client.logs(self.id).data

    def to_dict(self) -> dict:
        """The run as plain JSON types."""
        return self.model.model_dump(mode="json")

    def to_dataframe(self):
        """Every metric point this run logged, one row per ``run.log`` call (needs pandas)."""
        return _dataframe([{"seq": p.seq, "time": p.time, "step": p.step, **p.values} for p in self.history()],
                          "seq")

    def __repr__(self) -> str:
        reason = why(self.model)
        return f"<Run {self.id} {self.state.value} {self.hparams}{f': {reason}' if reason else ''}>"

    def _repr_html_(self) -> str:
        return run_detail_html(self.model)


class Experiment:
    """An experiment: ``.id``, ``.name``, ``.runs()``, ``.best()``, ``.wait()``, ``.cancel()``."""

    def __init__(self, model: models.Experiment, client: Backend):
        self.model, self._client = model, client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["model"], name)

    def refresh(self) -> "Experiment":
        """Fetch the current summary from the backend."""
        self.model = self._client.experiment(self.id).model
        return self

    def runs(self, state: Optional[str] = None) -> list[Run]:
        """This experiment's runs."""
        return self._client.runs(experiment=self.id, state=state)

    def best(self) -> Optional[Run]:
        """The best completed run by the experiment's metric and mode; while none has completed,
        the leading live run (``model.best.provisional``); None without a metric or a value of it."""
        best = self.refresh().model.best
        return self._client.run(best.run_id) if best else None

    def wait(self, timeout: Optional[float] = None) -> "Experiment":
        """Block until every run has ended; ``WmlError`` if ``timeout`` seconds pass first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.refresh().state.terminal:
            if deadline is not None and time.monotonic() > deadline:
                raise WmlError(f"experiment {self.id} still running after {timeout:.0f} s")
            time.sleep(WAIT_POLL_S)
        return self

    def cancel(self) -> "Experiment":
        """Stop every live run."""
        return self._client.cancel(self.id)

    def live(self, metric: Optional[str] = None) -> "LiveDisplay":
        """This experiment's live display (runs table, progress, metric curves), started once."""
        display = self.__dict__.get("_live")
        if display is None or (metric is not None and metric != display.model.metric):
            from .display import LiveDisplay
            if display is not None:
                display.close()
            display = self.__dict__["_live"] = LiveDisplay(self._client, self.model, metric)
        return display

    def watch(self, metric: Optional[str] = None) -> "Experiment":
        """Attach a live display, so that this experiment renders as one; returns itself."""
        self.live(metric)
        return self

    def compare(self, metric: Optional[str] = None) -> "Comparison":
        """Runs sorted by the metric, best first, with a parallel-coordinates plot."""
        from .charts import Comparison
        return Comparison(self.refresh().model, [r.model for r in self.runs()], metric)

    def to_dataframe(self):
        """This experiment's runs as a pandas DataFrame (needs pandas)."""
        return RunList(self.runs()).to_dataframe()

    def _repr_mimebundle_(self, **kwargs: Any) -> Optional[dict]:
        live = self.__dict__.get("_live")
        if live is None:
            return None
        return {**live._repr_mimebundle_(**kwargs), "text/plain": repr(self)}

    def _ipython_display_(self) -> None:
        """In a notebook: the live display when watched (replaced by its final view when the
        experiment ends, see ``LiveDisplay``), else the summary and the runs table."""
        live = self.__dict__.get("_live")
        if live is not None:
            live._ipython_display_()
            return
        from IPython.display import display
        display({"text/html": self._repr_html_(), "text/plain": repr(self)}, raw=True)

    def __repr__(self) -> str:
        return f"<Experiment {self.id} {self.name!r}: {experiment_summary(self.model)}>"

    def _repr_html_(self) -> str:
        head = (f"<b>Experiment {html.escape(self.id)}</b> {html.escape(self.name)}: "
                f"{html.escape(experiment_summary(self.model))}")
        return head + _table([run_row(r.model) for r in self.runs()], RUN_COLUMNS)


RUN_COLUMNS = ["id", "state", "hparams", "metrics", "GPU time", "reason"]


def run_row(run: models.Run) -> dict[str, str]:
    """A run as the strings a table shows."""
    state = run.state.value + (f" (#{run.queue_position})" if run.queue_position else "")
    return {"id": run.id, "state": state, "hparams": _fmt(run.hparams), "metrics": _fmt(run.metrics),
            "GPU time": format_gpu_time(run.gpu_seconds), "reason": joined(preempted_text(run), why(run))}


def run_fields(run: models.Run) -> list[tuple[str, str]]:
    """Everything about one run as (field, text) pairs, as ``%wml show RUN`` shows them."""
    gpus = f"{run.gpus} × {run.learners} learner(s)" if run.learners > 1 else str(run.gpus)
    waits = run.reason if run.state is models.RunState.PENDING and run.reason else ""  # Kueue, no free GPU...
    fields = [("state", run_row(run)["state"]), ("why", why(run)), ("waiting", waits),
              ("hyperparameters", _fmt(run.hparams)),
              ("metrics", _fmt(run.metrics)), ("GPUs", gpus), ("GPU time", format_gpu_time(run.gpu_seconds)),
              ("exit code", "" if run.exit_code is None else str(run.exit_code)), ("attempt", str(run.attempt)),
              ("preempted", (f"{run.preempted.removeprefix('preempted: ')} ({run.preemptions} time(s))"
                             if run.preempted else "")),
              ("results", run.results or ""), ("experiment", run.experiment_id)]
    return [(name, text) for name, text in fields if text]


def run_detail_html(run: models.Run) -> str:
    """One run as HTML: its fields, its transitions with their times, and a failed run's log tail."""
    fields = html_table(["field", "value"], run_fields(run))
    transitions = html_table(["state", "time (UTC)"], [(t.state.value, t.time.strftime("%Y-%m-%d %H:%M:%S"))
                                                       for t in run.transitions])
    tail = (f"<div>last log lines</div><pre style='max-height:20em;overflow:auto'>"
            f"{html.escape(chr(10).join(run.log_tail))}</pre>" if run.log_tail else "")
    return f"<b>Run {html.escape(run.id)}</b>{fields}{transitions}{tail}"


def experiment_summary(e: models.Experiment) -> str:
    """Runs counted by state, the best run (or why there is none), GPU time."""
    return (f"{counts_text(e.runs)} · {best_text(e.best, e.metric)} · "
            f"GPU time {format_gpu_time(e.gpu_seconds)}")


def _fmt(values: dict) -> str:
    return ", ".join(f"{k}={num(v)}" for k, v in values.items())


def _table(rows: list[dict[str, str]], columns: list[str]) -> str:
    cells = [[r[c] for c in columns] for r in rows]
    return html_table(columns, cells, numeric_columns(columns, cells, text=TEXT_COLUMNS))


# -- collections that render themselves (``%wml list``, ``%wml usage``...) -------------------

def _dataframe(records: list[dict], index: str):
    import pandas as pd
    frame = pd.DataFrame(records)
    return frame.set_index(index) if index in frame else frame


def run_record(run: models.Run) -> dict[str, Any]:
    """A run as one flat record: its hyperparameters and latest metrics as columns."""
    return {"id": run.id, "experiment": run.experiment_id, "state": run.state.value, **run.hparams,
            **{k: v for k, v in run.metrics.items() if k not in run.hparams}, "gpu_seconds": run.gpu_seconds,
            "exit_code": run.exit_code, "reason": run.reason}


class RunList(list):
    """A list of ``Run`` that renders as a table; ``.to_dataframe()`` where pandas is installed."""

    def to_dataframe(self):
        """One row per run (pandas)."""
        return _dataframe([run_record(r.model) for r in self], "id")

    def _repr_html_(self) -> str:
        return _table([run_row(r.model) for r in self], RUN_COLUMNS)


EXPERIMENT_COLUMNS = ["id", "name", "runs", "best", "GPU time"]


def experiment_row(e: models.Experiment) -> dict[str, str]:
    """An experiment as the strings a table shows: its runs counted by state, not one word."""
    return {"id": e.id, "name": e.name, "runs": counts_text(e.runs), "best": best_text(e.best, e.metric),
            "GPU time": format_gpu_time(e.gpu_seconds)}


class ExperimentList(list):
    """A list of ``Experiment`` that renders as a table; ``.to_dataframe()`` with pandas."""

    def to_dataframe(self):
        """One row per experiment (pandas)."""
        return _dataframe([{"id": e.id, "name": e.name, "state": e.state, **e.model.runs,
                            "best_run": e.model.best.run_id if e.model.best else None,
                            "best_value": e.model.best.value if e.model.best else None,
                            "gpu_seconds": e.gpu_seconds, "created": e.created} for e in self], "id")

    def _repr_html_(self) -> str:
        return _table([experiment_row(e.model) for e in self], EXPERIMENT_COLUMNS)


class UsageReport:
    """An account's quota, GPUs in use and GPU time per experiment; renders as a table."""

    def __init__(self, usage: models.Usage):
        self.model = usage

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["model"], name)

    def to_dataframe(self):
        """GPU time per experiment (pandas)."""
        return _dataframe([e.model_dump() for e in self.model.experiments], "id")

    def __repr__(self) -> str:
        u = self.model
        return f"<Usage {u.account}: {quota_text(u)} · GPU time {format_gpu_time(u.gpu_seconds)}>"

    def _repr_html_(self) -> str:
        u = self.model
        head = f"<b>{html.escape(u.account)}</b>: {html.escape(quota_text(u))} · GPU time {format_gpu_time(u.gpu_seconds)}"
        rows = [{"experiment": e.id, "name": e.name, "GPU time": format_gpu_time(e.gpu_seconds)}
                for e in u.experiments]
        return head + _table(rows, ["experiment", "name", "GPU time"])


class LogText(str):
    """A training log: prints as itself, renders as preformatted text."""

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        return f"<pre style='max-height:30em;overflow:auto'>{html.escape(self)}</pre>"
