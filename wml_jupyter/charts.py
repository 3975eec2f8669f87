"""Comparing runs: metric curves per run, and hyperparameters against the metric.

Figures are drawn with matplotlib's object API on the Agg canvas, never through pyplot, so they
render in any thread and leave the notebook's own figures and backend alone.
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any, Optional, Sequence

import numpy as np

from wml_core import models
from wml_core.billing import format_gpu_time
from wml_core.ranking import best_run, metric_value, ranked

from .describe import TEXT_COLUMNS, best_text, html_table, num, numeric_columns, why

#: Most points drawn per curve: a longer series is reduced, keeping each bucket's min and max.
MAX_DRAW_POINTS = 500
#: Curves drawn with a legend; beyond this the legend would hide the plot.
MAX_LEGEND = 12
#: A curve with fewer points than this gets a marker on each (a single point would not show).
FEW_POINTS = 30


def downsample(x: np.ndarray, y: np.ndarray, max_points: int = MAX_DRAW_POINTS
               ) -> tuple[np.ndarray, np.ndarray]:
    """At most about ``max_points`` of (x, y): each bucket's min and max, in order, and the last."""
    n = len(x)
    if n <= max_points:
        return x, y
    buckets = max(1, max_points // 2)
    size = -(-n // buckets)
    grid = np.full(buckets * size, np.nan)
    grid[:n] = y
    grid = grid.reshape(buckets, size)
    finite = np.isfinite(grid)
    low = np.where(finite, grid, np.inf).argmin(axis=1)
    high = np.where(finite, grid, -np.inf).argmax(axis=1)
    base = np.arange(buckets) * size
    index = np.sort(np.stack([base + low, base + high], axis=1), axis=1).ravel()
    index = np.unique(np.append(index[index < n], n - 1))
    return x[index], y[index]


def warm_up() -> None:
    """Import what drawing needs (about a second the first time)."""
    from matplotlib.backends import backend_agg  # noqa: F401
    from matplotlib.figure import Figure  # noqa: F401


def figure_png(fig: Any) -> bytes:
    """A matplotlib ``Figure`` as PNG bytes (drawn with Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def new_figure(width: float = 8.0, height: float = 3.2):
    """A pyplot-free figure of ``width`` × ``height`` inches (fixed margins: a layout engine
    would draw every figure twice)."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=100)
    fig.subplots_adjust(left=0.09, right=0.97, top=0.92, bottom=0.15)
    return fig


def draw_curves(ax: Any, series: dict[str, tuple[np.ndarray, np.ndarray]], metric: Optional[str],
                highlight: Optional[str] = None, empty: Optional[str] = None) -> None:
    """One line per run of ``metric`` against step on ``ax``; the ``highlight`` run drawn bold.
    Without any curve the axes say ``empty`` (by default, that the metric is awaited)."""
    color = _colors(len(series))
    for index, (run_id, (x, y)) in enumerate(sorted(series.items())):
        best = run_id == highlight
        ax.plot(x, y, color=color(index), linewidth=2.6 if best else 1.2, zorder=3 if best else 2,
                marker="o" if len(x) < FEW_POINTS else None, markersize=3,
                label=_short(run_id) + (" (best)" if best else ""))
    ax.set_xlabel("step")
    ax.set_ylabel(metric or "metric")
    ax.grid(alpha=0.3)
    if not series:
        ax.text(0.5, 0.5, empty or f"waiting for {metric or 'metrics'}…", ha="center", va="center",
                transform=ax.transAxes, color="gray", wrap=True)
    elif len(series) <= MAX_LEGEND:
        ax.legend(fontsize=7, loc="best", ncol=2)


def curves_png(series: dict[str, tuple[np.ndarray, np.ndarray]], metric: Optional[str],
               highlight: Optional[str] = None, empty: Optional[str] = None) -> bytes:
    """The metric curves of every run as PNG bytes."""
    fig = new_figure()
    draw_curves(fig.add_subplot(), series, metric, highlight, empty)
    return figure_png(fig)


def snapshot_png(summary: str, series: dict[str, tuple[np.ndarray, np.ndarray]], metric: Optional[str],
                 highlight: Optional[str], columns: list[str], rows: list[list[str]], max_rows: int = 40,
                 empty: Optional[str] = None) -> bytes:
    """A whole display in one PNG: the summary line, the curves and the runs table."""
    shown = rows[:max_rows] + ([[f"… {len(rows) - max_rows} more"] + [""] * (len(columns) - 1)]
                               if len(rows) > max_rows else [])
    table_in = 0.22 * (len(shown) + 1) + 0.2
    fig = new_figure(10.0, 3.6 + table_in)
    grid = fig.add_gridspec(2, 1, height_ratios=[3.2, table_in], hspace=0.35)
    fig.subplots_adjust(top=1 - 0.35 / (3.6 + table_in), bottom=0.02)
    fig.suptitle(summary, x=0.02, ha="left", fontsize=9)
    draw_curves(fig.add_subplot(grid[0]), series, metric, highlight, empty)
    ax = fig.add_subplot(grid[1])
    ax.set_axis_off()
    if shown:
        table = ax.table(cellText=shown, colLabels=columns, loc="upper center", cellLoc="left")
        table.auto_set_font_size(False)
        table.set_fontsize(7)
        numeric = numeric_columns(columns, shown, text=TEXT_COLUMNS)
        for (r, c), cell in table.get_celld().items():
            if columns[c] in numeric:
                cell.get_text().set_horizontalalignment("right")
            if r > 0 and shown[r - 1][0] == highlight:
                cell.get_text().set_fontweight("bold")
    return figure_png(fig)


def _colormap(name: str):
    from matplotlib import colormaps
    return colormaps[name]


def _colors(n: int):
    """Distinct colours for up to 10 runs; beyond that, a continuous colour map by index."""
    if n <= 10:
        return _colormap("tab10")
    turbo = _colormap("turbo")
    return lambda i: turbo(0.05 + 0.9 * i / max(n - 1, 1))


def _short(run_id: str) -> str:
    return run_id.rsplit("-", 1)[-1] if "-" in run_id else run_id


# -- parallel coordinates --------------------------------------------------------------------

def _axis(values: list) -> tuple[list[float], list[tuple[float, str]]]:
    """Positions in [0, 1] of one axis's values, and its tick (position, label) pairs."""
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if not numeric:
        levels = sorted({str(v) for v in values})
        pos = {v: (i / (len(levels) - 1) if len(levels) > 1 else 0.5) for i, v in enumerate(levels)}
        return [pos[str(v)] for v in values], [(p, v) for v, p in pos.items()]
    lo, hi = min(values), max(values)
    log = lo > 0 and hi / lo > 100
    f = (lambda v: math.log10(v)) if log else (lambda v: float(v))
    a, b = f(lo), f(hi)
    scale = (lambda v: (f(v) - a) / (b - a)) if b > a else (lambda v: 0.5)
    return [scale(v) for v in values], [(scale(lo), f"{lo:.3g}"), (scale(hi), f"{hi:.3g}")]


def parallel_png(rows: list[dict[str, Any]], params: Sequence[str], metric: str, mode: str,
                 empty: Optional[str] = None) -> bytes:
    """Parallel coordinates: one axis per hyperparameter and one for the metric, a line per run
    (without rows, the plot says ``empty``: by default that no run has logged the metric)."""
    fig = new_figure(8.0, 3.6)
    ax = fig.add_subplot()
    names = [*params, metric]
    if not rows:
        ax.text(0.5, 0.5, empty or f"no run has logged {metric} yet", ha="center", va="center", color="gray")
        ax.set_axis_off()
        return figure_png(fig)
    columns = [_axis([row[name] for row in rows]) for name in names]
    score = np.asarray(columns[-1][0]) if mode == "max" else 1 - np.asarray(columns[-1][0])
    cmap = _colormap("viridis")
    for i in np.argsort(score):  # best drawn last, on top
        ax.plot(range(len(names)), [col[0][i] for col in columns], color=cmap(score[i]),
                linewidth=2.5 if i == int(np.argmax(score)) else 1.2, alpha=0.85)
    for x, (name, (_, ticks)) in enumerate(zip(names, columns)):
        ax.axvline(x, color="black", linewidth=0.8)
        for y, label in ticks:
            ax.text(x + 0.03, y, label, fontsize=7, va="center")
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(names) - 0.6)
    ax.set_title(f"hyperparameters vs {metric} (bright = best)", fontsize=9)
    return figure_png(fig)


def png_img(png: bytes, alt: str) -> str:
    """An ``<img>`` tag embedding PNG bytes."""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}"/>'


# -- the comparison ---------------------------------------------------------------------------

class Comparison:
    """An experiment's runs ranked by a metric as ``wml_core.ranking`` ranks them: completed runs
    best first, then the partial ones (still training, stopped, failed), then those that logged
    nothing; with the step of each value and a parallel-coordinates plot. No metric, no ranking."""

    def __init__(self, experiment: models.Experiment, runs: list[models.Run], metric: Optional[str] = None):
        self.experiment, self.mode = experiment, experiment.mode
        #: The metric runs are ranked by: as asked, else the experiment's (None: neither chose one).
        self.metric = metric or experiment.metric
        self.params = sorted({k for r in runs for k in r.hparams})
        #: The runs, best first (in their own order when there is no metric).
        self.runs = ranked(runs, self.metric, self.mode)
        #: The best completed run, or the provisional leader while none has completed.
        self.leader = best_run(self.runs, self.metric, self.mode)

    @property
    def best(self) -> Optional[models.Run]:
        """The best run (see ``leader``); None without a metric or a value of it."""
        return next(r for r in self.runs if r.id == self.leader.run_id) if self.leader else None

    def _scored(self) -> list[models.Run]:
        return [r for r in self.runs if metric_value(r, self.metric) is not None]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per run, best first: id, state, hyperparameters, the metric and the step it
        was read at, the other latest metrics, GPU seconds and why it ended."""
        others = sorted({k for r in self.runs for k in r.metrics} - {"step", self.metric})
        ranked_by = [self.metric, "step"] if self.metric else ["step"]
        return [{"run": r.id, "state": r.state.value, **{p: r.hparams.get(p) for p in self.params},
                 **{m: r.metrics.get(m) for m in ranked_by + others}, "gpu_seconds": r.gpu_seconds,
                 "reason": why(r)} for r in self.runs]

    def to_dataframe(self):
        """The rows as a pandas DataFrame (needs pandas)."""
        import pandas as pd
        return pd.DataFrame(self.rows()).set_index("run")

    def png(self) -> bytes:
        """The parallel-coordinates plot as PNG bytes."""
        scored = [{**r.hparams, self.metric: metric_value(r, self.metric)} for r in self._scored()]
        params = [p for p in self.params if all(p in row for row in scored)]
        return parallel_png(scored, params, self.metric or "metric", self.mode,
                            empty=None if self.metric else "no metric chosen")

    def summary(self) -> str:
        """One line: how many runs, by what, and the best (or why there is none)."""
        if not self.metric:
            return f"{len(self.runs)} runs; no metric chosen: pass --metric NAME to rank them"
        return (f"{len(self.runs)} runs by {self.metric} ({self.mode}), completed runs first: "
                f"{best_text(self.leader, self.metric)}")

    def __repr__(self) -> str:
        hparams = f" {self.best.hparams}" if self.best else ""
        return f"<Comparison of {self.experiment.id}: {self.summary()}{hparams}>"

    def _repr_html_(self) -> str:
        rows = self.rows()
        columns = [c if c != "gpu_seconds" else "GPU time" for c in (rows[0] if rows else ["run"])]
        cells = [[_cell(row[c]) for c in row] for row in rows]
        for row, cell in zip(rows, cells):
            cell[list(row).index("gpu_seconds")] = format_gpu_time(row["gpu_seconds"])
        title = (f"<b>{html.escape(self.experiment.name)}</b> ({html.escape(self.experiment.id)}): "
                 f"{html.escape(self.summary())}")
        image = png_img(self.png(), "parallel coordinates") if self._scored() else ""
        return title + html_table(columns, cells, numeric_columns(columns, cells, text=TEXT_COLUMNS)) + image


def _cell(value: Any) -> str:
    return "" if value is None else num(value)
