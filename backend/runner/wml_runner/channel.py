"""The runner's end of the pipe to the executor that started it (``wml_core.runner_channel``), as
an httpx transport: the ``Reporter`` calls the API alike over either. Once the pipe is gone (the
backend restarted: another process, or another replica, serves its URL now), calls go over HTTP.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from multiprocessing.connection import Connection
from typing import Optional

import httpx

from wml_core.runner_channel import ChannelAnswer, ChannelCall, decode_answer, encode_call

#: What the pipe raises once it is closed, or the backend is gone.
PIPE_ERRORS = (OSError, EOFError, ValueError)


class PipeTransport(httpx.BaseTransport):
    """Sends each request over ``channel``, and through ``fallback`` once the channel has failed.

    Calls are pipelined: each is sent at once, without waiting for the answers to the calls
    before it (the backend answers in order), so that calls from several threads (the code
    fetched while the spec is asked for, a state report in the background) cost one wait, not
    one each."""

    def __init__(self, channel: Connection, fallback: httpx.BaseTransport):
        self._channel: Optional[Connection] = channel
        self._fallback = fallback
        self._send_lock = threading.Lock()
        self._receive_lock = threading.Lock()
        #: The answer each call sent awaits, in the order sent.
        self._awaited: deque[Future] = deque()
        #: A call the backend was asked on this runner's behalf (method, path end), and its answer.
        self._expected: Optional[tuple[str, str, Future]] = None

    def expect(self, method: str, path_end: str) -> None:
        """The first answer on the pipe is to a call made for this runner, before it made any:
        it answers its first ``method`` call whose path ends with ``path_end``, which is not sent."""
        with self._send_lock:
            self._expected = (method, path_end, Future())
            self._awaited.append(self._expected[2])

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self._over_pipe(request) if self._channel is not None else None
        if answer is None:
            return self._fallback.handle_request(request)
        return httpx.Response(answer.status, headers={"content-type": answer.content_type}, content=answer.body,
                              request=request)

    def _over_pipe(self, request: httpx.Request) -> Optional[ChannelAnswer]:
        """The backend's answer to ``request`` over the pipe; None once the pipe has failed."""
        awaited = self._asked_already(request) or self._send(request)
        if awaited is None:
            return None
        self._receive(awaited)
        return awaited.result() if not awaited.exception() else None

    def _asked_already(self, request: httpx.Request) -> Optional[Future]:
        """The answer ``request`` awaits if it is the call ``expect`` said was made for it."""
        with self._send_lock:
            expected = self._expected
            if expected is None or request.method != expected[0] or not request.url.path.endswith(expected[1]):
                return None
            self._expected = None
            return expected[2]

    def _send(self, request: httpx.Request) -> Optional[Future]:
        """Send ``request``; the answer it awaits (None once the pipe has failed)."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        message = encode_call(ChannelCall(request.method, request.url.path,
                                          token if scheme.lower() == "bearer" else None, request.read()))
        awaited: Future = Future()
        with self._send_lock:
            if self._channel is None:
                return None
            try:
                self._channel.send_bytes(message)
            except PIPE_ERRORS:
                self._fail()
                return None
            self._awaited.append(awaited)
        return awaited

    def _receive(self, awaited: Future) -> None:
        """Read answers, handing each to the call that awaits it, until ``awaited`` has its own."""
        with self._receive_lock:
            while not awaited.done():
                channel = self._channel
                try:
                    if channel is None:
                        raise EOFError("closed")
                    answer = decode_answer(channel.recv_bytes())
                except PIPE_ERRORS:
                    with self._send_lock:
                        self._fail()
                    return
                self._awaited.popleft().set_result(answer)

    def _fail(self) -> None:
        """The pipe has failed (called holding the send lock): close it; the calls that await an
        answer go over HTTP, as all later ones."""
        if self._channel is None:
            return
        try:
            self._channel.close()
        except OSError:
            pass
        self._channel = None
        while self._awaited:
            self._awaited.popleft().set_exception(ConnectionError("the pipe to the backend is gone"))

    def close(self) -> None:
        with self._send_lock:
            self._fail()
        self._fallback.close()
