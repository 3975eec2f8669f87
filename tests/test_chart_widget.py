"""The live chart widget: an ipympl canvas (zoom, pan, the hovered point named) where ipympl is
installed, else the inline SVG; a zoom survives the live redraws."""

from __future__ import annotations

import sys
from datetime import datetime, timezone

import numpy as np
import pytest
from wml_core import models
from wml_core.states import RunState

from wml_jupyter.chart_widget import CanvasChart, SvgChart, live_chart
from wml_jupyter.charts import CurveRuns

pytest.importorskip("ipympl")  # in the test extra: the interactive path is the one users get


def _runs() -> tuple[dict, CurveRuns]:
    now = datetime.now(timezone.utc)
    runs = {f"e-0{i}": models.Run(id=f"e-0{i}", experiment_id="e", account="local", name=f"e-0{i}",
                                  state=RunState.COMPLETED,
                                  hparams={"lr": 0.1 * i}, created=now) for i in (1, 2)}
    series = {run_id: (np.arange(10.0), np.linspace(0, 1, 10) * i) for i, run_id in enumerate(runs, 1)}
    return series, CurveRuns(runs, "e-02")


def test_without_ipympl_the_chart_is_the_inline_svg(monkeypatch):
    monkeypatch.delenv("WML_CHART", raising=False)
    monkeypatch.setitem(sys.modules, "ipympl.backend_nbagg", None)  # as if not installed
    chart = live_chart()
    assert isinstance(chart, SvgChart)
    series, who = _runs()
    chart.draw(series, "acc", None, who)
    assert 'class="wml-chart"' in chart.widget.value and "e-02 (best)" in chart.widget.value


def test_with_ipympl_the_chart_is_a_canvas_with_zoom_and_pan_unless_svg_is_asked(monkeypatch):
    monkeypatch.setenv("WML_CHART", "ipympl")
    chart = live_chart()
    assert isinstance(chart, CanvasChart)
    from ipympl.backend_nbagg import Canvas
    assert isinstance(chart.widget, Canvas) and chart.widget._data_url.startswith("data:image/png;base64,")
    tools = {item[0] for item in chart.widget.toolbar.toolitems}
    assert {"Home", "Pan", "Zoom"} <= tools, tools
    monkeypatch.setenv("WML_CHART", "svg")
    assert isinstance(live_chart(), SvgChart)


def test_under_ipykernel_7_the_canvas_is_used_only_when_asked(monkeypatch):
    """Its canvases stay blank until a later request (ipython/ipykernel#1476)."""
    monkeypatch.delenv("WML_CHART", raising=False)
    monkeypatch.setattr("importlib.metadata.version", lambda name: "7.4.0" if name == "ipykernel" else "1")
    assert isinstance(live_chart(), SvgChart)
    monkeypatch.setattr("importlib.metadata.version", lambda name: "6.31.0" if name == "ipykernel" else "1")
    assert isinstance(live_chart(), CanvasChart)


def test_a_zoom_survives_live_redraws_and_the_pointer_names_the_point(monkeypatch):
    monkeypatch.setenv("WML_CHART", "ipympl")
    chart = live_chart()
    series, who = _runs()
    chart.draw(series, "acc", None, who)
    full = chart.axes.get_xlim()
    chart.axes.set_xlim(2, 4)  # what the toolbar's zoom does
    chart.draw({**series, "e-02": (np.arange(12.0), np.linspace(0, 2.2, 12))}, "acc", None, who)
    assert chart.axes.get_xlim() == (2, 4)
    assert chart.widget._data_url.startswith("data:image/png;base64,")  # a picture the canvas starts from
    assert chart.axes.get_xlim() != full
    said = chart.axes.format_coord(3.0, 2 * 3 / 9)
    assert said == "e-02 (best) · COMPLETED · step 3: acc=0.6 · lr=0.2", said
    assert chart.axes.format_coord(3.0, 50.0) == "step 3, acc 50"  # no point near the pointer
