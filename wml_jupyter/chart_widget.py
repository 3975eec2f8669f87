"""The live display's metric chart as a widget: interactive where the front end allows.

With ipympl installed, the chart is an ipympl canvas: a matplotlib figure in the notebook with a
toolbar to zoom, pan and go back home, and a status line that names the point under the pointer
(run, state, step, value and hyperparameters). Its background is transparent, so it sits on the
theme's page, and its ink is the mid grey that reads on a light and a dark page; a zoom or pan
the user made is kept across live redraws. Without ipympl, or with ``WML_CHART=svg`` (say, a
kernel whose JupyterLab lacks ipympl's front end), it is the inline SVG of ``chart_svg``: theme
colours and a tooltip per point, no zoom.

ipykernel 7 shows an ipympl canvas only once the kernel gets another request after the cell
(ipython/ipykernel#1476): a sweep's chart in the notebook's last cell would stay blank. Under
ipykernel 7 the canvas is therefore used only when asked for (``WML_CHART=ipympl``).
"""

from __future__ import annotations

import base64
import io
import os
import threading
from typing import Any, Optional, Protocol

import numpy as np

from .chart_svg import curves_svg
from .charts import LEGEND_RIGHT, CurveRuns, draw_curves, new_figure

#: Environment variable that picks the live chart: ``svg`` for the inline SVG even where ipympl
#: is installed; ``ipympl`` for the ipympl canvas where it is installed; unset: the canvas where
#: ipympl is installed and the kernel shows it (``canvas_shows``).
CHART_ENV = "WML_CHART"
#: The first ipykernel release whose canvases wait for a later request (ipython/ipykernel#1476).
BLANK_CANVAS_KERNEL = 7
#: How a PNG picture starts as a URL.
DATA_URL = "data:image/png;base64,"
#: How near (in pixels) the pointer must be to a point for the status line to name it.
NEAR_PX = 12.0

Series = dict[str, tuple[np.ndarray, np.ndarray]]


class LiveChart(Protocol):
    """A chart the live display redraws: ``widget`` goes in its view."""

    widget: Any

    def draw(self, series: Series, metric: Optional[str], empty: Optional[str], who: CurveRuns) -> None:
        """Show these curves (or ``empty`` without any)."""


class SvgChart:
    """The chart as inline SVG in an HTML widget (theme colours, hover, no zoom)."""

    def __init__(self) -> None:
        import ipywidgets as widgets
        self.widget = widgets.HTML()

    def draw(self, series: Series, metric: Optional[str], empty: Optional[str], who: CurveRuns) -> None:
        """Replace the SVG."""
        self.widget.value = curves_svg(series, metric, empty, who)


class CanvasChart:
    """The chart as an ipympl canvas (zoom, pan, the hovered point in the status line)."""

    def __init__(self, canvas_class: Any, manager_class: Any) -> None:
        self.figure = new_figure(right=LEGEND_RIGHT)
        self.widget = _primed(canvas_class, self.figure)(self.figure)
        self.widget.header_visible, self.widget.toolbar_visible, self.widget.resizable = False, "visible", False
        manager = manager_class(self.widget, 0)  # the toolbar: home, back, forward, pan, zoom, download
        # the display's thread redraws while the kernel's handles the user's zooms: one at a time
        self._lock = threading.Lock()
        manager.handle_json = self._locked(manager.handle_json)
        self.axes = self.figure.add_subplot()
        self.series: Series = {}
        self.metric: Optional[str] = None
        self.who = CurveRuns()
        self._auto: Optional[tuple] = None  # the limits autoscaling chose at the last redraw
        self.axes.format_coord = self.point_at

    def draw(self, series: Series, metric: Optional[str], empty: Optional[str], who: CurveRuns) -> None:
        """Redraw the curves, keeping the view the user zoomed or panned to (if they did), and
        send the picture from this thread (the kernel may be busy running a cell)."""
        with self._lock:
            self._draw(series, metric, empty, who)
            if self.widget.syncing_data_url:  # no front end yet: the picture waits in the state
                self.widget._data_url = picture_url(self.figure)
            else:
                self.widget.draw()

    def _locked(self, handle: Any) -> Any:
        def locked(content: dict) -> None:
            with self._lock:
                handle(content)
        return locked

    def _draw(self, series: Series, metric: Optional[str], empty: Optional[str], who: CurveRuns) -> None:
        view = self._limits()
        moved = self._auto is not None and view != self._auto
        self.series, self.metric, self.who = series, metric, who
        self.axes.clear()
        draw_curves(self.axes, series, metric, who.highlight, empty, who)
        self.axes.format_coord = self.point_at
        self._auto = self._limits()
        if moved:
            self.axes.set_xlim(view[0])
            self.axes.set_ylim(view[1])

    def point_at(self, x: float, y: float) -> str:
        """The status line for the pointer at data ``(x, y)``: the nearest point's run, state,
        step, value and hyperparameters on one line if one is within ``NEAR_PX``, else where the
        pointer is."""
        to_px = self.axes.transData.transform
        pointer = to_px((x, y))
        best, best_d = None, NEAR_PX
        for run_id, (xs, ys) in self.series.items():
            finite = np.isfinite(ys)
            if not finite.any():
                continue
            px = to_px(np.column_stack([xs[finite], ys[finite]]))
            d = np.hypot(*(px - pointer).T)
            i = int(d.argmin())
            if d[i] <= best_d:
                best, best_d = (run_id, xs[finite][i], ys[finite][i]), d[i]
        if best is None:
            return f"step {x:.4g}, {self.metric or 'value'} {y:.4g}"
        return " · ".join(self.who.hover(best[0], best[1], best[2], self.metric).split("\n"))

    def _limits(self) -> tuple:
        return tuple(self.axes.get_xlim()), tuple(self.axes.get_ylim())


def picture_url(figure: Any) -> str:
    """``figure`` as a PNG data URL (transparent background)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", transparent=True)
    return DATA_URL + base64.b64encode(buffer.getvalue()).decode()


def _primed(canvas_class: Any, figure: Any) -> Any:
    """``canvas_class`` whose state starts with a picture of ``figure``, as ipympl's own display
    gives it one: the front end's canvas cannot start without it (nested in the display's view, it
    never goes through ipympl's ``_repr_mimebundle_``)."""
    from traitlets import Unicode
    return type("PrimedCanvas", (canvas_class,),
                {"_data_url": Unicode(picture_url(figure), allow_none=True).tag(sync=True)})


def canvas_shows() -> bool:
    """Whether this kernel shows an ipympl canvas as its cell ends (not under ipykernel 7)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return int(version("ipykernel").split(".")[0]) < BLANK_CANVAS_KERNEL
    except (PackageNotFoundError, ValueError):
        return True


def live_chart() -> LiveChart:
    """The chart for a live display: the ipympl canvas where ipympl is installed and asked for
    (``WML_CHART=ipympl``) or shown as the cell ends, else the inline SVG."""
    asked = os.environ.get(CHART_ENV, "").lower()
    if asked == "ipympl" or (asked != "svg" and canvas_shows()):
        try:
            from ipympl.backend_nbagg import Canvas, FigureManager
        except ImportError:
            pass
        else:
            return CanvasChart(Canvas, FigureManager)
    return SvgChart()
