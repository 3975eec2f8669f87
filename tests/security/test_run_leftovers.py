"""What a run leaves behind on one machine (issue #13 item 4, kept by #15 item 1's faster end): a
process it detached is killed when its command ends, and what it left in /tmp and /dev/shm is
deleted before its user runs anything else; a run that ends does not wait for the deletion.
Through a real root backend and the local executor, which runs each command as a user of its own.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

import psutil
import pytest

from backend_process import BackendProcess
from test_cli_e2e import definition
from wml_runner import isolation

#: Training code that leaves a file in /tmp and /dev/shm and a process detached from its own.
LEAVES = r'''
import json, os, subprocess, sys
marker = sys.argv[1]
for folder in ("/tmp", "/dev/shm"):
    open(f"{folder}/{marker}", "w").write("left behind")
sleeper = subprocess.Popen(["sleep", "600"], start_new_session=True)
json.dump({"uid": os.getuid(), "sleeper": sleeper.pid}, open(os.environ["RESULT_DIR"] + "/left.json", "w"))
'''
#: Training code that looks for what the first left.
LOOKS = r'''
import json, os, sys
marker = sys.argv[1]
seen = [folder for folder in ("/tmp", "/dev/shm") if os.path.exists(f"{folder}/{marker}")]
json.dump({"uid": os.getuid(), "seen": seen}, open(os.environ["RESULT_DIR"] + "/seen.json", "w"))
'''


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """A root backend with one slot: runs go one after another, the next as soon as one ends."""
    if os.geteuid() != 0:
        pytest.skip("runs get users of their own only from a root backend")
    proc = BackendProcess(tmp_path_factory.mktemp("leftovers") / "home", gpus=1).start()
    yield proc
    proc.close()


def run(host: BackendProcess, folder: Path, code: str, marker: str) -> str:
    """Submit ``code`` as ``python3 train.py MARKER``; its run's id."""
    folder.mkdir(parents=True)
    (folder / "train.py").write_text(code)
    manifest = definition(folder, framework={"name": "custom", "command": f"python3 train.py {marker}"},
                          hyperparameters={"x": [1]})
    return host.cli("train", str(manifest), str(folder), check=True).stdout.strip().splitlines()[-1] + "-01"


def result(host: BackendProcess, run_id: str, name: str) -> dict:
    return json.loads((host.home / "storage" / "wml-results" / f"training-{run_id}" / name).read_text())


def test_what_a_run_left_is_gone_before_its_user_runs_again_and_its_end_does_not_wait(host, tmp_path):
    marker = f"wml-left-{secrets.token_hex(8)}"
    first = run(host, tmp_path / "first", LEAVES, marker)
    second = run(host, tmp_path / "second", LOOKS, marker)  # queued: it starts when the first ends
    host.wait_state(first, "COMPLETED")
    left = result(host, first, "left.json")
    assert not psutil.pid_exists(left["sleeper"]) or psutil.Process(left["sleeper"]).status() == psutil.STATUS_ZOMBIE
    deadline = time.monotonic() + 30
    while any(Path(folder, marker).exists() for folder in ("/tmp", "/dev/shm")):
        assert time.monotonic() < deadline, "what the run left in /tmp or /dev/shm is still there"
        time.sleep(0.1)
    host.wait_state(second, "COMPLETED")
    looked = result(host, second, "seen.json")
    if looked["uid"] == left["uid"]:  # the same user again: only once its leftovers were deleted
        assert looked["seen"] == []


@pytest.mark.parametrize("theirs, others, at_once", [
    (0, 3, True),                          # the usual end: nothing of the user's, few entries to look at
    (1, 3, False),                         # something to delete: a child of its own does
    (0, isolation.QUICK_LOOK_ENTRIES, False),  # too many entries to look through on the way out
])
def test_a_users_lease_is_noted_clean_at_once_only_when_it_surely_left_nothing(tmp_path, monkeypatch, theirs,
                                                                                others, at_once):
    if os.geteuid() != 0:
        pytest.skip("files of another user are made as root")
    shared = tmp_path / "tmp"
    shared.mkdir()
    monkeypatch.setattr(isolation, "SHARED_TMP", (shared,))
    user = isolation.RunUser("wml-test-user", 4242, 4242)
    for k in range(others):
        (shared / f"other-{k}").write_text("another user's")
    for k in range(theirs):
        (shared / f"left-{k}").write_text("left behind")
        os.chown(shared / f"left-{k}", user.uid, user.gid)
    lease = os.open(tmp_path / "lease.lock", os.O_RDWR | os.O_CREAT, 0o600)
    isolation.lease_in_use(lease)

    before = {child.pid for child in psutil.Process().children()}
    isolation.clear_shared_tmp_later(user, lease)

    def noted() -> bool:
        return os.pread(lease, len(isolation.LEFT_CLEAN), 0) == isolation.LEFT_CLEAN

    assert noted() or not at_once, "a user that left nothing is noted clean before the run's end goes on"
    deadline = time.monotonic() + 10
    while not noted():
        assert time.monotonic() < deadline, "the lease was never noted clean"
        time.sleep(0.01)
    assert sorted(p.name for p in shared.iterdir()) == sorted(f"other-{k}" for k in range(others))
    os.close(lease)
    for cleaner in {child.pid for child in psutil.Process().children()} - before:
        os.waitpid(cleaner, 0)  # this process forked it: no zombie is left to the tests after


def test_a_link_a_run_left_in_tmp_is_deleted_and_never_followed(tmp_path, monkeypatch):
    """A run's user plants a link in /tmp to another user's folder: the clearing deletes the link
    itself, and nothing it points to (root walks /tmp, following no link)."""
    if os.geteuid() != 0:
        pytest.skip("files of another user are made as root")
    shared, elsewhere = tmp_path / "tmp", tmp_path / "someone-elses"
    shared.mkdir()
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("not the run's")
    monkeypatch.setattr(isolation, "SHARED_TMP", (shared,))
    user = isolation.RunUser("wml-test-user", 4242, 4242)
    (shared / "link").symlink_to(elsewhere)
    os.lchown(shared / "link", user.uid, user.gid)
    (shared / "writable").mkdir(mode=0o777)
    (shared / "writable").chmod(0o777)
    (shared / "writable" / "inner-link").symlink_to(elsewhere / "keep.txt")
    os.lchown(shared / "writable" / "inner-link", user.uid, user.gid)

    isolation.clear_shared_tmp(user)
    assert sorted(p.name for p in shared.rglob("*")) == ["writable"], "the user's links are deleted"
    assert (elsewhere / "keep.txt").read_text() == "not the run's", "what a link pointed to is untouched"
