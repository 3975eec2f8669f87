"""Host paths (issue 13, item 3), tried through the real backend: a manifest's ``mount_volume``
names a folder of the backend's own disk.

Before: any folder was taken, so ``/etc`` came back as 291 file names with their MD5s in a run's
provenance; a FIFO in the folder hung a worker thread of the backend for ever, hashing it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from backend_process import BackendProcess
from checks import assert_clear
from wml_backend import submit
from wml_core.definition import Location
from wml_core.objectstore import StoreConfig, open_store

TINY = Path(__file__).parents[1] / "definitions" / "tiny"
#: Seconds a submission may take here at most: a FIFO or a big tree must not hold it.
SUBMIT_S = 30


@pytest.fixture(scope="module")
def allowed(tmp_path_factory) -> Path:
    """The one host folder the operator allows."""
    return tmp_path_factory.mktemp("host") / "allowed"


@pytest.fixture(scope="module")
def backend(tmp_path_factory, allowed) -> Iterator[BackendProcess]:
    allowed.mkdir()
    proc = BackendProcess(tmp_path_factory.mktemp("host-paths") / "wml-home", gpus=2,
                          extra_env={"WML_HOST_PATHS": f"{allowed}:{allowed.parent / 'absent'}"}).start()
    yield proc
    proc.close()


def volume(folder: Path, path: Path, data: str = "data") -> Path:
    """The tiny definition (one run) reading ``path/data`` as a ``mount_volume``, results beside it."""
    manifest = yaml.safe_load((TINY / "manifest.yml").read_text())
    manifest.update(hyperparameters={"lr": [0.3]}, data_stores=[{
        "id": "vol", "type": "mount_volume", "training_data": {"container": data},
        "training_results": {"container": "results"}, "connection": {"type": "host_mount", "path": str(path)}}])
    written = folder / f"manifest-{len(list(folder.glob('manifest-*')))}.yml"
    written.write_text(yaml.safe_dump(manifest))
    return written


def train(backend: BackendProcess, manifest: Path, *flags: str):
    started = time.monotonic()
    done = backend.cli("train", str(manifest), str(TINY), *flags, timeout=SUBMIT_S + 120)
    return done, time.monotonic() - started


@pytest.mark.parametrize("path", ["/etc", "/", "{allowed}/../..", "{allowed}/link-to-etc"])
def test_a_host_path_outside_the_allow_list_is_refused(backend, allowed, tmp_path, path):
    if not (allowed / "link-to-etc").exists():
        (allowed / "link-to-etc").symlink_to("/etc")
    done, _ = train(backend, volume(tmp_path, Path(path.format(allowed=allowed)), data="ssl"))
    assert done.returncode == 2, done.stderr
    assert_clear(done.stderr, ("is not allowed", "WML_HOST_PATHS", str(allowed)))
    assert backend.cli_json("list") == [], "a refused submission left runs"


def test_a_link_inside_an_allowed_folder_cannot_lead_out_of_it(backend, allowed, tmp_path):
    (allowed / "vol-link").mkdir(exist_ok=True)
    (allowed / "vol-link" / "data").symlink_to("/etc")
    done, _ = train(backend, volume(tmp_path, allowed / "vol-link"))
    assert done.returncode == 2 and "is not allowed" in done.stderr, done.stderr
    assert_clear(done.stderr)


def test_an_allowed_folder_trains_and_only_its_regular_files_are_read(backend, allowed, tmp_path):
    data = allowed / "vol" / "data"
    data.mkdir(parents=True)
    (data / "data.txt").write_text("host data")
    os.mkfifo(data / "pipe")  # nobody ever writes to it: opening it to read would wait for ever
    (data / "passwd").symlink_to("/etc/passwd")
    done, took = train(backend, volume(tmp_path, allowed / "vol"), "--wait")
    assert done.returncode == 0, done.stderr
    assert took < SUBMIT_S, f"submitting took {took:.1f} s"
    run = backend.cli_json("show", f"{done.stdout.strip().splitlines()[-1]}-01")
    assert run["state"] == "COMPLETED"
    assert run["provenance"]["data_etags"].keys() == {"data.txt"}, run["provenance"]
    assert run["provenance"]["data_etags_complete"] is True
    seen = allowed / "vol" / "results" / f"training-{run['id']}" / "data-seen.txt"
    assert seen.read_text() == "host data"


def test_a_huge_tree_is_checksummed_within_bounds(tmp_path):
    bucket = tmp_path / "store" / "tree"
    bucket.mkdir(parents=True)
    for n in range(5):
        (bucket / f"f{n}").write_bytes(b"x" * 100)
    store = open_store(StoreConfig(kind="file", root=str(tmp_path / "store")))
    assert store.checksums("tree", "", 10, 10_000)[1] is True
    etags, complete = store.checksums("tree", "", 3, 10_000)
    assert (len(etags), complete) == (3, False)
    etags, complete = store.checksums("tree", "", 10, 250)  # bytes: no file past the bound is read
    assert (len(etags), complete) == (2, False)


def test_checksums_that_take_too_long_leave_the_request_thread(monkeypatch, tmp_path):
    class Stuck:
        def checksums(self, *args):
            time.sleep(5)
            return {"late": "x"}, True
    monkeypatch.setattr(submit, "open_store", lambda config: Stuck())
    monkeypatch.setattr(submit, "PROVENANCE_WAIT_S", 0.2)
    started = time.monotonic()
    assert submit.data_checksums(StoreConfig(), Location(bucket="b")) == ({}, False)
    assert time.monotonic() - started < 2
