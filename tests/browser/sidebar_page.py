"""The WML sidebar as a test sees it: what to click and what to read (a page object)."""

from __future__ import annotations

import time
from pathlib import Path

from backend_process import REPO

#: Where screenshots are saved (gitignored).
ARTIFACTS = REPO / "test-artifacts"
#: Terminal run states, as the sidebar shows them.
TERMINAL = {"COMPLETED", "FAILED", "HALTED", "STOPPED"}


class SidebarPage:
    """Operations on the ``#wml-sidebar`` panel of a JupyterLab page."""

    def __init__(self, page):
        self.page = page
        self.panel = page.locator("#wml-sidebar")

    def open(self) -> SidebarPage:
        """Click the WML tab of the left sidebar (if the panel is not shown yet)."""
        if not self.panel.is_visible():
            self.page.locator('.jp-SideBar li[data-id="wml-sidebar"]').click()
        self.panel.wait_for(state="visible")
        return self

    def command(self, command: str, args: dict | None = None) -> None:
        """Run a JupyterLab command (the app is exposed to the page in tests)."""
        self.page.evaluate("([id, args]) => window.jupyterapp.commands.execute(id, args).then(() => null)",
                           [command, args or {}])

    def experiment(self, experiment_id: str):
        """The experiment's list item (waits for it to be shown)."""
        item = self.panel.locator(f'[data-experiment-id="{experiment_id}"]')
        item.wait_for()
        return item

    def expand(self, experiment_id: str):
        """Show the experiment's runs; return the experiment's item."""
        item = self.experiment(experiment_id)
        expander = item.locator(".jp-wml-expander")
        if expander.get_attribute("aria-expanded") != "true":
            expander.click()
        item.locator(".jp-wml-run").first.wait_for()
        return item

    def run(self, run_id: str):
        """A run's list item."""
        return self.panel.locator(f'[data-run-id="{run_id}"]')

    def states(self, experiment_id: str) -> dict[str, str]:
        """Run id → state of the runs shown for an expanded experiment."""
        return self.page.evaluate(
            """(id) => Object.fromEntries([...document.querySelectorAll(
                   `#wml-sidebar [data-experiment-id="${id}"] .jp-wml-run`)].map(n => [n.dataset.runId, n.dataset.state]))""",
            experiment_id)

    def wait_state(self, run_id: str, state: str) -> None:
        """Wait until the sidebar shows the run in ``state``."""
        self.panel.locator(f'[data-run-id="{run_id}"][data-state="{state}"]').wait_for()

    def watch_states(self, experiment_id: str, until, timeout: float = 90.0) -> dict[str, list[str]]:
        """Sample the shown states until ``until(history)``; run id → states seen, in order."""
        history: dict[str, list[str]] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for run_id, state in self.states(experiment_id).items():
                seen = history.setdefault(run_id, [])
                if not seen or seen[-1] != state:
                    seen.append(state)
            if until(history):
                return history
            self.page.wait_for_timeout(150)
        raise AssertionError(f"states did not get there in {timeout} s: {history}")

    def confirm_dialog(self, accept_label: str) -> None:
        """Click the button labelled ``accept_label`` in the open dialog."""
        self.page.locator(".jp-Dialog").get_by_role("button", name=accept_label).click()
        self.page.locator(".jp-Dialog").wait_for(state="detached")

    def screenshot(self, name: str, element: bool = False) -> Path:
        """Save a PNG of the page (or only of the sidebar) as ``test-artifacts/NAME.png``."""
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        (self.panel if element else self.page).screenshot(path=str(path))
        return path
