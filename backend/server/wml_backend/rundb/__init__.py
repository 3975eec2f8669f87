"""The run store: accounts, experiments, runs, transitions, metrics, logs and secrets."""

from .base import Account, ExperimentRow, RunRow, RunStore
from .sqlite import SqliteRunStore

__all__ = ["Account", "ExperimentRow", "RunRow", "RunStore", "SqliteRunStore", "connect"]


def connect(database: str) -> RunStore:
    """The run store at ``database``: a ``postgresql://`` URL (shared installs) or a SQLite file."""
    if database.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresRunStore
        return PostgresRunStore(database)
    return SqliteRunStore(database)
