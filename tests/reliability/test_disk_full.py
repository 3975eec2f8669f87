"""$WML_HOME on a disk that fills up: a clear one-line error, nothing half-written, and the
database intact and usable once space is freed (a real 4 MiB tmpfs; mounting needs root)."""

from __future__ import annotations

import sqlite3
import subprocess

import pytest

from backend_process import BackendProcess
from test_cli_e2e import TINY, definition

#: Size of the small disk: room for the backend's database, little else.
DISK = "6m"


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(mount)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:  # not root, or no mount rights in this sandbox
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder) -> None:
    """Write until the disk refuses."""
    with open(folder / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
        except OSError:
            pass


def test_full_disk_is_a_clear_error_and_the_database_survives(small_disk, tmp_path):
    backend = BackendProcess(small_disk / "home", gpus=1).start()
    try:
        manifest = definition(tmp_path, hyperparameters={"lr": [0.1, 0.2]})
        fill(small_disk)
        refused = backend.cli("train", str(manifest), str(TINY))
        assert refused.returncode == 1, refused.stdout
        assert "disk is full" in refused.stderr and "Traceback" not in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        (small_disk / "filler").unlink()
        assert backend.cli_json("list") == [], "nothing half-written"
        accepted = backend.cli("train", str(manifest), str(TINY), "--wait")
        assert accepted.returncode == 0, accepted.stderr
    finally:
        backend.close()
    db = sqlite3.connect(small_disk / "home" / "backend" / "wml.db")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert db.execute("SELECT count(*) FROM runs").fetchone() == (2,)
