"""The WML sidebar in a real JupyterLab, driven by Chromium, against a real backend.

One backend, one JupyterLab and one page serve the whole module (each starts in seconds), so
the tests run in file order on shared state: the sidebar stays open throughout.
"""

from __future__ import annotations

import io
import json
import re
import zipfile

import pytest
from sidebar_page import TERMINAL

from wml_jupyter.codezip import zip_files

#: A sweep run: prints an epoch line and logs val_acc eight times, about 4 s in all.
EPOCHS_SCRIPT = """\
import time
from wml_jupyter import run
lr = run.hparams()["lr"]
for epoch in range(8):
    print(f"epoch {epoch} lr={lr}", flush=True)
    run.log(step=epoch, val_acc=0.5 + 0.05 * epoch * lr)
    time.sleep(0.5)
"""
#: A run that prints a line every 0.4 s until cancelled.
TICKER_SCRIPT = """\
import itertools, time
for i in itertools.count():
    print(f"tick {i}", flush=True)
    time.sleep(0.4)
"""
#: Runs without a metric to rank them: x=1 fails as NaN losses do, x=2 completes.
NAN_SCRIPT = """\
from wml_jupyter import run
x = run.hparams()["x"]
run.log(step=0, loss=0.5 / x)
if x == 1:
    raise RuntimeError("loss is NaN")
"""
#: The notebook cell trained through "Train this cell with WML…".
CELL_SOURCE = """\
from wml_jupyter import run
scale = run.hparams().get("scale", 1)
for step in range(3):
    run.log(step=step, acc=0.2 * scale + step / 10)
print("trained from the notebook")
"""


def submit(backend, name: str, script: str, hyperparameters: dict, search: dict | None = None,
           runs: int | None = None) -> str:
    """Submit ``script`` as ``train.py`` of a 1-GPU experiment; return its id."""
    manifest = {"name": name, "gpus": 1, "framework": {"name": "pytorch", "command": "python3 train.py"},
                "hyperparameters": hyperparameters, "search": search or {"algorithm": "grid"}}
    experiment = backend.client().train("manifest.yml", manifest_text=json.dumps(manifest),
                                        code=zip_files({"train.py": script.encode()}), runs=runs)
    return experiment.id


def showing(*states: str):
    """``until`` for ``watch_states``: some run is shown in each of ``states`` now."""
    return lambda history: all(any(s[-1] == state for s in history.values()) for state in states)


def ended(count: int):
    """``until`` for ``watch_states``: ``count`` runs shown, all ended."""
    return lambda history: len(history) == count and all(s[-1] in TERMINAL for s in history.values())


@pytest.fixture(scope="module")
def live_sweep(backend):
    """4 runs of ``EPOCHS_SCRIPT`` on 2 GPUs: two train while two wait in the queue."""
    return submit(backend, "live-sweep", EPOCHS_SCRIPT, {"lr": [0.5, 1.0, 1.5, 2.0]},
                  {"algorithm": "grid", "metric": "val_acc", "mode": "max"})


@pytest.fixture(scope="module")
def ticker(backend):
    """2 runs that never end by themselves."""
    return submit(backend, "ticker", TICKER_SCRIPT, {"seed": [1, 2]})


@pytest.fixture(scope="module")
def notebook(lab, sidebar):
    """``train-me.ipynb`` with ``CELL_SOURCE`` as its one cell, open in the main area."""
    cell = {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": CELL_SOURCE}
    content = {"cells": [cell], "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                            "language": "python"}},
               "nbformat": 4, "nbformat_minor": 5}
    (lab.root / "train-me.ipynb").write_text(json.dumps(content))
    sidebar.command("docmanager:open", {"path": "train-me.ipynb"})
    panel = sidebar.page.locator(".jp-NotebookPanel:visible")
    panel.locator(".jp-Cell").first.wait_for()
    return panel


def test_panel_shows_quota_and_runs_changing_state_live(sidebar, live_sweep):
    tab = sidebar.page.locator('.jp-SideBar li[data-id="wml-sidebar"]')
    assert tab.get_attribute("title") == "WML training runs"
    assert sidebar.panel.locator(".jp-wml-account-name").inner_text() == "local"
    sidebar.panel.get_by_role("button", name="Refresh").click()  # the sweep was just submitted
    sidebar.expand(live_sweep)
    sidebar.watch_states(live_sweep, showing("PROCESSING", "QUEUED"))
    quota = sidebar.panel.locator(".jp-wml-quota-text").inner_text()
    sidebar.screenshot("sidebar-live-light")
    assert "/ 2 in use" in quota and "queued" in quota

    history = sidebar.watch_states(live_sweep, ended(4))
    assert {s[-1] for s in history.values()} == {"COMPLETED"}
    waited = [s for s in history.values() if s[0] == "QUEUED"]
    assert waited, f"no run was seen queued, then running: {history}"
    assert all(len(s) >= 2 for s in waited), history
    item = sidebar.experiment(live_sweep)
    item.locator(".jp-wml-best", has_text="val_acc").wait_for()
    assert item.locator(".jp-wml-sparkline").count() >= 1
    assert "lr=" in item.locator(".jp-wml-hparams").first.inner_text()


def test_a_submitted_experiment_shows_within_a_second(backend, sidebar):
    """The sidebar hears of new runs from the backend's event stream, not from its next poll."""
    sidebar.page.wait_for_timeout(500)  # the stream of a page just opened is connected by now
    experiment_id = submit(backend, "streamed", TICKER_SCRIPT, {"seed": [1]})
    try:
        sidebar.panel.locator(f'[data-experiment-id="{experiment_id}"]').wait_for(timeout=1_000)
    finally:
        backend.client().cancel(experiment_id)


def test_runs_are_counted_by_state_a_failed_run_says_why_and_no_metric_means_no_best(backend, sidebar):
    experiment_id = submit(backend, "nan-sweep", NAN_SCRIPT, {"x": [1, 2]})
    item = sidebar.expand(experiment_id)
    sidebar.watch_states(experiment_id, ended(2))
    item.locator(".jp-wml-counts", has_text="1 completed · 1 failed").wait_for()
    assert item.locator(".jp-wml-count-error").inner_text() == "1 failed"
    assert item.locator(".jp-wml-experiment-row .jp-wml-badge").count() == 0  # no one red word
    assert item.locator(".jp-wml-leader").inner_text() == "no metric chosen"
    reason = item.locator('.jp-wml-run[data-state="FAILED"] .jp-wml-reason')
    assert reason.inner_text() == "RuntimeError: loss is NaN (the command exited with code 1)"
    assert "Traceback" in reason.get_attribute("title")  # the log tail on hover
    sidebar.screenshot("sidebar-failed-run", element=True)
    item.locator(".jp-wml-expander").click()  # fold it away again


def test_download_results_and_copy_run_id(sidebar, live_sweep, tmp_path):
    run_id = sorted(sidebar.states(live_sweep))[0]
    with sidebar.page.expect_download() as download:
        sidebar.run(run_id).get_by_role("button", name="Download results").click()
    assert download.value.suggested_filename == f"{run_id}-results.zip"
    download.value.save_as(tmp_path / "results.zip")
    names = zipfile.ZipFile(io.BytesIO((tmp_path / "results.zip").read_bytes())).namelist()
    assert any(name.endswith("training-log.txt") for name in names), names

    sidebar.run(run_id).get_by_role("button", name="Copy run id").click()
    sidebar.page.get_by_text(f"Copied {run_id}").first.wait_for()


def test_logs_tab_follows_a_running_run(sidebar, ticker):
    sidebar.expand(ticker)
    run_id = sorted(sidebar.states(ticker))[0]
    sidebar.wait_state(run_id, "PROCESSING")
    sidebar.run(run_id).get_by_role("button", name="Open logs").click()
    log = sidebar.page.locator(f"#wml-logs-{run_id} .jp-wml-LogView-text")
    log.get_by_text("tick 1").wait_for()
    log.get_by_text("tick 6").wait_for()  # new lines keep coming into the open tab
    sidebar.screenshot("logs-tab")


def test_cancel_a_run_then_the_experiment(sidebar, ticker):
    first, second = sorted(sidebar.states(ticker))
    sidebar.run(first).get_by_role("button", name="Cancel run").click()
    sidebar.page.locator(".jp-Dialog", has_text="Cancel run?").wait_for()
    sidebar.screenshot("cancel-dialog")
    sidebar.page.keyboard.press("Enter")  # the default button keeps the run
    sidebar.page.locator(".jp-Dialog").wait_for(state="detached")
    assert sidebar.states(ticker)[first] == "PROCESSING"
    sidebar.run(first).get_by_role("button", name="Cancel run").click()
    sidebar.confirm_dialog("Cancel run")
    sidebar.wait_state(first, "HALTED")
    sidebar.page.locator(f"#wml-logs-{first} .jp-wml-LogView-status", has_text="ended").wait_for()

    sidebar.experiment(ticker).get_by_role("button", name="Cancel experiment").click()
    sidebar.confirm_dialog("Cancel experiment")
    sidebar.wait_state(second, "HALTED")
    sidebar.experiment(ticker).locator(".jp-wml-counts", has_text="2 halted").wait_for()


def test_train_this_cell_from_the_notebook_toolbar(sidebar, notebook):
    page = sidebar.page
    notebook.locator(".jp-Cell .cm-content").first.click()
    notebook.locator(".jp-Cell").first.click(button="right")
    page.locator(".lm-Menu-itemLabel", has_text="Train this cell with WML…").wait_for()
    page.keyboard.press("Escape")

    notebook.locator('[data-jp-item-name="wml-train-cell"] button, [data-jp-item-name="wml-train-cell"]').first.click()
    dialog = page.locator(".jp-Dialog")
    dialog.locator('input[name="name"]').fill("from-cell")
    dialog.locator('textarea[name="sweep"]').fill("scale=[1,2]")
    dialog.locator('input[name="runs"]').fill("2")
    sidebar.screenshot("train-dialog")
    dialog.get_by_role("button", name="Train").click()

    name = sidebar.panel.locator(".jp-wml-experiment", has_text="from-cell")
    name.wait_for()
    experiment_id = name.get_attribute("data-experiment-id")
    sidebar.expand(experiment_id)
    history = sidebar.watch_states(experiment_id, ended(2))
    assert {s[-1] for s in history.values()} == {"COMPLETED"}, history


def test_insert_watch_cell(sidebar, notebook, live_sweep):
    sidebar.experiment(live_sweep).get_by_role("button", name=f"Insert %wml watch {live_sweep} in the notebook").click()
    cell = notebook.locator(".jp-Cell", has_text=f"%wml watch {live_sweep}")
    cell.wait_for()
    # it ran in the kernel (which "Train this cell" may have used before: any execution count)
    cell.locator(".jp-InputPrompt", has_text=re.compile(r"\[\d+\]")).wait_for(timeout=60_000)
    assert "UsageError" not in cell.inner_text()


def test_a_thousand_runs_are_paged(backend, sidebar):
    experiment_id = submit(backend, "thousand", "import time\ntime.sleep(60)\n",
                           {"x": {"uniform": [0.0, 1.0]}}, {"algorithm": "random"}, runs=1000)
    try:
        item = sidebar.expand(experiment_id)
        assert item.locator(".jp-wml-run").count() == 50
        pager = item.locator(".jp-wml-pager")
        assert "1–50 of 1000" in pager.inner_text()
        pager.get_by_role("button", name="Next ›").click()
        pager.get_by_text("51–100 of 1000").wait_for(timeout=5_000)
        item.locator(".jp-wml-queue", has_text="#50").first.wait_for(timeout=5_000)
        sidebar.screenshot("runs-1000")
    finally:
        backend.client().cancel(experiment_id)
    sidebar.experiment(experiment_id).locator(".jp-wml-badge", has_text="HALTED").first.wait_for()
    sidebar.expand(experiment_id).locator(".jp-wml-expander").click()  # fold it away again


def test_dark_theme(sidebar, live_sweep):
    sidebar.command("apputils:change-theme", {"theme": "JupyterLab Dark"})
    sidebar.page.locator('body[data-jp-theme-light="false"]').wait_for(state="attached")
    sidebar.page.wait_for_timeout(500)  # the theme's CSS applies after the attribute
    sidebar.screenshot("sidebar-dark")
    sidebar.screenshot("sidebar-dark-panel", element=True)
    sidebar.command("apputils:change-theme", {"theme": "JupyterLab Light"})
    sidebar.page.locator('body[data-jp-theme-light="true"]').wait_for(state="attached")


def test_backend_down_shows_an_error_with_retry(backend, sidebar, console_errors):
    backend.stop()
    error = sidebar.panel.locator(".jp-wml-error")
    error.wait_for()
    assert "cannot reach the backend" in error.inner_text()
    sidebar.screenshot("backend-down")
    backend.start()
    error.get_by_role("button", name="Retry").click()
    error.wait_for(state="detached")
    sidebar.panel.locator(".jp-wml-experiment").first.wait_for()
    ours = [e for e in console_errors if not e.startswith("Failed to load resource")]
    assert not ours, ours
