"""learners: N as one run of N cooperating processes: torch.distributed finds its peers,
a failing learner fails the run, and admission holds all of a run's GPUs or none."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import yaml
from wml_runner.learners import EPHEMERAL_RANGE, free_port

from test_cli_e2e import TINY, active_spans

DDP = Path(__file__).parent / "definitions" / "ddp"


def ddp_manifest(tmp_path: Path, **changes) -> Path:
    manifest = yaml.safe_load((DDP / "manifest.yml").read_text())
    manifest.update(changes)
    path = tmp_path / "ddp.yml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def test_two_learners_all_reduce(backend, tmp_path):
    result = backend.cli("train", str(DDP / "manifest.yml"), str(DDP), "--wait")
    assert result.returncode == 0, result.stderr
    run_id = f"{result.stdout.strip().splitlines()[-1]}-01"
    run = backend.cli_json("show", run_id)
    assert run["state"] == "COMPLETED" and run["learners"] == 2
    for learner in (1, 2):
        log = backend.cli("logs", run_id, "--learner", str(learner)).stdout
        assert f"is rank {learner - 1} of 2 (node {learner - 1}, local rank 0)" in log
        assert "all_reduce sum = 3" in log
    assert run["metrics"]["total"] == 3
    results = backend.home / "storage" / "wml-results" / f"training-{run_id}"
    assert (results / "learner-1" / "training-log.txt").exists()
    assert (results / "learner-2" / "training-log.txt").exists()
    assert run["gpu_seconds"] > 0


def test_a_failing_learner_fails_the_run_and_stops_its_peer(backend, tmp_path):
    manifest = ddp_manifest(tmp_path, hyperparameters={"fail_rank": [1]})
    started = time.monotonic()
    result = backend.cli("train", str(manifest), str(DDP), "--wait")
    assert result.returncode == 1
    run_id = f"{result.stdout.strip().splitlines()[-1]}-01"
    run = backend.cli_json("show", run_id)
    assert run["state"] == "FAILED" and run["exit_code"] == 1
    assert run["reason"].startswith("learner 2:")
    assert "FAILED {'fail_rank': 1}: this learner fails (learner 2:" in repr(backend.client().run(run_id))
    assert "this learner fails" in run["log_tail"]
    assert time.monotonic() - started < 45, "the peer (sleeping 60 s) must have been stopped"


def test_multi_learner_runs_are_admitted_whole(backend, tmp_path):
    token = backend.cli("accounts", "create", "gina", "--gpus", "2", check=True).stdout.strip().splitlines()[-1]
    tiny = yaml.safe_load((TINY / "manifest.yml").read_text())
    tiny.update(hyperparameters={"lr": [0.1], "sleep": [0.3]}, learners=2)
    two = tmp_path / "two.yml"
    two.write_text(yaml.safe_dump(tiny))
    tiny.update(learners=1, hyperparameters={"lr": [0.1, 0.2], "sleep": [0.3]})
    one = tmp_path / "one.yml"
    one.write_text(yaml.safe_dump(tiny))
    ids = [backend.cli("train", str(path), str(TINY), token=token).stdout.strip().splitlines()[-1]
           for path in (one, two)]
    for exp_id in ids:
        assert backend.wait_experiment(exp_id, token=token)["state"] == "COMPLETED"
    held = []
    for exp_id in ids:
        for run in backend.cli_json("list", "--experiment", exp_id, token=token):
            held += [(start, end, run["gpus"] * run["learners"]) for start, end in active_spans(run)]
    for start, _, _ in held:
        assert sum(g for s, e, g in held if s <= start < e) <= 2, "never more GPUs held than the quota"


def test_the_rendezvous_port_is_free_and_out_of_reach_of_outgoing_connections():
    low = int(EPHEMERAL_RANGE.read_text().split()[0])
    for _ in range(20):
        port = free_port()
        assert 1024 <= port < low, "an outgoing connection could take a port of the ephemeral range first"
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
