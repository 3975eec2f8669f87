"""A client of the backend's server-sent events (``GET /v1/events``), in a background thread.

The stream carries every run change and every new batch of metric points of the caller's
account. ``EventStream`` reads it in a daemon thread, hands each event to a callback, and
reconnects with backoff when the connection drops, resuming after the last event it got
(``Last-Event-ID``: any replica of a shared backend resumes it); ``on_connect`` runs after every
(re)connection so that a consumer can fetch over REST what it may have missed meanwhile.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from typing import Callable, Iterable, Iterator, Optional

import httpx

log = logging.getLogger("wml_jupyter.event_stream")

#: First and longest wait before reconnecting; the wait doubles after each failed attempt.
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.2, 5.0
#: The backend sends a heartbeat every 15 s; silence for this long means the connection is dead.
READ_TIMEOUT_S = 45.0
#: Seconds to wait for the TCP connection and the response headers.
CONNECT_TIMEOUT_S = 5.0

EventHandler = Callable[[str, dict], None]


def parse_sse(lines: Iterable[str], on_id: Optional[Callable[[str], None]] = None) -> Iterator[tuple[str, str]]:
    """``(event, data)`` for each event in SSE ``lines``; comments (heartbeats) are skipped, and
    each event's ``id`` goes to ``on_id`` just before the event is yielded."""
    event_id: Optional[str] = None
    event, data = "message", []
    for line in lines:
        if not line:
            if data:
                if on_id and event_id is not None:
                    on_id(event_id)
                yield event, "\n".join(data)
            event, data, event_id = "message", [], None
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
            elif field == "id":
                event_id = value


def _shutdown(response: httpx.Response) -> None:
    """Wake a thread blocked reading ``response`` by shutting its socket down (closing the
    response from another thread would not interrupt the read)."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    try:
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed
        pass


class EventStream:
    """The account's events, delivered to ``on_event(type, payload)`` from a daemon thread."""

    def __init__(self, url: str, headers: dict[str, str], on_event: EventHandler,
                 on_connect: Optional[Callable[[], None]] = None):
        self.url, self.headers = url.rstrip("/") + "/v1/events", dict(headers)
        self.on_event, self.on_connect = on_event, on_connect
        self.connected = threading.Event()
        #: The last reason the stream could not be read (None while healthy).
        self.error: Optional[str] = None
        #: The id of the last event received: a reconnection resumes after it.
        self.last_event_id: Optional[str] = None
        self._stop = threading.Event()
        self._response: Optional[httpx.Response] = None
        self._thread = threading.Thread(target=self._loop, name="wml-events", daemon=True)

    def start(self) -> "EventStream":
        """Connect and start delivering events in the background."""
        self._thread.start()
        return self

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return self._stop.is_set()

    def close(self, timeout: float = 2.0) -> None:
        """Stop reading and drop the connection."""
        self._stop.set()
        response = self._response
        if response is not None:
            _shutdown(response)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _loop(self) -> None:
        backoff = BACKOFF_MIN_S
        timeout = httpx.Timeout(CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S)
        with httpx.Client(timeout=timeout, headers=self.headers) as http:
            while not self._stop.is_set():
                try:
                    self._read(http)
                    backoff = BACKOFF_MIN_S
                except httpx.HTTPStatusError as exc:
                    self.error = f"the backend refused the event stream ({exc.response.status_code})"
                    if exc.response.status_code in (401, 403, 404):
                        return
                except Exception as exc:  # dropped connection, backend restart, handler bug
                    if self._stop.is_set():
                        return
                    self.error = f"event stream interrupted ({type(exc).__name__}); reconnecting"
                    log.debug("event stream: %s", exc)
                self.connected.clear()
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _read(self, http: httpx.Client) -> None:
        resume = {"Last-Event-ID": self.last_event_id} if self.last_event_id else {}
        with http.stream("GET", self.url, headers={"Accept": "text/event-stream", **resume}) as response:
            self._response = response
            response.raise_for_status()
            self.error = None
            lines = response.iter_lines()
            next(lines, None)  # ": connected": the backend subscribes us right after sending it
            self.connected.set()
            if self.on_connect:
                self.on_connect()
            for event, data in parse_sse(lines, on_id=self._received):
                if self._stop.is_set():
                    return
                self.on_event(event, json.loads(data))

    def _received(self, event_id: str) -> None:
        """Remember the id of the event about to be delivered."""
        self.last_event_id = event_id
