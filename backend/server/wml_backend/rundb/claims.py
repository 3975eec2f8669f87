"""Who owns which data of the default store, in SQL both databases speak.

An account owns the keys of a bucket that start with a prefix (an *area*) when it claimed them
(``wml upload`` claims its destination first: the ``data_claims`` table) or when they are one of
its runs' results (``runs.results``, ``bucket/prefix/training-<run id>/``). Two areas overlap when
they are in the same bucket and one's prefix starts with the other's. ``SqlDataClaims`` is a mixin
of ``SqlRunStore``, as ``SqlCoordination`` is.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from typing import Any, ContextManager, Optional, Sequence

#: Tables added for data ownership, by name; each is one version of the schema (``sql.SCHEMA_VERSION``).
TABLES = {
    "data_claims": """
CREATE TABLE IF NOT EXISTS data_claims (account TEXT NOT NULL, bucket TEXT NOT NULL, prefix TEXT NOT NULL,
  created {real} NOT NULL, PRIMARY KEY (account, bucket, prefix));
CREATE INDEX IF NOT EXISTS data_claims_bucket ON data_claims(bucket)""",
}


def _relation(column: str, text: str, inside: bool) -> tuple[str, tuple]:
    """SQL, and its arguments, saying that ``text`` starts with the text in ``column`` (lies inside
    it); unless ``inside``, or the other way round (they overlap). No LIKE: a ``%`` or ``_`` in a key
    is no wildcard."""
    within = f"substr(CAST(? AS TEXT), 1, length({column})) = {column}"
    if inside:
        return within, (text,)
    return f"(substr({column}, 1, ?) = ? OR {within})", (len(text), text, text)


class SqlDataClaims:
    """Data claims, and who owns the keys of an area, over a ``SqlRunStore``'s connection."""

    @abstractmethod
    def _tx(self) -> ContextManager[Any]:
        """A transaction (``SqlRunStore._tx``)."""

    @abstractmethod
    def _read(self, db: Optional[Any], sql: str, args: Sequence[Any]) -> list[tuple]:
        """The rows of one read, in transaction ``db`` or on its own (``SqlRunStore._read``)."""

    def _serialize_claims(self, db: Any) -> None:
        """Hold, until the commit, a lock every claim takes before it looks for other owners
        (nothing where a write transaction locks the whole database)."""

    def claim_data(self, account: str, bucket: str, prefix: str) -> set[str]:
        with self._tx() as db:
            self._serialize_claims(db)
            others = self._owners(db, bucket, prefix) - {account}
            if not others:
                db.execute("INSERT INTO data_claims (account, bucket, prefix, created) VALUES (?, ?, ?, ?) "
                           "ON CONFLICT DO NOTHING", (account, bucket, prefix, time.time()))
            return others

    def data_owners(self, bucket: str, prefix: str, inside: bool = False) -> set[str]:
        return self._owners(None, bucket, prefix, inside)

    def _owners(self, db: Optional[Any], bucket: str, prefix: str, inside: bool = False) -> set[str]:
        """The accounts whose claims or runs' results overlap ``prefix`` of ``bucket`` (``inside``:
        that ``prefix`` lies inside), read in transaction ``db`` or on their own."""
        claims, claim_args = _relation("prefix", prefix, inside)
        results, result_args = _relation("results", f"{bucket}/{prefix}", inside)
        rows = self._read(db, f"SELECT account FROM data_claims WHERE bucket=? AND {claims} "
                              f"UNION SELECT account FROM runs WHERE results IS NOT NULL AND {results}",
                          (bucket, *claim_args, *result_args))
        return {account for account, in rows}
