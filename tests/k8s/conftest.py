"""Fixtures for the Kubernetes executor: a stand-in API server with its control plane and node.

``fake_kube(...)`` starts the stand-in (tests/k8s/kubefake_*.py) and writes a kubeconfig that
points at it, so the executor connects exactly as it would to a cluster. Tests marked ``k8s``
need a real cluster instead: ``KUBECONFIG=~/.kube/config pytest -m k8s tests/k8s``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
from kubefake import FakeKube, calls_beyond_role, start_fake_kube, stop_fake_kube


@pytest.fixture
def fake_kube(tmp_path) -> Iterator[Callable[..., FakeKube]]:
    """A factory of stand-ins (arguments of ``start_fake_kube``), all stopped after the test."""
    started: list[FakeKube] = []

    def start(**options) -> FakeKube:
        started.append(start_fake_kube(tmp_path / f"kube-{len(started)}", **options))
        return started[-1]

    yield start
    for kube in started:
        stop_fake_kube(kube)
    for kube in started:  # what the executor did, the deployed Role must allow
        assert not calls_beyond_role(kube), f"backend/deploy/rbac.yaml lacks {calls_beyond_role(kube)}"


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked ``k8s`` need a real cluster: they run under ``-m k8s`` with ``KUBECONFIG`` set."""
    if os.environ.get("KUBECONFIG") and "k8s" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="needs a real cluster: KUBECONFIG=... pytest -m k8s tests/k8s")
    for item in items:
        if item.get_closest_marker("k8s"):
            item.add_marker(skip)
