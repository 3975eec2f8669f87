"""What the client says about runs and experiments, the same everywhere: which run is best (one
rule with the backend), why a run ended, runs counted by state, GPU time, transfer summaries."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from wml_core import models
from wml_core.billing import format_gpu_time
from wml_core.objectstore import SyncSummary
from wml_core.ranking import best_run, ranked

from wml_jupyter.charts import Comparison
from wml_jupyter.describe import best_text, counts_text, numeric_columns, why
from wml_jupyter.tables import backend_status, table

NOW = datetime.now(timezone.utc)


def _run(n: int, state: str, **fields) -> models.Run:
    return models.Run(id=f"e-{n:02d}", experiment_id="e", account="local", name=f"e-{n:02d}", state=state,
                      created=NOW, **fields)


def _experiment(metric="acc", mode="max") -> models.Experiment:
    return models.Experiment(id="e", account="local", name="sweep", state="RUNNING", metric=metric, mode=mode,
                             created=NOW)


def test_best_is_judged_among_completed_runs_only():
    runs = [_run(1, "COMPLETED", metrics={"acc": 0.7, "step": 9}), _run(2, "PROCESSING", metrics={"acc": 0.9}),
            _run(3, "STOPPED", metrics={"acc": 0.95}), _run(4, "FAILED", metrics={"acc": 0.99}),
            _run(5, "COMPLETED", metrics={"acc": 0.8, "step": 9})]
    best = best_run(runs, "acc", "max")
    assert (best.run_id, best.value, best.step, best.provisional) == ("e-05", 0.8, 9, False)
    assert best_run(runs, "acc", "min").run_id == "e-01"


def test_until_a_run_completes_the_leading_live_run_is_provisional_with_its_step():
    runs = [_run(1, "PROCESSING", metrics={"loss": 0.5, "step": 3}),
            _run(2, "PROCESSING", metrics={"loss": 0.2, "step": 4}),
            _run(3, "STOPPED", metrics={"loss": 0.01, "step": 1}), _run(4, "QUEUED")]
    best = best_run(runs, "loss", "min")
    assert (best.run_id, best.step, best.provisional) == ("e-02", 4, True)
    assert best_text(best, "loss") == "leader e-02 loss=0.2 at step 4 (provisional)"
    assert best_run([runs[2]], "loss", "min") is None  # an early-stopped run never leads


def test_no_metric_no_best():
    runs = [_run(1, "COMPLETED", metrics={"loss": 0.55}), _run(2, "COMPLETED", metrics={"loss": 0.077})]
    assert best_run(runs, None, "max") is None
    assert best_text(None, None) == "no metric chosen" and best_text(None, "acc") == "no acc yet"
    comparison = Comparison(_experiment(metric=None), runs)
    assert comparison.best is None and [r.id for r in comparison.runs] == ["e-01", "e-02"]
    assert "no metric chosen" in repr(comparison) and "no metric chosen" in comparison._repr_html_()


def test_compare_ranks_completed_runs_before_partial_ones_and_shows_each_step():
    runs = [_run(1, "FAILED", metrics={"acc": 0.99, "step": 7}, reason="the command exited with code 1",
                 log_tail=["Traceback (most recent call last):", "RuntimeError: loss is NaN", ""]),
            _run(2, "COMPLETED", metrics={"acc": 0.8, "step": 27}), _run(3, "QUEUED"),
            _run(4, "COMPLETED", metrics={"acc": 0.9, "step": 27})]
    comparison = Comparison(_experiment(), runs)
    assert [r.id for r in ranked(runs, "acc", "max")] == ["e-04", "e-02", "e-01", "e-03"]
    rows = comparison.rows()
    assert [(r["run"], r["acc"], r["step"]) for r in rows][:3] == [("e-04", 0.9, 27), ("e-02", 0.8, 27),
                                                                   ("e-01", 0.99, 7)]
    assert rows[2]["reason"] == "RuntimeError: loss is NaN (the command exited with code 1)"
    assert comparison.best.id == "e-04" and "best e-04 acc=0.9" in repr(comparison)
    page = comparison._repr_html_()
    assert 'tabular-nums">step</th>' in page and 'tabular-nums">0.9</td>' in page  # numbers right-aligned


def test_why_a_run_ended():
    assert why(_run(1, "FAILED", reason="the command exited with code 1",
                    log_tail=["epoch 3", "RuntimeError: loss is NaN"])) == \
        "RuntimeError: loss is NaN (the command exited with code 1)"
    assert why(_run(2, "FAILED", reason="timed out after 10 s", log_tail=[])) == "timed out after 10 s"
    assert why(_run(3, "STOPPED", reason="stopped by ASHA at step 1")) == "stopped by ASHA at step 1"
    assert why(_run(4, "HALTED", reason="cancelled by the user")) == "cancelled by the user"
    assert why(_run(5, "COMPLETED", reason="requeued after a backend restart")) == ""
    assert why(_run(6, "PROCESSING")) == ""


def test_runs_are_counted_by_state_not_summed_up_in_one_word():
    assert counts_text({"COMPLETED": 3, "FAILED": 2}) == "3 completed · 2 failed"
    assert counts_text({"PENDING": 1, "PROCESSING": 2, "QUEUED": 3, "STOPPED": 1}) == \
        "3 running · 3 queued · 1 stopped"
    assert counts_text({}) == "no runs"


@pytest.mark.parametrize("seconds, text", [
    (0, "0 s"), (4.24, "4.2 s"), (42.4, "42 s"), (59.6, "1 min 0 s"), (156, "2 min 36 s"),
    (3599.4, "59 min 59 s"), (3599.6, "1.0 h"), (9000, "2.5 h"), (360_000, "100 h")])
def test_one_gpu_time_format(seconds, text):
    assert format_gpu_time(seconds) == text  # labextension/test/format.spec.ts checks the same cases


def test_terminal_tables_right_align_numbers_and_durations():
    text = table([("e-01", "0.5", "2 min 36 s"), ("e-02", "12.25", "4.2 s")], ["run", "acc", "GPU time"])
    assert text.splitlines() == ["run     acc    GPU time", "e-01    0.5  2 min 36 s", "e-02  12.25       4.2 s"]
    assert numeric_columns(["run", "GPU time"], [["e-01", "–"], ["e-02", "3 min 4 s"]]) == {"GPU time"}


def test_transfer_summary_says_what_the_bar_counted():
    summary = SyncSummary(sent=3, skipped=2, bytes=150_000, skipped_bytes=1_250_000, seconds=0.07)
    assert summary.line() == "3 files sent, 2 unchanged skipped: 150.0 KB sent of 1.4 MB in 0.07 s (2.1 MB/s)"
    assert SyncSummary.combined([summary, summary]).skipped_bytes == 2_500_000


def test_backend_stop_says_it_stopped():
    assert backend_status({"running": False, "stopped": True}) == "backend stopped"
    assert backend_status({"running": False, "stopped": False}) == "backend: was not running"
    assert backend_status({"running": False}) == "backend: not running"
