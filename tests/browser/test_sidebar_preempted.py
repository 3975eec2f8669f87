"""A preempted run in the WML sidebar, in a real JupyterLab driven by Chromium (issue 14, item 4):
the backend is stopped with ``wml backend stop --drain`` while the run trains, and once it is back
the run's row says why its attempt ended and where it resumed, in the backend's words
(``run.preempted``), with the attempt it is on; readable in the light and the dark theme."""

from __future__ import annotations

import time

import pytest
from notebook_page import set_theme, text_contrast
from resuming import drain, resuming_run

#: Smallest WCAG contrast of text a user must read (large-text AA; the warning colour is a mid shade).
READABLE = 3.0


@pytest.fixture(scope="module")
def preempted_run(backend, sidebar, tmp_path_factory):
    """A run drained at step 3 or later and resumed; (its id, what the backend says of it)."""
    run_id = resuming_run(backend, tmp_path_factory.mktemp("resume"), steps=30, sleep=0.3)
    experiment = run_id.rsplit("-", 1)[0]
    refresh = sidebar.panel.get_by_role("button", name="Refresh", exact=True)
    refresh.click()
    sidebar.expand(experiment)
    deadline = time.monotonic() + 60
    while backend.cli_json("show", run_id)["metrics"].get("step", 0) < 3:
        assert time.monotonic() < deadline, backend.cli_json("show", run_id)
        time.sleep(0.2)
    assert not sidebar.run(run_id).locator(".jp-wml-preempted").count()  # a first attempt: nothing to say
    drain(backend)
    backend.start()
    run = backend.cli_json("show", run_id)
    assert run["attempt"] == 2 and run["preempted"], run
    shown = sidebar.run(run_id).locator(".jp-wml-preempted")
    deadline = time.monotonic() + 60
    while not shown.count():  # the panel backs off while the backend is away: ask it again
        assert time.monotonic() < deadline, "the sidebar did not show the preemption"
        refresh.click()
        sidebar.page.wait_for_timeout(1000)
    return run_id, run["preempted"]


@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
def test_the_run_row_says_why_it_was_preempted_and_where_it_resumed(sidebar, preempted_run, dark):
    run_id, preempted = preempted_run
    assert preempted.startswith("preempted: the backend was stopped with --drain; resumed at step ")
    set_theme(sidebar.page, dark)
    shown = sidebar.run(run_id).locator(".jp-wml-preempted")
    shown.wait_for()
    assert shown.inner_text() == f"{preempted} · attempt 2"  # the backend's words, as they are
    assert text_contrast(shown) >= READABLE
    sidebar.screenshot(f"sidebar-preempted-{'dark' if dark else 'light'}", element=True)
    if dark:
        set_theme(sidebar.page, False)
