"""The run store: accounts, experiments, runs, transitions, metrics, logs and secrets."""

from .base import Account, ExperimentRow, RunRow, RunStore
from .sqlite import SqliteRunStore

__all__ = ["Account", "ExperimentRow", "RunRow", "RunStore", "SqliteRunStore"]
