"""In-process publish/subscribe of run events, for the server-sent event stream."""

from __future__ import annotations

import asyncio
import threading
from typing import AsyncIterator, Optional

#: Events a slow subscriber may fall behind by before newer ones are dropped for it.
QUEUE_LIMIT = 10_000


class EventBus:
    """Thread-safe publisher; each subscriber gets an asyncio queue of its account's events."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue, str]] = []

    def publish(self, account: str, event: dict) -> None:
        """Deliver ``event`` to every subscriber of ``account``; never blocks."""
        with self._lock:
            subscribers = list(self._subscribers)
        for loop, queue, owner in subscribers:
            if owner == account:
                loop.call_soon_threadsafe(self._offer, queue, event)

    @staticmethod
    def _offer(queue: asyncio.Queue, event: dict) -> None:
        if queue.qsize() < QUEUE_LIMIT:
            queue.put_nowait(event)

    def subscribe(self, account: str) -> "Subscription":
        """Start receiving ``account``'s events now (call from the event loop); close it when done."""
        entry = (asyncio.get_running_loop(), asyncio.Queue(), account)
        with self._lock:
            self._subscribers.append(entry)
        return Subscription(self, entry)

    def _unsubscribe(self, entry: tuple) -> None:
        with self._lock:
            self._subscribers.remove(entry)


class Subscription:
    """One subscriber's queue of events."""

    def __init__(self, bus: EventBus, entry: tuple):
        self._bus, self._entry = bus, entry

    async def stream(self, heartbeat: float = 15.0) -> AsyncIterator[Optional[dict]]:
        """Yield events as they come, ``None`` every ``heartbeat`` idle seconds; unsubscribes at the end."""
        try:
            while True:
                try:
                    yield await asyncio.wait_for(self._entry[1].get(), heartbeat)
                except asyncio.TimeoutError:
                    yield None
        finally:
            self._bus._unsubscribe(self._entry)
