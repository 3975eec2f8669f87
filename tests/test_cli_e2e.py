"""End to end through the `wml` CLI against a real backend process and real runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

from backend_process import TINY, tiny_manifest

definition = tiny_manifest


def submit(backend, manifest: Path, *flags: str, token=None) -> str:
    result = backend.cli("train", str(manifest), str(TINY), *flags, token=token)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def active_spans(run: dict) -> list[tuple[float, float]]:
    """(PENDING time, end time) of each attempt, from the recorded transitions."""
    from datetime import datetime
    spans, start = [], None
    for t in run["transitions"]:
        stamp = datetime.fromisoformat(t["time"]).timestamp()
        if t["state"] == "PENDING":
            start = stamp
        elif start is not None and t["state"] in ("COMPLETED", "FAILED", "HALTED", "STOPPED", "QUEUED"):
            spans.append((start, stamp))
            start = None
    return spans


def test_sweep_completes_with_metrics_logs_and_results(backend, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "data.txt").write_text("hello data")
    assert backend.cli("upload", str(data), "tinydata").returncode == 0
    manifest = definition(tmp_path, data_stores=[{"id": "s", "type": "file", "training_data": {"container": "tinydata"},
                                                  "training_results": {"container": "tinyresults"}}])
    exp_id = submit(backend, manifest, "--sweep", "steps=[2,3]")
    exp = backend.wait_experiment(exp_id)
    assert exp["runs"] == {"COMPLETED": 6}
    assert exp["best"]["metric"] == "acc" and abs(exp["best"]["value"] - 0.9) < 1e-9  # lr 0.3 × 3 steps
    runs = backend.cli_json("list", "--experiment", exp_id)
    assert sorted((r["hparams"]["lr"], r["hparams"]["steps"]) for r in runs) == [
        (lr, s) for lr in (0.1, 0.2, 0.3) for s in (2, 3)]
    for run in runs:
        assert [t["state"] for t in run["transitions"]] == [
            "QUEUED", "PENDING", "DOWNLOADING", "PROCESSING", "STORING", "COMPLETED"]
        assert run["metrics"]["step"] == run["hparams"]["steps"]
        assert run["gpu_seconds"] > 0
        results = backend.home / "storage" / "tinyresults" / f"training-{run['id']}"
        assert (results / "started.txt").exists()
        assert (results / "data-seen.txt").read_text() == "hello data"
        assert "tiny training" in (results / "learner-1" / "training-log.txt").read_text()
        assert (results / "_submitted_code" / "model.zip").exists()
    first = runs[0]["id"]
    points = backend.cli_json("metrics", first)
    assert [p["step"] for p in points] == list(range(1, runs[0]["hparams"]["steps"] + 1))
    assert "tiny training with lr=" in backend.cli("logs", first).stdout
    download = tmp_path / "download"
    assert backend.cli("download", first, str(download)).returncode == 0
    assert (download / "env.json").exists()


def test_run_environment_follows_ffdl(backend, tmp_path):
    exp_id = submit(backend, definition(tmp_path, hyperparameters={"lr": [0.5]}))
    backend.wait_experiment(exp_id)
    run = backend.cli_json("list", "--experiment", exp_id)[0]
    env = json.loads((backend.home / "storage" / "wml-results" / f"training-{run['id']}" / "env.json").read_text())
    assert env["TRAINING_ID"] == run["id"] and env["WML_EXPERIMENT_ID"] == exp_id
    assert json.loads(env["WML_HPARAMS"]) == {"lr": 0.5}
    assert env["GPU_COUNT"] == "1" and env["NUM_LEARNERS"] == "1" and env["LEARNER_ID"] == "1"
    assert env["CUDA_VISIBLE_DEVICES"] in ("0", "1")
    assert env["WML_RUNNER_TOKEN"] is None, "the runner's token must not reach the training command"
    assert all(env[k] for k in ("DATA_DIR", "RESULT_DIR", "LOG_DIR", "JOB_STATE_DIR", "CHECKPOINT_DIR", "MODEL_DIR"))
    assert "lr=0.5" in backend.cli("logs", run["id"]).stdout  # ${lr} substituted in the command


def test_failing_command_is_failed_with_exit_code_and_log_tail(backend, tmp_path):
    exp_id = submit(backend, definition(tmp_path, hyperparameters={"lr": [0.1], "exit": [3]}))
    exp = backend.wait_experiment(exp_id)
    assert exp["state"] == "FAILED"
    run = backend.cli_json("list", "--experiment", exp_id)[0]
    assert run["state"] == "FAILED" and run["exit_code"] == 3
    assert "exited with code 3" in run["reason"]
    assert "something went badly wrong" in run["log_tail"]
    assert backend.cli("train", str(definition(tmp_path, hyperparameters={"lr": [0.1], "exit": [3]})),
                       str(TINY), "--wait").returncode == 1


def test_quota_one_never_runs_two_at_once(backend, tmp_path):
    token = backend.cli("accounts", "create", "alice", "--gpus", "1", check=True).stdout.strip().splitlines()[-1]
    exp_id = submit(backend, definition(tmp_path, hyperparameters={"lr": [0.1, 0.2, 0.3], "sleep": [0.3]}),
                    token=token)
    queued = backend.cli_json("list", "--experiment", exp_id, token=token)
    assert sorted(r["queue_position"] for r in queued if r["state"] == "QUEUED") == list(
        range(1, sum(r["state"] == "QUEUED" for r in queued) + 1))
    backend.wait_experiment(exp_id, token=token)
    spans = sorted(s for r in backend.cli_json("list", "--experiment", exp_id, token=token) for s in active_spans(r))
    assert len(spans) == 3
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, "two runs of a 1-GPU account held GPUs at once"
    usage = backend.cli_json("usage", token=token)
    assert usage["gpu_quota"] == 1 and usage["gpu_seconds"] > 0.9


def test_run_over_quota_is_refused_at_submit(backend, tmp_path):
    token = backend.cli("accounts", "create", "bob", "--gpus", "1", check=True).stdout.strip().splitlines()[-1]
    result = backend.cli("train", str(definition(tmp_path, gpus=2)), str(TINY), token=token)
    assert result.returncode == 2
    assert "2 GPUs" in result.stderr and "at most 1" in result.stderr and "Traceback" not in result.stderr
    assert backend.cli_json("list", token=token) == []


def test_cancel_stops_a_run_within_two_seconds_and_stores_partial_results(backend, tmp_path):
    exp_id = submit(backend, definition(tmp_path, hyperparameters={"lr": [0.1], "steps": [1000], "sleep": [0.05]}))
    run_id = f"{exp_id}-01"
    backend.wait_state(run_id, "PROCESSING")
    time.sleep(0.5)
    started, cancelled_at = time.monotonic(), time.time()
    assert backend.cli("cancel", run_id).returncode == 0
    while backend.cli_json("show", run_id)["state"] != "HALTED":
        assert time.monotonic() - started < 10
        time.sleep(0.1)
    run = backend.cli_json("show", run_id)
    times = {t["state"]: t["time"] for t in run["transitions"]}
    assert "STORING" in times
    assert (backend.home / "storage" / "wml-results" / f"training-{run_id}" / "started.txt").exists()
    from datetime import datetime
    assert datetime.fromisoformat(times["STORING"]).timestamp() - cancelled_at < 2.0, "the command took over 2 s to stop"


def test_cancel_experiment_halts_queued_runs(backend, tmp_path):
    token = backend.cli("accounts", "create", "carol", "--gpus", "1", check=True).stdout.strip().splitlines()[-1]
    exp_id = submit(backend, definition(tmp_path, hyperparameters={"lr": [0.1, 0.2, 0.3], "sleep": [5]}),
                    token=token)
    assert backend.cli("cancel", exp_id, token=token).returncode == 0
    exp = backend.wait_experiment(exp_id, timeout=30, token=token)
    assert exp["runs"] == {"HALTED": 3}


def test_accounts_are_isolated(backend, tmp_path):
    token_a = backend.cli("accounts", "create", "anna", "--gpus", "1", check=True).stdout.strip().splitlines()[-1]
    token_b = backend.cli("accounts", "create", "ben", "--gpus", "1", check=True).stdout.strip().splitlines()[-1]
    exp_id = submit(backend, definition(tmp_path, hyperparameters={"lr": [0.1]}), token=token_a)
    for args in (("show", exp_id), ("show", f"{exp_id}-01"), ("logs", f"{exp_id}-01"), ("cancel", exp_id),
                 ("metrics", f"{exp_id}-01")):
        result = backend.cli(*args, token=token_b)
        assert result.returncode == 2 and "no " in result.stderr, args
    assert backend.cli_json("list", token=token_b) == []
    refused = backend.cli("accounts", "create", "eve", "--gpus", "4", token=token_b)
    assert refused.returncode == 2 and "administrator" in refused.stderr
    assert backend.cli("list", token="not-a-token").returncode == 2
    db = (backend.home / "backend" / "wml.db").read_bytes()
    assert token_a.encode() not in db and token_b.encode() not in db, "tokens must be stored hashed"


def test_hundred_run_experiment_is_queued_in_order(backend, tmp_path):
    token = backend.cli("accounts", "create", "dana", "--gpus", "1", check=True).stdout.strip().splitlines()[-1]
    manifest = definition(tmp_path, hyperparameters={"lr": {"uniform": [0.0, 1.0]}, "sleep": [30]},
                          search={"algorithm": "random", "runs": 100, "seed": 1})
    client = backend.client(token)
    started = time.monotonic()
    experiment = client.train(manifest, TINY)
    accepted_s = time.monotonic() - started
    runs = client.runs(experiment=experiment.id)
    assert len(runs) == 100 and len({r.id for r in runs}) == 100
    queued = [r for r in runs if r.state.value == "QUEUED"]
    assert len(queued) >= 99
    assert [r.queue_position for r in queued] == list(range(1, len(queued) + 1))
    assert accepted_s < 5, f"accepting 100 runs took {accepted_s:.2f} s"
    client.cancel(experiment.id)
    assert backend.wait_experiment(experiment.id, timeout=60, token=token)["runs"] == {"HALTED": 100}
