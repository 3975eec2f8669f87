"""The magics, driven through a real IPython shell against a real backend process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from backend_process import backend_in_environment
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from ipython_shell import new_shell
from wml_core.errors import InvalidInput, NotFound, WmlError

from wml_jupyter.charts import Comparison
from wml_jupyter.objects import (
    Experiment,
    ExperimentList,
    LogText,
    Run,
    RunList,
    UsageReport,
)
from wml_jupyter.progress import Transfer, WidgetProgress

TINY = '''
import os
from pathlib import Path
from wml_jupyter import run
hp = run.hparams()
for step in range(3):
    run.log(step=step, acc=hp["x"] * (step + 1) / 10)
print("trained with", hp)
Path(os.environ["RESULT_DIR"], "model.txt").write_text(str(hp["x"]))
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One backend (2 GPU slots) for this module; the magics find it through the environment."""
    with backend_in_environment(tmp_path_factory.mktemp("magics") / "wml-home",
                                IPYTHONDIR=str(tmp_path_factory.mktemp("ipython"))) as proc:
        yield proc


@pytest.fixture(scope="module")
def shell(server):
    """A fresh IPython shell with ``%load_ext wml_jupyter`` done."""
    sh = new_shell()
    yield sh
    for value in list(sh.user_ns.values()):
        if isinstance(value, Experiment) and "_live" in value.__dict__:
            value.live().close()
    InteractiveShell.clear_instance()


def ok(shell: InteractiveShell, source: str):
    """Run a cell that must succeed; return its value."""
    result = shell.run_cell(source)
    if not result.success:
        raise AssertionError(f"cell failed: {result.error_in_before_exec or result.error_in_exec!r}")
    return result.result


def fails(shell: InteractiveShell, source: str, capsys) -> tuple[BaseException, str]:
    """Run a cell that must fail; return the error and what the cell printed."""
    capsys.readouterr()
    result = shell.run_cell(source)
    assert not result.success
    return result.error_in_exec, capsys.readouterr().out


@pytest.fixture(scope="module")
def finished(shell):
    """A 3-run sweep submitted from a cell, run to its end."""
    exp = ok(shell, "%%wml train --name tiny --sweep 'x=[1,2,3]' --search grid --metric acc --mode max\n" + TINY)
    shell.user_ns["exp"] = exp
    exp.live().wait(120)
    return exp


def test_the_manual_lists_every_subcommand(shell, capsys):
    ok(shell, "%wml?")
    manual = capsys.readouterr().out
    for usage in ("%%wml train", "%wml train", "%wml watch", "%wml list", "%wml show", "%wml logs",
                  "%wml cancel", "%wml download", "%wml upload", "%wml compare", "%wml usage", "%wml config"):
        assert usage in manual
    assert "--sweep SPEC" in manual and "--early-stop" in manual and "run.hparams()" in manual


def test_a_sweep_from_a_cell_completes_with_metrics(shell, finished):
    assert isinstance(finished, Experiment)
    runs = finished.runs()
    assert [r.state.value for r in runs] == ["COMPLETED"] * 3
    assert [r.hparams["x"] for r in runs] == [1, 2, 3]
    assert [r.metrics["acc"] for r in runs] == pytest.approx([0.3, 0.6, 0.9])
    model = finished.live().model
    assert all(model.count(r.id, "acc") == 3 for r in runs)
    assert finished.best().id == runs[-1].id


def shown(shell: InteractiveShell, obj) -> list:
    """What displaying ``obj`` as a cell's value publishes (its outputs, with their display ids)."""
    with capture_output() as captured:
        shell.displayhook(obj)
    return captured.outputs


def test_a_live_experiment_renders_as_a_widget_and_an_ended_one_as_its_final_view(shell, finished):
    live = shell.run_cell("%%wml train --name again --sweep 'x=[1]'\n" + TINY).result
    first = shown(shell, live)
    assert "application/vnd.jupyter.widget-view+json" in first[0].data and "<table" in first[0].data["text/html"]
    assert first[0].transient == {"display_id": live.live().display_id}  # replaced when it ends
    live.live().wait(60)
    [final] = shown(shell, finished)
    assert "application/vnd.jupyter.widget-view+json" not in final.data
    assert "3 completed" in final.data["text/plain"] and "<img" in final.data["text/html"]
    assert f"best {finished.id}-03 acc=0.9" in final.data["text/html"]


def test_the_kernel_stays_free_while_the_display_updates(shell):
    exp = ok(shell, "%%wml train --name slow --runs 1\nimport time\nfrom wml_jupyter import run\n"
                    "for i in range(20):\n    run.log(step=i, acc=i)\n    time.sleep(0.1)\n")
    shell.user_ns["slow"] = exp
    # A cell that blocks the main thread: the display keeps updating underneath it.
    seen = ok(shell, "import time\nstart = time.time()\n"
                     "while slow.live().model.count(slow.id + '-01', 'acc') < 5 and time.time() - start < 60:\n"
                     "    time.sleep(0.05)\nslow.live().model.count(slow.id + '-01', 'acc')")
    assert seen >= 5
    exp.live().wait(60)


def test_an_undefined_name_fails_the_cell_before_submitting(shell, server, capsys):
    before = len(server.client().experiments())
    error, out = fails(shell, "%%wml train --sweep 'lr=[0.1]'\nfrom wml_jupyter import run\n"
                              "model = build(run.hparams()['lr'])\n", capsys)
    assert isinstance(error, InvalidInput)
    # Lines are the cell's: line 1 is the %%wml line.
    assert out.strip() == "InvalidInput: line 3: name 'build' is not defined in this cell"
    assert len(server.client().experiments()) == before


@pytest.mark.parametrize("source, kind, message", [
    ("%wml frobnicate", InvalidInput, "unknown subcommand 'frobnicate'"),
    ("%wml lst", InvalidInput, "did you mean 'list'"),
    ("%wml list --bogus", InvalidInput, "%wml list: unrecognized arguments: --bogus"),
    ("%wml show nosuch", NotFound, "nosuch"),
    ("%wml logs nosuch-01", NotFound, "nosuch-01"),
    ("%%wml list\nx = 1", InvalidInput, "only `%%wml train` takes a cell"),
    ("%wml train missing.yml", InvalidInput, "missing.yml: no such file"),
    ("%%wml train --sweep 'x=[1'\nprint(1)", InvalidInput, "--sweep"),
    ("%%wml train --gpus two\nprint(1)", InvalidInput, "invalid int value"),
    ("%wml config --token -Abc", InvalidInput,  # a token made before tokens began with 'wml_'
     "argument --token: expected one argument; a value that begins with '-' is given as --option=VALUE"),
])
def test_errors_are_one_line_and_fail_the_cell(shell, capsys, source, kind, message):
    error, out = fails(shell, source, capsys)
    assert isinstance(error, kind) and isinstance(error, WmlError)
    assert message in str(error)
    assert out.strip().count("\n") == 0 and "Traceback" not in out


def test_queries_return_objects_that_render_themselves(shell, finished, capsys):
    exp, best = finished, f"{finished.id}-03"
    experiments = ok(shell, "%wml list")
    assert isinstance(experiments, ExperimentList) and exp.id in experiments._repr_html_()
    assert experiments.to_dataframe().loc[exp.id, "COMPLETED"] == 3
    runs = ok(shell, "%wml list {exp.id}")  # {expr} expands as in every magic
    assert isinstance(runs, RunList) and list(runs.to_dataframe()["acc"]) == pytest.approx([0.3, 0.6, 0.9])
    experiment = ok(shell, f"%wml show {exp.id}")
    [output] = shown(shell, experiment)  # a static summary and table, no live display, no raw dict
    assert isinstance(experiment, Experiment) and best in output.data["text/html"]
    assert f"3 completed · best {best} acc=0.9 · GPU time" in output.data["text/html"]
    assert "application/vnd.jupyter.widget-view+json" not in output.data and "{" not in output.data["text/html"]
    run = ok(shell, f"%wml show {best}")
    assert isinstance(run, Run) and run.hparams == {"x": 3} and best in run._repr_html_()
    assert "<td>hyperparameters</td><td>x=3</td>" in run._repr_html_() and "COMPLETED" in run._repr_html_()
    assert list(run.to_dataframe()["acc"]) == pytest.approx([0.1 * 3, 0.2 * 3, 0.3 * 3])
    log = ok(shell, f"%wml logs {best}")
    assert isinstance(log, LogText) and "trained with {'x': 3}" in log and "<pre" in log._repr_html_()
    capsys.readouterr()
    assert ok(shell, f"%wml logs {best} --follow") is None  # printed as it comes, until the run ended
    assert "trained with {'x': 3}" in capsys.readouterr().out
    usage = ok(shell, "%wml usage")
    assert isinstance(usage, UsageReport) and exp.id in usage.to_dataframe().index


def test_compare_ranks_the_best_configuration_first(shell, finished):
    comparison = ok(shell, f"%wml compare {finished.id}")
    assert isinstance(comparison, Comparison)
    frame = comparison.to_dataframe()
    assert list(frame["x"]) == [3, 2, 1] and list(frame["acc"]) == pytest.approx([0.9, 0.6, 0.3])
    assert comparison.best.hparams == {"x": 3}
    assert "<img" in comparison._repr_html_() and comparison.png().startswith(b"\x89PNG")


NAN_ONCE = """
from wml_jupyter import run
hp = run.hparams()
run.log(step=0, loss=0.5 / hp["x"])
if hp["x"] == 1:
    raise RuntimeError("loss is NaN")
run.log(step=1, loss=0.1)
"""


def test_without_a_metric_no_run_is_best_and_a_failed_run_says_why(shell):
    exp = ok(shell, "%%wml train --name nan --sweep 'x=[1,2]' --search grid --wait\n" + NAN_ONCE)
    assert exp.model.best is None and exp.best() is None
    [output] = shown(shell, exp)
    page = output.data["text/html"]
    assert "1 completed · 1 failed" in page and "no metric chosen" in page
    assert "RuntimeError: loss is NaN (the command exited with code 1)" in page
    comparison = ok(shell, f"%wml compare {exp.id}")
    assert comparison.best is None and "no metric chosen" in repr(comparison)
    failed = ok(shell, f"%wml show {exp.id}-01")
    assert "RuntimeError: loss is NaN" in failed._repr_html_() and "loss is NaN" in repr(failed)


def test_download_brings_the_results_home(shell, finished, tmp_path):
    shell.user_ns["dest"] = str(tmp_path / "best")
    transfer = ok(shell, f"%wml download {finished.id}-03 $dest")
    assert isinstance(transfer, Transfer) and transfer.sent >= 1 and "received" in repr(transfer)
    assert (tmp_path / "best" / "model.txt").read_text() == "3"


def test_upload_syncs_with_a_widget_progress_bar(shell, server, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        (data / f"part-{i}.bin").write_bytes(os.urandom(50_000))
    transfer = ok(shell, f"%wml upload {data} up-bucket/v1")
    assert isinstance(transfer, Transfer) and transfer.sent == 3
    bar = WidgetProgress("upload")
    server.client().upload(data, "up-bucket/v1", progress=bar)
    assert (bar.files, bar.skipped, bar.bar.value, bar.bar.bar_style) == (3, 3, 150_000, "success")
    # the bar's last words are the summary's: nothing sent of 150 KB, all unchanged
    assert bar.label.value.startswith("0 files sent, 3 unchanged skipped: 0 B sent of 150.0 KB in ")
    again = ok(shell, f"%wml upload {data} up-bucket/v1")
    assert repr(again).startswith("up-bucket/v1: 0 files sent, 3 unchanged skipped: 0 B sent of 150.0 KB in ")


def test_line_train_submits_an_existing_definition_unchanged(shell, tmp_path):
    (tmp_path / "train.py").write_text(TINY)
    (tmp_path / "manifest.yml").write_text(textwrap.dedent("""\
        name: from-file
        framework: {name: pytorch, command: python3 train.py}
        hyperparameters: {x: [5, 7]}
        search: {algorithm: grid, metric: acc}
        """))
    exp = ok(shell, f"%wml train {tmp_path / 'manifest.yml'} {tmp_path} --wait")
    assert exp.state == "COMPLETED" and exp.name == "from-file"
    assert sorted(r.hparams["x"] for r in exp.runs()) == [5, 7]


FAILS_ONCE = """
import os, sys
from pathlib import Path
marker = Path(os.environ["CHECKPOINT_DIR"], "tried")
if not marker.exists():
    marker.write_text("once")
    sys.exit(3)
print("second attempt")
"""


def test_max_retries_starts_a_failed_run_again(shell):
    exp = ok(shell, "%%wml train --name flaky --runs 1 --max-retries 1 --wait\n" + FAILS_ONCE)
    run = exp.runs()[0]
    assert run.state.value == "COMPLETED" and run.attempt == 2
    assert "second attempt" in run.logs()


def test_cancel_halts_every_live_run(shell):
    exp = ok(shell, "%%wml train --name forever --runs 2\nimport time\ntime.sleep(120)\n")
    ok(shell, f"%wml cancel {exp.id}")
    exp.live().wait(60)
    assert {r.state.value for r in exp.runs()} == {"HALTED"}


WATCH = """
import json, sys
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
shell = InteractiveShell.instance()
shell.run_line_magic("load_ext", "wml_jupyter")
exp = shell.run_line_magic("wml", "watch " + sys.argv[1])
model = exp.live().wait(60).model
points = sorted(model.count(r, "acc") for r in model.runs)
print(json.dumps({"states": sorted(model.counts().elements()), "points": points}))
exp.live().close()
"""


def test_watch_finds_the_experiment_from_a_new_kernel(server, finished, tmp_path):
    env = {**os.environ, "IPYTHONDIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", WATCH, finished.id], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"states": ["COMPLETED"] * 3, "points": [3, 3, 3]}
