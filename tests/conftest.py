"""Shared fixtures: a clean $WML_HOME and a real backend process per test."""

from __future__ import annotations

import os

import pytest

from backend_process import BackendProcess
from minioserver import running_minio


@pytest.fixture
def wml_home(tmp_path, monkeypatch):
    """An empty $WML_HOME for this test, with no client configuration from the environment."""
    home = tmp_path / "wml-home"
    for name in list(os.environ):
        if name.startswith("WML_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("WML_HOME", str(home))
    return home


@pytest.fixture
def backend(wml_home, monkeypatch):
    """A running backend with 2 GPU slots; stopped after the test."""
    proc = BackendProcess(wml_home, gpus=2).start()
    monkeypatch.setenv("WML_BACKEND", proc.url)
    monkeypatch.setenv("WML_TOKEN", proc.token)
    yield proc
    proc.close()


@pytest.fixture(scope="session")
def minio():
    """A MinIO server (real S3: signatures, policies, STS) for the session; skipped without the
    binary unless WML_REQUIRE_MINIO is set."""
    with running_minio() as server:
        yield server
