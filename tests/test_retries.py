"""max_retries: a run whose process dies starts again with the same CHECKPOINT_DIR and resumes;
and a run's provenance, with which it can be submitted again."""

from __future__ import annotations

from pathlib import Path

DEFINITION = Path(__file__).parent / "definitions" / "checkpoint"


def test_retried_run_resumes_from_its_checkpoint(backend):
    result = backend.cli("train", str(DEFINITION / "manifest.yml"), str(DEFINITION), "--wait")
    assert result.returncode == 0, result.stderr
    run_id = f"{result.stdout.strip().splitlines()[-1]}-01"
    run = backend.cli_json("show", run_id)
    assert run["state"] == "COMPLETED" and run["attempt"] == 2
    states = [(t["state"], t["attempt"]) for t in run["transitions"]]
    assert states.count(("PENDING", 1)) == 1 and states.count(("PENDING", 2)) == 1
    assert ("QUEUED", 2) in states, states
    resumed = backend.home / "storage" / "wml-results" / f"training-{run_id}" / "resumed_at.txt"
    assert resumed.read_text() == "4"
    steps = [p["step"] for p in backend.cli_json("metrics", run_id)]
    assert steps == [1, 2, 3, 4, 5, 6], "both attempts' points are kept, none twice"
    log = backend.cli("logs", run_id).stdout
    assert "attempt 1 starts at step 1" in log and "the node went away" in log
    assert "attempt 2 starts at step 4" in log
    spans = [t for t in run["transitions"] if t["state"] in ("PENDING",)]
    assert run["gpu_seconds"] > 0 and len(spans) == 2


def test_provenance_and_rerun(backend):
    result = backend.cli("train", str(DEFINITION / "manifest.yml"), str(DEFINITION), "--wait")
    run_id = f"{result.stdout.strip().splitlines()[-1]}-01"
    provenance = backend.cli_json("show", run_id)["provenance"]
    assert len(provenance["code_sha256"]) == 64 and provenance["framework"] == "custom"
    assert provenance["hparams"] == {}
    again = backend.client().rerun(run_id).wait(timeout=120)
    assert again.id != run_id.rsplit("-", 1)[0] and again.state == "COMPLETED"
    rerun = again.runs()[0]
    shown = backend.cli_json("show", rerun.id)["provenance"]
    assert shown["code_sha256"] == provenance["code_sha256"] and shown["rerun_of"] == run_id.rsplit("-", 1)[0]
