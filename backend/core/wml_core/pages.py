"""What the sidebar shows at once, as the backend's ``GET /v1/summary`` answers it: account usage,
a page of experiments and a page of runs of each expanded experiment, with sparklines.

``wml_jupyter/serverext/wire.py`` wraps ``Summary`` for the browser; ``labextension/src/model.ts``
mirrors every class here field by field.
"""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, Field

from wml_core.models import Experiment, Run, Usage

#: Items per page of experiments and of one experiment's runs: the sidebar shows pages, not
#: thousands of rows, so it stays smooth whatever the sweep's size.
PAGE_SIZE = 50


class ExperimentPage(BaseModel):
    """One page of the account's experiments, newest first."""

    total: int
    offset: int
    items: list[Experiment]


class RunPage(BaseModel):
    """One page of an experiment's runs, with a sparkline of each run's metric."""

    total: int
    offset: int
    items: list[Run]
    #: The metric the sparklines and "latest metric" show (the experiment's, else the first logged).
    metric: Optional[str] = None
    #: Run id → that metric's values over time (downsampled), oldest first.
    sparklines: dict[str, list[float]] = Field(default_factory=dict)


class Summary(BaseModel):
    """Account usage, a page of experiments, and expanded experiment id → a page of its runs."""

    usage: Usage
    experiments: ExperimentPage
    runs: dict[str, RunPage] = Field(default_factory=dict)
