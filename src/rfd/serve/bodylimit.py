"""ASGI middleware that refuses request bodies over a size limit before they are read in full.

A declared Content-Length over the limit is refused at once (nothing is read). A body without one (chunked)
is read up to the limit and refused as soon as it passes it; a body that trickles in slower than the timeout
is refused with 408. Accepted bodies are handed to the app unchanged.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

__all__ = ["BodyLimitMiddleware"]

Scope = dict[str, Any]
Message = dict[str, Any]


async def _send_error(send: Any, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Refuse HTTP request bodies larger than ``max_body`` bytes (413) or slower than ``timeout`` seconds (408)."""

    def __init__(self, app: Any, *, max_body: int, timeout: float) -> None:
        self.app = app
        self.max_body = max_body
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _send_error(send, 400, f"Content-Length {declared[:40]!r} is not a number")
                return
            if size > self.max_body:
                await _send_error(send, 413, f"request body of {size} bytes is over this server's limit of "
                                             f"{self.max_body} bytes; send fewer images per request")
                return
        chunks: list[bytes] = []
        total = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), timeout=max(deadline - loop.time(), 0.0))
            except asyncio.TimeoutError:
                await _send_error(send, 408, f"request body not received within {self.timeout:g} s")
                return
            if message["type"] == "http.disconnect":
                return  # the client left; nobody to answer
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_body:
                await _send_error(send, 413, f"request body is over this server's limit of {self.max_body} bytes; "
                                             "send fewer images per request")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would

        await self.app(scope, replay, send)
