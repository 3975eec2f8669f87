"""Run events for ``GET /v1/events``, read from the run store's event log by every replica.

Writes record their events in the store, in the transaction that makes the change
(``RunStore.events``). ``EventBus`` watches the log's latest seq and wakes this replica's
subscribers, each of which reads its account's events after the last seq it sent. So a client
sees every change whichever replica caused it and whichever it is connected to, and one that
reconnects to any replica with ``Last-Event-ID`` resumes where it was: no gap, no repeat.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import AsyncIterator, Callable, Optional

from starlette.concurrency import run_in_threadpool

from wml_backend.rundb import RunStore

log = logging.getLogger("wml_backend")

#: Seconds between two looks at the latest seq: how late another replica's event may reach a
#: subscriber here (this replica's own are looked for at once, ``poke``).
POLL_S = 0.1
#: Most events a subscriber reads from the store at once.
BATCH = 500


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
        self._thread: Optional[threading.Thread] = None

    @property
    def subscribers(self) -> int:
        """How many event streams this replica serves now."""
        with self._lock:
            return len(self._waiters)

    def start(self) -> None:
        """Start watching the log."""
        self._latest = self.store.latest_event()
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
        """Look at the log now: this replica has just recorded events."""
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
                self._wake_all()

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

    async def stream(self, heartbeat: float = 15.0) -> AsyncIterator[Optional[tuple[int, dict]]]:
        """Yield (seq, event) as they are recorded, ``None`` every ``heartbeat`` idle seconds,
        until the bus closes (after the events recorded before); unsubscribes at the end."""
        woken = self._waiter[1]
        try:
            while True:
                closing = self._bus._stop.is_set()
                woken.clear()  # before reading: an event recorded after the read wakes the wait
                batch = await run_in_threadpool(self._bus.store.events, self.last, self.account, BATCH)
                for seq, event in batch:
                    self.last = seq
                    yield seq, event
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
