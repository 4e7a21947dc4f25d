"""A lean gRPC client for unary calls: HTTP/2 frames over one asyncio connection per worker.

Why not grpc.aio: on this class of host (2 cores shared with the server) its client cost per call,
about 200 us of CPU, is most of what a worker may spend per request (tools/bench/client_cost.py
measures it beside this client). Here every call of a worker shares one HTTP/2 connection; a
request leaves as one write (HEADERS + DATA, its header block encoded once per method), and an
answer costs one parse of its frames. The server's header blocks are decoded with `hpack`
(python-hyper's HPACK implementation, the one h2 uses): the HPACK dynamic table is the part of
HTTP/2 where a small mistake corrupts every later answer, so it is not written here. Blocks made
only of indexed fields (every answer after the first few) are decoded once and then looked up.

What is implemented is what a gRPC client needs and nothing more: the connection preface,
SETTINGS (acknowledged, initial window and frame size honoured), flow control in both directions
(large tensors wait for the server's WINDOW_UPDATEs), PING replies, RST_STREAM, GOAWAY (calls the
server did not take fail as UNAVAILABLE, the next call opens a new connection), CONTINUATION,
padding, the grpc-timeout header with a local deadline, and cancellation (a cancelled call resets
its stream). Errors read as tritonclient's do: "[StatusCode.NAME] message".
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable
from urllib.parse import unquote

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
FLAG_END_STREAM = 0x1
FLAG_ACK = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8
FLAG_PRIORITY = 0x20
SETTING_ENABLE_PUSH = 2
SETTING_MAX_CONCURRENT_STREAMS = 3
SETTING_INITIAL_WINDOW_SIZE = 4
SETTING_MAX_FRAME_SIZE = 5
MAX_WINDOW = (1 << 31) - 1
DEFAULT_WINDOW = 65_535
DEFAULT_FRAME = 16_384
OUR_MAX_FRAME = (1 << 24) - 1  # answers may come in frames as large as the server likes
RECEIVE_REFILL = 1 << 30  # the connection window is topped up after this many bytes received
LARGEST_STREAM_ID = (1 << 31) - 1

# gRPC status codes (grpc/status.h) and how HTTP/2 error codes map onto them (the gRPC spec).
STATUS_NAMES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
                "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
                "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")
_RESET_STATUS = {0x0: "INTERNAL", 0x1: "INTERNAL", 0x2: "INTERNAL", 0x3: "INTERNAL", 0x4: "INTERNAL",
                 0x5: "INTERNAL", 0x6: "INTERNAL", 0x7: "UNAVAILABLE", 0x8: "CANCELLED", 0x9: "INTERNAL",
                 0xA: "INTERNAL", 0xB: "RESOURCE_EXHAUSTED", 0xC: "PERMISSION_DENIED"}
_HEADER_CACHE_LIMIT = 256


class GrpcError(Exception):
    """A call that failed: `code` is the gRPC status name, str() reads as tritonclient's errors."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"[StatusCode.{code}] {message}")
        self.code = code
        self.message = message


# -- HPACK, encoding side: literal fields without indexing, so our encoder keeps no state ----------
def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(text: bytes) -> bytes:
    return _integer(len(text), 7, 0) + text


def _literal(name_index: int, value: bytes) -> bytes:
    return _integer(name_index, 4, 0x00) + _string(value)


def _literal_new(name: bytes, value: bytes) -> bytes:
    return b"\x00" + _string(name) + _string(value)


def request_headers(path: str, authority: str) -> bytes:
    """The header block of a gRPC call: :method POST (static 3), :scheme http (static 6), :path
    (name 4), :authority (name 1), content-type (name 31), te: trailers."""
    return (b"\x83\x86" + _literal(4, path.encode()) + _literal(1, authority.encode())
            + _literal(31, b"application/grpc") + _literal_new(b"te", b"trailers"))


def timeout_header(seconds: float) -> bytes:
    """grpc-timeout: at most 8 digits, in the finest unit that fits."""
    for unit, scale in (("u", 1e6), ("m", 1e3), ("S", 1.0), ("M", 1 / 60), ("H", 1 / 3600)):
        value = max(1, int(seconds * scale + 0.999))
        if value < 100_000_000:
            return _literal_new(b"grpc-timeout", f"{value}{unit}".encode())
    return _literal_new(b"grpc-timeout", b"99999999H")


_HEAD = struct.Struct(">BHBBI")  # a frame's 9 bytes: length (high byte, low 16 bits), type, flags, stream


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return _head(len(payload), kind, flags, stream_id) + payload


def _head(length: int, kind: int, flags: int, stream_id: int) -> bytes:
    return _HEAD.pack(length >> 16, length & 0xFFFF, kind, flags, stream_id)


class _Call:
    __slots__ = ("future", "send_window", "headers", "body", "timer")

    def __init__(self, future: asyncio.Future, send_window: int) -> None:
        self.future = future
        self.send_window = send_window
        self.headers: list[tuple[bytes, bytes]] = []  # headers, then trailers
        self.body: list[bytes] = []  # DATA payloads as received
        self.timer: asyncio.TimerHandle | None = None


class _Connection(asyncio.Protocol):
    """One HTTP/2 connection; every call of its client runs on it as a stream."""

    def __init__(self, authority: str) -> None:
        self.authority = authority
        self.transport: asyncio.Transport | None = None
        self.closing = False  # GOAWAY received or connection lost: no new calls here
        self.calls: dict[int, _Call] = {}
        self._next_id = 1
        self._decoder = hpack.Decoder()
        self._header_cache: dict[bytes, list] = {}
        self._buffer = bytearray()
        self._block: tuple[int, int, bytearray] | None = None  # (stream, flags, fragments) until END_HEADERS
        self._received = 0
        self._peer_window = DEFAULT_WINDOW  # the server's initial stream window
        self._conn_window = DEFAULT_WINDOW  # what we may still send on the connection
        self._max_frame = DEFAULT_FRAME
        self._max_streams = MAX_WINDOW
        self._window_opened = asyncio.Event()  # set on WINDOW_UPDATE / SETTINGS / drain
        self._writable = True
        self._out: list[bytes | memoryview] = []  # frames waiting for the end of this loop turn
        self._loop: asyncio.AbstractEventLoop  # set by connection_made

    # -- asyncio.Protocol -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # Kept: asyncio.get_running_loop() makes a getpid() system call (fork safety) per use.
        self._loop = asyncio.get_running_loop()
        settings = struct.pack(">HIHIHI", SETTING_ENABLE_PUSH, 0, SETTING_INITIAL_WINDOW_SIZE, MAX_WINDOW,
                               SETTING_MAX_FRAME_SIZE, OUR_MAX_FRAME)
        self.transport.write(PREFACE + _frame(SETTINGS, 0, 0, settings)
                             + _frame(WINDOW_UPDATE, 0, 0, (MAX_WINDOW - DEFAULT_WINDOW).to_bytes(4, "big")))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._fail_all("UNAVAILABLE", f"connection to {self.authority} lost" + (f": {exc}" if exc else ""))
        self._window_opened.set()

    def pause_writing(self) -> None:
        self._writable = False

    def resume_writing(self) -> None:
        self._writable = True
        self._window_opened.set()

    def data_received(self, data: bytes) -> None:
        if self._buffer:
            self._buffer += data
            view: bytes | bytearray = self._buffer
        else:
            view = data
        end, pos = len(view), 0
        unpack = _HEAD.unpack_from
        try:
            with memoryview(view) as frames:  # one copy per payload, whether view is bytes or bytearray
                while end - pos >= 9:
                    high, low, kind, flags, stream_id = unpack(frames, pos)
                    length = (high << 16) | low
                    if end - pos < 9 + length:
                        break
                    payload = bytes(frames[pos + 9:pos + 9 + length])
                    pos += 9 + length
                    self._on_frame(kind, flags, stream_id & LARGEST_STREAM_ID, payload)
        except _ProtocolError as exc:
            self._abort_connection(str(exc))
            return
        if pos == end:
            self._buffer = bytearray()
        elif view is self._buffer:
            del self._buffer[:pos]
        else:
            self._buffer = bytearray(view[pos:])

    # -- frames ---------------------------------------------------------------------------------
    def _on_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._block is not None and kind != CONTINUATION:
            raise _ProtocolError("a header block was interrupted by another frame")
        if kind == DATA:
            self._on_data(flags, stream_id, payload)
        elif kind == HEADERS:
            if flags & FLAG_PADDED:
                payload = payload[1:len(payload) - payload[0]]
            if flags & FLAG_PRIORITY:
                payload = payload[5:]
            if flags & FLAG_END_HEADERS:
                self._on_headers(stream_id, flags, payload)
            else:
                self._block = (stream_id, flags, bytearray(payload))
        elif kind == CONTINUATION:
            if self._block is None or self._block[0] != stream_id:
                raise _ProtocolError("CONTINUATION without its HEADERS")
            self._block[2].extend(payload)
            if flags & FLAG_END_HEADERS:
                block_stream, block_flags, block = self._block
                self._block = None
                self._on_headers(block_stream, block_flags, bytes(block))
        elif kind == SETTINGS:
            if not flags & FLAG_ACK:
                self._on_settings(payload)
        elif kind == WINDOW_UPDATE:
            increment = int.from_bytes(payload[:4], "big") & LARGEST_STREAM_ID
            if stream_id == 0:
                self._conn_window += increment
            elif stream_id in self.calls:
                self.calls[stream_id].send_window += increment
            self._window_opened.set()
        elif kind == PING:
            if not flags & FLAG_ACK:
                self._write(_frame(PING, FLAG_ACK, 0, payload))
        elif kind == RST_STREAM:
            code = int.from_bytes(payload[:4], "big")
            self._finish(stream_id, GrpcError(_RESET_STATUS.get(code, "INTERNAL"),
                                              f"stream reset by the server (HTTP/2 error {code})"))
        elif kind == GOAWAY:
            last = int.from_bytes(payload[:4], "big") & LARGEST_STREAM_ID
            self.closing = True
            for call_id in [i for i in self.calls if i > last]:  # never processed: safe to say so
                self._finish(call_id, GrpcError("UNAVAILABLE", "the server is going away (GOAWAY)"))
        # PRIORITY and unknown frame types are ignored, as HTTP/2 requires; PUSH_PROMISE is off.

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        self._received += len(payload)
        if self._received >= RECEIVE_REFILL:
            self._write(_frame(WINDOW_UPDATE, 0, 0, self._received.to_bytes(4, "big")))
            self._received = 0
        if flags & FLAG_PADDED:
            payload = payload[1:len(payload) - payload[0]]
        call = self.calls.get(stream_id)
        if call is None:
            return  # a call given up on (deadline, cancel): its late data is dropped
        call.body.append(payload)
        if flags & FLAG_END_STREAM:
            self._complete(stream_id, call)

    def _on_headers(self, stream_id: int, flags: int, block: bytes) -> None:
        headers = self._header_cache.get(block)
        if headers is None:
            try:
                headers = self._decoder.decode(block, raw=True)
            except hpack.HPACKError as exc:
                raise _ProtocolError(f"undecodable header block: {exc}") from None
            if all(byte & 0x80 for byte in block):
                # Only one-byte indexed fields: the table is untouched, the same bytes mean the
                # same headers until a block that adds to the table clears the cache.
                if len(self._header_cache) < _HEADER_CACHE_LIMIT:
                    self._header_cache[block] = headers
            else:
                self._header_cache.clear()
        call = self.calls.get(stream_id)
        if call is None:
            return  # decoded all the same: the HPACK table must see every block
        call.headers.extend(headers)
        if flags & FLAG_END_STREAM:
            self._complete(stream_id, call)

    def _on_settings(self, payload: bytes) -> None:
        for offset in range(0, len(payload) - 5, 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if key == SETTING_INITIAL_WINDOW_SIZE:
                delta, self._peer_window = value - self._peer_window, value
                for call in self.calls.values():
                    call.send_window += delta
            elif key == SETTING_MAX_FRAME_SIZE:
                self._max_frame = value
            elif key == SETTING_MAX_CONCURRENT_STREAMS:
                self._max_streams = value
        self._write(_frame(SETTINGS, FLAG_ACK, 0))
        self._window_opened.set()

    # -- calls ----------------------------------------------------------------------------------
    def _complete(self, stream_id: int, call: _Call) -> None:
        status, message, http_status = None, b"", b""
        for name, value in call.headers:
            if name == b"grpc-status":
                status = int(value)
            elif name == b"grpc-message":
                message = value
            elif name == b":status":
                http_status = value
        if status is None:
            error = GrpcError("UNKNOWN" if http_status == b"200" else "UNAVAILABLE",
                              f"no grpc-status in the answer (HTTP status {http_status.decode() or 'none'})")
            self._finish(stream_id, error)
        elif status != 0:
            name = STATUS_NAMES[status] if status < len(STATUS_NAMES) else "UNKNOWN"
            self._finish(stream_id, GrpcError(name, unquote(message.decode(errors="replace"))))
        else:
            body = call.body[0] if len(call.body) == 1 else b"".join(call.body)
            if len(body) < 5 or body[0] != 0:
                self._finish(stream_id, GrpcError("INTERNAL", "the answer is not one uncompressed gRPC message"))
            else:
                self._finish(stream_id, None, memoryview(body)[5:5 + int.from_bytes(body[1:5], "big")])

    def _finish(self, stream_id: int, error: Exception | None, result: object = None) -> None:
        call = self.calls.pop(stream_id, None)
        if call is None:
            return
        if call.timer is not None:
            call.timer.cancel()
        if not call.future.done():
            if error is None:
                call.future.set_result(result)
            else:
                call.future.set_exception(error)
        if len(self.calls) == self._max_streams - 1:
            self._window_opened.set()

    def _fail_all(self, code: str, message: str) -> None:
        for stream_id in list(self.calls):
            self._finish(stream_id, GrpcError(code, message))

    def _abort_connection(self, reason: str) -> None:
        self.closing = True
        self._fail_all("INTERNAL", f"HTTP/2 protocol error: {reason}")
        if self.transport is not None:
            self.transport.abort()

    def _write(self, data: bytes | memoryview) -> None:
        """Queue frames; they leave together at the end of this turn of the event loop. Every
        request started in one turn (lanes woken by answers that came in one read) shares one
        send(): at 8 in flight that halves the system calls. One queue also keeps frames in the
        order they were made, which HTTP/2 needs (new streams must open in increasing order)."""
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(data)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self.transport is not None and not self.transport.is_closing() and out:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _reset(self, stream_id: int) -> None:
        """Tell the server a call is given up (RST_STREAM CANCEL), and forget it."""
        self.calls.pop(stream_id, None)
        self._write(_frame(RST_STREAM, 0, stream_id, (0x8).to_bytes(4, "big")))

    def _expire(self, stream_id: int) -> None:
        call = self.calls.get(stream_id)
        if call is not None:
            call.timer = None
            self._finish(stream_id, GrpcError("DEADLINE_EXCEEDED", "Deadline Exceeded"))
            self._write(_frame(RST_STREAM, 0, stream_id, (0x8).to_bytes(4, "big")))

    async def call(self, headers: bytes, message: bytes | memoryview, timeout: float | None) -> memoryview:
        while len(self.calls) >= self._max_streams and not self.closing:
            self._window_opened.clear()
            await self._window_opened.wait()
        if self.closing:
            raise GrpcError("UNAVAILABLE", f"connection to {self.authority} is closing")
        stream_id = self._next_id
        self._next_id += 2
        if self._next_id > LARGEST_STREAM_ID:
            self.closing = True  # stream ids ran out: the next call opens a new connection
        loop = self._loop
        call = _Call(loop.create_future(), self._peer_window)
        self.calls[stream_id] = call
        if timeout is not None:
            headers += timeout_header(timeout)
            call.timer = loop.call_later(timeout, self._expire, stream_id)
        size = len(message) + 5
        head = _frame(HEADERS, FLAG_END_HEADERS, stream_id, headers)
        prefix = b"\x00" + (size - 5).to_bytes(4, "big")
        try:
            if size <= min(self._max_frame, self._conn_window, call.send_window) and self._writable:
                self._conn_window -= size
                call.send_window -= size
                frames = b"".join((head, _head(size, DATA, FLAG_END_STREAM, stream_id), prefix, message))
                if len(self.calls) == 1 and not self._out:
                    self.transport.write(frames)  # alone in flight: nothing to share a send() with
                else:
                    self._write(frames)
            else:
                self._write(head)
                await self._send_large(stream_id, call, prefix, memoryview(message))
            return await call.future
        except asyncio.CancelledError:
            if stream_id in self.calls:
                self._reset(stream_id)
            raise

    async def _send_large(self, stream_id: int, call: _Call, prefix: bytes, message: memoryview) -> None:
        """DATA frames as the windows allow; other calls go on between them."""
        pending: list[bytes | memoryview] = [prefix, message]
        while pending:
            if self.closing or call.future.done():
                return  # the answer (an error) came already, or the connection is gone
            room = min(self._max_frame, self._conn_window, call.send_window)
            if room <= 0 or not self._writable:
                self._window_opened.clear()
                await self._window_opened.wait()
                continue
            chunk: list[bytes | memoryview] = []
            taken = 0
            while pending and taken < room:
                piece = pending[0]
                take = min(len(piece), room - taken)
                chunk.append(piece[:take])
                taken += take
                if take == len(piece):
                    pending.pop(0)
                else:
                    pending[0] = piece[take:]
            self._conn_window -= taken
            call.send_window -= taken
            flags = 0 if pending else FLAG_END_STREAM
            self._write(_head(taken, DATA, flags, stream_id))
            for piece in chunk:
                self._write(piece)
            self._flush()  # now: what waits for a window must not hold the frames before it

    def close(self) -> None:
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self._flush()
            self.transport.write(_frame(GOAWAY, 0, 0, bytes(8)))
            self.transport.close()


class _ProtocolError(Exception):
    pass


class GrpcWireClient:
    """Unary gRPC calls with raw (serialized) messages; one connection, opened on first use and
    again after it is lost."""

    def __init__(self, url: str, connect_timeout: float = 10.0) -> None:
        host, _, port = url.rpartition(":")
        self.host, self.port = host or "127.0.0.1", int(port)
        self.authority = f"{self.host}:{self.port}"
        self._connect_timeout = connect_timeout
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future | None = None
        self._headers: dict[str, bytes] = {}

    async def _open(self) -> _Connection:
        if self._connection is not None and not self._connection.closing:
            return self._connection
        if self._connecting is None:  # the first caller connects; the others wait for it
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(self.authority), self.host, self.port),
                self._connect_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise GrpcError("UNAVAILABLE", f"failed to connect to {self.authority}: {exc!r}") from None
        if self._connection is not None:
            self._connection.close()
        self._connection = protocol
        return protocol

    def unary(self, method: str, message: bytes | memoryview, timeout: float | None = None
              ) -> Awaitable[memoryview]:
        """Send one serialized request to `method` (e.g. /inference.GRPCInferenceService/ModelInfer);
        awaited, the serialized answer; GrpcError when the call fails. A plain function handing
        back the connection's coroutine: one coroutine frame less to resume per request."""
        headers = self._headers.get(method)
        if headers is None:
            headers = self._headers[method] = request_headers(method, self.authority)
        connection = self._connection
        if connection is None or connection.closing:
            return self._open_and_call(headers, message, timeout)
        return connection.call(headers, message, timeout)

    async def _open_and_call(self, headers: bytes, message: bytes | memoryview,
                             timeout: float | None) -> memoryview:
        connection = await self._open()
        return await connection.call(headers, message, timeout)

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
