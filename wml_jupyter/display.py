"""The live display of an experiment: an ipywidgets view of a ``livemodel.ExperimentModel``.

``LiveDisplay`` draws the model — a summary line, a runs table and a PNG of the metric curves
(Agg, off pyplot; each curve downsampled for drawing, the model keeps every point) — from a
daemon thread that redraws only on change and at most every ``REDRAW_MIN_S`` seconds, so the
kernel stays free and a flood of metrics costs a bounded number of redraws. Shown in a notebook,
it is an output with a display id; when the experiment ends, that output becomes a static view
(HTML and PNG, no widget), so that a saved notebook keeps the finished sweep.
"""

from __future__ import annotations

import base64
import html
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from wml_core import models
from wml_core.billing import format_gpu_time, run_gpu_seconds
from wml_core.metric_line import PROGRESS_KEYS
from wml_core.ranking import ranked
from wml_core.states import RunState

from .chart_svg import curves_svg
from .chart_widget import live_chart
from .charts import MAX_DRAW_POINTS, CurveRuns, curves_png, downsample, png_img, snapshot_png, warm_up
from .describe import (TEXT_COLUMNS, Html, all_failed, best_text, counts_text, eta_text, html_table, joined,
                       num, numeric_columns, preempted_text, progress_text, waiting_text, why)
from .livemodel import ExperimentFeed, ExperimentModel, FeedSource
from .state_colors import state_color

#: Shortest time between two redraws; a slow figure stretches it to twice its drawing time.
REDRAW_MIN_S = 0.25
#: Longest pause between two figures however slow drawing is (so a curve lags by about a second).
MAX_FIGURE_PAUSE_S = 1.0
#: While runs are live the table is refreshed at least this often (elapsed and GPU time move).
TICK_S = 1.0
#: How often runs are re-read over REST while any is live (queue positions are not streamed).
RECONCILE_S = 3.0

# -- presentation -----------------------------------------------------------------------------

#: Runs the chart's legend names besides the best once there are too many to name all: the
#: leaders by the experiment's metric (the others are counted by state).
NAMED_LEADERS = 4


def _elapsed(run: models.Run, now: float) -> float:
    """Seconds since the run was submitted, to now or to its end: its wait in the queue included,
    which GPU time (billed from PENDING on, times its GPUs) leaves out."""
    end = run.transitions[-1].time.timestamp() if run.state.terminal and run.transitions else now
    return max(0.0, end - run.created.timestamp())


def _uses_gpus(model: ExperimentModel) -> bool:
    """Whether GPU time means anything here: some run asks for GPUs (or none is known yet)."""
    with model.lock:
        return not model.runs or any(r.gpus for r in model.runs.values())


def leader_text(model: ExperimentModel) -> str:
    """The best run, the provisional leader, or why there is none (no metric, every run failed)."""
    if model.done and all_failed(model.counts()):
        return "every run failed"
    return best_text(model.best(), model.experiment.metric)


def summary_text(model: ExperimentModel) -> str:
    """Name and id, runs counted by state, GPU time, and the best run (or why there is none)."""
    now = time.time()
    with model.lock:
        gpu_s = sum(run_gpu_seconds(r, now) for r in model.runs.values())
    gpu = f"GPU time {format_gpu_time(gpu_s)}" if _uses_gpus(model) else "no GPUs"
    counts = counts_text(model.counts())
    eta = eta_text(model.experiment.eta_seconds) if not model.done else ""
    left = f" · done in {eta}" if eta else ""
    return f"{model.experiment.name} ({model.id}): {counts}{left} · {gpu} · {leader_text(model)}"


def summary_html(model: ExperimentModel, error: Optional[str] = None) -> str:
    """The summary line, and why the display may be behind if it is."""
    note = f' · <span style="color:#c80">{html.escape(error)}</span>' if error else ""
    return f"<b>{html.escape(summary_text(model))}</b>{note}"


def empty_chart_text(model: ExperimentModel) -> str:
    """What the chart says while no run has a curve: waiting, or why none will come."""
    metric = model.metric
    if not model.done:
        return f"waiting for {metric or 'metrics'}…"
    with model.lock:
        failed = [r for r in model.runs.values() if r.state is RunState.FAILED]
    if failed and len(failed) == len(model.runs):
        which = "the run" if len(failed) == 1 else f"all {len(failed)} runs"
        return f"{which} failed; {failed[0].id}: {why(failed[0])}"
    return f"no run logged {metric or 'a metric'}"


def table_rows(model: ExperimentModel) -> tuple[list[str], list[list[str]], list[str]]:
    """Columns, rows (strings) and run states of the runs table: state with queue position,
    hyperparameters, step (``3 / 10`` where the code declared a total), latest metrics (the drawn
    metric first), GPU time (where runs use GPUs), elapsed since submitted (the queue included),
    and (where one did or does) why a disruption preempted a run and which attempt it is on, why
    each ended run ended, what each queued run waits for."""
    now, metric, gpus = time.time(), model.metric, _uses_gpus(model)
    with model.lock:
        runs = sorted(model.runs.values(), key=lambda r: r.id)
        params = sorted({k for r in runs for k in r.hparams})
        names = sorted({k for r in runs for k in model.latest.get(r.id, {})} - PROGRESS_KEYS,
                       key=lambda k: (k != metric, k))
        steps = [progress_text(model.latest.get(r.id, {})) for r in runs]
        rows = [_row(r, params, names, model.latest.get(r.id, {}), now, gpus) for r in runs]
    if any(steps):
        rows = [row[:2 + len(params)] + [step] + row[2 + len(params):] for row, step in zip(rows, steps)]
    reasons = [joined(preempted_text(r), why(r) or waiting_text(r)) for r in runs]
    columns = ["run", "state", *params, *(["step"] if any(steps) else []), *names,
               *(["GPU time"] if gpus else []), "elapsed"]
    if any(reasons):
        columns.append("reason")
        rows = [row + [reason] for row, reason in zip(rows, reasons)]
    return columns, rows, [r.state.value for r in runs]


def _row(run: models.Run, params: list[str], names: list[str], latest: dict, now: float,
         gpus: bool) -> list[str]:
    state = run.state.value + (f" #{run.queue_position}" if run.queue_position else "")
    gpu_time = [format_gpu_time(run_gpu_seconds(run, now)) if run.gpus else "–"] if gpus else []
    return [run.id, state, *(num(run.hparams[p]) if p in run.hparams else "" for p in params),
            *(num(latest[n]) if n in latest else "" for n in names),
            *gpu_time, format_gpu_time(_elapsed(run, now))]


def table_html(model: ExperimentModel) -> str:
    """The runs table as HTML: states in colour, numbers right-aligned, the best run in bold
    (and in italics while it leads provisionally)."""
    columns, rows, states = table_rows(model)
    best = model.best()
    styles = [("font-weight:bold" + (";font-style:italic" if best.provisional else ""))
              if best and row[0] == best.run_id else "" for row in rows]
    for row, state in zip(rows, states):
        color = state_color(state).css()
        row[1] = Html(f'<span style="color:{color}">{html.escape(row[1])}</span>')
    numeric = numeric_columns(columns, rows, text=TEXT_COLUMNS)
    return f'<div style="font-size:12px">{html_table(columns, rows, numeric, styles)}</div>'


@dataclass
class _Clock:
    """What the display last drew (model versions) and when (monotonic seconds)."""

    drawn: int = -1
    drawn_points: int = -1
    table: float = 0.0
    figure: float = 0.0
    reconcile: float = 0.0


class LiveDisplay:
    """A self-updating view of an experiment; ``.model`` is its state, ``.widget`` its view."""

    def __init__(self, client: FeedSource, experiment: models.Experiment, metric: Optional[str] = None,
                 max_points: int = MAX_DRAW_POINTS, start: bool = True):
        import ipywidgets as widgets
        self.model = ExperimentModel(experiment, metric)
        self.feed = ExperimentFeed(client, self.model)
        self.max_points = max_points
        self.summary, self.table = widgets.HTML(), widgets.HTML()
        #: The metric chart: an ipympl canvas (zoom, pan) where ipympl is installed, else inline
        #: SVG in the theme's colours, its points hoverable (``chart_widget``).
        self.chart = live_chart()
        self.widget = widgets.VBox([self.summary, self.chart.widget, self.table])
        #: Redraws so far, the time the last one took, and the time the last figure took.
        self.redraws, self.redraw_s, self.figure_s = 0, 0.0, 0.0
        self.finished = threading.Event()
        #: The id of the outputs showing this display, replaced by its final view when it ends.
        self.display_id = uuid.uuid4().hex
        self._shown = False
        self._showing = threading.Lock()  # between showing the live view and ending
        self._stop = threading.Event()
        self._cache: dict[tuple[str, Optional[str]], tuple[int, np.ndarray, np.ndarray]] = {}
        self._thread = threading.Thread(target=self._loop, name="wml-display", daemon=True)
        if start:
            self.start()

    def start(self) -> "LiveDisplay":
        """Connect to the event stream and start redrawing in the background."""
        self.feed.start()
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop updating (the last drawing stays)."""
        self._stop.set()
        self.model.changed.set()
        self.feed.close()

    def wait(self, timeout: Optional[float] = None) -> "LiveDisplay":
        """Block until every run has ended and the final state is drawn."""
        if not self.finished.wait(timeout):
            from wml_core.errors import WmlError
            raise WmlError(f"experiment {self.model.id} still running after {timeout:.0f} s")
        return self

    def _loop(self) -> None:
        warm_up()  # import matplotlib here, not in the kernel's thread nor in a timed redraw
        clock = _Clock()
        while not self._stop.is_set():
            try:
                if self._tick(clock):
                    return
            except Exception as exc:  # a bug must not stop the display silently
                self.summary.value = f'<span style="color:#d33">display error: {html.escape(repr(exc))}</span>'
                self._stop.wait(TICK_S)

    def _tick(self, clock: "_Clock") -> bool:
        """Wait for a change, then redraw: the table at most every ``REDRAW_MIN_S`` (and every
        ``TICK_S`` as time moves), the figure at most every ``REDRAW_MIN_S`` or twice its drawing
        time (up to ``MAX_FIGURE_PAUSE_S``). True once the experiment has ended and its final state is drawn."""
        figure_due = clock.figure + max(REDRAW_MIN_S, min(2 * self.figure_s, MAX_FIGURE_PAUSE_S))
        pending = self.model.series_version != clock.drawn_points
        self.model.changed.wait(max(0.0, figure_due - time.monotonic()) if pending else TICK_S)
        self.model.changed.clear()
        now = time.monotonic()
        if self.feed.synced.is_set() and now - clock.reconcile > RECONCILE_S:
            clock.reconcile = now
            self.feed.reconcile()
        if self.model.done and self.feed.finish():
            self.redraw()
            self._end()
            return True
        version, points = self.model.version, self.model.series_version
        figure = points != clock.drawn_points and now >= figure_due
        if figure or version != clock.drawn or now - clock.table >= TICK_S:
            self.redraw(figure=figure)
            clock.drawn, clock.table = version, time.monotonic()
            if figure:
                clock.drawn_points, clock.figure = points, now
            self._stop.wait(REDRAW_MIN_S - (time.monotonic() - now))
        return False

    def redraw(self, figure: bool = True) -> None:
        """Update the widgets from the model now (the figure only when ``figure``)."""
        started = time.monotonic()
        self.summary.value = summary_html(self.model, self.feed.error)
        self.table.value = table_html(self.model)
        if figure:
            drawing = time.monotonic()
            self.chart.draw(self.curves(), self.model.metric, empty_chart_text(self.model), self.curve_runs())
            self.figure_s = time.monotonic() - drawing
        self.redraws += 1
        self.redraw_s = time.monotonic() - started

    def curves(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The drawn (downsampled) curve of the metric for each run that logged it."""
        metric, out = self.model.metric, {}
        for run_id in sorted(self.model.runs):
            n = self.model.count(run_id, metric)
            cached = self._cache.get((run_id, metric))
            if cached is None or cached[0] != n:
                cached = (n, *downsample(*self.model.curve(run_id, metric), self.max_points))
                self._cache[(run_id, metric)] = cached
            if n:
                out[run_id] = cached[1:]
        return out

    def _highlight(self) -> Optional[str]:
        best = self.model.best()
        return best.run_id if best else None

    def curve_runs(self) -> CurveRuns:
        """The runs behind the curves: states, hyperparameters, the best and the other leaders."""
        best, experiment = self._highlight(), self.model.experiment
        with self.model.lock:
            runs = dict(self.model.runs)
            order = ranked([runs[r] for r in sorted(runs)], experiment.metric, experiment.mode, self.model.latest)
        leaders = [r.id for r in order if r.id != best][:NAMED_LEADERS] if experiment.metric else []
        return CurveRuns(runs, best, leaders)

    def curves_png(self) -> bytes:
        """The metric curves as PNG bytes."""
        return curves_png(self.curves(), self.model.metric, self._highlight(), empty_chart_text(self.model),
                          self.curve_runs())

    def curves_svg(self) -> str:
        """The metric curves as inline SVG (theme colours, hover)."""
        return curves_svg(self.curves(), self.model.metric, empty_chart_text(self.model), self.curve_runs())

    def snapshot_html(self) -> str:
        """The display as static HTML (for viewers without widgets, e.g. a rendered notebook)."""
        curves = self.curves()  # none yet (just submitted): no figure, and no matplotlib to load
        image = (png_img(curves_png(curves, self.model.metric, self._highlight(), who=self.curve_runs()),
                         "metric curves") if curves
                 else f'<div style="color:gray">{html.escape(empty_chart_text(self.model))}</div>')
        return f"<div>{summary_html(self.model, self.feed.error)}</div>{image}{table_html(self.model)}"

    def snapshot_png(self) -> bytes:
        """The whole display (summary, curves, table) as one PNG, e.g. for a report."""
        columns, rows, _ = table_rows(self.model)
        return snapshot_png(summary_text(self.model), self.curves(), self.model.metric, self._highlight(),
                            columns, rows, empty=empty_chart_text(self.model), who=self.curve_runs())

    # -- in a notebook ---------------------------------------------------------------------------

    def final_bundle(self) -> dict[str, str]:
        """The ended experiment as a static view, kept by a saved notebook: HTML (summary, curves,
        runs table) and the same as one PNG."""
        return {"text/html": self.snapshot_html(), "image/png": base64.b64encode(self.snapshot_png()).decode(),
                "text/plain": summary_text(self.model)}

    def _repr_mimebundle_(self, **kwargs: Any) -> dict:
        if self.finished.is_set():
            return self.final_bundle()
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/html"] = self.snapshot_html()
        bundle["text/plain"] = summary_text(self.model)
        return bundle

    def _ipython_display_(self) -> None:
        """Show the live view under ``display_id``, so that when the experiment ends its final
        static view replaces it (and a notebook saved afterwards keeps the record); an ended
        experiment shows that final view."""
        from IPython.display import display
        with self._showing:
            if self.finished.is_set():
                display(self.final_bundle(), raw=True)
                return
            display(self._repr_mimebundle_(), raw=True, display_id=self.display_id)
            self._shown = True

    def _end(self) -> None:
        """Put the final view in place of every live view shown, then mark the display ended (so
        that whoever waits for the end finds the record in place)."""
        with self._showing:
            if self._shown:
                from IPython.display import update_display
                update_display(self.final_bundle(), display_id=self.display_id, raw=True)
            self.finished.set()

    def __repr__(self) -> str:
        counts = dict(self.model.counts())
        return f"<LiveDisplay of experiment {self.model.id}: {counts}>"
