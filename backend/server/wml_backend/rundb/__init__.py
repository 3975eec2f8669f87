"""The run store: accounts, experiments, runs, transitions, metrics, logs and secrets."""

from pathlib import Path

from wml_backend.rundb.base import Account, ExperimentRow, RunRow, RunStore
from wml_backend.rundb.sqlite import SqliteRunStore

__all__ = ["Account", "ExperimentRow", "RunRow", "RunStore", "SqliteRunStore", "connect"]


def connect(database: str, key_file: Path) -> RunStore:
    """The run store at ``database``: a ``postgresql://`` URL (shared installs) or a SQLite file;
    the credentials it keeps are sealed with the key in ``key_file``."""
    if database.startswith(("postgresql://", "postgres://")):
        from wml_backend.rundb.postgres import PostgresRunStore
        return PostgresRunStore(database, key_file)
    return SqliteRunStore(database, key_file)
