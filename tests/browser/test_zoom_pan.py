"""The live chart as an ipympl canvas in a real JupyterLab (Chromium), light and dark: a toolbar
whose pan and zoom buttons toggle, a zoom that changes what the pointer reads and outlives the
live redraws, a status line that names the point under the pointer, and a background that is the
theme's page."""

from __future__ import annotations

import re

import pytest
from notebook_page import assert_follows_theme, open_notebook, set_theme, start
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from playwright.sync_api import expect

#: This module's kernels draw the live chart with ipympl (``conftest.lab``).
WML_CHART = "ipympl"
#: 2 runs logging acc at 10 steps; x=1 then waits for the gate file, so the chart stays live.
TRAIN = """\
import os, time
from wml_jupyter import run
x = run.hparams()["x"]
for step in range(10):
    run.log(step=step, acc=0.1 * x + 0.05 * step)
while x == 1 and not os.path.exists({gate!r}):
    time.sleep(0.1)
"""
#: What the status line says where no point is near the pointer.
WHERE = re.compile(r"^step (-?[\d.e+-]+), acc (-?[\d.e+-]+)$")


@pytest.fixture(scope="module")
def figure(page, lab, gate):
    """The ipympl figure of a live 2-run sweep's display, once both curves are drawn."""
    cell = ("%%wml train --name zoom --sweep 'x=[1,2]' --search grid --metric acc --mode max --framework custom\n"
            + TRAIN.format(gate=str(gate)))
    # ipykernel 7 handles the canvas's first messages only once another request comes
    # (ipython/ipykernel#1476): the next cell, as a user's notebook has one
    panel = open_notebook(page, lab.root, "zoom.ipynb", ["%load_ext wml_jupyter", cell, "sweep = _"])
    start(page, "notebook:run-all-cells")
    output = panel.locator(".jp-Cell").nth(1).locator(".jp-OutputArea")
    output.get_by_text(re.compile(r"2 (running|completed)|1 running · 1 completed")).first.wait_for(timeout=150_000)
    figure = output.locator(".jupyter-matplotlib-figure")
    shown(page, figure.locator("canvas").first)
    yield figure
    gate.touch()


def shown(page, canvas, tries: int = 3) -> None:
    """Wait for ``canvas`` to be drawn (sized by the kernel's first answer to it). Once, in a full
    run, it stayed blank for 30 s; under ipykernel 7 a canvas's first messages can wait for the
    kernel's next request (ipython/ipykernel#1476), so each try that times out sends one: a
    request for the kernel's info, as a user's next cell would."""
    for _ in range(tries):
        try:
            canvas.wait_for(timeout=10_000)
            return
        except PlaywrightTimeoutError:
            page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel"
                          ".requestKernelInfo()")
    canvas.wait_for()


def _read(figure, x: float, y: float) -> str:
    """What the status line says with the pointer at fraction (x, y) of the canvas."""
    canvas = figure.locator("canvas").last  # the top canvas takes the pointer
    box = canvas.bounding_box()
    figure.page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"])
    footer = figure.locator(".jupyter-matplotlib-footer")
    figure.page.wait_for_function("(f) => f.textContent.trim() !== ''", arg=footer.element_handle())
    figure.page.wait_for_timeout(300)  # the kernel answers each move
    return footer.inner_text().strip()


@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
def test_the_canvas_sits_on_the_themes_page(page, figure, dark):
    set_theme(page, dark)
    assert_follows_theme(figure.locator(".jupyter-matplotlib-canvas-div"), dark)


def test_pan_and_zoom_toggle_and_a_zoom_changes_the_view_through_live_redraws(page, figure):
    pan = figure.get_by_title(re.compile("pans"))
    zoom = figure.get_by_title(re.compile("Zoom to rectangle"))
    pan.click()
    expect(pan).to_have_class(re.compile("mod-active"))
    zoom.click()
    expect(zoom).to_have_class(re.compile("mod-active"))
    expect(pan).not_to_have_class(re.compile("mod-active"))

    before = WHERE.match(_read(figure, 0.3, 0.55))
    assert before, "the status line says where the pointer is"
    canvas = figure.locator("canvas").last
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + 0.25 * box["width"], box["y"] + 0.3 * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + 0.45 * box["width"], box["y"] + 0.7 * box["height"], steps=8)
    page.mouse.up()
    page.wait_for_timeout(1_500)  # several live redraws (the display redraws every 0.25 s at most)
    after = WHERE.match(_read(figure, 0.3, 0.55))
    assert after and float(after.group(1)) != pytest.approx(float(before.group(1)), abs=1e-3), (before, after)
    zoom.click()  # off again

    home = figure.get_by_title(re.compile("Reset original view"))
    home.click()
    page.wait_for_timeout(800)
    assert WHERE.match(_read(figure, 0.3, 0.55)).group(1) == before.group(1)


def test_the_status_line_names_the_point_under_the_pointer(page, figure):
    # the top-right point (the best run's last: step 9, acc 0.65) lies 1.05/1.1 of the way across
    # and up the axes (matplotlib's 5 % margins), which span 0.09–0.78 of the figure's width and
    # 0.15–0.92 of its height (charts.new_figure)
    inside = 1.05 / 1.1
    said = _read(figure, 0.09 + (0.78 - 0.09) * inside, 1 - (0.15 + (0.92 - 0.15) * inside))
    assert re.fullmatch(r"\S+-02 \(best\) · COMPLETED · step 9: acc=0.65 · x=2", said), said
