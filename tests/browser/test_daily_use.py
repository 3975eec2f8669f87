"""Daily use in a real JupyterLab (Chromium), in the light and the dark theme: what a user reads in
a training cell's live display, its final view, compare and the sidebar (issue #17, items 1–8).

Per theme, one notebook trains a 6-run sweep with no metric on 2 GPU slots (1 GPU a run, so four
wait in the queue; two runs fail with ``RuntimeError: loss is NaN``) and a one-run experiment that
fails, waits for the sweep and compares it. The sweep's transient states (queued, in progress, an
ETA) are read while it runs; the rest once it has ended; then the notebook is saved, closed with
its kernel and reopened with a new one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from notebook_page import (assert_follows_theme, open_notebook, open_train_dialog, reopen_notebook, set_theme, start,
                           text_contrast, wait_for_cell_line)
from playwright.sync_api import expect

#: Declares its 8 steps; x=5 and x=6 log the best acc, then fail at step 3 as NaN losses do. The
#: others take about 5 s, so that once x=1 and x=2 have completed, x=5 and x=6 wait for 2 GPU slots
#: knowing how long a run takes for longer than the display's 3 s between two readings of the queue.
SWEEP = """\
import time
from wml_jupyter import run
x = run.hparams()["x"]
for step in range(1, 9):
    run.log(step=step, total_steps=8, acc=(0.9 + 0.01 * x) if x >= 5 else 0.1 * x + 0.01 * step)
    if x >= 5 and step == 3:
        raise RuntimeError("loss is NaN")
    time.sleep(0.6)
"""
#: How the failed runs say why, in the inline table and in the sidebar.
FAILED_WHY = "RuntimeError: loss is NaN (the command exited with code 1)"
#: The sweep's end as its summary counts it.
COUNTS = "4 completed · 2 failed"
#: Smallest WCAG contrast of text a user must read (large-text AA; state colours are mid shades).
READABLE = 3.0
#: Milliseconds to wait for what the sweep shows as it runs and ends.
SWEEP_MS = 120_000


@dataclass
class Daily:
    """One theme's notebook: its panel, the names of its experiments and the sweep's id."""

    dark: bool
    panel: object
    sweep: str
    doomed: str
    sweep_id: str = ""

    def output(self, cell: int):
        """The output area of cell ``cell``."""
        return self.panel.locator(".jp-Cell").nth(cell).locator(".jp-OutputArea")


def cells(sweep: str, doomed: str) -> list[str]:
    """The notebook: the sweep (no metric), keep it, a run that fails, wait, compare by acc."""
    return ["%load_ext wml_jupyter",
            f"%%wml train --name {sweep} --sweep 'x=[1,2,3,4,5,6]' --search grid --gpus 1 --framework custom\n"
            + SWEEP,
            "sweep = _",
            f"%%wml train --name {doomed} --framework custom\nraise RuntimeError('loss is NaN')\n",
            "sweep.live().wait(180);",
            "%wml compare {sweep.id} --metric acc"]


@pytest.fixture(scope="module", params=[False, True], ids=["light", "dark"])
def daily(request, page, lab, sidebar):
    """The theme switched, the notebook opened and all its cells started (the sweep is live)."""
    dark = request.param
    theme = "dark" if dark else "light"
    set_theme(page, dark)
    sweep, doomed = f"daily-{theme}", f"doomed-{theme}"
    panel = open_notebook(page, lab.root, f"{sweep}.ipynb", cells(sweep, doomed))
    start(page, "notebook:run-all-cells")
    notebook = Daily(dark, panel, sweep, doomed)
    summary = notebook.output(1).get_by_text(re.compile(rf"{sweep} \(\S+\):")).first
    summary.wait_for(timeout=SWEEP_MS)
    notebook.sweep_id = re.search(rf"{sweep} \((\S+)\):", summary.inner_text()).group(1)
    return notebook


def table(output) -> list[dict[str, str]]:
    """The runs table of an output: one dict per row, column header → cell text."""
    return output.locator("table").first.evaluate("""(t) => {
        const head = [...t.querySelectorAll('thead th')].map(th => th.textContent.trim());
        return [...t.querySelectorAll('tbody tr')].map(tr =>
            Object.fromEntries([...tr.querySelectorAll('td')].map((td, i) => [head[i], td.textContent.trim()])));
    }""")


def test_a_live_sweep_says_what_queued_runs_wait_for_how_far_each_run_is_and_when_it_ends(daily, sidebar):
    live = daily.output(1)
    waiting = live.locator("td", has_text=re.compile(r"^#\d in the queue · waits for a GPU slot: 2 of 2 in use"))
    waiting.first.wait_for(timeout=SWEEP_MS)
    live.locator("td", has_text=re.compile(r"^[1-8] / 8$")).first.wait_for(timeout=SWEEP_MS)  # step / total
    assert {"step", "GPU time", "elapsed", "reason"} <= set(table(live)[0])
    assert_follows_theme(live.locator("svg.wml-chart"), daily.dark)

    item = sidebar.expand(daily.sweep_id)  # the sidebar says the same of the same runs
    reason = item.locator('.jp-wml-run[data-state="QUEUED"] .jp-wml-reason').filter(has_text="GPU slot").first
    reason.wait_for(timeout=SWEEP_MS)
    assert "waits for a GPU slot: 2 of 2 in use" in reason.inner_text()

    # once runs have ended, those still queued say when they should start, and the sweep when it ends
    live.locator("td", has_text=re.compile(r"starts in ~\d+ (s|min)")).first.wait_for(timeout=SWEEP_MS)
    expect(live.get_by_text(re.compile(rf"{daily.sweep} .*done in ~\d+ (s|min)"))).to_be_visible(timeout=SWEEP_MS)


def test_an_ended_sweep_counts_its_states_says_why_runs_failed_and_names_no_best_without_a_metric(daily, sidebar):
    final = daily.output(1)
    expect(final.locator('img[alt="metric curves"]')).to_be_visible(timeout=SWEEP_MS)  # the final view
    summary = final.get_by_text(re.compile(rf"{daily.sweep} \(")).first.inner_text()
    assert f": {COUNTS} · " in summary and summary.endswith("no metric chosen"), summary
    assert "best" not in summary and "FAILED" not in summary, summary
    rows = table(final)
    assert sorted(row["state"] for row in rows) == ["COMPLETED"] * 4 + ["FAILED"] * 2, rows
    assert {row["reason"] for row in rows if row["state"] == "FAILED"} == {FAILED_WHY}, rows
    assert {row["step"] for row in rows} == {"8 / 8", "3 / 8"}, rows
    failed = final.locator("td span", has_text="FAILED").first
    assert text_contrast(failed) >= READABLE  # the state's red reads on the theme's page
    assert text_contrast(final.locator("td", has_text=FAILED_WHY).first) >= READABLE
    assert final.locator("b", has_text="best").count() == 0

    item = sidebar.expand(daily.sweep_id)
    item.locator(".jp-wml-counts", has_text=COUNTS).wait_for(timeout=SWEEP_MS)
    assert item.locator(".jp-wml-leader").inner_text() == "no metric chosen"
    reasons = item.locator('.jp-wml-run[data-state="FAILED"] .jp-wml-reason')
    assert reasons.all_inner_texts() == [FAILED_WHY] * 2
    assert text_contrast(reasons.first) >= READABLE
    item.locator(".jp-wml-expander").click()  # fold it away again


def test_an_experiment_whose_runs_all_failed_says_so_instead_of_waiting_for_metrics(daily):
    doomed = daily.output(3)
    said = doomed.get_by_text(re.compile(r"^the run failed; \S+: RuntimeError: loss is NaN"))
    said.wait_for(timeout=SWEEP_MS)
    assert text_contrast(said) >= READABLE
    summary = doomed.get_by_text(re.compile(rf"{daily.doomed} \(")).first.inner_text()
    assert summary.endswith("1 failed · no GPUs · every run failed"), summary
    assert "waiting for" not in doomed.inner_text()


def test_compare_ranks_completed_runs_first_and_shows_the_step_of_each_value(daily):
    compared = daily.output(5)
    compared.locator("table").wait_for(timeout=SWEEP_MS)
    rows = table(compared)
    # the failed runs logged the highest acc, at step 3: they rank after every completed run
    assert [row["state"] for row in rows] == ["COMPLETED"] * 4 + ["FAILED"] * 2, rows
    assert [row["x"] for row in rows] == ["4", "3", "2", "1", "6", "5"], rows
    assert [row["step"] for row in rows] == ["8"] * 4 + ["3"] * 2, rows
    assert "best " in compared.inner_text() and "completed runs first" in compared.inner_text()


def test_the_saved_notebook_reopened_with_a_new_kernel_shows_the_finished_sweep(daily, page, lab):
    expect(daily.output(5).locator("table")).to_be_visible(timeout=SWEEP_MS)  # every cell has run
    page.evaluate("""async () => {
        const app = window.jupyterapp, notebook = app.shell.currentWidget;
        await app.commands.execute('docmanager:save');
        await notebook.sessionContext.shutdown();
        notebook.dispose();
    }""")
    panel = reopen_notebook(page, f"{daily.sweep}.ipynb", len(cells(daily.sweep, daily.doomed)))
    reopened = Daily(daily.dark, panel, daily.sweep, daily.doomed)
    expect(reopened.output(1).locator('img[alt="metric curves"]')).to_be_visible()
    assert f"{daily.sweep} ({daily.sweep_id}): {COUNTS}" in reopened.output(1).inner_text()
    assert len(table(reopened.output(1))) == 6
    expect(reopened.output(3)).to_contain_text("every run failed")
    assert "model not found" not in panel.inner_text() and "Error displaying widget" not in panel.inner_text()
    assert_follows_theme(reopened.output(1).locator('img[alt="metric curves"]'), daily.dark)


def test_the_train_dialog_asks_for_the_metric_and_its_mode(page, lab):
    panel = open_notebook(page, lab.root, "dialog.ipynb", ["from wml_jupyter import run\nrun.log(step=1, acc=1.0)\n"])
    dialog = open_train_dialog(panel)
    assert dialog.locator('input[name="metric"]').input_value() == ""  # the magic's default: none
    assert dialog.locator('select[name="mode"]').input_value() == "max"
    dialog.locator('input[name="metric"]').fill("acc")
    dialog.locator('select[name="mode"]').select_option("min")
    dialog.locator('select[name="framework"]').select_option("custom")
    dialog.get_by_role("button", name="Train").click()
    line = "%%wml train --name dialog --framework custom --metric acc --mode min"
    wait_for_cell_line(page, line)
    output = panel.locator(".jp-Cell").first.locator(".jp-OutputArea")
    expect(output).to_contain_text("1 completed", timeout=120_000)
    expect(output).not_to_contain_text("no metric chosen")
