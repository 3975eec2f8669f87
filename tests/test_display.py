"""The live display: its model follows a real backend's runs as they change, it keeps every
point, redraws a bounded number of times however fast points come, and survives a backend
restart. The last test renders it into ``test-artifacts/live-display.png``."""

from __future__ import annotations

import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from backend_process import backend_in_environment
from wml_core import models

from wml_jupyter.charts import downsample
from wml_jupyter.display import LiveDisplay, empty_chart_text, summary_text, table_html, table_rows
from wml_jupyter.event_stream import EventStream, parse_sse
from wml_jupyter.livemodel import ExperimentModel

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def eventually(predicate, timeout: float = 30.0, what: str = "condition"):
    """Poll ``predicate`` until it is truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached in {timeout} s")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One backend (2 GPU slots) for this module's tests."""
    with backend_in_environment(tmp_path_factory.mktemp("display") / "wml-home") as proc:
        yield proc


@pytest.fixture
def displays():
    """Displays made by a test, closed after it (an open event stream delays backend shutdown)."""
    made: list[LiveDisplay] = []
    yield made
    for display in made:
        display.close()


# -- pieces -------------------------------------------------------------------------------------

def _run(run_id: str, state: str, transitions: int = 1, **fields) -> models.Run:
    now = datetime.now(timezone.utc)
    return models.Run(id=run_id, experiment_id="e", account="local", name=run_id, state=state, created=now,
                      transitions=[{"state": "QUEUED", "time": now}] * transitions, **fields)


def _experiment(metric: Optional[str] = "acc") -> models.Experiment:
    return models.Experiment(id="e", account="local", name="t", state="RUNNING", metric=metric,
                             created=datetime.now(timezone.utc))


def _points(start: int, count: int) -> list[dict]:
    return [{"seq": s, "time": 0.0, "step": float(s), "values": {"acc": s / 10, "loss": 1.0}}
            for s in range(start, start + count)]


def test_sse_parsing_skips_comments_and_joins_data_lines():
    lines = [": connected", "", "event: run", "data: {\"a\":", "data: 1}", "", ": heartbeat", "",
             "data: x", ""]
    assert list(parse_sse(lines)) == [("run", '{"a":\n1}'), ("message", "x")]


def test_downsample_keeps_extremes_and_the_last_point():
    x = np.arange(10_000, dtype=float)
    y = np.sin(x / 50) + (x == 4321) * 5 - (x == 777) * 5
    dx, dy = downsample(x, y, 500)
    assert len(dx) <= 501 and dy.max() == y.max() and dy.min() == y.min()
    assert dx[-1] == x[-1] and np.all(np.diff(dx) > 0)
    short = x[:10]
    assert downsample(short, y[:10], 500)[0] is short


def test_model_appends_by_sequence_and_reports_gaps():
    model = ExperimentModel(_experiment())
    assert model.add_points("e-1", _points(0, 3))
    assert model.add_points("e-1", _points(1, 4))  # resent points are ignored, new ones kept
    assert model.count("e-1", "acc") == 5 and model.last_seq["e-1"] == 4
    assert not model.add_points("e-1", _points(7, 2))  # 5 and 6 missing: the caller fetches them
    assert model.count("e-1", "acc") == 5
    assert model.latest["e-1"]["acc"] == 0.4
    retry = 2 ** 32  # a retry numbers its points apart; what REST returns is complete
    assert model.add_points("e-1", _points(5, 1) + _points(retry, 2), complete=True)
    assert model.count("e-1", "acc") == 8 and model.last_seq["e-1"] == retry + 1


def test_model_ignores_an_older_view_of_a_run():
    model = ExperimentModel(_experiment())
    assert model.set_run(_run("e-1", "PROCESSING", transitions=4))
    assert not model.set_run(_run("e-1", "PENDING", transitions=2))
    assert model.runs["e-1"].state.value == "PROCESSING"
    model.set_run(_run("e-1", "COMPLETED", transitions=6))
    assert model.done


class _Offline:
    """A client whose event stream is never started: the model is fed by hand."""

    def events(self, on_event, on_connect=None):
        return EventStream("http://127.0.0.1:9", {}, on_event, on_connect)


def test_without_a_metric_no_run_is_best():
    model = ExperimentModel(_experiment(metric=None))
    for n, loss in ((1, 0.5519), (2, 0.077)):
        model.set_run(_run(f"e-{n}", "COMPLETED", metrics={"loss": loss}))
    assert model.metric == "loss"  # still drawn
    assert model.best() is None and summary_text(model).endswith("no metric chosen")


def test_the_leader_is_provisional_until_a_run_completes():
    model = ExperimentModel(_experiment())
    model.set_run(_run("e-1", "PROCESSING"))
    model.set_run(_run("e-2", "PROCESSING"))
    model.add_points("e-1", _points(0, 8))
    model.add_points("e-2", _points(0, 3))
    assert summary_text(model).endswith("leader e-1 acc=0.7 at step 7 (provisional)")
    assert "font-style:italic" in table_html(model)
    model.set_run(_run("e-2", "COMPLETED", transitions=2))
    assert summary_text(model).endswith("best e-2 acc=0.2")


def test_ended_runs_say_why_and_an_experiment_whose_runs_all_failed_says_so():
    display = LiveDisplay(_Offline(), _experiment(), start=False)
    model = display.model
    for n in (1, 2):
        model.set_run(_run(f"e-{n}", "FAILED", gpus=1, reason="the command exited with code 1",
                           log_tail=["Traceback (most recent call last):", '  File "train.py", line 9',
                                     "RuntimeError: loss is NaN"]))
    columns, rows, _ = table_rows(model)
    assert columns[-3:] == ["GPU time", "elapsed", "reason"]
    assert rows[0][-1] == "RuntimeError: loss is NaN (the command exited with code 1)"
    assert summary_text(model) == "t (e): 2 failed · GPU time 0 s · every run failed"
    assert empty_chart_text(model) == ("all 2 runs failed; e-1: RuntimeError: loss is NaN "
                                       "(the command exited with code 1)")
    assert "waiting" not in display.snapshot_html() and "all 2 runs failed" in display.snapshot_html()


def test_runs_without_gpus_show_no_gpu_time_and_numbers_are_right_aligned():
    model = ExperimentModel(_experiment())
    model.set_run(_run("e-1", "PROCESSING", hparams={"lr": 0.1, "opt": "adam"}))
    columns, rows, _ = table_rows(model)
    assert "GPU time" not in columns and " · no GPUs · " in summary_text(model)
    page = table_html(model)
    assert 'tabular-nums">lr</th>' in page and "<th>opt</th>" in page


def test_an_ended_display_replaces_its_live_view_through_its_display_id():
    from IPython.utils.capture import capture_output
    from ipython_shell import new_shell
    new_shell()
    display = LiveDisplay(_Offline(), _experiment(), start=False)
    display.model.set_run(_run("e-1", "PROCESSING"))
    with capture_output() as shown:
        display._ipython_display_()
    live = shown.outputs[0]
    assert live.transient == {"display_id": display.display_id}
    assert "application/vnd.jupyter.widget-view+json" in live.data
    display.model.set_run(_run("e-1", "COMPLETED", transitions=2))
    display.model.add_points("e-1", _points(0, 3))
    with capture_output() as ended:
        display._end()
    final = ended.outputs[0]
    assert final.update and final.transient == {"display_id": display.display_id}
    assert "application/vnd.jupyter.widget-view+json" not in final.data
    assert "1 completed" in final.data["text/html"] and "<img" in final.data["text/html"]
    assert final.data["image/png"].startswith("iVBOR")  # base64 of a PNG
    with capture_output() as again:  # shown once more: the final view, nothing live
        display._ipython_display_()
    assert again.outputs[0].data == final.data and not again.outputs[0].transient


def test_100_runs_of_10000_points_are_all_kept_and_draw_quickly():
    display = LiveDisplay(_Offline(), _experiment(), start=False)
    model = display.model
    started = time.perf_counter()
    for r in range(100):
        model.set_run(_run(f"e-{r:03d}", "PROCESSING"))
        for batch in range(0, 10_000, 500):
            model.add_points(f"e-{r:03d}", _points(batch, 500))
    ingest_s = time.perf_counter() - started
    assert sum(model.count(f"e-{r:03d}", "acc") for r in range(100)) == 1_000_000
    started = time.perf_counter()
    display.redraw()
    first_s = time.perf_counter() - started
    model.add_points("e-000", _points(10_000, 1))
    started = time.perf_counter()
    display.redraw()
    again_s = time.perf_counter() - started
    assert all(len(x) <= display.max_points + 1 for x, _ in display.curves().values())
    print(f"ingest {ingest_s:.2f} s, first redraw {first_s:.2f} s, next {again_s:.2f} s")
    assert ingest_s < 10 and first_s < 5 and again_s < 2  # generous: the machine is shared


# -- against a real backend -----------------------------------------------------------------------

GATED = '''
import os, time
from wml_jupyter import run
hp = run.hparams()
run.log(step=0, acc=0.1 * hp["x"])
while not os.path.exists({gate!r}):
    time.sleep(0.05)
run.log(step=1, acc=0.2 * hp["x"])
'''


@pytest.fixture
def gate():
    """A file the gated runs wait for, in a folder their own OS user can see (pytest's tmp_path
    is its owner's alone, and a run's command runs as a user of its own)."""
    folder = Path(tempfile.mkdtemp(prefix="wml-gate-"))
    folder.chmod(0o755)
    yield folder / "gate"
    shutil.rmtree(folder, ignore_errors=True)


def test_model_follows_states_queue_and_metrics_as_they_change(server, displays, gate):
    client = server.client()
    exp = client.train_code(GATED.format(gate=str(gate)), name="gated", gpus=1, sweep=["x=[1,2,3]"],
                            search="grid", metric="acc")
    display = exp.live()
    displays.append(display)
    model = display.model

    def first_points():
        states = sorted(r.state.value for r in model.runs.values())
        queued = [r for r in model.runs.values() if r.state.value == "QUEUED"]
        counts = [model.count(r, "acc") for r in model.runs]
        return states == ["PROCESSING", "PROCESSING", "QUEUED"] and sorted(counts) == [0, 1, 1] \
            and queued[0].queue_position == 1
    eventually(first_points, what="two runs training with one point each, one queued at position 1")
    columns, rows, _ = table_rows(model)
    assert columns[:3] == ["run", "state", "x"] and "QUEUED #1" in [r[1] for r in rows]
    _save(display, "live-display-running.png")

    gate.touch()
    display.wait(60)
    assert {r.state.value for r in model.runs.values()} == {"COMPLETED"}
    assert [model.count(r, "acc") for r in sorted(model.runs)] == [2, 2, 2]
    best = model.best()
    assert best.run_id == f"{exp.id}-03" and best.value == pytest.approx(0.6) and not best.provisional
    assert best.step == 1 and exp.refresh().model.best == best  # the backend judges the same
    assert "3 completed · GPU time " in summary_text(model)
    assert summary_text(model).endswith(f"best {exp.id}-03 acc=0.6")
    assert display.feed.stream.closed  # an ended experiment stops streaming
    _save(display, "live-display.png")


FLOOD = '''
import time
from wml_jupyter import run
for i in range(3000):
    run.log(step=i, acc=i / 3000)
    if i % 100 == 99:
        time.sleep(0.05)
'''


def test_a_flood_of_points_is_all_kept_with_few_redraws_and_low_latency(server, displays):
    exp = server.client().train_code(FLOOD, name="flood", metric="acc")
    display = exp.live()
    displays.append(display)
    arrivals: list[float] = []
    display.model.listeners.append(lambda run_id, pts: arrivals.extend(time.time() - p["time"] for p in pts))
    started = time.monotonic()
    display.wait(60)
    elapsed = time.monotonic() - started
    assert display.model.count(f"{exp.id}-01", "acc") == 3000
    assert display.redraws <= 5 * elapsed + 3, f"{display.redraws} redraws in {elapsed:.1f} s"
    streamed = sorted(arrivals)
    if len(streamed) > 100:  # points that came over the stream, not the initial fetch
        assert streamed[int(0.95 * len(streamed))] < 1.0


def test_the_display_catches_up_after_the_backend_restarts(server, displays, gate):
    exp = server.client().train_code(GATED.format(gate=str(gate)), name="restart", sweep=["x=[1]"])
    display = exp.live()
    displays.append(display)
    eventually(lambda: display.model.count(f"{exp.id}-01", "acc") == 1, what="the first point")
    server.kill()
    eventually(lambda: display.feed.error, what="the display to notice")
    gate.touch()  # the run logs its second point and ends while the backend is down
    server.start()
    display.wait(60)
    assert display.model.count(f"{exp.id}-01", "acc") == 2
    assert display.model.runs[f"{exp.id}-01"].state.value == "COMPLETED"


def _save(display: LiveDisplay, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    png = display.snapshot_png()
    assert png.startswith(b"\x89PNG")
    (ARTIFACTS / name).write_bytes(png)
