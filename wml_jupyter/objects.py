"""``Experiment`` and ``Run``: what the API returns, live handles that render themselves."""

from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING, Any, Optional

from wml_backend import models
from wml_backend.errors import WmlError

if TYPE_CHECKING:
    from .client import Client

#: How often ``wait`` asks the backend.
WAIT_POLL_S = 0.5


class Run:
    """One training run: ``.id``, ``.state``, ``.hparams``, ``.metrics``, ``.gpu_seconds``..."""

    def __init__(self, model: models.Run, client: "Client"):
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

    def __repr__(self) -> str:
        return f"<Run {self.id} {self.state.value} {self.hparams}>"

    def _repr_html_(self) -> str:
        return _table([run_row(self.model)], RUN_COLUMNS)


class Experiment:
    """An experiment: ``.id``, ``.name``, ``.runs()``, ``.best()``, ``.wait()``, ``.cancel()``."""

    def __init__(self, model: models.Experiment, client: "Client"):
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
        """The best run by the experiment's metric and mode (None until one logged it)."""
        best = self.refresh().model.best
        return self._client.run(best.run_id) if best else None

    def wait(self, timeout: Optional[float] = None) -> "Experiment":
        """Block until every run has ended; ``WmlError`` if ``timeout`` seconds pass first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.refresh().state in ("QUEUED", "RUNNING"):
            if deadline is not None and time.monotonic() > deadline:
                raise WmlError(f"experiment {self.id} still running after {timeout:.0f} s")
            time.sleep(WAIT_POLL_S)
        return self

    def cancel(self) -> "Experiment":
        """Stop every live run."""
        return self._client.cancel(self.id)

    def __repr__(self) -> str:
        return f"<Experiment {self.id} {self.name!r} {self.state} {self.model.runs}>"

    def _repr_html_(self) -> str:
        head = (f"<b>Experiment {html.escape(self.id)}</b> {html.escape(self.name)}: {self.state}, "
                f"{html.escape(str(self.model.runs))}")
        return head + _table([run_row(r.model) for r in self.runs()], RUN_COLUMNS)


RUN_COLUMNS = ["id", "state", "hparams", "metrics", "gpu_seconds", "reason"]


def run_row(run: models.Run) -> dict[str, str]:
    """A run as the strings a table shows."""
    state = run.state.value + (f" (#{run.queue_position})" if run.queue_position else "")
    return {"id": run.id, "state": state, "hparams": _fmt(run.hparams), "metrics": _fmt(run.metrics),
            "gpu_seconds": f"{run.gpu_seconds:.1f}", "reason": run.reason or ""}


def _fmt(values: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def _table(rows: list[dict[str, str]], columns: list[str]) -> str:
    head = "".join(f"<th>{c}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(r[c])}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
