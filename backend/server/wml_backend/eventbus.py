"""Run events for ``GET /v1/events``, read from the run store's event log by every replica.

Writes record their events in the store, in the transaction that makes the change
(``RunStore.events``). ``EventBus`` watches the log, reads what is new once for all of this
replica's subscribers (each event encoded once), keeps the latest in memory, and wakes the
subscribers; each sends its account's events after the last seq it sent, from memory, or from
the store when it is further behind. So a client sees every change whichever replica caused it
and whichever it is connected to, and one that reconnects to any replica with ``Last-Event-ID``
resumes where it was: no gap, no repeat.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Optional

from starlette.concurrency import run_in_threadpool

from wml_backend.rundb import RunStore

log = logging.getLogger("wml_backend")

#: Seconds between two looks at the latest seq: how late another replica's event may reach a
#: subscriber here (this replica's own are looked for at once, ``poke``).
POLL_S = 0.1
#: Most events read from the store at once.
BATCH = 500
#: Events kept in memory for the subscribers (about a minute of a busy backend's).
RECENT_EVENTS = 5000


@dataclass(frozen=True)
class SentEvent:
    """One event as the streams send it: its seq, its account, the event, and its JSON text
    (made once, whatever the number of streams)."""

    seq: int
    account: str
    event: dict
    text: str

    @classmethod
    def of(cls, seq: int, account: str, event: dict) -> "SentEvent":
        """The event recorded at ``seq`` for ``account``, encoded."""
        return cls(seq, account, event, json.dumps(event, default=str))


class EventBus:
    """Wakes subscribers (and ``listeners``) when the store's event log grows."""

    def __init__(self, store: RunStore):
        self.store = store
        #: Called from the watching thread whenever new events were recorded (by any replica).
        self.listeners: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._poke, self._stop = threading.Event(), threading.Event()
        self._latest = 0
        #: The latest events, by seq: every one after ``_floor`` up to the last read.
        self._recent: deque[SentEvent] = deque(maxlen=RECENT_EVENTS)
        self._floor = 0
        self._thread: Optional[threading.Thread] = None

    @property
    def subscribers(self) -> int:
        """How many event streams this replica serves now."""
        with self._lock:
            return len(self._waiters)

    def start(self) -> None:
        """Start watching the log."""
        self._latest = self._floor = self.store.latest_event()
        self._thread = threading.Thread(target=self._watch, name="wml-events", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop watching, and end every stream (a stopping server waits for its requests to end,
        and a stream never ends by itself)."""
        self._stop.set()
        self._poke.set()
        self._wake_streams()
        if self._thread:
            self._thread.join(timeout=5)

    def poke(self) -> None:
        """Look at the log now, for the streams: this replica has just recorded events. With no
        stream to serve, the next look (within ``POLL_S``) is soon enough: the ``listeners``
        hear of this replica's own changes from itself (its scheduler wakes itself when a
        change frees or queues runs), and waking this thread for each change of a run costs
        every run's next change a GIL hand-over and a read of the log."""
        if self.subscribers:
            self._poke.set()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._poke.wait(POLL_S)
            self._poke.clear()
            try:
                latest = self.store.latest_event()
            except Exception:  # the database is away for a moment: look again later
                log.warning("could not read the event log", exc_info=True)
                self._stop.wait(1.0)
                continue
            if latest != self._latest:
                self._latest = latest
                self._take_in(latest)
                self._wake_all()

    def _take_in(self, latest: int) -> None:
        """Keep the events recorded up to seq ``latest`` in memory for the streams; with no stream
        to serve, read none (a stream that starts later reads those from the store)."""
        if not self.subscribers:
            with self._lock:
                self._recent.clear()
                self._floor = latest
            return
        try:
            self._read_new()
        except Exception:  # the streams read what is missing from the store
            log.warning("could not read the event log", exc_info=True)

    def _read_new(self) -> None:
        """Read the events recorded since the last read into memory, oldest ones dropped."""
        while True:
            batch = self.store.event_log(self._recent[-1].seq if self._recent else self._floor, BATCH)
            with self._lock:
                for seq, account, event in batch:
                    if len(self._recent) == self._recent.maxlen:
                        self._floor = self._recent.popleft().seq
                    self._recent.append(SentEvent.of(seq, account, event))
            if len(batch) < BATCH:
                return

    def recent(self, account: str, after: int) -> Optional[list[SentEvent]]:
        """``account``'s events after seq ``after`` from memory, in seq order; None when some of them
        may be older than what memory holds (then the store has them)."""
        with self._lock:
            if after < self._floor:
                return None
            found = []
            for sent in reversed(self._recent):
                if sent.seq <= after:
                    break
                if sent.account == account:
                    found.append(sent)
        found.reverse()
        return found

    def _wake_all(self) -> None:
        self._wake_streams()
        for listener in self.listeners:
            listener()

    def _wake_streams(self) -> None:
        with self._lock:
            waiters = list(self._waiters)
        for loop, woken in waiters:
            loop.call_soon_threadsafe(woken.set)

    async def subscribe(self, account: str, after: Optional[int] = None) -> "Subscription":
        """A stream of ``account``'s events after seq ``after`` (None: from now on)."""
        if after is None:
            after = await run_in_threadpool(self.store.latest_event)
        waiter = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiters.add(waiter)
        return Subscription(self, account, after, waiter)

    def _unsubscribe(self, waiter: tuple) -> None:
        with self._lock:
            self._waiters.discard(waiter)


class Subscription:
    """One client's stream: its account's events in seq order, from a given seq on."""

    def __init__(self, bus: EventBus, account: str, after: int, waiter: tuple):
        self._bus, self.account, self.last, self._waiter = bus, account, after, waiter

    async def stream(self, heartbeat: float = 15.0) -> AsyncIterator[Optional[SentEvent]]:
        """Yield each event as it is recorded, ``None`` every ``heartbeat`` idle seconds, until
        the bus closes (after the events recorded before); unsubscribes at the end."""
        woken = self._waiter[1]
        try:
            while True:
                closing = self._bus._stop.is_set()
                woken.clear()  # before reading: an event recorded after the read wakes the wait
                batch = None if closing else self._bus.recent(self.account, self.last)
                if batch is None:  # far behind, or closing (memory may lag the store)
                    batch = await run_in_threadpool(self._stored)
                for sent in batch:
                    self.last = sent.seq
                    yield sent
                if len(batch) == BATCH:  # there may be more; a shorter batch was all there was when read
                    continue
                if closing:
                    return
                try:
                    await asyncio.wait_for(woken.wait(), heartbeat)
                except asyncio.TimeoutError:
                    yield None
        finally:
            self._bus._unsubscribe(self._waiter)

    def _stored(self) -> list[SentEvent]:
        """The next events after the last sent, from the store."""
        return [SentEvent.of(seq, self.account, event)
                for seq, event in self._bus.store.events(self.last, self.account, BATCH)]
