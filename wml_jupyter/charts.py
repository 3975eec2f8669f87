"""Comparing runs: metric curves per run, and hyperparameters against the metric.

Figures are drawn with matplotlib's object API on the Agg canvas, never through pyplot, so they
render in any thread and leave the notebook's own figures and backend alone.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections import Counter
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from wml_core import models
from wml_core.billing import format_gpu_time
from wml_core.metric_line import PROGRESS_KEYS
from wml_core.ranking import best_run, metric_value, ranked
from wml_core.states import RunState

from .describe import TEXT_COLUMNS, best_text, html_table, num, numeric_columns, why
from .state_colors import INK, KIND_COLORS, KIND_LABELS, state_kind

#: Most points drawn per curve: a longer series is reduced, keeping each bucket's min and max.
MAX_DRAW_POINTS = 500
#: Runs the legend names one by one; beyond this it names the best and the selected runs and
#: counts the others by state ("97 others").
MAX_LEGEND = 12
#: Right edge of the axes when a legend stands beside them (a fraction of the figure's width).
LEGEND_RIGHT = 0.78
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
    """A matplotlib ``Figure`` as PNG bytes (drawn with Agg), its background transparent."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", transparent=True)
    return buffer.getvalue()


def new_figure(width: float = 8.0, height: float = 3.2, right: float = 0.97):
    """A pyplot-free figure of ``width`` × ``height`` inches with a transparent background, so
    that it sits on the notebook's own (light or dark) page (fixed margins: a layout engine would
    draw every figure twice)."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=100, facecolor="none")
    fig.subplots_adjust(left=0.09, right=right, top=0.92, bottom=0.15)
    return fig


def style_axes(ax: Any, ink: str = INK.fallback) -> None:
    """Transparent axes whose ticks, labels, frame and grid are drawn in ``ink``."""
    ax.set_facecolor("none")
    ax.tick_params(colors=ink, which="both")
    for spine in ax.spines.values():
        spine.set_color(ink)
    ax.xaxis.label.set_color(ink)
    ax.yaxis.label.set_color(ink)
    ax.title.set_color(ink)
    ax.grid(alpha=0.3, color=ink)


class CurveRuns:
    """Who the curves belong to: each run's state and hyperparameters, which run is best and
    which others the legend names (the rest are grouped by state in the legend)."""

    def __init__(self, runs: Optional[Mapping[str, models.Run]] = None, highlight: Optional[str] = None,
                 selected: Sequence[str] = ()):
        self.runs, self.highlight = dict(runs or {}), highlight
        self.selected = [r for r in dict.fromkeys(selected) if r != highlight]

    def kind(self, run_id: str) -> str:
        """The run's state kind (``state_colors``); a run not known is taken as running."""
        run = self.runs.get(run_id)
        return state_kind(run.state) if run else "active"

    def stopped(self, run_id: str) -> bool:
        """Whether the run was stopped before its end (early stopping, a cancel): its curve ends
        with ``STOP_MARKER``, so that it does not read as a run that completed."""
        run = self.runs.get(run_id)
        return run is not None and run.state in (RunState.STOPPED, RunState.HALTED)

    def named(self, run_ids: Sequence[str]) -> list[str]:
        """The runs the legend names: all of them up to ``MAX_LEGEND``, else the best and the
        selected ones (up to ``MAX_LEGEND``), best first."""
        if len(run_ids) <= MAX_LEGEND:
            return sorted(run_ids, key=lambda r: (r != self.highlight, r))
        present = set(run_ids)
        wanted = ([self.highlight] if self.highlight in present else []) + [r for r in self.selected if r in present]
        return wanted[:MAX_LEGEND]

    def label(self, run_id: str) -> str:
        """A named run's legend label."""
        return run_id + (" (best)" if run_id == self.highlight else "")

    def hover(self, run_id: str, step: float, value: float, metric: Optional[str]) -> str:
        """What hovering a point says: the run and its state, the step and value, its hyperparameters."""
        run = self.runs.get(run_id)
        state = f" · {run.state.value}" if run else ""
        best = " (best)" if run_id == self.highlight else ""
        hparams = ", ".join(f"{k}={num(v)}" for k, v in sorted(run.hparams.items())) if run else ""
        return f"{run_id}{best}{state}\nstep {num(step)}: {metric or 'value'}={num(value)}" + (
            f"\n{hparams}" if hparams else "")


def legend_groups(run_ids: Sequence[str], named: Sequence[str], who: CurveRuns) -> list[tuple[str, int]]:
    """The runs the legend does not name, counted by state kind: ``(kind, count)``, in kind order."""
    counts = Counter(who.kind(r) for r in run_ids if r not in set(named))
    return [(kind, counts[kind]) for kind in KIND_COLORS if counts[kind]]


def group_label(kind: str, count: int, others: bool = True) -> str:
    """``80 others · completed`` (beside named runs), or ``80 completed`` (when none is named)."""
    runs = f"{count} other{'s' if count != 1 else ''} · " if others else f"{count} "
    return runs + KIND_LABELS[kind]


#: The marker that ends the curve of a run stopped before its end (early stopping, a cancel).
STOP_MARKER = "X"
#: Line styles that tell apart named runs of the same state (colour is the state's).
NAMED_STYLES = ("-", "--", "-.", ":")


def draw_curves(ax: Any, series: dict[str, tuple[np.ndarray, np.ndarray]], metric: Optional[str],
                highlight: Optional[str] = None, empty: Optional[str] = None,
                who: Optional[CurveRuns] = None, color: Optional[Callable[[str], str]] = None,
                ink: str = INK.fallback) -> None:
    """One line per run of ``metric`` against step on ``ax``, coloured by the run's state
    (``color``: state kind → colour, by default the fallbacks of ``state_colors``); the best run
    drawn bold. The legend, beside the axes, names the runs ``who`` names and counts the others by
    state. Without any curve the axes say ``empty`` (by default, that the metric is awaited)."""
    who = who or CurveRuns(highlight=highlight)
    color = color or (lambda kind: KIND_COLORS[kind].fallback)
    ids = sorted(series)
    named = who.named(ids)
    many, lines = len(ids) > MAX_LEGEND, {}
    for run_id in ids:
        x, y = series[run_id]
        index = named.index(run_id) if run_id in named else None
        lines[run_id], = ax.plot(x, y, color=color(who.kind(run_id)), gid=run_id,
                                 marker="o" if len(x) < FEW_POINTS else None, markersize=3,
                                 **_line_style(run_id == who.highlight, index, many),
                                 label=who.label(run_id) if index is not None else None)
        if who.stopped(run_id) and len(x):
            ax.plot(x[-1:], y[-1:], linestyle="none", marker=STOP_MARKER, markersize=7, markeredgewidth=1.8,
                    color=color(who.kind(run_id)), zorder=5)
    ax.set_xlabel("step")
    ax.set_ylabel(metric or "metric")
    style_axes(ax, ink)
    if not series:
        ax.text(0.5, 0.5, empty or f"waiting for {metric or 'metrics'}…", ha="center", va="center",
                transform=ax.transAxes, color=ink, wrap=True)
        return
    _legend(ax, ids, [lines[r] for r in named], who, color, ink)


def _line_style(best: bool, named: Optional[int], many: bool) -> dict[str, Any]:
    """How a curve is drawn: the best bold, a named one (``named``: its place in the legend) in a
    line style of its own, the others thin (and faint when there are ``many``)."""
    if best:
        return {"linewidth": 2.6, "linestyle": "-", "zorder": 4}
    if named is not None:
        return {"linewidth": 1.4, "linestyle": NAMED_STYLES[named % len(NAMED_STYLES)], "zorder": 3}
    return {"linewidth": 1.0, "linestyle": "-", "zorder": 2, "alpha": 0.45 if many else 1.0}


def _legend(ax: Any, ids: Sequence[str], named: Sequence[Any], who: CurveRuns,
            color: Callable[[str], str], ink: str) -> None:
    """The legend beside the axes: the ``named`` runs' lines, then one entry per state for the others."""
    from matplotlib.lines import Line2D
    handles, labels = list(named), [line.get_label() for line in named]
    for kind, count in legend_groups(ids, [line.get_gid() for line in named], who):
        handles.append(Line2D([], [], color=color(kind), linewidth=1.0, alpha=0.6))
        labels.append(group_label(kind, count, others=bool(named)))
    legend = ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                       borderaxespad=0.0, frameon=False, labelcolor=ink)
    legend.set_zorder(5)


def curves_png(series: dict[str, tuple[np.ndarray, np.ndarray]], metric: Optional[str],
               highlight: Optional[str] = None, empty: Optional[str] = None,
               who: Optional[CurveRuns] = None) -> bytes:
    """The metric curves of every run as PNG bytes (transparent background, theme-neutral ink)."""
    fig = new_figure(right=LEGEND_RIGHT)
    draw_curves(fig.add_subplot(), series, metric, highlight, empty, who)
    return figure_png(fig)


def snapshot_png(summary: str, series: dict[str, tuple[np.ndarray, np.ndarray]], metric: Optional[str],
                 highlight: Optional[str], columns: list[str], rows: list[list[str]], max_rows: int = 40,
                 empty: Optional[str] = None, who: Optional[CurveRuns] = None) -> bytes:
    """A whole display in one PNG: the summary line, the curves and the runs table."""
    shown = rows[:max_rows] + ([[f"… {len(rows) - max_rows} more"] + [""] * (len(columns) - 1)]
                               if len(rows) > max_rows else [])
    table_in = 0.22 * (len(shown) + 1) + 0.2
    fig = new_figure(10.0, 3.6 + table_in, right=LEGEND_RIGHT)
    grid = fig.add_gridspec(2, 1, height_ratios=[3.2, table_in], hspace=0.35)
    fig.subplots_adjust(top=1 - 0.35 / (3.6 + table_in), bottom=0.02)
    fig.suptitle(summary, x=0.02, ha="left", fontsize=9, color=INK.fallback)
    draw_curves(fig.add_subplot(grid[0]), series, metric, highlight, empty, who)
    ax = fig.add_subplot(grid[1])
    ax.set_axis_off()
    if shown:
        table = ax.table(cellText=shown, colLabels=columns, loc="upper center", cellLoc="left")
        table.auto_set_font_size(False)
        table.set_fontsize(7)
        numeric = numeric_columns(columns, shown, text=TEXT_COLUMNS)
        for (r, c), cell in table.get_celld().items():
            cell.set_facecolor("none")
            cell.set_edgecolor(INK.fallback)
            cell.get_text().set_color(INK.fallback)
            if columns[c] in numeric:
                cell.get_text().set_horizontalalignment("right")
            if r > 0 and shown[r - 1][0] == highlight:
                cell.get_text().set_fontweight("bold")
    return figure_png(fig)


def _colormap(name: str):
    from matplotlib import colormaps
    return colormaps[name]


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
        ax.text(0.5, 0.5, empty or f"no run has logged {metric} yet", ha="center", va="center", color=INK.fallback)
        ax.set_axis_off()
        return figure_png(fig)
    columns = [_axis([row[name] for row in rows]) for name in names]
    score = np.asarray(columns[-1][0]) if mode == "max" else 1 - np.asarray(columns[-1][0])
    cmap = _colormap("viridis")
    for i in np.argsort(score):  # best drawn last, on top
        ax.plot(range(len(names)), [col[0][i] for col in columns], color=cmap(score[i]),
                linewidth=2.5 if i == int(np.argmax(score)) else 1.2, alpha=0.85)
    for x, (name, (_, ticks)) in enumerate(zip(names, columns)):
        ax.axvline(x, color=INK.fallback, linewidth=0.8)
        for y, label in ticks:
            ax.text(x + 0.03, y, label, fontsize=7, va="center", color=INK.fallback)
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(names) - 0.6)
    ax.set_title(f"hyperparameters vs {metric} (bright = best)", fontsize=9)
    style_axes(ax)
    ax.grid(False)
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
        others = sorted({k for r in self.runs for k in r.metrics} - {*PROGRESS_KEYS, self.metric})
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
