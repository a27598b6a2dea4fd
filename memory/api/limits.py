"""What a client may cost the server: time to send a request, size of its head and body.

- `ReadTimeoutH11Protocol`: uvicorn's h11 protocol with a read timeout. uvicorn's keep-alive
  timer stops at the first byte of a request, so a client trickling its headers one byte at a time
  (slowloris) would hold its connection forever; here a whole request (head and body) must arrive
  within `read_timeout_s` of the moment the server starts waiting for it, or the connection is
  closed. The head's size is bounded by h11's `max_incomplete_event_size` (uvicorn's
  `h11_max_incomplete_event_size`): larger heads get 400 and a closed connection.
- `RequestLimitsMiddleware`: heads over `max_header_bytes` get 431 (however they arrived), bodies
  over `max_body_bytes` 413, whether announced by Content-Length or streamed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol


class ReadTimeoutH11Protocol(H11Protocol):
    """`H11Protocol` closing connections whose request does not arrive within `read_timeout_s`."""

    read_timeout_s: float = 10.0
    """Set on a subclass by `with_read_timeout` (uvicorn builds protocols from the class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_deadline: asyncio.TimerHandle | None = None

    @classmethod
    def with_read_timeout(cls, seconds: float) -> type[ReadTimeoutH11Protocol]:
        return type("ReadTimeoutH11Protocol", (cls,), {"read_timeout_s": float(seconds)})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE and self.conn.their_state is not h11.SEND_BODY:
            self._disarm()  # the whole request is in (or the connection is done with)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # waiting for the next request on this keep-alive connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._read_deadline = self.loop.call_later(self.read_timeout_s, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
            self.logger.debug("closing a connection that did not send its request within %ss", self.read_timeout_s)
            self.transport.close()


class BodyTooLarge(Exception):
    pass


class RequestLimitsMiddleware:
    """Refuse request heads over `max_header_bytes` (431) and bodies over `max_bytes` (413).

    h11's buffer limit only bounds a head that arrives in pieces; a large head arriving in one read
    is parsed whole, so its size is checked here too.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, max_header_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        head = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        head += sum(len(name) + len(value) + 4 for name, value in scope["headers"])
        if head > self.max_header_bytes:
            await _refuse(send, 431, f"request head over {self.max_header_bytes} bytes ([api] max_header_bytes)")
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    announced = int(value)
                except ValueError:
                    announced = 0
                if announced > self.max_bytes:
                    await self._too_large(send)
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._too_large(send)

    async def _too_large(self, send: Send) -> None:
        await _refuse(send, 413, f"request body over {self.max_bytes} bytes ([api] max_body_bytes)")


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = orjson.dumps({"detail": detail})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})
