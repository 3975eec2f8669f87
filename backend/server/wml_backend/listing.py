"""Paged listings: ``?limit=N`` returns at most N items, and a ``Link: <...>; rel="next"`` header
(RFC 8288) whose URL carries the opaque ``cursor`` of the next page while there is one.

A cursor names the last item of its page (a run or experiment id): the listings' orders are keyed
on what never changes (a run's submission seq, an experiment's creation), so a page neither skips
nor repeats an item whose state changes between requests.
"""

from __future__ import annotations

import base64
import binascii
import functools
import threading
from dataclasses import dataclass
from typing import Any, Callable, Generic, Optional, TypeVar

from cachetools import LRUCache
from pydantic import TypeAdapter
from starlette.datastructures import URL
from starlette.responses import Response

from wml_core.errors import InvalidInput, quoted
from wml_core.models import Run

#: The most items one page holds.
MAX_PAGE = 1000
#: Bytes of ended experiments' run lists kept in memory (``EndedRuns``).
ENDED_RUNS_BYTES = 64 << 20
#: What a cursor starts with once decoded: a later format can tell its own from these.
_CURSOR_PREFIX = "wml1:"

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing, and the cursor of the next (None: this is the last)."""

    items: list[T]
    next: Optional[str] = None


def cursor_of(key: str) -> str:
    """The opaque cursor that continues a listing after the item ``key``."""
    return base64.urlsafe_b64encode((_CURSOR_PREFIX + key).encode()).decode().rstrip("=")


def key_of(cursor: Optional[str]) -> Optional[str]:
    """The item a ``cursor`` continues after (None: from the start); ``InvalidInput`` for one no listing gave."""
    if cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    if not text.startswith(_CURSOR_PREFIX):
        raise InvalidInput(f"cursor: {quoted(cursor)} is not a cursor a listing gave")
    return text[len(_CURSOR_PREFIX):]


def page_of(items: list[T], limit: int, key: Callable[[T], str]) -> Page[T]:
    """The first ``limit`` of ``items`` (read as ``limit + 1``, so that a next page is known to exist)."""
    if len(items) <= limit:
        return Page(items)
    return Page(items[:limit], cursor_of(key(items[limit - 1])))


@functools.cache
def _adapter(model: Any) -> TypeAdapter:
    return TypeAdapter(model)


def json_response(model: Any, value: Any, headers: Optional[dict[str, str]] = None) -> Response:
    """``value`` as the JSON of type ``model``, serialized in one pass (FastAPI's own path dumps the
    models, validates them again and encodes the result: most of a long listing's time)."""
    return Response(_adapter(model).dump_json(value), media_type="application/json", headers=headers)


class EndedRuns:
    """The JSON of ended experiments' whole run lists, by account and experiment: an ended
    experiment never changes again (as its kept summary), and listing its runs is the most
    asked-for read of a finished sweep (comparing it, drawing it)."""

    def __init__(self, service: Any, max_bytes: int = ENDED_RUNS_BYTES):
        self.service = service
        self._lock = threading.Lock()
        self._json: LRUCache[tuple[str, str], bytes] = LRUCache(max_bytes, getsizeof=len)

    def response(self, account: Any, experiment: str) -> Response:
        """``GET /v1/runs?experiment=`` of ``account``: kept once the experiment has ended."""
        key = (account.name, experiment)
        with self._lock:
            kept = self._json.get(key)
        if kept is not None:
            return Response(kept, media_type="application/json")
        runs = self.service.runs(account, experiment)
        body = _adapter(list[Run]).dump_json(runs)
        if all(r.state.terminal for r in runs) and self.service.experiments_of(account, [experiment])[0].state.terminal:
            with self._lock:
                self._json[key] = body
        return Response(body, media_type="application/json")


def next_link(url: URL, page: Page) -> dict[str, str]:
    """The ``Link`` header that points at the page after ``page`` (none after the last)."""
    if page.next is None:
        return {}
    return {"Link": f'<{url.include_query_params(cursor=page.next)}>; rel="next"'}
