"""What every refusal must look like, and a probe that proves a refusal left nothing behind."""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from pathlib import Path

import httpx
from wml_backend.executors.local import MADE_AHEAD

#: Text that means a user is looking at Python internals rather than a message.
NOISE = ("Traceback", 'File "', "object at 0x", "<class ", "<function ", "Error(", "Exception(",
         "errors.pydantic.dev", "For further information", "[{'", "{'type'")
#: The longest line a message may have: a message quotes the input, it never echoes it.
MAX_LINE = 400
#: A located manifest problem: ``file:line: field: problem``.
LOCATED = re.compile(r"^.+:\d+: \S+: .+")
#: Tables of the run store and the rows each holds on a fresh backend (its admin account).
FRESH_ROWS = {"accounts": 1, "experiments": 0, "runs": 0, "transitions": 0, "metrics": 0, "logs": 0,
              "secrets": 0, "code": 0}


def assert_clear(message: str, mentions: tuple[str, ...] = ()) -> None:
    """``message`` is a clear refusal: present, free of Python noise, of sane line length, one line
    (or one located ``file:line: field: problem`` line per problem), naming ``mentions``."""
    lines = message.strip().splitlines()
    assert lines, "no error message at all"
    for noise in NOISE:
        assert noise not in message, f"{noise!r} in the message: {message[:500]}"
    assert all(len(line) <= MAX_LINE for line in lines), f"a line over {MAX_LINE} characters: {message[:500]}"
    assert len(lines) == 1 or all(LOCATED.match(line) for line in lines), f"not one line: {message[:500]}"
    for word in mentions:
        assert word in message, f"{word!r} not named in: {message[:500]}"


class StateProbe:
    """The backend's database rows, its file store's contents and its listings, to compare before
    and after."""

    def __init__(self, home: Path, url: str, token: str):
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        self.database = home / "backend" / "wml.db"
        self.folders = [home / "storage", home / "backend" / "runs"]
        self.log = home / "backend-test.log"
        self.baseline = self.files()

    def files(self) -> set[str]:
        """Every file and folder in the store and the runs' work folder, but the folders idle
        runners make ahead for the runs they will be given (as they are forked, whatever comes in)."""
        return {str(p) for folder in self.folders if folder.exists() for p in folder.rglob("*")
                if MADE_AHEAD not in p.relative_to(folder).parts}

    def rows(self) -> dict[str, int]:
        """Rows per table of the run store."""
        with closing(sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=10)) as db:
            return {table: db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in FRESH_ROWS}

    def assert_untouched(self) -> None:
        """No row was added to the database and no file to the store since the probe was made,
        and the backend logged no traceback."""
        assert self.rows() == FRESH_ROWS, "a refused input left rows in the database"
        for listing in ("/v1/experiments", "/v1/runs"):
            assert self.http.get(listing).json() == [], f"{listing} lists what a refused input left"
        added = sorted(self.files() - self.baseline)
        assert not added, f"a refused input left files in the store: {added[:5]}"
        log = self.log.read_text(errors="replace") if self.log.exists() else ""
        assert "Traceback" not in log, log[log.find("Traceback"):][:3000]
