"""The runner channel's wire format: a runner's API calls over a pipe its executor holds, instead
of HTTP (the local executor's runners: no HTTP server, no worker threads, per call).

A call is one message: a JSON line ``{"method", "path", "token"}`` (the route and bearer token it
would send over HTTP), then the request's body as it is. An answer is one message: a JSON line
``{"status", "type"}`` (the HTTP status and content type the API would answer), then its body.
Both sides take it from here; nothing in it is unpickled, so a runner can make the backend parse
nothing but JSON and bytes.

A runner's last message is its last word: it makes no more calls, its run is over (its end
reported, its user's processes gone), and it exits with N. Its executor need not wait for the
process to be gone, and reaped, to say that it ended. The last word is said alone,
``{"exit": N}``, or by the end report itself (``"last": N`` in the call's line): then it counts
only if that call is answered with success (``last_word_counts``), else the runner makes the call
again, last word and all; and the backend, which knows that no call follows, ends the run as
reported in the step that answers it (one hop and one write less at the end of every run).
"""

from __future__ import annotations

import json
from typing import NamedTuple, Optional

#: The largest body of a runner's batch of metric points or log text (the runner sends at most
#: 5,000 points, or 256 KiB of log escaped as JSON, at once): the API's limit, however it is carried.
REPORT_BODY_BYTES = 8 << 20
#: The largest call a backend reads from a pipe: the largest body and its header line.
MAX_CALL_BYTES = REPORT_BODY_BYTES + (64 << 10)


#: The calls (method, name) a local executor makes for its runner as it launches it, in this order,
#: answered as the runner's own would be: their answers are the first on the runner's pipe, and
#: answer the runner's first such calls, which it does not send (``PipeTransport.expect``).
ASKED_AT_LAUNCH = (("GET", "spec"), ("GET", "code"))


class ChannelCall(NamedTuple):
    """One API call of a runner, as it would be made over HTTP."""

    method: str
    path: str
    token: Optional[str]
    body: bytes
    #: The runner's last word, if the call says it (its end report): the exit code it exits with
    #: once the call is answered with success; None: calls follow.
    last_word: Optional[int] = None


class ChannelAnswer(NamedTuple):
    """The API's answer to a ``ChannelCall``."""

    status: int
    content_type: str
    body: bytes


def encode_call(call: ChannelCall) -> bytes:
    """``call`` as one message."""
    head = {"method": call.method, "path": call.path, "token": call.token}
    return _message(head if call.last_word is None else {**head, "last": call.last_word}, call.body)


def decode_call(message: bytes) -> ChannelCall:
    """The call ``encode_call`` made; ValueError if ``message`` is not one."""
    head, body = _parts(message)
    if not isinstance(head.get("method"), str) or not isinstance(head.get("path"), str) \
            or not isinstance(head.get("token"), (str, type(None))):
        raise ValueError("a runner call needs a method, a path and a token")
    if type(head.get("last", 0)) is not int:
        raise ValueError("a runner call's last word is an exit code")
    return ChannelCall(head["method"], head["path"], head["token"], body, head.get("last"))


def encode_answer(answer: ChannelAnswer) -> bytes:
    """``answer`` as one message."""
    return _message({"status": answer.status, "type": answer.content_type}, answer.body)


def decode_answer(message: bytes) -> ChannelAnswer:
    """The answer ``encode_answer`` made; ValueError if ``message`` is not one."""
    head, body = _parts(message)
    if not isinstance(head.get("status"), int) or not isinstance(head.get("type"), str):
        raise ValueError("an answer needs a status and a content type")
    return ChannelAnswer(head["status"], head["type"], body)


def answer_status(message: bytes) -> int:
    """The HTTP status of the answer ``message``, read from its line alone (its body may be megabytes)."""
    return decode_answer(_line(message)).status


def encode_last_word(exit_code: int) -> bytes:
    """A runner's last word: it exits with ``exit_code``."""
    return _message({"exit": exit_code}, b"")


def is_call(message: bytes) -> bool:
    """Whether ``message`` is to be answered as a call (anything but a last word said alone)."""
    return not message.startswith(_LAST_WORD)  # a call's header begins with its method


def last_word(message: bytes) -> Optional[int]:
    """The exit code a runner's last word says, alone or in the call ``message`` (read from its
    line alone: its body may be megabytes); None if ``message`` says none."""
    alone, line = not is_call(message), _line(message)
    if not alone and b'"last"' not in line:
        return None
    try:
        exit_code = _parts(line)[0]["exit" if alone else "last"]
    except (ValueError, KeyError):
        return None
    return exit_code if type(exit_code) is int else None


_LAST_WORD = b'{"exit":'


def last_word_counts(status_before: Optional[int]) -> bool:
    """Whether a last word ends the runner's calls, the call that said it (or, said alone, the
    call before it) answered with HTTP ``status_before`` (None: none before it)."""
    return status_before is None or 200 <= status_before < 300


def _line(message: bytes) -> bytes:
    """The header line of ``message``, its newline included (empty if it has none)."""
    return message[:message.find(b"\n") + 1]


def _message(head: dict, body: bytes) -> bytes:
    return json.dumps(head, separators=(",", ":")).encode() + b"\n" + body


def _parts(message: bytes) -> tuple[dict, bytes]:
    line, newline, body = message.partition(b"\n")
    if not newline:
        raise ValueError("no header line")
    head = json.loads(line)
    if not isinstance(head, dict):
        raise ValueError("the header is not a JSON object")
    return head, body
