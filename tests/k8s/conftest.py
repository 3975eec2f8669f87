"""Fixtures for the Kubernetes tests: a real control plane, a namespace per test, S3.

Every test here runs against a real cluster (``testcluster``): the test cluster that
scripts/test.sh exports (``KUBECONFIG`` and ``WML_KUBE_STATE``), or one started with
scripts/kube-up.sh for the session. ``KUBECONFIG=... pytest -m k8s tests/k8s`` runs the same
suite against the cluster of ``KUBECONFIG`` (when no test cluster runs in ``WML_KUBE_STATE``),
skipping the tests marked ``nodeagent``: those need pods that run as processes of this host.

``kube_ns`` is a fresh namespace made from ``backend/deploy`` with a kubeconfig of its
ServiceAccount: a backend under test runs as that account, and a request its Role refuses
fails the test (the test cluster's audit log says which).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from s3server import MotoS3, running_moto
from testcluster import BackendNamespace, Cluster, backend_namespace, given_cluster, running_cluster, shared_cluster

HERE = Path(__file__).parent


def real_cluster_asked(config) -> bool:
    """``pytest -m k8s`` with ``KUBECONFIG`` set: run against that cluster if no test cluster runs."""
    return bool(os.environ.get("KUBECONFIG")) and "k8s" in (config.getoption("markexpr") or "")


@pytest.fixture(scope="session")
def kube_cluster(request) -> Cluster:
    """The cluster of this session (see the module's docstring); one it starts is shared with
    the tests outside tests/k8s that need it (``shared_cluster``) and stopped when pytest exits."""
    if real_cluster_asked(request.config) and running_cluster() is None:
        return given_cluster(os.environ["KUBECONFIG"])
    return shared_cluster()


@contextmanager
def namespace_of_test(cluster: Cluster, home: Path) -> Iterator[BackendNamespace]:
    """A namespace made from backend/deploy, deleted after the block; an error when the backend's
    ServiceAccount was refused a request meanwhile (its Role lacks a rule)."""
    with backend_namespace(cluster, home) as ns:
        yield ns
        refused = ns.refused()
    assert not refused, f"backend/deploy/rbac.yaml lacks what the backend asked for: {refused}"


@pytest.fixture
def kube_ns(kube_cluster, tmp_path) -> Iterator[BackendNamespace]:
    """A namespace of this test's own (``namespace_of_test``)."""
    with namespace_of_test(kube_cluster, tmp_path / "kube") as ns:
        yield ns


@pytest.fixture(scope="module")
def kube_module_ns(kube_cluster, tmp_path_factory) -> Iterator[BackendNamespace]:
    """A namespace of this module's own, for a backend that its tests share (a backend process
    takes seconds to start: it imports the Kubernetes client)."""
    with namespace_of_test(kube_cluster, tmp_path_factory.mktemp("kube")) as ns:
        yield ns


@pytest.fixture(scope="session")
def s3() -> Iterator[MotoS3]:
    """An S3 server (moto) on 127.0.0.1, which pods of the test cluster reach as the backend does."""
    with running_moto() as server:
        yield server


def pytest_collection_modifyitems(config, items) -> None:
    """Every test here is ``k8s``; on a cluster with no node agent, ``nodeagent`` ones are skipped."""
    ours = [item for item in items if HERE in Path(str(item.path)).parents]
    for item in ours:
        item.add_marker(pytest.mark.k8s)
    state = os.environ.get("WML_KUBE_STATE")
    if not real_cluster_asked(config) or (state and (Path(state) / "cluster.env").exists()):
        return
    skip = pytest.mark.skip(reason="needs the test cluster's node agent (pods as processes of this host): "
                                   "run with scripts/kube-up.sh's variables")
    for item in ours:
        if item.get_closest_marker("nodeagent"):
            item.add_marker(skip)
