"""The live display of an experiment: an ipywidgets view of a ``livemodel.ExperimentModel``.

``LiveDisplay`` draws the model — a summary line, a runs table and a PNG of the metric curves
(Agg, off pyplot; each curve downsampled for drawing, the model keeps every point) — from a
daemon thread that redraws only on change and at most every ``REDRAW_MIN_S`` seconds, so the
kernel stays free and a flood of metrics costs a bounded number of redraws.
"""

from __future__ import annotations

import html
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from wml_backend import models
from wml_backend.billing import run_gpu_seconds
from wml_backend.states import RunState

from .compare import MAX_DRAW_POINTS, curves_png, downsample, png_img, snapshot_png, warm_up
from .livemodel import ExperimentFeed, ExperimentModel

if TYPE_CHECKING:
    from .client import Client

#: Shortest time between two redraws; a slow figure stretches it to twice its drawing time.
REDRAW_MIN_S = 0.25
#: Longest pause between two figures however slow drawing is (so a curve lags by about a second).
MAX_FIGURE_PAUSE_S = 1.0
#: While runs are live the table is refreshed at least this often (elapsed and GPU time move).
TICK_S = 1.0
#: How often runs are re-read over REST while any is live (queue positions are not streamed).
RECONCILE_S = 3.0

# -- presentation -----------------------------------------------------------------------------

_STATE_COLORS = {"QUEUED": "#999", "COMPLETED": "#2a7", "FAILED": "#d33", "HALTED": "#c80", "STOPPED": "#c80"}


def _elapsed(run: models.Run, now: float) -> float:
    """Seconds since the run got its GPUs, to now or to its end."""
    start = next((t.time.timestamp() for t in run.transitions if t.state is RunState.PENDING), None)
    if start is None:
        return 0.0
    end = run.transitions[-1].time.timestamp() if run.state.terminal else now
    return max(0.0, end - start)


def duration(seconds: float) -> str:
    """``0.4 s``, ``12 s``, ``3m05s``, ``1h02m``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summary_text(model: ExperimentModel) -> str:
    """n queued / running / done, GPU-hours used, the best run so far."""
    counts, now = model.counts(), time.time()
    with model.lock:
        gpu_s = sum(run_gpu_seconds(r, now) for r in model.runs.values())
    done = sum(n for s, n in counts.items() if RunState(s).terminal)
    running = sum(n for s, n in counts.items() if RunState(s).active)
    ended = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()) if RunState(s).terminal)
    best, metric = model.best(), model.metric
    best_text = f" · best {best} {metric}={_num(model.latest[best][metric])}" if best else ""
    return (f"{model.experiment.name} ({model.id}): {len(model.runs)} runs · "
            f"{counts.get('QUEUED', 0)} queued · {running} running · {done} done"
            f"{f' ({ended})' if ended else ''} · GPU time {gpu_s / 3600:.3f} h{best_text}")


def summary_html(model: ExperimentModel, error: Optional[str] = None) -> str:
    """The summary line, and why the display may be behind if it is."""
    note = f' · <span style="color:#c80">{html.escape(error)}</span>' if error else ""
    return f"<b>{html.escape(summary_text(model))}</b>{note}"


def table_rows(model: ExperimentModel) -> tuple[list[str], list[list[str]], list[str]]:
    """Columns, rows (strings) and run states of the runs table: state with queue position,
    hyperparameters, latest metrics (the drawn metric first), GPU seconds, elapsed."""
    now, metric = time.time(), model.metric
    with model.lock:
        runs = sorted(model.runs.values(), key=lambda r: r.id)
        params = sorted({k for r in runs for k in r.hparams})
        names = sorted({k for r in runs for k in model.latest.get(r.id, {})} - {"step"},
                       key=lambda k: (k != metric, k))
        rows = [_row(r, params, names, model.latest.get(r.id, {}), now) for r in runs]
    return ["run", "state", *params, *names, "GPU time", "elapsed"], rows, [r.state.value for r in runs]


def _row(run: models.Run, params: list[str], names: list[str], latest: dict, now: float) -> list[str]:
    state = run.state.value + (f" #{run.queue_position}" if run.queue_position else "")
    return [run.id, state, *(_num(run.hparams[p]) if p in run.hparams else "" for p in params),
            *(_num(latest[n]) if n in latest else "" for n in names),
            duration(run_gpu_seconds(run, now)), duration(_elapsed(run, now))]


def table_html(model: ExperimentModel) -> str:
    """The runs table as HTML; the best run in bold, states in colour."""
    columns, rows, states = table_rows(model)
    best = model.best()
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row, state in zip(rows, states):
        cells = [html.escape(c) for c in row]
        cells[1] = f'<span style="color:{_STATE_COLORS.get(state, "#27c")}">{cells[1]}</span>'
        style = ' style="font-weight:bold"' if row[0] == best else ""
        body.append(f"<tr{style}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f'<table style="font-size:12px"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


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

    def __init__(self, client: "Client", experiment: models.Experiment, metric: Optional[str] = None,
                 max_points: int = MAX_DRAW_POINTS, start: bool = True):
        import ipywidgets as widgets
        self.model = ExperimentModel(experiment, metric)
        self.feed = ExperimentFeed(client, self.model)
        self.max_points = max_points
        self.summary, self.table = widgets.HTML(), widgets.HTML()
        self.image = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
        self.widget = widgets.VBox([self.summary, self.image, self.table])
        #: Redraws so far, the time the last one took, and the time the last figure took.
        self.redraws, self.redraw_s, self.figure_s = 0, 0.0, 0.0
        self.finished = threading.Event()
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
            from wml_backend.errors import WmlError
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
            self.finished.set()
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
            self.image.value = self.curves_png()
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

    def curves_png(self) -> bytes:
        """The metric curves as PNG bytes."""
        return curves_png(self.curves(), self.model.metric, self.model.best())

    def snapshot_html(self) -> str:
        """The display as static HTML (for viewers without widgets, e.g. a rendered notebook)."""
        curves = self.curves()  # none yet (just submitted): no figure, and no matplotlib to load
        image = png_img(curves_png(curves, self.model.metric, self.model.best()), "metric curves") if curves else ""
        return f"<div>{summary_html(self.model, self.feed.error)}</div>{image}{table_html(self.model)}"

    def snapshot_png(self) -> bytes:
        """The whole display (summary, curves, table) as one PNG, e.g. for a report."""
        columns, rows, _ = table_rows(self.model)
        return snapshot_png(summary_text(self.model), self.curves(), self.model.metric, self.model.best(),
                            columns, rows)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict:
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/html"] = self.snapshot_html()
        bundle["text/plain"] = repr(self)
        return bundle

    def __repr__(self) -> str:
        counts = dict(self.model.counts())
        return f"<LiveDisplay of experiment {self.model.id}: {counts}>"
