""""Train this cell with WML…" in a real JupyterLab (Chromium) against a real backend: the dialog
writes the equivalent ``%%wml train`` line into the cell and runs it, so the notebook shows the
experiment's live display and keeps how it was trained."""

from __future__ import annotations

import re

import pytest
from notebook_page import assert_follows_theme, open_notebook, open_train_dialog, set_theme, wait_for_cell_line
from playwright.sync_api import expect

#: The cell to train: three points of acc per run.
CELL_SOURCE = """\
from wml_jupyter import run
scale = run.hparams().get("scale", 1)
for step in range(3):
    run.log(step=step, acc=0.2 * scale + step / 10)
"""


def _source(page) -> str:
    return page.evaluate("() => window.jupyterapp.shell.currentWidget.content.activeCell.model.sharedModel.getSource()")


@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
def test_train_this_cell_writes_the_magic_line_and_shows_the_live_display(page, lab, dark):
    set_theme(page, dark)
    notebook = f"train-me-{'dark' if dark else 'light'}"
    panel = open_notebook(page, lab.root, f"{notebook}.ipynb", [CELL_SOURCE])
    dialog = open_train_dialog(panel)
    assert dialog.locator('input[name="name"]').input_value() == notebook  # named after the notebook
    assert dialog.locator('input[name="gpus"]').input_value() == "0"  # the magic's default
    dialog.locator('input[name="name"]').fill("from cell")
    dialog.locator('select[name="framework"]').select_option("custom")
    dialog.locator('textarea[name="sweep"]').fill("scale=[1,2]")
    dialog.locator('input[name="runs"]').fill("2")
    dialog.get_by_role("button", name="Train").click()

    line = "%%wml train --name 'from cell' --framework custom --sweep 'scale=[1,2]' --runs 2"
    wait_for_cell_line(page, line)
    assert _source(page) == f"{line}\n{CELL_SOURCE}"
    output = panel.locator(".jp-Cell").first.locator(".jp-OutputArea")
    expect(output).to_contain_text("from cell (", timeout=60_000)  # the display's summary line
    # the runs as the display lists them, until the experiment ends and its final view stays
    expect(output.locator('img[alt="metric curves"]')).to_be_visible(timeout=120_000)
    expect(output).to_contain_text(re.compile(r"\d completed"))
    assert len(output.locator("tbody tr").all()) == 2
    assert_follows_theme(output.locator('img[alt="metric curves"]'), dark)

    # again: the line is replaced, not stacked, and the dialog starts from it
    open_train_dialog(panel)
    assert dialog.locator('input[name="name"]').input_value() == "from cell"
    assert dialog.locator('textarea[name="sweep"]').input_value() == "scale=[1,2]"
    dialog.locator('input[name="runs"]').fill("1")
    dialog.get_by_role("button", name="Train").click()
    page.wait_for_function("() => window.jupyterapp.shell.currentWidget.content.activeCell"
                           ".model.sharedModel.getSource().includes('--runs 1')")
    assert _source(page) == f"{line.replace('--runs 2', '--runs 1')}\n{CELL_SOURCE}"
    # the first experiment's final view stays until the cell runs again: wait for the second's
    expect(output).to_contain_text(re.compile(r": 1 completed · "), timeout=120_000)
    expect(output.locator('img[alt="metric curves"]')).to_be_visible(timeout=120_000)
    assert len(output.locator("tbody tr").all()) == 1
