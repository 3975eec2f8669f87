"""Faults with real processes and real signals: the backend killed again and again mid-sweep,
a training process killed, the object store down while results are stored."""

from __future__ import annotations

import random
import time
from datetime import datetime

import psutil
import pytest

from backend_process import BackendProcess
from test_cli_e2e import active_spans, definition, submit

TERMINAL = {"COMPLETED", "FAILED", "HALTED", "STOPPED"}


def started_spans(run: dict) -> list[tuple[float, float]]:
    """Active spans that got past PENDING (a span PENDING → QUEUED never started)."""
    states = [t["state"] for t in run["transitions"]]
    spans, started = active_spans(run), []
    pendings = [i for i, s in enumerate(states) if s == "PENDING"]
    for span, i in zip(spans, pendings):
        if states[i + 1] != "QUEUED":
            started.append(span)
    return started


def check_invariants(backend, exp_id: str, slots: int) -> list[dict]:
    """Every run ended exactly once, ran once, kept every metric point; slots never exceeded."""
    runs = backend.cli_json("list", "--experiment", exp_id)
    spans = []
    for run in runs:
        states = [t["state"] for t in run["transitions"]]
        assert sum(s in TERMINAL for s in states) == 1, f"{run['id']}: {states}"
        assert states.count("PROCESSING") == 1, f"{run['id']} ran more than once: {states}"
        spans += active_spans(run)
        if run["state"] == "COMPLETED":
            steps = [p["step"] for p in backend.cli_json("metrics", run["id"])]
            assert steps == list(range(1, run["hparams"]["steps"] + 1)), f"{run['id']} points: {steps}"
        billed = sum(end - start for start, end in started_spans(run))
        assert run["gpu_seconds"] == pytest.approx(billed, abs=0.01), "GPU time counted once"
    for start, _ in spans:
        assert sum(1 for s, e in spans if s <= start < e) <= slots
    return runs


def test_backend_killed_ten_times_during_a_40_run_sweep(backend, tmp_path):
    exp_id = submit(backend, definition(tmp_path, hyperparameters={
        "lr": {"uniform": [0.0, 1.0]}, "steps": [3], "sleep": [0.1]},
        search={"algorithm": "random", "runs": 40, "seed": 11}))
    rng = random.Random(5)
    for _ in range(10):
        time.sleep(rng.uniform(0.2, 1.5))
        backend.kill()
        time.sleep(rng.uniform(0.0, 0.5))
        backend.start()
    exp = backend.wait_experiment(exp_id, timeout=300)
    runs = check_invariants(backend, exp_id, slots=2)
    assert len(runs) == 40 and exp["runs"] == {"COMPLETED": 40}, exp["runs"]
    usage = backend.cli_json("usage")
    assert usage["gpu_seconds"] == pytest.approx(sum(r["gpu_seconds"] for r in runs), abs=0.1)


def training_process(backend, run_id: str) -> psutil.Process:
    """The training command's process (a child of the run's runner)."""
    run_dir = str(backend.home / "backend" / "runs" / run_id)
    for proc in psutil.process_iter(["cwd", "cmdline"]):
        if proc.info["cwd"] == run_dir + "/model" and "train.py" in " ".join(proc.info["cmdline"] or []):
            return proc
    raise AssertionError("no training process found")


def test_killed_training_process_fails_the_run_within_two_seconds(backend, tmp_path):
    exp_id = submit(backend, definition(tmp_path, hyperparameters={"lr": [0.1], "steps": [300], "sleep": [0.1]}))
    run_id = f"{exp_id}-01"
    backend.wait_state(run_id, "PROCESSING")
    time.sleep(1.0)
    killed_at = time.time()
    training_process(backend, run_id).kill()
    while backend.cli_json("show", run_id)["state"] != "FAILED":
        assert time.time() - killed_at < 10
        time.sleep(0.1)
    run = backend.cli_json("show", run_id)
    failed_at = datetime.fromisoformat(run["transitions"][-1]["time"]).timestamp()
    assert failed_at - killed_at < 2.0
    assert run["exit_code"] == -9 and "SIGKILL" in run["reason"]
    assert any(line.startswith("step ") for line in run["log_tail"])


def test_object_store_down_while_storing_then_completed(tmp_path):
    from moto.server import ThreadedMotoServer

    from backend_process import free_port
    from s3server import ANY_KEY, ANY_SECRET

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"WML_STORAGE": "s3://results", "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": ANY_KEY,
           "AWS_SECRET_ACCESS_KEY": ANY_SECRET, "AWS_DEFAULT_REGION": "us-east-1"}
    backend = BackendProcess(tmp_path / "home", gpus=1, extra_env=env).start()
    try:
        exp_id = submit(backend, definition(tmp_path, hyperparameters={"lr": [0.1], "steps": [20],
                                                                       "sleep": [0.1]}))
        run_id = f"{exp_id}-01"
        while backend.cli_json("show", run_id)["state"] != "PROCESSING":
            time.sleep(0.1)
        server.stop()  # the store goes away (and its buckets with it: moto keeps them in memory)
        while backend.cli_json("show", run_id)["state"] != "STORING":
            time.sleep(0.1)
        time.sleep(5)
        assert backend.cli_json("show", run_id)["state"] == "STORING", "the run waits for the store"
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        exp = backend.wait_experiment(exp_id, timeout=120)
        assert exp["runs"] == {"COMPLETED": 1}
        import boto3
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ANY_KEY,
                          aws_secret_access_key=ANY_SECRET, region_name="us-east-1")
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="results")["Contents"]}
        assert f"training-{run_id}/learner-1/training-log.txt" in keys
        assert f"training-{run_id}/env.json" in keys
    finally:
        backend.close()
        server.stop()
