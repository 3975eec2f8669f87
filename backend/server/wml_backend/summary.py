"""``GET /v1/summary``: what the sidebar shows, in one request: the account's usage, a page of
its experiments, and a page of runs of each expanded experiment with their sparklines."""

from __future__ import annotations

import time
from typing import Optional

from wml_core.metric_line import PROGRESS_KEYS
from wml_core.errors import InvalidInput
from wml_core.models import Experiment, Run
from wml_core.pages import ExperimentPage, RunPage, Summary
from wml_backend.rundb import Account
from wml_backend.service import Service
from wml_backend.sparklines import Sparklines
from wml_backend.views import run_view


class Summaries:
    """Summaries of accounts over ``service``, with the sparklines kept between requests."""

    def __init__(self, service: Service):
        self.service = service
        self.sparklines = Sparklines(service.store)

    def summary(self, account: Account, offset: int, limit: int, expanded: dict[str, int]) -> Summary:
        """Usage, the experiments from ``offset`` (at most ``limit``), and the runs from each
        expanded experiment's offset (unknown experiments are left out)."""
        ids = self.service.store.experiment_ids(account.name)  # ids only: the page and the total
        page = ids[offset:offset + limit]
        shown = set(ids)
        more = [i for i in expanded if i in shown and i not in page]
        experiments = {e.id: e for e in self.service.experiments_of(account, page + more)}
        return Summary(usage=self.service.usage(account),
                       experiments=ExperimentPage(total=len(ids), offset=offset, items=[experiments[i] for i in page]),
                       runs={i: self._runs(account, experiments[i], at, limit)
                             for i, at in expanded.items() if i in experiments})

    def _runs(self, account: Account, experiment: Experiment, offset: int, limit: int) -> RunPage:
        """A page of an experiment's runs, with the sparklines of its metric (read up to the page's
        end only: the total is the experiment's count)."""
        now = time.time()
        rows = self.service.store.runs(account=account.name, experiment=experiment.id, positions=True,
                                       limit=offset + limit)[offset:]
        runs = [run_view(r, now) for r in rows]
        outlook = self.service.outlook(account, runs)  # why they wait, when they start
        page = [outlook.apply(r) for r in runs]
        metric = experiment.metric or _first_metric(page)
        return RunPage(total=sum(experiment.runs.values()), offset=offset, items=page, metric=metric,
                       sparklines=self.sparklines.of(page, metric))


def expanded_of(expand: list[str]) -> dict[str, int]:
    """``?expand=EXP:OFFSET&expand=...`` as experiment id → runs offset (no offset: 0)."""
    out = {}
    for item in expand:
        experiment, _, offset = item.partition(":")
        if not offset.isdigit() and offset:
            raise InvalidInput(f"expand: {item!r} is not EXPERIMENT:OFFSET with a whole number ≥ 0")
        out[experiment] = int(offset or 0)
    return out


def _first_metric(runs: list[Run]) -> Optional[str]:
    """The first metric name any run logged (``step`` and ``total_steps`` are progress, not metrics)."""
    return next((k for r in runs for k in r.metrics if k not in PROGRESS_KEYS), None)
