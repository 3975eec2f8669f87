"""Queue truth and progress in the WML sidebar, in a real JupyterLab driven by Chromium: the quota
bar counts GPU slots and run slots as admission does, a queued run says what it waits for, and a
running run shows its step out of the total its code declared."""

from __future__ import annotations

import json

from wml_jupyter.codezip import zip_files

#: Declares its total and logs a step every 0.5 s, 8 steps.
COUNTING = """\
import time
from wml_jupyter import run
for step in range(1, 9):
    run.log(step=step, total_steps=8, acc=step / 8)
    time.sleep(0.5)
"""


def test_quota_bar_and_queued_runs_say_what_they_wait_for(backend, sidebar):
    manifest = {"name": "queue-truth", "gpus": 1, "framework": {"name": "pytorch", "command": "python3 train.py"},
                "hyperparameters": {"seed": [1, 2, 3, 4]}, "search": {"algorithm": "grid", "metric": "acc"}}
    experiment = backend.client().train("manifest.yml", manifest_text=json.dumps(manifest),
                                        code=zip_files({"train.py": COUNTING.encode()})).id
    sidebar.panel.get_by_role("button", name="Refresh").click()
    item = sidebar.expand(experiment)
    # 2 GPU slots (no GPU on the test machine), 1 GPU a run: two train, two wait
    # the queue's head may first read "it fits and starts next" for the moment before its admission
    reason = item.locator('.jp-wml-run[data-state="QUEUED"] .jp-wml-reason').filter(has_text="GPU slot").first
    reason.wait_for()
    assert "in the queue · waits for a GPU slot: 2 of 2 in use" in reason.inner_text()
    quota = sidebar.panel.locator(".jp-wml-quota-text").inner_text()
    assert "GPU slots 2 / 2 in use" in quota and "2 queued (waiting for a GPU slot: 2 of 2 in use)" in quota, quota
    progress = item.locator('.jp-wml-run[data-state="PROCESSING"] .jp-wml-progress').first
    progress.wait_for()
    assert progress.inner_text().startswith("step ") and progress.inner_text().endswith(" / 8")
    sidebar.screenshot("sidebar-queue-truth")
