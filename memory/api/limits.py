"""What a client may cost the server: time to send a request, size of its head and body.

- `LimitedHttpToolsProtocol`: uvicorn's httptools protocol (the parser `langgraph dev` and
  uvicorn's "auto" use) with a read timeout and a bounded head. uvicorn's keep-alive timer stops
  at the first byte of a request, so a client trickling its headers one byte at a time (slowloris)
  would hold its connection forever, and httptools buffers a head of any size; here a whole
  request (head and body) must arrive within `read_timeout_s` of the moment the server starts
  waiting for it, and a head over `max_header_bytes` gets 431 and a closed connection, whether it
  arrives at once or in pieces (the parser holds at most one read past the limit).
- `RequestMiddleware`: the app's one middleware (pure ASGI): bodies over `max_body_bytes` get
  413, whether announced by Content-Length or streamed; each request is counted and timed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httptools
import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _HeadTooLarge(Exception):
    pass


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` with a read timeout (`read_timeout_s`) and a head limit (`max_header_bytes`)."""

    read_timeout_s: float = 10.0
    max_header_bytes: int = 16 * 1024
    """Both set on a subclass by `with_limits` (uvicorn builds protocols from the class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_deadline: asyncio.TimerHandle | None = None
        self._reading_head = True
        self._head_bytes = 0  # bytes received since this head began (an upper bound of its size)

    @classmethod
    def with_limits(cls, *, read_timeout_s: float, max_header_bytes: int) -> type[LimitedHttpToolsProtocol]:
        attributes = {"read_timeout_s": float(read_timeout_s), "max_header_bytes": int(max_header_bytes)}
        return type("LimitedHttpToolsProtocol", (cls,), attributes)

    # -- the connection --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """uvicorn's `data_received`, counting the head's bytes and refusing a head over the limit."""
        self._unset_keepalive_if_required()
        if self._reading_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._refuse_head()
            else:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            return
        if self._reading_head and self._head_bytes > self.max_header_bytes:
            self._refuse_head()  # still no end of the head in sight

    # -- parser callbacks ------------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        if self._head_bytes > self.max_header_bytes and self._head_size() > self.max_header_bytes:
            raise _HeadTooLarge  # stops the parser; data_received answers 431
        self._reading_head = False
        self._head_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head = True
        if self.cycle.response_complete:
            self._arm()  # answered before its body was in: now waiting for the next request
        else:
            self._disarm()  # the whole request is in

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.cycle.response_complete:
            self._arm()  # waiting for the next request on this keep-alive connection

    # -- limits ----------------------------------------------------------------------------------

    def _head_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _refuse_head(self) -> None:
        self.logger.debug("refusing a request head over %s bytes", self.max_header_bytes)
        detail = f"request head over {self.max_header_bytes} bytes ([api] max_header_bytes)"
        body = orjson.dumps({"detail": detail})
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        )
        self.transport.close()

    def _arm(self) -> None:
        self._disarm()
        self._read_deadline = self.loop.call_later(self.read_timeout_s, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if not self.transport.is_closing():
            self.logger.debug("closing a connection that did not send its request within %ss", self.read_timeout_s)
            self.transport.close()


class BodyTooLarge(Exception):
    pass


class RequestMiddleware:
    """The one middleware: bodies over `max_bytes` get 413 (announced by Content-Length or
    streamed), and every answered request goes to `observe(path, method, status, seconds)`."""

    def __init__(self, app: ASGIApp, max_bytes: int, observe: Callable[[str, str, int, float], None]) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0  # none sent yet
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if _announced(scope["headers"]) > self.max_bytes:
                status = 413
                await self._too_large(send)
                return
            try:
                await self.app(scope, limited_receive, tracking_send)
            except BodyTooLarge:
                if not status:
                    status = 413
                    await self._too_large(send)
        finally:
            self.observe(scope["path"], scope["method"], status or 500, time.perf_counter() - start)

    async def _too_large(self, send: Send) -> None:
        await _refuse(send, 413, f"request body over {self.max_bytes} bytes ([api] max_body_bytes)")


def _announced(headers: list[tuple[bytes, bytes]]) -> int:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


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
