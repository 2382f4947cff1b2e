"""Bounds on a request's head (request line and headers), for every HTTP process.

uvicorn's httptools parser takes headers of any size and number: one 64 MB header is read
into memory before the app is asked anything. This protocol counts the bytes of each
request's head as they arrive and its header fields as they are parsed, and past either
bound answers 431 (a problem+json body) and closes the connection, before the app runs."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from postroom.problems import REQUEST_HEADER_TOO_LARGE

MAX_HEAD_BYTES = 32 * 1024  # the request line and every header field, together
MAX_HEADER_FIELDS = 100
# How long a refused connection is drained before it is closed.
_LINGER = 2.0

_PROBLEM = json.dumps(
    {
        "type": REQUEST_HEADER_TOO_LARGE.uri,
        "title": REQUEST_HEADER_TOO_LARGE.title,
        "status": REQUEST_HEADER_TOO_LARGE.status,
        "detail": (
            f"The request line and headers must stay within {MAX_HEAD_BYTES} bytes and "
            f"{MAX_HEADER_FIELDS} fields."
        ),
    }
).encode()
_ANSWER = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: application/problem+json\r\n"
    b"content-length: " + str(len(_PROBLEM)).encode() + b"\r\n"
    b"connection: close\r\n\r\n" + _PROBLEM
)


class BoundedHeadProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing heads past MAX_HEAD_BYTES or MAX_HEADER_FIELDS
    with a 431 before the request reaches the app. Bodies are not counted here."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._fields = 0
        self._parsed = 0
        self._refused = False

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # Still in the head after this chunk: all of it was head (at most one chunk more
        # than the bound is ever held).
        if not self._refused and self._in_head and self._head_bytes > MAX_HEAD_BYTES:
            self._refuse()

    # Once refused, the rest of what the parser reads in the same chunk is ignored: there is
    # no request cycle for it.
    def on_url(self, url: bytes) -> None:
        if not self._refused:
            super().on_url(url)

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        self._fields = 0
        self._parsed = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refused:
            return
        self._fields += 1
        self._parsed += len(name) + len(value) + 4  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        # The head as parsed (a head that arrived whole in one chunk is only measured here).
        if self._fields > MAX_HEADER_FIELDS or len(self.url) + self._parsed > MAX_HEAD_BYTES:
            self._refuse()
            return
        super().on_headers_complete()

    def _refuse(self) -> None:
        """Answer 431, then keep reading (and dropping) what the client still sends for a
        moment before closing: closing with its data unread would reset the connection, and
        the client could lose the answer."""
        self._refused = True
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(_ANSWER)
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(_LINGER, transport.close)
