"""The runner's end of the pipe to the executor that started it (``wml_core.runner_channel``), as
an httpx transport: the ``Reporter`` calls the API alike over either (over the pipe, it makes its
calls directly: ``PipeTransport.call``). Once the pipe is gone (the backend restarted: another
process, or another replica, serves its URL now), calls go over HTTP.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from multiprocessing.connection import Connection
from typing import Optional

import httpx

from wml_core.runner_channel import (ChannelAnswer, ChannelCall, decode_answer, encode_call, encode_last_word,
                                     last_word_counts)

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
        #: Whether a thread is reading an answer (a thread at a time, an answer at a time): the
        #: others wait on ``_answered`` until theirs has come, or the pipe is theirs to read.
        self._reading = False
        self._answered = threading.Condition()
        #: The answer each call sent awaits, in the order sent.
        self._awaited: deque[Future] = deque()
        #: The calls the backend was asked on this runner's behalf (method, path end), and their answers.
        self._expected: list[tuple[str, str, Future]] = []

    def expect(self, method: str, path_end: str) -> None:
        """The next answer on the pipe is to a call made for this runner, before it made any: it
        answers its first ``method`` call whose path ends with ``path_end``, which is not sent."""
        with self._send_lock:
            self._expected.append((method, path_end, Future()))
            self._awaited.append(self._expected[-1][2])

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        answer = self.call(ChannelCall(request.method, request.url.path, token if scheme.lower() == "bearer" else None,
                                       request.read()))
        if answer is None:
            return self._fallback.handle_request(request)
        return as_response(answer, request)

    def call(self, call: ChannelCall) -> Optional[ChannelAnswer]:
        """The backend's answer to ``call`` over the pipe; None once the pipe has failed (make it
        over HTTP then). What an HTTP client adds to a call (~0.1 ms of CPU) is not needed here:
        the ``Reporter`` makes its calls so while the pipe lasts. A call that says the runner's
        last word closes the pipe once it succeeds; else it may be made again
        (``wml_core.runner_channel``)."""
        if self._channel is None:
            return None
        awaited = self._take_expected(call.method, call.path) or self._send(call)
        if awaited is None:
            return None
        self._receive(awaited)
        if awaited.exception():
            return None
        answer = awaited.result()
        if call.last_word is not None and last_word_counts(answer.status):
            with self._send_lock:
                self._fail()
        return answer

    def asked_at_launch(self, method: str, path_end: str) -> Optional[ChannelAnswer]:
        """The answer to the call ``expect`` said was made for this runner (as a request whose
        path ends with ``path_end`` would get it, without one); None if none was, or the pipe failed."""
        awaited = self._take_expected(method, path_end)
        if awaited is None:
            return None
        self._receive(awaited)
        return None if awaited.exception() else awaited.result()

    def _take_expected(self, method: str, path: str) -> Optional[Future]:
        """The answer awaited by the call made for this runner that a ``method`` call to ``path``
        is (no longer expected); None if none is."""
        with self._send_lock:
            for expected in self._expected:
                expected_method, path_end, answer = expected
                if method == expected_method and path.endswith(path_end):
                    self._expected.remove(expected)
                    return answer
            return None

    def _send(self, call: ChannelCall) -> Optional[Future]:
        """Send ``call``; the answer it awaits (None once the pipe has failed)."""
        message = encode_call(call)
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
        """Read answers, handing each to the call that awaits it, until ``awaited`` has its own
        (which another thread may read for it: it does not wait for that thread's own answer)."""
        with self._answered:
            while not awaited.done():
                if self._reading:
                    self._answered.wait()
                    continue
                self._reading = True
                self._answered.release()
                try:
                    self._read_one()
                finally:
                    self._answered.acquire()
                    self._reading = False
                    self._answered.notify_all()

    def _read_one(self) -> None:
        """Read one answer, for the call that awaits the first (all of them fail if the pipe does)."""
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

    def say_last_word(self, exit_code: int) -> None:
        """Say the runner's last word (its run is over, and it exits with ``exit_code``:
        ``wml_core.runner_channel``) and close the pipe; later calls go over HTTP."""
        with self._send_lock:
            if self._channel is not None:
                try:
                    self._channel.send_bytes(encode_last_word(exit_code))
                except PIPE_ERRORS:
                    pass  # the executor sees the runner's exit instead
            self._fail()

    def close(self) -> None:
        with self._send_lock:
            self._fail()
        self._fallback.close()


def as_response(answer: ChannelAnswer, request: httpx.Request) -> httpx.Response:
    """``answer``, to ``request``, as the HTTP response it stands for."""
    return httpx.Response(answer.status, headers={"content-type": answer.content_type}, content=answer.body,
                          request=request)
