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
#: Indexes added for data ownership, by name, each a version of the schema as ``TABLES``' are: who
#: owns an area is read from the runs whose results are one of its prefixes (or start with it).
INDEXES = {
    "runs_results": "CREATE INDEX IF NOT EXISTS runs_results ON runs(results{bytewise})",
}


#: Longest text whose relation is read from an index (one term per prefix); a longer one (no object
#: store key is that long) is compared row by row.
LONGEST_INDEXED = 4096


def _prefixes(text: str) -> list[str]:
    """Every prefix of ``text``, the empty one and ``text`` itself included."""
    return [text[:i] for i in range(len(text) + 1)]


def _after_all_starting_with(text: str) -> Optional[str]:
    """The least text above every text that starts with ``text``, in code point order (UTF-8's
    byte order); None where there is none (only code points that have no successor)."""
    while text:
        point = ord(text[-1]) + 1
        point = 0xE000 if 0xD800 <= point <= 0xDFFF else point  # surrogates are no text
        if point <= 0x10FFFF:
            return text[:-1] + chr(point)
        text = text[:-1]
    return None


def _relation(column: str, text: str, inside: bool, bytewise: str = "") -> tuple[str, tuple]:
    """SQL, and its arguments, saying that ``text`` starts with the text in ``column`` (lies inside
    it); unless ``inside``, or the other way round (they overlap). Read from an index on ``column``
    ``bytewise`` (the collation, if any, that compares text by code point: a range of another
    collation may skip texts that start with ``text``): equal to one of ``text``'s prefixes, or in the
    range of texts that start with ``text``. No LIKE: a ``%`` or ``_`` in a key is no wildcard."""
    if len(text) > LONGEST_INDEXED:
        within = f"substr(CAST(? AS TEXT), 1, length({column})) = {column}"
        return (within, (text,)) if inside else (f"(substr({column}, 1, ?) = ? OR {within})", (len(text), text, text))
    prefixes = _prefixes(text)
    within = f"{column}{bytewise} IN ({','.join('?' * len(prefixes))})"
    if inside:
        return within, tuple(prefixes)
    upper = _after_all_starting_with(text)
    below = "" if upper is None else f" AND {column}{bytewise} < ?"
    around = f"({column}{bytewise} >= ?{below} AND substr({column}, 1, ?) = ?)"
    return f"({within} OR {around})", (*prefixes, text, *(() if upper is None else (upper,)), len(text), text)


class SqlDataClaims:
    """Data claims, and who owns the keys of an area, over a ``SqlRunStore``'s connection."""

    #: What makes a column compare text by code point (a collation), as the index on ``runs.results``
    #: does: nothing where that is the default (SQLite's BINARY).
    BYTEWISE = ""

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
        claims, claim_args = _relation("prefix", prefix, inside, self.BYTEWISE)
        results, result_args = _relation("results", f"{bucket}/{prefix}", inside, self.BYTEWISE)
        rows = self._read(db, f"SELECT account FROM data_claims WHERE bucket=? AND {claims} "
                              f"UNION SELECT account FROM runs WHERE results IS NOT NULL AND {results}",
                          (bucket, *claim_args, *result_args))
        return {account for account, in rows}
