"""The metric charts as a user sees them: readable on a light and a dark page, a legend that
stays usable at 100 runs, curves coloured by run state (as the sidebar colours states), and
points that say what they are when hovered."""

from __future__ import annotations

import io
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image
from wml_core import models

from wml_jupyter.chart_svg import curves_svg
from wml_jupyter.charts import CurveRuns, curves_png, draw_curves, snapshot_png
from wml_jupyter.state_colors import INK, KIND_COLORS, state_kind

BASE_CSS = Path(__file__).resolve().parents[1] / "labextension" / "style" / "base.css"


def _run(run_id: str, state: str, **hparams) -> models.Run:
    now = datetime.now(timezone.utc)
    return models.Run(id=run_id, experiment_id="e", account="local", name=run_id, state=state, created=now,
                      transitions=[{"state": "QUEUED", "time": now}], hparams=hparams)


def _sweep(n: int, states=("COMPLETED",)) -> tuple[dict, dict]:
    """``n`` runs of 20 points each, their states cycling through ``states``."""
    runs = {f"e-{i:03d}": _run(f"e-{i:03d}", states[i % len(states)], lr=0.01 * (i + 1)) for i in range(n)}
    series = {r: (np.arange(20.0), np.linspace(0, 1, 20) * (i + 1) / n) for i, r in enumerate(runs)}
    return runs, series


def _legend(series, who) -> list[str]:
    fig = Figure()
    ax = fig.add_subplot()
    draw_curves(ax, series, "acc", who.highlight, who=who)
    return [t.get_text() for t in ax.get_legend().get_texts()]


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))


def test_the_png_has_no_background_and_its_text_is_a_grey_that_reads_on_light_and_dark():
    runs, series = _sweep(4)
    for png in (curves_png(series, "acc", "e-003", who=CurveRuns(runs, "e-003")),
                snapshot_png("t (e): 4 completed", series, "acc", "e-003", ["run", "acc"],
                             [[r, "0.5"] for r in runs], who=CurveRuns(runs, "e-003"))):
        pixels = _pixels(png)
        alpha = pixels[..., 3]
        assert (alpha == 0).mean() > 0.8  # mostly nothing: the page shows through (no white rectangle)
        assert alpha[0, 0] == 0 and alpha[-1, -1] == 0
        opaque = pixels[alpha == 255][:, :3].astype(int)
        grey = opaque[(abs(opaque[:, 0] - opaque[:, 1]) < 4) & (abs(opaque[:, 1] - opaque[:, 2]) < 4)]
        assert len(grey) and not (grey.max(axis=1) < 40).any() and not (grey.min(axis=1) > 215).any(), \
            "no black or white ink: it would vanish on a dark or a light page"


def test_at_100_runs_the_legend_names_the_best_and_the_selected_runs_and_counts_the_rest_by_state():
    runs, series = _sweep(100, ("COMPLETED", "COMPLETED", "FAILED", "PROCESSING"))
    labels = _legend(series, CurveRuns(runs, "e-050", ["e-010", "e-020"]))
    assert labels[:3] == ["e-050 (best)", "e-010", "e-020"]
    assert labels[3:] == ["25 others · running", "49 others · completed", "23 others · failed"]


def test_a_few_runs_are_all_named_best_first_and_none_is_best_without_a_metric():
    runs, series = _sweep(5)
    assert _legend(series, CurveRuns(runs, "e-003")) == ["e-003 (best)", "e-000", "e-001", "e-002", "e-004"]
    runs, series = _sweep(30, ("PROCESSING",))
    assert _legend(series, CurveRuns(runs)) == ["30 running"]


def test_curves_take_their_run_states_colours():
    runs, series = _sweep(4, ("COMPLETED", "FAILED", "STOPPED", "PROCESSING"))
    fig = Figure()
    ax = fig.add_subplot()
    draw_curves(ax, series, "acc", who=CurveRuns(runs))
    drawn = {line.get_label(): line.get_color() for line in ax.get_lines() if line.get_gid() in runs}
    assert drawn == {"e-000": KIND_COLORS["success"].fallback, "e-001": KIND_COLORS["error"].fallback,
                     "e-002": KIND_COLORS["halted"].fallback, "e-003": KIND_COLORS["active"].fallback}


def test_the_state_colours_are_the_sidebars():
    css = BASE_CSS.read_text()
    for kind in ("active", "success", "error", "halted"):
        rule = re.search(r"\.jp-wml-badge-%s \{([^}]*)\}" % kind, css).group(1)
        assert f"background: var({KIND_COLORS[kind].var})" in rule
    assert [state_kind(s) for s in ("QUEUED", "STORING", "COMPLETED", "FAILED", "HALTED", "STOPPED")] == \
        ["queued", "active", "success", "error", "halted", "halted"]


def test_the_live_svg_takes_the_theme_colours_and_hovering_a_point_names_run_step_value_and_hyperparameters():
    runs, series = _sweep(3, ("COMPLETED", "FAILED", "PROCESSING"))
    svg = curves_svg(series, "acc", who=CurveRuns(runs, "e-000"))
    text_fills = re.findall(r"<text [^>]*fill: ([^;\"]*\))", svg)
    assert text_fills and set(text_fills) == {INK.css()}  # every label in the theme's font colour
    assert KIND_COLORS["error"].css() in svg and KIND_COLORS["success"].css() in svg
    assert not re.search(r"fill: ?#fff", svg, re.I)  # no white background
    tips = re.findall(r"<title>([^<]*)</title>", svg)
    assert "e-001 · FAILED\nstep 19: acc=0.6667\nlr=0.02" in tips
    assert any(t.startswith("e-000 (best) · COMPLETED\nstep 0: acc=0") for t in tips)


def test_the_svg_of_100_runs_of_500_points_stays_small():
    runs, series = _sweep(100, ("PROCESSING",))
    series = {r: (np.arange(500.0), np.random.default_rng(1).random(500)) for r in runs}
    svg = curves_svg(series, "acc", who=CurveRuns(runs))
    assert len(svg) < 600_000, len(svg)
