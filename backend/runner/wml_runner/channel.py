"""The runner's end of the pipe to the executor that started it (``wml_core.runner_channel``), as
an httpx transport: the ``Reporter`` calls the API alike over either. Once the pipe is gone (the
backend restarted: another process, or another replica, serves its URL now), calls go over HTTP.
"""

from __future__ import annotations

import threading
from multiprocessing.connection import Connection
from typing import Optional

import httpx

from wml_core.runner_channel import ChannelCall, decode_answer, encode_call


class PipeTransport(httpx.BaseTransport):
    """Sends each request over ``channel`` (one at a time: the backend answers in order), and
    through ``fallback`` once the channel has failed."""

    def __init__(self, channel: Connection, fallback: httpx.BaseTransport):
        self._channel: Optional[Connection] = channel
        self._fallback = fallback
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            if self._channel is not None:
                try:
                    return self._over_pipe(request)
                except (OSError, EOFError, ValueError):  # closed, or the backend is gone
                    self._drop()
        return self._fallback.handle_request(request)

    def _over_pipe(self, request: httpx.Request) -> httpx.Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        call = ChannelCall(request.method, request.url.path, token if scheme.lower() == "bearer" else None,
                           request.read())
        self._channel.send_bytes(encode_call(call))
        answer = decode_answer(self._channel.recv_bytes())
        return httpx.Response(answer.status, headers={"content-type": answer.content_type}, content=answer.body,
                              request=request)

    def _drop(self) -> None:
        try:
            self._channel.close()
        except OSError:
            pass
        self._channel = None

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._drop()
        self._fallback.close()
