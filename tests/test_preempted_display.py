"""A preempted run in the live display and the terminal tables (issue 14, item 4): the row of a run
whose attempt a disruption ended says why and where it resumed, in the backend's words
(``run.preempted``, never re-derived by the client), and which attempt it is on; while queued
again, and once it has resumed and ended. The sidebar says the same (``format.ts``
``preemptedText``, tests/browser/test_sidebar_preempted.py)."""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone

from resuming import drain, resuming_run
from wml_core import models

from wml_jupyter import tables
from wml_jupyter.describe import preempted_text
from wml_jupyter.display import table_html, table_rows
from wml_jupyter.livemodel import ExperimentModel

NOW = datetime.now(timezone.utc)
#: What the backend wrote for a run drained at step 7 (``lifecycle.preempt``).
DRAINED_AT_7 = "preempted: the backend was stopped with --drain; resumed at step 7"


def _run(run_id: str, state: str, **fields) -> models.Run:
    return models.Run(id=run_id, experiment_id="e", account="local", name=run_id, state=state, created=NOW,
                      transitions=[{"state": "QUEUED", "time": NOW}], **fields)


def _reasons(model: ExperimentModel) -> dict[str, tuple[str, str]]:
    """Run id → (state cell, reason cell) of the live display's runs table."""
    columns, rows, _ = table_rows(model)
    at = columns.index("reason") if "reason" in columns else None
    return {row[0]: (row[1], row[at] if at is not None else "") for row in rows}


def test_the_preemption_is_worded_once_with_the_attempt():
    queued = _run("e-01", "QUEUED", preempted=DRAINED_AT_7, preemptions=1, attempt=2, queue_position=1,
                  reason=DRAINED_AT_7)
    never = _run("e-02", "PROCESSING", attempt=2)  # a retry, not a preemption
    assert preempted_text(queued) == f"{DRAINED_AT_7} · attempt 2"
    assert preempted_text(never) == ""
    model = ExperimentModel(models.Experiment(id="e", account="local", name="t", state="RUNNING", created=NOW))
    for run in (queued, never):
        model.set_run(run)
    assert _reasons(model) == {"e-01": ("QUEUED #1", f"{DRAINED_AT_7} · attempt 2 · #1 in the queue"),
                               "e-02": ("PROCESSING", "")}
    assert f"{DRAINED_AT_7} · attempt 2" in table_html(model)
    listed = tables.runs([queued, never]).splitlines()
    assert listed[1].endswith(f"{DRAINED_AT_7} · attempt 2") and listed[2].rstrip().endswith("0 s")


def test_a_drained_run_says_in_the_live_display_why_and_where_it_resumed(backend, tmp_path):
    run_id = resuming_run(backend, tmp_path, steps=24, sleep=0.3)
    experiment = backend.client().experiment(run_id.rsplit("-", 1)[0])
    display = experiment.live()
    try:
        model, seen = display.model, []

        def sample(until, timeout: float, what: str) -> None:
            """Record the run's (state, reason) cells until ``until()``."""
            deadline = time.monotonic() + timeout
            while True:
                cells = _reasons(model).get(run_id)
                if cells and (not seen or seen[-1] != cells):
                    seen.append(cells)
                if until():
                    return
                assert time.monotonic() < deadline, f"{what} not reached in {timeout} s: {seen[-3:]}"
                time.sleep(0.05)

        sample(lambda: model.latest.get(run_id, {}).get("step", 0) >= 3, 60, "step 3 in the display")
        assert not seen[-1][1], seen  # a first attempt, never preempted: nothing to say
        drain(backend)  # it exits by itself: the display's event stream ended (after the last events)
        # the stream ended after the event that queued it again: while the backend is down, the
        # display says that it was preempted and waits to resume as attempt 2
        requeued = lambda: _reasons(model)[run_id][0].startswith("QUEUED") and model.runs[run_id].attempt == 2
        sample(requeued, 15, "the run queued again in the display")
        drained = "preempted: the backend was stopped with --drain; resumed at step "
        assert _reasons(model)[run_id][1].startswith(drained) and " · attempt 2" in _reasons(model)[run_id][1]
        backend.start()
        sample(lambda: display.finished.is_set(), 120, "the end of the experiment")
        run = backend.cli_json("show", run_id)
        assert run["state"] == "COMPLETED" and run["attempt"] == 2 and run["preemptions"] == 1, run
        said = f"{run['preempted']} · attempt 2"  # the backend's words, shown as they are
        step = float(re.search(r"resumed at step (\S+)$", run["preempted"]).group(1))
        assert run["preempted"].startswith(drained) and step >= 3, run
        resumed = [reason for state, reason in seen if state == "PROCESSING" and reason]
        assert resumed and all(reason == said for reason in resumed), seen  # while its second attempt ran
        assert _reasons(model)[run_id] == ("COMPLETED", said)
        assert said in display.final_bundle()["text/html"]  # the static view a saved notebook keeps
        assert said in backend.cli("list", "--experiment", experiment.id, check=True).stdout
    finally:
        display.close()
