"""Browser-test fixtures: one backend, one JupyterLab and one Chromium page per module.

Chromium is Debian's (``apt-get install chromium``); Playwright never downloads a browser here.
Screenshots go to ``test-artifacts/`` (gitignored) at the repository root.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from backend_process import started_backend
from lab_process import LabProcess
from sidebar_page import SidebarPage

from wml_jupyter.chart_widget import CHART_ENV

#: Debian's Chromium; override with $WML_TEST_CHROMIUM.
CHROMIUM = os.environ.get("WML_TEST_CHROMIUM", "/usr/bin/chromium")
#: Flags that keep headless Chromium quiet and offline (and able to run as root).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
                 "--no-first-run", "--disable-component-update", "--disable-sync"]
#: Milliseconds a Playwright step waits before failing.
STEP_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    """A real backend with 2 GPU slots (quota 2), shared by the module's tests."""
    with started_backend(tmp_path_factory.mktemp("wml-home")) as proc:
        yield proc


@pytest.fixture(scope="module")
def lab(request, backend, tmp_path_factory):
    """JupyterLab whose server extension talks to ``backend`` (through WML_BACKEND/WML_TOKEN/WML_HOME).
    Its kernels' live charts are the inline SVG unless the module sets ``WML_CHART = "ipympl"``."""
    env = {**backend.env, CHART_ENV: getattr(request.module, CHART_ENV, "svg")}
    proc = LabProcess(tmp_path_factory.mktemp("lab"), env).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def gate():
    """A file a run can wait for (the test touches it to let the run end), in a folder the runs'
    own OS users can see."""
    folder = Path(tempfile.mkdtemp(prefix="wml-gate-"))
    folder.chmod(0o755)
    yield folder / "gate"
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium driven by Playwright."""
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} not found: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def console_errors():
    """Errors the page logged to its console, or threw."""
    return []


@pytest.fixture(scope="module")
def page(browser, lab, console_errors):
    """JupyterLab loaded and restored in a 1280×860 page."""
    context = browser.new_context(viewport={"width": 1280, "height": 860}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(STEP_TIMEOUT_MS)
    page.on("console", lambda msg: msg.type == "error" and console_errors.append(msg.text))
    page.on("pageerror", lambda err: console_errors.append(f"pageerror: {err}"))
    page.goto(f"{lab.url}lab")
    page.wait_for_function("() => !!window.jupyterapp")
    page.evaluate("() => window.jupyterapp.restored.then(() => true)")
    yield page
    context.close()


@pytest.fixture(scope="module")
def sidebar(page):
    """The WML sidebar of ``page``, opened."""
    return SidebarPage(page).open()
