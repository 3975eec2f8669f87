"""Expected errors: each one is a sentence for the user, never a traceback.

The server maps these to HTTP codes in one place (``api.py``); the client turns the
JSON ``{code, message}`` back into the same classes, so an error raised in the backend
reads the same in a terminal, a notebook and a test.
"""

from __future__ import annotations


#: Characters of a user's value that an error message quotes; the rest is elided.
QUOTED_CHARS = 80


def quoted(value: object) -> str:
    """``value`` as an error message quotes it: its repr, elided past QUOTED_CHARS characters
    (a 10,000-character id or flag must not make a 10,000-character message)."""
    text = repr(value)
    return text if len(text) <= QUOTED_CHARS else text[:QUOTED_CHARS - 3] + "..."


class WmlError(Exception):
    """Base of every error a user is expected to see and act on."""

    code = "error"
    http_status = 400

    def __str__(self) -> str:
        return self.args[0] if self.args else self.code

    def _render_traceback_(self) -> list[str]:
        """Show one line in IPython instead of a traceback (the cell still fails)."""
        return [f"{type(self).__name__}: {self}"]


class InvalidInput(WmlError):
    """A manifest, sweep, name or argument that cannot be accepted as given."""

    code = "invalid"
    http_status = 422


class NotFound(WmlError):
    """No such object for this account (another account's objects are not found either)."""

    code = "not_found"
    http_status = 404


class Unauthorized(WmlError):
    """A missing or unknown token."""

    code = "unauthorized"
    http_status = 401


class Forbidden(WmlError):
    """A known token asking for what only an administrator may do."""

    code = "forbidden"
    http_status = 403


class QuotaExceeded(WmlError):
    """A run asks for more GPUs than its account may ever hold."""

    code = "quota"
    http_status = 422


class Conflict(WmlError):
    """The object is not in a state that allows the operation."""

    code = "conflict"
    http_status = 409


class StorageError(WmlError):
    """Object storage refused or could not be reached; the message names bucket and endpoint."""

    code = "storage"
    http_status = 422


class BackendFull(WmlError):
    """The backend's disk is full: nothing was written; free space and try again."""

    code = "full"
    http_status = 507


class BackendUnavailable(WmlError):
    """The backend could not be reached or started."""

    code = "unavailable"
    http_status = 503


ERRORS_BY_CODE = {cls.code: cls for cls in
                  (WmlError, InvalidInput, NotFound, Unauthorized, Forbidden,
                   QuotaExceeded, Conflict, StorageError, BackendFull, BackendUnavailable)}


def error_of_answer(status: int, reason: str, body: bytes) -> WmlError:
    """The ``WmlError`` a failed answer of the backend stands for (its ``{code, message}`` body)."""
    import json
    try:
        data = json.loads(body)
        return ERRORS_BY_CODE.get(data.get("code"), WmlError)(data.get("message") or reason)
    except (ValueError, AttributeError):
        return WmlError(f"the backend answered {status} {reason}")
