"""A cap on request bodies, so that no request makes the backend hold more than it would accept."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """ASGI middleware: a request whose body is over ``limit`` bytes, as declared (Content-Length)
    or as sent (chunked), gets 413 as soon as the app reads it, before the rest is received."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        received = int(declared) if declared.isdigit() else 0

        async def limited() -> Message:
            nonlocal received
            if received > self.limit:  # declared too long: refused before any of it is read
                raise self._too_large()
            message = await receive()
            if not declared:
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise self._too_large()
            return message

        await self.app(scope, limited, send)

    def _too_large(self) -> HTTPException:
        return HTTPException(413, f"the request body is over the limit of {self.limit >> 20} MiB")
