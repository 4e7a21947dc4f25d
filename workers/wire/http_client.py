"""A minimal HTTP/1.1 keep-alive client (asyncio): a connection that sends a whole prebuilt request and
reads its answer into a reused buffer (HttpConnection, one per perf lane), and a pool of them for the
stress workers' many requests in flight (HttpClient).

Why not aiohttp or tritonclient.http.aio: on a small machine the client shares the CPU with the
server, and every client microsecond is taken from what is measured. Sending prebuilt request bytes
and receiving straight into a preallocated buffer (asyncio.BufferedProtocol) costs a fraction of the
client CPU per request of aiohttp with the same prebuilt body, and of tritonclient.http.aio (which
also rebuilds the body per request); with large tensors aiohttp even stalls on delayed ACKs. PERF.md
("The client") has the figures. Triton's HTTP server always answers with Content-Length framing,
which is all this parser reads; anything else is reported as a protocol error, never guessed at.
"""

from __future__ import annotations

import asyncio
import time

MAX_HEAD = 16 * 1024  # a response head longer than this is not Triton's
MAX_BODY = 1 << 32  # an answer larger than this is a broken header, not a tensor
_CONTENT_LENGTH = b"\r\ncontent-length:"
_JSON_SIZE = b"\r\ninference-header-content-length:"


class HttpProtocolError(ConnectionError):
    """The server's answer could not be read as HTTP/1.1 with Content-Length framing."""


def _header_int(head: bytes, name: bytes) -> int | None:
    at = head.find(name)
    if at < 0:
        return None
    start = at + len(name)
    end = head.find(b"\r\n", start)
    try:
        return int(head[start:end if end >= 0 else None])
    except ValueError:
        raise HttpProtocolError(f"bad {name[2:-1].decode()} header") from None


class HttpConnection(asyncio.BufferedProtocol):
    """One TCP connection. `request(data)` writes a complete request and returns a future of the
    status; the body stays in the connection's own buffer (`body()`) until the next request."""

    def __init__(self, capacity: int = 64 * 1024) -> None:
        self._buffer = bytearray(max(capacity, 4096))
        self._view = memoryview(self._buffer)
        self._filled = 0
        self._body_start = -1
        self._end = -1  # where the current response ends; -1 while its head is incomplete
        self._waiter: asyncio.Future[int] | None = None
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._keep_alive = True
        self.closed = True
        self.status = 0
        self.json_size: int | None = None  # Inference-Header-Content-Length of the last answer
        self.arrived_ns = 0  # monotonic time the last byte of the last answer arrived

    @classmethod
    async def open(cls, host: str, port: int, capacity: int = 64 * 1024, timeout: float = 10.0) -> HttpConnection:
        loop = asyncio.get_running_loop()
        _, connection = await asyncio.wait_for(loop.create_connection(lambda: cls(capacity), host, port), timeout)
        return connection  # type: ignore[return-value]

    # -- asyncio protocol callbacks ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._loop = asyncio.get_running_loop()
        self.closed = False  # asyncio sets TCP_NODELAY on TCP sockets itself

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._filled == len(self._buffer):
            self._grow(2 * len(self._buffer))
        return self._view[self._filled:]

    def buffer_updated(self, nbytes: int) -> None:
        self._filled += nbytes
        if self._waiter is None or self._waiter.done():
            self._fail(HttpProtocolError("the server sent bytes no request asked for"))
            return
        if self._end < 0:
            head_end = self._buffer.find(b"\r\n\r\n", 0, self._filled)
            if head_end < 0:
                if self._filled > MAX_HEAD:
                    self._fail(HttpProtocolError(f"no end of the response head within {MAX_HEAD} bytes"))
                return
            try:
                self._read_head(head_end)
            except HttpProtocolError as exc:
                self._fail(exc)
                return
        if self._filled >= self._end:
            if self._filled > self._end:
                self._fail(HttpProtocolError("the server sent more bytes than its Content-Length"))
                return
            self.arrived_ns = time.monotonic_ns()
            self._waiter.set_result(self.status)
            if not self._keep_alive and self._transport is not None:
                self._transport.close()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError(f"connection lost: {exc or 'closed by the server'}"))

    # -- use -----------------------------------------------------------------------------------
    def request(self, data: bytes) -> asyncio.Future[int]:
        """Send `data` (a whole request); the future gives the answer's status code."""
        if self.closed or self._transport is None or self._loop is None:
            raise ConnectionError("the connection is closed")
        self._filled, self._end, self._body_start = 0, -1, -1
        self._waiter = self._loop.create_future()
        self._transport.write(data)
        return self._waiter

    def body(self) -> memoryview:
        """The last answer's body (valid until the next request)."""
        return self._view[self._body_start:self._end]

    def abort(self, reason: str) -> None:
        """Fail the request in flight with `reason` and drop the connection (a timed-out answer
        may still arrive: it must not be read as the next request's)."""
        self._fail(ConnectionError(reason))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self.closed = True

    # -- internals -----------------------------------------------------------------------------
    def _read_head(self, head_end: int) -> None:
        head = bytes(self._view[:head_end]).lower()
        if not head.startswith(b"http/1.") or len(head) < 12 or not head[9:12].isdigit():
            raise HttpProtocolError(f"not an HTTP/1.x status line: {head[:40]!r}")
        self.status = int(head[9:12])
        length = _header_int(head, _CONTENT_LENGTH)
        if length is None:
            if b"\r\ntransfer-encoding:" in head:
                raise HttpProtocolError("chunked answers are not supported (Triton sends Content-Length)")
            length = 0  # a bodiless answer (204, 304)
        self.json_size = _header_int(head, _JSON_SIZE)
        self._keep_alive = b"\r\nconnection: close" not in head
        if not 0 <= length <= MAX_BODY:
            raise HttpProtocolError(f"Content-Length {length} is out of range (0 to {MAX_BODY})")
        self._body_start = head_end + 4
        self._end = self._body_start + length
        if self._end > len(self._buffer):
            self._grow(self._end)

    def _grow(self, size: int) -> None:
        # A new buffer: the old one may still be pinned by the slice asyncio is filling.
        bigger = bytearray(size)
        view = memoryview(bigger)
        view[:self._filled] = self._view[:self._filled]
        self._buffer, self._view = bigger, view

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self.close()



class HttpClient:
    """Keep-alive connections to one server, one request in flight on each (HTTP/1.1 has no
    multiplexing): a request takes an idle connection or opens one, and gives it back once its
    answer has been read. A request that fails or is given up on (its timeout, a cancellation)
    closes its connection: a late answer must never be read as the next request's."""

    def __init__(self, url: str, connect_timeout: float = 10.0, max_idle: int = 64) -> None:
        address = url.split("://", 1)[-1].rstrip("/")
        host, _, port = address.rpartition(":")
        self.host = address
        self._address = (host.strip("[]") or "127.0.0.1", int(port))  # "[::1]:8000" connects to ::1
        self._connect_timeout = connect_timeout
        self._max_idle = max_idle
        self._idle: list[HttpConnection] = []

    async def send(self, data: bytes, timeout: float | None = None) -> tuple[int, bytes, int | None]:
        """(status, body, the body's JSON header size) of the answer to a whole request `data`."""
        connection = None
        while self._idle and connection is None:
            candidate = self._idle.pop()
            if not candidate.closed:
                connection = candidate
        if connection is None:
            try:
                connection = await HttpConnection.open(*self._address, timeout=self._connect_timeout)
            except (TimeoutError, OSError) as exc:
                # aiohttp's words: what the worker reads as "no server listens" (worker.server_unreachable)
                raise ConnectionError(f"Cannot connect to host {self.host}: {exc!r}") from None
        try:
            answer = connection.request(data)
            status = await (asyncio.wait_for(answer, timeout) if timeout else answer)
        except BaseException:
            connection.close()
            raise
        body, json_size = bytes(connection.body()), connection.json_size  # the buffer is the next answer's
        if not connection.closed and len(self._idle) < self._max_idle:
            self._idle.append(connection)
        else:
            connection.close()
        return status, body, json_size

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
