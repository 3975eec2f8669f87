"""`wml validate` as a user runs it: which format it read, or every problem as file:line: field."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from test_manifest import CONFORMANCE, ENV

HERE = Path(__file__).parent


def validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wml_jupyter", "validate", str(path)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **ENV})


def test_ffdl_manifest_is_valid_and_its_format_named():
    result = validate(CONFORMANCE / "pytorch-model__manifest.yml")
    assert result.returncode == 0, result.stderr
    assert "valid FfDL (ManifestV1) manifest" in result.stdout


def test_watson_ml_manifest_is_valid_and_its_format_named():
    result = validate(HERE / "manifests" / "good" / "wml.yml")
    assert result.returncode == 0, result.stderr
    assert "valid Watson ML manifest" in result.stdout


def test_every_problem_is_one_located_line(tmp_path):
    bad = tmp_path / "manifest.yml"
    bad.write_text("name: bad\ngpus: -1\nmemory: lots\nframework:\n  name: pytorch\n")
    result = validate(bad)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert f"{bad}:2: gpus:" in lines[0]
    assert f"{bad}:3: memory:" in lines[1]
    assert any(line.startswith(f"{bad}:4: framework.command:") for line in lines), lines
    assert "Traceback" not in result.stderr


def test_yaml_syntax_error_and_missing_file(tmp_path):
    bad = tmp_path / "broken.yml"
    bad.write_text("name: x\nframework: [unclosed\n")
    result = validate(bad)
    assert result.returncode == 2 and result.stderr.startswith(f"{bad}:") and "Traceback" not in result.stderr
    missing = validate(tmp_path / "absent.yml")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


def test_openapi_document_lists_the_routes(backend):
    import httpx
    spec = httpx.get(f"{backend.url}/openapi.json").json()
    for path in ("/v1/experiments", "/v1/experiments/{experiment_id}", "/v1/experiments/{experiment_id}/cancel",
                 "/v1/runs", "/v1/runs/{run_id}", "/v1/runs/{run_id}/cancel", "/v1/runs/{run_id}/logs",
                 "/v1/runs/{run_id}/metrics", "/v1/events", "/v1/usage", "/v1/accounts", "/healthz"):
        assert path in spec["paths"], path
    assert httpx.get(f"{backend.url}/v1/runs").status_code == 401
