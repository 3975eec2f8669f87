"""The live display's metric chart as inline SVG: theme colours and hover.

The figure is drawn by matplotlib (as ``charts.draw_curves`` draws the PNG) with placeholder
colours that are then written as JupyterLab theme variables (``state_colors``), so the chart's
text, axes and curves follow the light or dark theme, live, and its background is the page's.
Hovering a point shows its run, state, step, value and hyperparameters (an SVG ``<title>``: the
browser's own tooltip, no script). The PNG stays the static record (a sanitized notebook drops
inline SVG); this is for the live view.
"""

from __future__ import annotations

import html
import io
import re
from typing import Any, Optional

import numpy as np

from .charts import LEGEND_RIGHT, CurveRuns, downsample, draw_curves, new_figure
from .state_colors import INK, KIND_COLORS

#: Hover targets per chart at most, shared among the runs (each run gets at least its last point).
HOVER_POINTS = 800
#: Points drawn per chart at most, shared among the runs (SVG travels to the browser at every
#: redraw: about 20 bytes a point), each curve keeping its extremes (``charts.downsample``).
SVG_POINTS = 10_000
#: Fewest points a curve keeps however many runs share ``SVG_POINTS``.
MIN_CURVE_POINTS = 40
#: Radius of a point's hover target, in the SVG's points (1/72 inch).
HOVER_RADIUS = 3.5
#: The chart's class: its hover targets are styled by it.
CHART_CLASS = "wml-chart"
#: Hover targets are invisible until hovered.
STYLE = (f"<style>.{CHART_CLASS} .wml-hit{{fill:transparent;stroke:none}}"
         f".{CHART_CLASS} .wml-hit:hover{{fill:{INK.css()};fill-opacity:0.7}}</style>")

#: Placeholder colours (never chosen otherwise) → the CSS that replaces them in the SVG.
_PLACEHOLDERS = {f"#0{i}0{i}0{i}": color.css() for i, color in enumerate([INK, *KIND_COLORS.values()], 1)}
_KIND_PLACEHOLDER = dict(zip(KIND_COLORS, list(_PLACEHOLDERS)[1:]))
_INK_PLACEHOLDER = next(iter(_PLACEHOLDERS))


def curves_svg(series: dict[str, tuple[np.ndarray, np.ndarray]], metric: Optional[str],
               empty: Optional[str] = None, who: Optional[CurveRuns] = None) -> str:
    """The metric curves as an inline ``<svg>`` in the theme's colours, each point hoverable."""
    who = who or CurveRuns()
    per_run = max(MIN_CURVE_POINTS, SVG_POINTS // max(1, len(series)))
    series = {run_id: downsample(x, y, per_run) for run_id, (x, y) in series.items()}
    fig = new_figure(right=LEGEND_RIGHT)
    ax = fig.add_subplot()
    draw_curves(ax, series, metric, who.highlight, empty, who, color=_KIND_PLACEHOLDER.__getitem__,
                ink=_INK_PLACEHOLDER)
    svg = _svg_text(fig)  # lays out the axes: transforms are final
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, count=1, flags=re.S)
    for placeholder, css in _PLACEHOLDERS.items():
        svg = svg.replace(placeholder, css)
    start = svg.index("<svg")
    head_end = svg.index(">", start)
    head = svg[start:head_end].replace("<svg", f'<svg class="{CHART_CLASS}" style="max-width:100%;height:auto"', 1)
    body = svg[head_end:svg.rindex("</svg>")]
    return f"<div>{STYLE}{head}{body}{_targets(fig, ax, series, metric, who)}</svg></div>"


def _svg_text(fig: Any) -> str:
    """The figure as SVG whose text stays text (readable, selectable, in the theme's colour)."""
    from matplotlib import rcParams
    buffer = io.StringIO()
    fonttype = rcParams["svg.fonttype"]
    rcParams["svg.fonttype"] = "none"  # only this key, only while saving: not rc_context, which
    try:                               # would restore every key over the notebook's own changes
        fig.savefig(buffer, format="svg", transparent=True)
    finally:
        rcParams["svg.fonttype"] = fonttype
    return buffer.getvalue()


def _targets(fig: Any, ax: Any, series: dict[str, tuple[np.ndarray, np.ndarray]], metric: Optional[str],
             who: CurveRuns) -> str:
    """A hover target with its tooltip on (a sample of) each run's points, in SVG coordinates."""
    if not series:
        return ""
    scale, height = 72.0 / fig.dpi, fig.get_figheight() * 72.0
    per_run = max(1, HOVER_POINTS // len(series))
    circles = []
    for run_id in sorted(series):
        x, y = series[run_id]
        index = np.unique(np.linspace(len(x) - 1, 0, min(per_run, len(x))).round().astype(int))
        finite = index[np.isfinite(y[index])]
        pixels = ax.transData.transform(np.column_stack([x[finite], y[finite]]))
        for i, (px, py) in zip(finite, pixels):
            tip = html.escape(who.hover(run_id, x[i], y[i], metric))
            circles.append(f'<circle class="wml-hit" cx="{px * scale:.1f}" cy="{height - py * scale:.1f}" '
                           f'r="{HOVER_RADIUS}"><title>{tip}</title></circle>')
    return f'<g class="wml-hover">{"".join(circles)}</g>'
