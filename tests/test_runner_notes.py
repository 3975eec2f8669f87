"""Where the local executor notes its runners (``runner_notes``): in memory, in a folder of its
user's alone; never in one another user could read or fill."""

from __future__ import annotations

import os
import stat

import pytest
from wml_backend.executors import local
from wml_backend.executors.local import RUNNERS, runner_notes


@pytest.fixture
def memory(tmp_path, monkeypatch):
    """A stand-in for /run: a world-writable folder with the sticky bit, as /dev/shm is."""
    shared = tmp_path / "shm"
    shared.mkdir()
    shared.chmod(0o1777)
    monkeypatch.setattr(local, "NOTES_PARENTS", (shared,))
    return shared


def test_runners_are_noted_in_memory_in_a_folder_of_their_users_alone_one_per_work_folder(memory, tmp_path):
    first, second = runner_notes(tmp_path / "a"), runner_notes(tmp_path / "b")
    assert first.parent == second.parent == memory / f"wml-runners-{os.geteuid()}" and first != second
    assert runner_notes(tmp_path / "a") == first, "a backend started again looks elsewhere for its notes"
    for folder in (first, first.parent):
        info = folder.lstat()
        assert stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="making a folder another user's takes root")
def test_a_folder_another_user_made_there_first_is_not_used(memory, tmp_path):
    squatted = memory / f"wml-runners-{os.geteuid()}"
    squatted.mkdir(mode=0o777)
    os.chown(squatted, 65534, 65534)
    assert runner_notes(tmp_path / "runs") == tmp_path / "runs" / RUNNERS


def test_a_folder_others_may_read_or_a_link_there_is_not_used(memory, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (memory / f"wml-runners-{os.geteuid()}").symlink_to(tmp_path / "elsewhere")
    assert runner_notes(tmp_path / "runs") == tmp_path / "runs" / RUNNERS
    (memory / f"wml-runners-{os.geteuid()}").unlink()
    (memory / f"wml-runners-{os.geteuid()}").mkdir(mode=0o755)
    (memory / f"wml-runners-{os.geteuid()}").chmod(0o755)
    assert runner_notes(tmp_path / "runs") == tmp_path / "runs" / RUNNERS
