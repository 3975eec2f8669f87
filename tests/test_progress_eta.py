"""Progress and time: ``run.log(step=…, total_steps=…)`` shown as ``step / total``, and a stop (a cancel,
early stopping) that takes effect within one logged step, against a real backend and real runs."""

from __future__ import annotations

import os
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml
from matplotlib.figure import Figure

from backend_process import TINY
from test_queue_truth import until
from wml_core.metric_line import METRICS_FILE_ENV, STOP_EXIT_CODE, STOP_FILE_ENV
from wml_core.models import Run
from wml_jupyter.charts import STOP_MARKER, CurveRuns, draw_curves
from wml_jupyter.describe import eta_text, progress_text
from wml_runner.command import Command

#: Training code that declares its total and logs a step every ``sleep`` seconds.
COUNTING = """
import time
from wml_jupyter import run
hp = run.hparams()
for step in range(1, int(hp["steps"]) + 1):
    run.log(step=step, total_steps=int(hp["steps"]), loss=1.0 / step)
    time.sleep(float(hp["sleep"]))
print("all steps done", flush=True)
"""


def counting_definition(folder: Path, steps: int, sleep: float, **search) -> tuple[Path, Path]:
    """A manifest and a code folder whose one run logs ``steps`` steps, one every ``sleep`` s."""
    code = folder / "code"
    code.mkdir()
    (code / "train.py").write_text(COUNTING)
    manifest = yaml.safe_load((TINY / "manifest.yml").read_text())
    manifest["framework"]["command"] = "python3 train.py"
    manifest["hyperparameters"] = {"steps": [steps], "sleep": [sleep]}
    manifest["gpus"] = 0
    manifest["search"] = {"algorithm": "grid", "metric": "loss", "mode": "min", **search}
    path = folder / "manifest.yml"
    path.write_text(yaml.safe_dump(manifest))
    return path, code


def train(backend, manifest: Path, code: Path) -> str:
    result = backend.cli("train", str(manifest), str(code))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_a_declared_total_is_shown_as_step_of_total(backend, tmp_path):
    from wml_jupyter.display import table_rows
    from wml_jupyter.livemodel import ExperimentFeed, ExperimentModel
    exp_id = train(backend, *counting_definition(tmp_path, steps=3, sleep=0.0))
    backend.wait_experiment(exp_id)
    client = backend.client()
    run = client.run(f"{exp_id}-01")
    assert (run.metrics["step"], run.metrics["total_steps"]) == (3, 3)
    model = ExperimentModel(client.experiment(exp_id).model)
    ExperimentFeed(client, model)._sync()
    columns, rows, _ = table_rows(model)
    assert rows[0][columns.index("step")] == "3 / 3"
    assert "total_steps" not in columns and model.metric == "loss", "a total is progress, not a metric"


def test_progress_and_eta_wording():
    assert progress_text({"step": 7, "total_steps": 27}) == "7 / 27"
    assert progress_text({"step": 7}) == "7" and progress_text({}) == ""
    assert [eta_text(s) for s in (None, 2, 42, 170, 5400)] == ["", "~5 s", "~40 s", "~3 min", "~1.5 h"]


def test_a_cancelled_run_logs_at_most_one_step_after_the_decision(backend, tmp_path):
    exp_id = train(backend, *counting_definition(tmp_path, steps=1000, sleep=0.1))
    run_id, client = f"{exp_id}-01", backend.client()
    until(lambda: client.run(run_id).metrics.get("step", 0) >= 5)
    asked = time.time()
    client.cancel(run_id)
    decided = time.time()  # the backend decided the stop within the request (and told the runner)
    print(f"cancel request took {decided - asked:.3f} s")
    until(lambda: client.run(run_id).state.value == "HALTED")
    points = client.metrics(run_id)
    at_decision = max(p.step for p in points if p.time <= decided)
    assert points[-1].step <= at_decision + 1, (at_decision, [(p.step, p.time - decided) for p in points[-4:]])
    assert client.run(run_id).exit_code == STOP_EXIT_CODE, "it stopped itself at a step, its points written"


def test_a_search_stop_takes_effect_within_a_step(backend, tmp_path):
    """Early stopping: a run judged at a rung stops at its next step once the backend decided,
    which it does as the rung's point arrives."""
    manifest, code = counting_definition(tmp_path, steps=40, sleep=0.1)
    data = yaml.safe_load(manifest.read_text())
    data["hyperparameters"] = {"steps": [40], "sleep": [0.1], "bad": [0, 0.1, 1, 2, 3]}
    data["search"]["early_stopping"] = {"type": "asha", "min_steps": 1, "reduction_factor": 3}
    (code / "train.py").write_text(COUNTING.replace("loss=1.0 / step", "loss=1.0 / step + hp['bad']"))
    manifest.write_text(yaml.safe_dump(data))
    exp_id = train(backend, manifest, code)
    backend.wait_experiment(exp_id)
    client = backend.client()
    stopped = [r for r in client.runs(experiment=exp_id) if r.state.value == "STOPPED"]
    assert len(stopped) >= 3, "the worst runs are stopped by ASHA"
    for run in stopped:
        rung = float(re.search(r"at step (\d+)", run.reason).group(1))
        last = client.metrics(run.id)[-1].step
        # its point of the rung reaches the backend a step or two later (written, shipped, judged),
        # then the run stops at its next step: no "stopped at step 1" that trains on to step 13
        assert last <= rung + 3 and run.exit_code == STOP_EXIT_CODE, (run.id, run.reason, last)


def command(tmp_path: Path, script: str) -> Command:
    """``script`` as a run's command, with the run's metrics and stop files in ``tmp_path``."""
    (tmp_path / "train.py").write_text(script)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": os.pathsep.join(sys.path),
           METRICS_FILE_ENV: str(tmp_path / "metrics.jsonl"), STOP_FILE_ENV: str(tmp_path / "stop")}
    return Command(f"{sys.executable} train.py", env, tmp_path, tmp_path / "log.txt")


def test_a_command_asked_to_stop_ends_at_its_next_step_unsignalled(tmp_path):
    cmd = command(tmp_path, COUNTING.replace('hp = run.hparams()', 'hp = {"steps": 1000, "sleep": 0.1}'))
    cmd.start()
    until(lambda: (tmp_path / "metrics.jsonl").exists() and (tmp_path / "metrics.jsonl").stat().st_size)
    (tmp_path / "stop").touch()
    asked = time.time()
    cmd.stop(grace_s=0.5)
    assert cmd._proc.wait(5) == STOP_EXIT_CODE and not cmd.signalled
    assert time.time() - asked < 0.5
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert lines and "total" in lines[0], "its points were written before it ended"


def test_a_command_that_ended_by_itself_was_not_signalled(tmp_path):
    cmd = command(tmp_path, "print('done')\n")
    assert cmd.run() == 0
    cmd.stop(grace_s=0.5)
    assert not cmd.signalled, "the runner reports it COMPLETED: it ended all its steps before the stop"
    sleeper = command(tmp_path, "import time\ntime.sleep(30)\n")
    sleeper.start()
    sleeper.stop(grace_s=0.2)
    assert sleeper.signalled and sleeper._proc.wait(5) != 0


def test_a_stopped_curve_ends_with_its_own_marker():
    now = datetime.now(timezone.utc)
    runs = {rid: Run(id=rid, experiment_id="e", account="a", name=rid, state=state, created=now)
            for rid, state in (("e-01", "COMPLETED"), ("e-02", "STOPPED"))}
    series = {"e-01": (np.arange(1.0, 10.0), np.linspace(0, 1, 9)), "e-02": (np.arange(1.0, 4.0), np.zeros(3))}
    ax = Figure().add_subplot()
    draw_curves(ax, series, "acc", who=CurveRuns(runs, highlight="e-01"))
    marked = [(list(line.get_xdata()), line.get_marker()) for line in ax.get_lines() if line.get_marker() == STOP_MARKER]
    assert marked == [([3.0], STOP_MARKER)], "only the stopped run's curve ends with the stop marker"
