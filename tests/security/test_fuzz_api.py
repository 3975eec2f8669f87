"""Fuzzing the REST API with schemathesis against a real backend: no 5xx, no response that breaks
the OpenAPI document (body schema or status code), stateless and stateful.

The default suite runs a short fuzz (a few hundred cases); ``-m fuzz`` (or ``WML_FUZZ=1``)
runs the long one, whose size ``WML_FUZZ_EXAMPLES`` (examples per operation) and seed
``WML_FUZZ_SEED`` can be set. ``GET /v1/events`` streams forever and is left out.

One worker: with several, Hypothesis' strategy reprs call ``ast.parse`` from concurrent threads,
which CPython before 3.11.8 can fail with "AST constructor recursion depth mismatch" (gh-106905).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from backend_process import BackendProcess

pytest.importorskip("schemathesis")

import fuzz_hooks  # noqa: E402

HERE = Path(__file__).resolve().parent
CHECKS = "not_a_server_error,response_schema_conformance,status_code_conformance"
#: Examples per operation and the cases each run must reach at least.
SHORT_EXAMPLES, SHORT_CASES = 4, 150
STATEFUL_EXAMPLES, STATEFUL_CASES = 15, 50
LONG_EXAMPLES, LONG_CASES = int(os.environ.get("WML_FUZZ_EXAMPLES", "200")), 1000


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    """A one-GPU backend with one real experiment, whose ids the fuzzer is given to try."""
    proc = BackendProcess(tmp_path_factory.mktemp("fuzz") / "wml-home", gpus=1).start()
    client = proc.client()
    experiment = client.train("manifest.yml", manifest_text=fuzz_hooks.MANIFEST,
                              code=base64.b64decode(fuzz_hooks.VALID["code_zip_b64"]))
    config = tmp_path_factory.mktemp("fuzz-config") / "schemathesis.toml"
    config.write_text(ids_config(experiment.id, [run.id for run in experiment.runs()]))
    yield proc, config
    proc.close()


def ids_config(experiment_id: str, run_ids: list[str]) -> str:
    """A schemathesis configuration that tries real ids half of the time."""
    return (f"[dictionaries.experiments]\nvalues = {json.dumps([experiment_id])}\n"
            f"[dictionaries.runs]\nvalues = {json.dumps(run_ids)}\n"
            "[parameters]\n"
            '"path.experiment_id" = { dictionary = "experiments", probability = 0.5 }\n'
            '"query.experiment" = { dictionary = "experiments", probability = 0.5 }\n'
            '"path.run_id" = { dictionary = "runs", probability = 0.5 }\n')


def schemathesis(fuzzed, tmp_path: Path, phases: str, examples: int, seed: int) -> dict:
    """Run ``schemathesis run`` against the backend; return its JSON report."""
    proc, config = fuzzed
    report = tmp_path / "report.json"
    args = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
            f"{proc.url}/openapi.json", "-H", f"Authorization: Bearer {proc.token}", "--checks", CHECKS,
            "--exclude-path", "/v1/events", "--phases", phases, "-n", str(examples), "--seed", str(seed),
            "--workers", "1", "--request-timeout", "20", "--report", "json", "--report-json-path", str(report)]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "fuzz_hooks",
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert report.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(report.read_text())
    summary = data["test_cases"]
    print(f"schemathesis {phases}: {summary['generated']} cases, {summary['with_failures']} failing")
    assert data["exit_code"] == 0 and not data["failures"] and not data["errors"], result.stdout[-6000:]
    return summary


def test_stateless_fuzzing_finds_no_server_error_or_schema_violation(fuzzed, tmp_path):
    summary = schemathesis(fuzzed, tmp_path, "examples,coverage,fuzzing", SHORT_EXAMPLES, seed=1)
    assert summary["generated"] >= SHORT_CASES


def test_stateful_fuzzing_finds_no_server_error_or_schema_violation(fuzzed, tmp_path):
    summary = schemathesis(fuzzed, tmp_path, "stateful", STATEFUL_EXAMPLES, seed=1)
    assert summary["generated"] >= STATEFUL_CASES


@pytest.mark.fuzz
def test_long_fuzz_run(fuzzed, tmp_path):
    seed = int(os.environ.get("WML_FUZZ_SEED", "7"))
    stateless = schemathesis(fuzzed, tmp_path, "examples,coverage,fuzzing", LONG_EXAMPLES, seed)
    stateful = schemathesis(fuzzed, tmp_path, "stateful", LONG_EXAMPLES, seed)
    assert stateless["generated"] + stateful["generated"] >= LONG_CASES
