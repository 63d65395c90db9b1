"""Connection limits of `pollux serve` that the ASGI app cannot enforce itself.

Until a request's headers are complete, the app never runs, so two defences live at the HTTP
protocol (uvicorn's h11 protocol, subclassed):

* **a header read timeout** — a client that opens a connection and sends its headers slowly (or
  one byte at a time, or nothing) used to hold the connection for ever. The clock starts when the
  connection waits for a request and is not reset by bytes that arrive, so dripping does not
  help; when it runs out, a client that sent part of a request gets 408, an idle one is closed.
* **431 for oversized headers** — h11 refuses a header block over the limit; uvicorn answered
  with a bare 400 and closed at once, and closing a socket with unread bytes makes the kernel send
  a reset, so the client saw "connection reset" instead of an answer. Here the answer is 431 (JSON,
  as every other error of the server) and the connection *lingers*: the answer and a FIN go out,
  what the client still sends is read and dropped for a moment, then the socket closes.

The body read timeout is the app's (`pollux.server.app.BodyTimeout`), since the app reads bodies.
"""

from __future__ import annotations

import asyncio
import http
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

# How long a refused connection keeps reading (and dropping) what the client still sends, so the
# answer is read instead of destroyed by a reset.
LINGER_S = 2.0


class _Connection(h11.Connection):
    """h11's connection, keeping the protocol error it raised (uvicorn's handler drops it, but its
    `error_status_hint` — 431 for a header block over the limit — is the answer to send)."""

    error: h11.RemoteProtocolError | None = None

    def next_event(self) -> Any:
        try:
            return super().next_event()
        except h11.RemoteProtocolError as e:
            self.error = e
            raise


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header read timeout, 431 and lingering refusals."""

    header_timeout_s: float = 10.0  # set per server by `protocol_class`

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.max_header_bytes: int = config.h11_max_incomplete_event_size
        self.conn = self._h11 = _Connection(h11.SERVER, self.max_header_bytes)
        self._header_timer: asyncio.TimerHandle | None = None
        self._lingering = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch_headers()

    def data_received(self, data: bytes) -> None:
        if self._lingering:  # refused: what the client still sends is dropped
            return
        super().data_received(data)
        self._watch_headers()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """uvicorn calls this when h11 refuses what the client sent."""
        error = self._h11.error
        status = error.error_status_hint if error is not None else 400
        if status == 431:
            self._refuse(431, f"request headers exceed the limit of {self.max_header_bytes} bytes")
        else:
            self._refuse(status, f"invalid HTTP request: {error or msg}")

    def _watch_headers(self) -> None:
        """The header clock runs while the connection waits for a request's headers, from the
        moment it started waiting (bytes that arrive do not reset it)."""
        waiting = (self.conn.their_state is h11.IDLE and not self._lingering
                   and (self.cycle is None or self.cycle.response_complete)
                   and not self.transport.is_closing())
        if waiting and self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_timed_out)
        elif not waiting:
            self._stop_header_timer()

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if not self.conn.trailing_data[0]:  # nothing of a request yet: an idle connection
            self.transport.close()
            return
        self._refuse(408, f"request headers not received within {self.header_timeout_s:g} s")

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` with an OpenAI-shaped JSON error, then close without a reset."""
        body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "code": status}}).encode()
        head = (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
        self._lingering = True
        self._stop_header_timer()
        self._unset_keepalive_if_required()
        self.transport.write(head + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)


def protocol_class(header_timeout_s: float) -> type[GuardedH11Protocol]:
    """`GuardedH11Protocol` with this server's header timeout, for `uvicorn.Config(http=...)`."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"header_timeout_s": header_timeout_s})
