"""A throwaway PostgreSQL server for tests: its own cluster in a temporary directory.

``postgres_server`` (session scope) runs ``initdb`` and ``pg_ctl start`` on 127.0.0.1 with a free
port and the socket in the cluster's directory, so it touches no system cluster, and stops it at
the end. PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user
(Debian's ``postgresql`` package creates it). Without the server binaries or psycopg the tests
that need it are skipped, unless ``WML_REQUIRE_POSTGRES`` is set (as CI does): then they fail.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator, Optional

import pytest

#: Set (to anything but "" or "0") where a missing PostgreSQL must fail the tests, not skip them.
REQUIRE_ENV = "WML_REQUIRE_POSTGRES"
#: Where Debian's ``postgresql`` package puts the server binaries (newest version wins).
DEBIAN_BINS = "/usr/lib/postgresql/*/bin"
#: The role and database the tests use.
USER, DATABASE = "wml", "wml_test"


def _missing(reason: str) -> None:
    """Skip for want of PostgreSQL, or fail where it is required."""
    if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
        pytest.fail(f"{reason}, and {REQUIRE_ENV} is set", pytrace=False)
    pytest.skip(f"{reason} (apt-get install postgresql; set {REQUIRE_ENV}=1 to fail instead)")


def find_bindir() -> Optional[Path]:
    """The directory holding ``initdb`` and ``pg_ctl``: on PATH, else Debian's newest."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).parent
    dirs = [Path(d) for d in glob.glob(DEBIAN_BINS) if (Path(d) / "initdb").exists()]
    return max(dirs, key=_version, default=None)


def _version(bindir: Path) -> int:
    """The major version in ``/usr/lib/postgresql/<version>/bin``."""
    return int(bindir.parent.name) if bindir.parent.name.isdigit() else 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One running cluster; ``dsn()`` gives each caller an empty schema of its own."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="wml-pg-"))
        self.data, self.port = self.root / "data", _free_port()
        self._as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self._schemas = itertools.count(1)
        if self._as_user:
            shutil.chown(self.root, "postgres", "postgres")

    def _run(self, tool: str, *args: str) -> None:
        """Run a server binary as the server's user; its output only if it fails."""
        cmd = [*self._as_user, str(self.bindir / tool), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stdout}{done.stderr}")

    def start(self) -> "PostgresServer":
        """initdb (no fsync: a test cluster), start on 127.0.0.1, create the test database."""
        self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8",
                  "--no-locale", "--no-sync")
        opts = f"-h 127.0.0.1 -p {self.port} -k {self.root} -F -c max_connections=50"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w",
                  "-t", "60", "-o", opts, "start")
        self.execute(f"CREATE DATABASE {DATABASE}", database="postgres")
        return self

    def stop(self) -> None:
        """Stop the server (if it started) at once and delete the cluster."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = DATABASE) -> str:
        """A libpq URL for ``database`` on this server."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str, database: str = DATABASE) -> None:
        """Run one statement outside a transaction."""
        import psycopg
        with psycopg.connect(self.url(database), autocommit=True) as conn:
            conn.execute(sql)

    def dsn(self) -> str:
        """A connection string whose tables go to a new, empty schema (a fresh store per test)."""
        name = f"t{next(self._schemas)}"
        self.execute(f"CREATE SCHEMA {name}")
        return f"{self.url()}?options=-csearch_path%3D{name}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for this test session (skipped or failed when there is none)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _missing("psycopg is not installed")
    bindir = find_bindir()
    if bindir is None:
        _missing("the PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    server = PostgresServer(bindir)
    try:
        yield server.start()
    finally:
        server.stop()
