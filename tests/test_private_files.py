"""What $WML_HOME's files and folders are made with: their owner's alone (0700 folders, 0600
files), whatever the umask, and a file an older version left readable to others is made so."""

from __future__ import annotations

import os
import stat

from wml_core.private_files import private_dir, private_open, write_private


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_folders_and_files_are_made_their_owners_alone(tmp_path):
    note = tmp_path / "a" / "b" / "note.json"
    write_private(note, "{}")
    assert [mode(p) for p in (tmp_path / "a", tmp_path / "a" / "b", note)] == [0o700, 0o700, 0o600]
    assert note.read_text() == "{}"


def test_a_umask_that_takes_the_owners_bits_does_not_leave_a_folder_or_file_without_them(tmp_path):
    old = os.umask(0o277)
    try:
        folder = private_dir(tmp_path / "x" / "y")
        with private_open(folder / "log", "ab") as f:
            f.write(b"line\n")
    finally:
        os.umask(old)
    assert [mode(tmp_path / "x"), mode(folder), mode(folder / "log")] == [0o700, 0o700, 0o600]


def test_a_file_left_readable_to_others_is_made_the_owners_alone_when_written_again(tmp_path):
    log = tmp_path / "backend.log"
    log.write_text("old\n")
    log.chmod(0o644)
    with private_open(log, "ab") as f:
        f.write(b"new\n")
    assert mode(log) == 0o600 and log.read_text() == "old\nnew\n"
