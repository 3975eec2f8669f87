"""The live display's metric chart in a real JupyterLab (Chromium), in the light and the dark theme:
its background is the page's (read from the pixels, against the page's computed colour), its text
reads on it, its legend at many runs names the best run and counts the others by state, its
points say what they are when hovered; and the static view that replaces it when the experiment
ends follows the theme too."""

from __future__ import annotations

import re

import pytest
from notebook_page import assert_follows_theme, backdrop, blend, contrast, open_notebook, set_theme, start

#: Runs of the sweep: more than the legend names one by one (``charts.MAX_LEGEND``).
RUNS = 16
#: Each run logs acc at 4 steps; run x=1 then waits for the gate file, so the experiment (and its
#: live view) stays open until the test lets it end.
TRAIN = """\
import os, time
from wml_jupyter import run
x = run.hparams()["x"]
for step in range(4):
    run.log(step=step, acc=0.05 * x + 0.01 * step)
while x == 1 and not os.path.exists({gate!r}):
    time.sleep(0.1)
"""


@pytest.fixture(scope="module")
def chart_cell(page, lab, sidebar, gate):
    """The output of a cell training a 16-run sweep, once its live chart has all 16 curves."""
    cell = (f"%%wml train --name charts --sweep 'x=[{','.join(map(str, range(1, RUNS + 1)))}]' --search grid "
            f"--metric acc --mode max --framework custom\n" + TRAIN.format(gate=str(gate)))
    panel = open_notebook(page, lab.root, "charts.ipynb", ["%load_ext wml_jupyter", cell])
    start(page, "notebook:run-all-cells")
    output = panel.locator(".jp-Cell").nth(1).locator(".jp-OutputArea-output").first
    legend = output.locator("svg.wml-chart text", has_text=re.compile(r"\d+ others? · "))
    legend.first.wait_for(timeout=150_000)
    page.wait_for_function("""(n) => [...document.querySelectorAll('svg.wml-chart .wml-hover circle title')]
        .map(t => t.textContent.split('\\n')[0].split(' ')[0]).filter((v, i, a) => a.indexOf(v) === i).length >= n""",
                           arg=RUNS, timeout=150_000)
    yield output
    gate.touch()


@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
def test_the_live_chart_follows_the_theme_and_its_legend_names_the_best_and_groups_the_rest(page, chart_cell, dark):
    set_theme(page, dark)
    chart = chart_cell.locator("svg.wml-chart")
    assert_follows_theme(chart, dark)
    fill = chart.locator("text").first.evaluate("(t) => getComputedStyle(t).fill.match(/[\\d.]+/g).map(Number)")
    label_color = blend(fill, backdrop(chart))
    assert contrast(label_color, backdrop(chart)) >= 3, label_color  # the axes' text reads on the page

    labels = [t.strip() for t in chart.locator("g[id^=legend] text").all_text_contents()]
    best = [t for t in labels if t.endswith("(best)")]
    grouped = {m.group(2): int(m.group(1)) for t in labels if (m := re.match(r"(\d+) others? · (.+)", t))}
    assert len(best) == 1, labels
    assert sum(grouped.values()) + len(labels) - len(grouped) == RUNS, labels  # each run named or counted
    assert "completed" in grouped and grouped["completed"] >= RUNS - 7, grouped
    page.screenshot(path=_artifact(f"chart-live-{'dark' if dark else 'light'}.png"))


def test_hovering_a_point_shows_its_run_state_step_value_and_hyperparameters(page, chart_cell):
    target = chart_cell.locator("svg.wml-chart .wml-hover circle").last
    target.hover()
    tip = target.locator("title").text_content()
    run, step, hparams = tip.split("\n")
    assert re.fullmatch(r"\S+-\d+( \(best\))? · (COMPLETED|PROCESSING|STORING)", run), tip
    assert re.fullmatch(r"step \d: acc=[\d.]+", step), tip
    assert re.fullmatch(r"x=\d+", hparams), tip


@pytest.mark.parametrize("dark", [True, False], ids=["dark", "light"])
def test_the_static_view_that_replaces_it_follows_the_theme(page, chart_cell, gate, dark):
    gate.touch()
    image = chart_cell.locator('img[alt="metric curves"]')
    image.wait_for(timeout=120_000)
    set_theme(page, dark)
    assert_follows_theme(image, dark)
    page.screenshot(path=_artifact(f"chart-static-{'dark' if dark else 'light'}.png"))


def _artifact(name: str) -> str:
    from sidebar_page import ARTIFACTS
    ARTIFACTS.mkdir(exist_ok=True)
    return str(ARTIFACTS / name)
