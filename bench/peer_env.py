"""Peers' own environments: Ray Tune and MLflow are compared against, never depended on.

Each peer gets a virtual environment of its own under ``$WML_BENCH_CACHE`` (default
``~/.cache/wml-bench``), created on first use with ``pip install`` from the package index and
reused afterwards. The environment also sees this project's packages (torch, numpy), listed
*after* its own through a ``.pth`` file, so a peer runs the same training code as the backend
while its own dependencies win. A peer that cannot install yields a reason, printed instead of
its figures.

    python bench/peer_env.py ray        # create (or check) one environment and print its python
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import tempfile
import venv
from pathlib import Path
from typing import Optional

#: The pip requirement of each peer, by the name the benchmarks use.
PEERS = {"ray": "ray[tune]", "mlflow": "mlflow", "awscli": "awscli"}

#: Where the environments live; one folder per peer and Python version.
CACHE = Path(os.environ.get("WML_BENCH_CACHE") or Path.home() / ".cache" / "wml-bench")

#: The import that proves an environment works, and prints the peer's version.
PROBE = {"ray": "import ray, ray.tune; print(ray.__version__)",
         "mlflow": "import mlflow; print(mlflow.__version__)",
         "awscli": "import awscli; print(awscli.__version__)"}


class PeerUnavailable(Exception):
    """A peer could not be installed or started here; the message says why."""


def env_dir(peer: str) -> Path:
    """The folder of ``peer``'s environment for this interpreter's Python version."""
    return CACHE / f"{peer}-py{sys.version_info.major}{sys.version_info.minor}"


def peer_python(peer: str, log=print) -> tuple[Path, str]:
    """The interpreter of ``peer``'s environment and the peer's version, installing it if needed.

    Raises :class:`PeerUnavailable` with pip's last lines when the install fails.
    """
    folder = env_dir(peer)
    python = folder / "bin" / "python"
    version = _probe(python, peer)
    if version is None:
        log(f"  installing {PEERS[peer]} into {folder} (first use; a few minutes)")
        _create(folder, peer)
        version = _probe(python, peer)
        if version is None:
            raise PeerUnavailable(f"{PEERS[peer]} installed into {folder} but does not import")
    return python, version


def _probe(python: Path, peer: str) -> Optional[str]:
    """The peer's version if ``python`` can import it, else None."""
    if not python.exists():
        return None
    out = subprocess.run([str(python), "-c", PROBE[peer]], capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout.strip() else None


def _create(folder: Path, peer: str) -> None:
    """A fresh venv with the peer installed and this project's site-packages appended."""
    venv.EnvBuilder(with_pip=True, clear=True).create(folder)
    python = folder / "bin" / "python"
    out = subprocess.run([str(python), "-m", "pip", "install", "--quiet", PEERS[peer]],
                         capture_output=True, text=True)
    if out.returncode != 0:
        tail = " ".join((out.stderr or out.stdout).strip().splitlines()[-3:])
        raise PeerUnavailable(f"pip install {PEERS[peer]} failed on Python "
                              f"{sys.version.split()[0]}: {tail}")
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    ours = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(purelib) / "zz_wml_project.pth").write_text("".join(f"{p}\n" for p in ours))


def run_peer(peer: str, script: Path, args: list[str], timeout: float = 1800, log=print) -> dict:
    """Run ``script`` with ``peer``'s interpreter; its last stdout line is a JSON object.

    Lines it prints starting ``bench: `` (its progress) are echoed as they come.
    """
    python, version = peer_python(peer, log)
    with tempfile.TemporaryFile("w+") as err:  # a pipe could fill up and block the peer
        proc = subprocess.Popen([str(python), str(script), *args], stdout=subprocess.PIPE,
                                stderr=err, text=True)
        last = ""
        for line in proc.stdout:
            if line.startswith("{"):
                last = line
            elif line.startswith("bench: "):  # the script's progress; the peer's chatter is dropped
                log(f"  {peer}: {line[7:].rstrip()}")
        err.seek(0)
        if proc.wait(timeout) != 0 or not last:
            raise PeerUnavailable(f"{peer} {version} failed: " + " ".join(err.read().strip().splitlines()[-3:]))
    return {**json.loads(last), "version": version}


if __name__ == "__main__":
    try:
        print(*peer_python(sys.argv[1]))
    except PeerUnavailable as exc:
        sys.exit(str(exc))
