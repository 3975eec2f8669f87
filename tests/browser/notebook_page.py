"""A notebook in the browser as a test sees it: write one, open it, run it, read its outputs, switch
the theme, and tell what colour the page and a picture of an element are."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

from playwright.sync_api import Error as PlaywrightError

#: JupyterLab's themes by darkness.
THEMES = {False: "JupyterLab Light", True: "JupyterLab Dark"}
#: A JavaScript function: the panel open in JupyterLab's main area on the notebook at a path.
OPEN_PANEL = "(path) => [...window.jupyterapp.shell.widgets('main')].find(w => w.context?.path === path)"


def open_notebook(page, root: Path, name: str, cells: list[str]):
    """Write ``cells`` (code) as notebook ``name`` under ``root``, open it; return its panel."""
    content = {"cells": [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                          "source": source} for source in cells],
               "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
               "nbformat": 4, "nbformat_minor": 5}
    (root / name).write_text(json.dumps(content))
    return reopen_notebook(page, name, len(cells))


def reopen_notebook(page, name: str, cells: int):
    """Open notebook ``name`` (of ``cells`` cells) as saved, with a kernel; return its panel."""
    page.evaluate("(path) => { window.jupyterapp.commands.execute('docmanager:open', {path}); }", name)
    # the panel of this path, not the last one shown: another notebook's panel may be the last for a while
    panel_id = page.wait_for_function(f"(path) => ({OPEN_PANEL})(path)?.id", arg=name).json_value()
    panel = page.locator(f'[id="{panel_id}"]')
    panel.locator(".jp-Cell").nth(cells - 1).wait_for()
    page.evaluate(f"(path) => ({OPEN_PANEL})(path).sessionContext.ready.then(() => true)", name)
    page.wait_for_function(f"(path) => ({OPEN_PANEL})(path).sessionContext.session?.kernel?.status === 'idle'",
                           arg=name, timeout=60_000)
    return panel


def start(page, command: str) -> None:
    """Start a JupyterLab command without waiting for it to finish (it may open a dialog)."""
    page.evaluate("(id) => { window.jupyterapp.commands.execute(id); }", command)


def set_theme(page, dark: bool) -> None:
    """Switch JupyterLab to its dark (or light) theme and wait for its colours to apply."""
    page.evaluate("(theme) => window.jupyterapp.commands.execute('apputils:change-theme', {theme})", THEMES[dark])
    page.locator(f'body[data-jp-theme-light="{str(not dark).lower()}"]').wait_for(state="attached")
    page.wait_for_timeout(800)  # the theme's CSS applies after the attribute


def backdrop(locator, tries: int = 5) -> tuple[int, int, int]:
    """The colour an element is drawn on: the first opaque background among it and its ancestors
    (looked at again if a live redraw replaced the element meanwhile: a detached one has none)."""
    for _ in range(tries):
        rgb = locator.evaluate("""(node) => {
            if (!node.isConnected) return null;
            for (let n = node; n; n = n.parentElement) {
                const c = getComputedStyle(n).backgroundColor.match(/[\\d.]+/g).map(Number);
                if (c.length === 3 || c[3] > 0) return c.slice(0, 3);
            }
            return [255, 255, 255];
        }""")
        if rgb is not None:
            return tuple(round(c) for c in rgb)
    raise AssertionError(f"a live redraw replaced the element at each of {tries} looks")


def assert_follows_theme(element, dark: bool) -> None:
    """The element shows the page's own background (its pixels, mostly), and is not a white or
    black box on a page of the other kind."""
    page_color = backdrop(element)
    assert (sum(page_color) < 3 * 128) == dark, page_color
    shown = dominant_color(steady_screenshot(element))
    assert max(abs(a - b) for a, b in zip(shown, page_color)) <= 6, (shown, page_color)


def open_train_dialog(panel):
    """Click the notebook's first cell, then its toolbar's "Train this cell" button: the dialog."""
    panel.locator(".jp-Cell .cm-content").first.click()
    panel.locator('[data-jp-item-name="wml-train-cell"] button, [data-jp-item-name="wml-train-cell"]').first.click()
    return panel.page.locator(".jp-Dialog")


def wait_for_cell_line(page, line: str) -> None:
    """Wait until the active cell starts with ``line`` (what "Train this cell" writes)."""
    page.wait_for_function("(line) => window.jupyterapp.shell.currentWidget.content.activeCell"
                           ".model.sharedModel.getSource().startsWith(line)", arg=line)


def steady_screenshot(element, tries: int = 5) -> bytes:
    """A screenshot of ``element``, taken again if a live redraw replaced it meanwhile."""
    for _ in range(tries - 1):
        try:
            return element.screenshot()
        except PlaywrightError as err:
            if "not attached" not in str(err):
                raise
    return element.screenshot()


def text_contrast(locator) -> float:
    """WCAG contrast of an element's text colour against the colour it is drawn on."""
    rgba = locator.evaluate("(n) => getComputedStyle(n).color.match(/[\\d.]+/g).map(Number)")
    under = backdrop(locator)
    return contrast(blend(rgba, under), under)


def dominant_color(png: bytes) -> tuple[int, int, int]:
    """The most frequent colour of a screenshot."""
    import numpy as np
    from PIL import Image
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3).tolist()
    return tuple(Counter(map(tuple, pixels)).most_common(1)[0][0])


def blend(rgba, under) -> tuple[float, float, float]:
    """The colour ``rgba`` (alpha optional, 0…1) shows as over the opaque colour ``under``."""
    alpha = rgba[3] if len(rgba) > 3 else 1.0
    return tuple(alpha * c + (1 - alpha) * u for c, u in zip(rgba[:3], under))


def luminance(rgb) -> float:
    """Relative luminance (0 black … 1 white), as WCAG defines it."""
    def channel(c: float) -> float:
        c /= 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
    r, g, b = (channel(c) for c in rgb[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a, b) -> float:
    """WCAG contrast ratio of two colours (1 … 21)."""
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)
