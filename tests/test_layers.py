"""The layers of docs/architecture.md hold: core <- runner, server; the client talks HTTP only.

The import graph is read from the source (grimp, the library behind import-linter), counting
every import, those under ``TYPE_CHECKING`` and inside functions included.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("wml_core", "wml_runner", "wml_backend", "wml_jupyter")
#: What each package may import of the others.
ALLOWED = {
    "wml_core": set(),
    "wml_runner": {"wml_core"},
    "wml_backend": {"wml_core", "wml_runner"},
    "wml_jupyter": {"wml_core"},
}
#: What a client or runner import must never load: the server's stack.
SERVER_STACK = ("fastapi", "starlette", "uvicorn", "optuna", "kubernetes", "psycopg")


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph(*PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_the_layers_below_it(graph, package):
    crossing = {
        (importer, imported)
        for importer in graph.find_descendants(package) | {package}
        for imported in graph.find_modules_directly_imported_by(importer)
        if imported.split(".")[0] in PACKAGES and imported.split(".")[0] not in ALLOWED[package] | {package}
    }
    assert not crossing, f"{package} reaches into another layer: {sorted(crossing)}"


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle_within_a_package(graph, package):
    modules = graph.find_descendants(package) | {package}
    cycles = [m for m in modules if _cycle_through(graph, m, modules)]
    assert not cycles, f"import cycles through {sorted(cycles)}"


def _cycle_through(graph, start: str, within: set[str]) -> bool:
    """Whether ``start`` reaches itself again through imports inside ``within``."""
    seen, frontier = set(), [m for m in graph.find_modules_directly_imported_by(start) if m in within]
    while frontier:
        module = frontier.pop()
        if module == start:
            return True
        if module not in seen:
            seen.add(module)
            frontier += [m for m in graph.find_modules_directly_imported_by(module) if m in within]
    return False


@pytest.mark.parametrize("module", ["wml_jupyter", "wml_jupyter.magics", "wml_jupyter.client",
                                    "wml_jupyter.display", "wml_runner.main", "wml_core.manifest"])
def test_client_and_runner_imports_leave_the_server_stack_unloaded(module):
    probe = f"import sys, {module}; print(' '.join(m for m in {SERVER_STACK!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "", f"import {module} loaded {loaded.strip()}"


def test_the_runner_installs_alone_without_the_server_stack(tmp_path):
    """What a training image gets: ``pip install backend/runner`` into an empty venv."""
    env_dir = tmp_path / "runner-venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", str(REPO / "backend" / "core"),
                    str(REPO / "backend" / "runner"), "python-dateutil<3"], check=True, timeout=600)
    installed = subprocess.run([python, "-m", "pip", "list", "--format=freeze"], capture_output=True,
                               text=True, check=True).stdout.lower()
    names = {line.split("==")[0].replace("_", "-") for line in installed.split()}
    assert {"wml-core", "wml-runner"} <= names
    assert not names & {"fastapi", "starlette", "uvicorn", "optuna", "kubernetes", "psycopg", "wml-backend"}
    started = subprocess.run([python, "-m", "wml_runner"], capture_output=True, text=True, timeout=60,
                             env={"PATH": "/usr/bin:/bin"})
    assert started.returncode == 2 and "Traceback" not in started.stderr
    assert started.stderr.strip().splitlines() == ["wml-runner: WML_BACKEND_URL is not set: the executor starts "
                                                   "the runner with WML_BACKEND_URL, WML_RUN_ID and WML_RUNNER_TOKEN"]
    # Training code's helper, as runner.Dockerfile copies it beside the runner.
    helper = tmp_path / "opt" / "wml_jupyter"
    helper.mkdir(parents=True)
    for name in ("__init__.py", "run.py"):
        (helper / name).write_bytes((REPO / "wml_jupyter" / name).read_bytes())
    logged = subprocess.run([python, "-c", "from wml_jupyter import run; run.log(step=1, acc=0.5); run.flush()"],
                            capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(helper.parent)})
    assert logged.returncode == 0, logged.stderr
    assert '"step": 1, "values": {"acc": 0.5}' in logged.stdout
