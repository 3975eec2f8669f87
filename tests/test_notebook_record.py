"""The notebook keeps the record: a training cell's live display is replaced, through its display
id, by the finished sweep's static view, so that a notebook executed and saved shows it (here in
nbconvert's HTML) with no widget left to go missing when it is reopened without a kernel."""

from __future__ import annotations

import re

import nbformat
import pytest
from nbclient import NotebookClient
from nbconvert import HTMLExporter

CODE = """from wml_jupyter import run
hp = run.hparams()
for step in range(3):
    run.log(step=step, acc=hp["x"] * (step + 1) / 10)
"""
WIDGET = "application/vnd.jupyter.widget-view+json"


@pytest.fixture
def executed(backend, tmp_path, monkeypatch):
    """A notebook with a sweep left to run (then waited for from a later cell) and one run with
    ``--wait``, executed by nbclient against the test's backend."""
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    cells = ["%load_ext wml_jupyter",
             "%%wml train --name kept --sweep 'x=[1,2]' --search grid --metric acc\n" + CODE,
             "first = _",
             "%%wml train --name waited --sweep 'x=[3,4]' --search grid --metric acc --wait\n" + CODE,
             "first.live().wait(120);"]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(notebook, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    return notebook


def test_a_saved_notebook_shows_each_finished_sweep_not_a_widget(executed):
    for index, name in ((1, "kept"), (3, "waited")):
        [output] = executed.cells[index].outputs
        assert output.output_type == "display_data" and WIDGET not in output.data, name
        assert re.search(rf"{name} \(\w+\): 2 completed · no GPUs · best \w+-02 acc=", output.data["text/plain"])
        assert "<img" in output.data["text/html"] and output.data["image/png"]
    page, _ = HTMLExporter().from_notebook_node(executed)
    assert len(re.findall(r"2 completed · no GPUs · best \w+-02 acc=", page)) == 2
    assert "0 runs" not in page and "waiting for" not in page
