"""Fixtures of the security suite: one backend for the whole corpus, and the ``fuzz`` marker."""

from __future__ import annotations

import os

import pytest
from backend_process import BackendProcess
from checks import StateProbe
from corpus import Paths

#: Set to 1 to run the long ``fuzz`` tests without ``-m fuzz``.
FUZZ_ENV = "WML_FUZZ"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fuzz: long API fuzzing (run with -m fuzz or WML_FUZZ=1)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave the long fuzz run out of the default suite."""
    if "fuzz" in (config.getoption("markexpr") or "") or os.environ.get(FUZZ_ENV) == "1":
        return
    skip = pytest.mark.skip(reason=f"long fuzz run: use -m fuzz or {FUZZ_ENV}=1")
    for item in items:
        if "fuzz" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="package")
def server(tmp_path_factory):
    """One backend for the bad-input corpus; the CLI and the magics find it through the environment."""
    proc = BackendProcess(tmp_path_factory.mktemp("security") / "wml-home", gpus=2).start()
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith(("WML_", "AWS_"))]:
            mp.delenv(name)
        mp.setenv("WML_HOME", str(proc.home))
        mp.setenv("WML_BACKEND", proc.url)
        mp.setenv("WML_TOKEN", proc.token)
        yield proc
    proc.close()


@pytest.fixture(scope="package")
def probe(server) -> StateProbe:
    """The backend's state as the corpus found it: every refusal must leave it so."""
    state = StateProbe(server.home, server.url, server.token)
    yield state
    state.http.close()


@pytest.fixture(scope="package")
def paths(tmp_path_factory) -> Paths:
    """The good definition and the awkward files the command-line cases name."""
    return Paths.make(tmp_path_factory.mktemp("paths"))
