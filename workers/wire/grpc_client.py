"""A lean gRPC client for unary calls and bidirectional streams: HTTP/2 frames over one asyncio
connection per worker.

Why not grpc.aio: on a small host shared with the server its client CPU per call is most of what a
worker may spend per request (tools/bench/client_cost.py measures it beside this client; BENCHMARKS.md
has the figures). Here every call of a worker shares one HTTP/2 connection; a
request leaves as one write (HEADERS + DATA, its header block encoded once per method), and an
answer costs one parse of its frames. The server's header blocks are decoded with `hpack`
(python-hyper's HPACK implementation, the one h2 uses): the HPACK dynamic table is the part of
HTTP/2 where a small mistake corrupts every later answer, so it is not written here. Blocks made
only of indexed fields (every answer after the first few) are decoded once and then looked up.
Frame heads, the request header block and the status tables live in workers/wire/grpc_frames.py.

What is implemented is what a gRPC client needs and nothing more: the connection preface,
SETTINGS (acknowledged; initial window, frame size and concurrent streams honoured), flow control
in both directions (large tensors wait for the server's WINDOW_UPDATEs; a window pushed past
2^31-1 fails the stream or the connection), PING replies, RST_STREAM, CONTINUATION, padding, the
grpc-timeout header with a local deadline, and cancellation (a cancelled call resets its stream
and frees its slot for a call waiting on MAX_CONCURRENT_STREAMS). A worker runs for days, so
a connection is also replaced without failing calls:

- stream ids run out (2^30 calls on one connection): the next call opens a new connection beside
  the old one, which finishes the calls it carries and then closes (drains);
- GOAWAY: streams up to its last-stream-id finish on the old connection; the ones above it were
  never processed by the server and are sent again on a new connection (so is a stream refused
  with REFUSED_STREAM); new calls go to the new connection;
- a half-open peer: while calls are in flight and nothing has come for KEEPALIVE_S, a PING goes
  out; no answer within KEEPALIVE_TIMEOUT_S fails the connection's calls as UNAVAILABLE and the
  next call opens a new connection. One timer per connection, no work per call. No PING on an
  idle connection, none sooner than a gRPC server accepts (PING_SPACING_WITHOUT_DATA_S), and
  half as many after a GOAWAY "too_many_pings".

A malformed answer fails that call only (INTERNAL; its stream is reset if still open); what
breaks the connection itself (an undecodable header block, since the HPACK table is shared; a
frame of the wrong size; a flow-control overflow on the connection) sends GOAWAY, fails every call
on it as UNAVAILABLE with the reason, and the next call reconnects. Errors read as tritonclient's
do: "[StatusCode.NAME] message".
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import Awaitable
from urllib.parse import unquote

import hpack

from .grpc_frames import (
    CANCEL,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    DATA_MESSAGE_HEAD,
    DEFAULT_FRAME,
    DEFAULT_WINDOW,
    ENHANCE_YOUR_CALM,
    FLAG_ACK,
    FLAG_END_HEADERS,
    FLAG_END_STREAM,
    FLAG_PADDED,
    FLAG_PRIORITY,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEAD,
    HEADERS,
    HTTP_STATUS,
    INTERNAL_ERROR,
    LARGEST_STREAM_ID,
    MAX_WINDOW,
    NO_ERROR,
    OUR_MAX_FRAME,
    PING,
    PREFACE,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RESET_STATUS,
    RST_STREAM,
    SETTING_ENABLE_PUSH,
    SETTING_INITIAL_WINDOW_SIZE,
    SETTING_MAX_CONCURRENT_STREAMS,
    SETTING_MAX_FRAME_SIZE,
    SETTINGS,
    STATUS_NAMES,
    WINDOW_UPDATE,
    error_name,
    frame,
    goaway,
    head,
    request_headers,
    reset,
    timeout_header,
)

RECEIVE_REFILL = 1 << 30  # the connection window is topped up after this many bytes received
_HEADER_CACHE_LIMIT = 256
# Keepalive (gRFC A8). Pings go out only while calls are in flight: gRPC servers answer pings on
# an idle connection, or too many without data, with GOAWAY ENHANCE_YOUR_CALM "too_many_pings".
KEEPALIVE_S = 20.0  # silence, with calls in flight, before a PING
KEEPALIVE_TIMEOUT_S = 20.0  # how long the PING (or any frame) may take to come back
# grpc-core servers strike a ping that comes sooner than this after the previous one unless they
# sent DATA or HEADERS in between (GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5 min;
# three strikes and the connection is closed): a long call on a silent server is pinged this
# seldom after its first PING was answered.
PING_SPACING_WITHOUT_DATA_S = 330.0
# A call the server never processed goes to another connection at most this many times.
MAX_REROUTES = 2
# A stream the client half-closed and no longer reads is reset if the server has not ended it by then.
HALF_CLOSED_LINGER_S = 30.0


class GrpcError(Exception):
    """A call that failed: `code` is the gRPC status name, str() reads as tritonclient's errors."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"[StatusCode.{code}] {message}")
        self.code = code
        self.message = message


class _Unprocessed(Exception):
    """A call the server certainly did not process (a stream above a GOAWAY's last-stream-id, or
    refused with REFUSED_STREAM, RFC 9113 section 8.7): it may be sent again elsewhere."""


class _ProtocolError(Exception):
    """The connection can no longer be trusted: `code` is the HTTP/2 error its GOAWAY carries."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class _StreamError(_ProtocolError):
    """One stream's frames make no sense; the connection and its other streams go on."""

    def __init__(self, stream_id: int, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.stream_id = stream_id


class _Call:
    __slots__ = ("future", "send_window", "headers", "body", "timer")

    def __init__(self, future: asyncio.Future, send_window: int) -> None:
        self.future = future
        self.send_window = send_window
        self.headers: list[tuple[bytes, bytes]] = []  # headers, then trailers
        self.body: list[bytes] = []  # DATA payloads as received
        self.timer: asyncio.TimerHandle | None = None


class _StreamCall(_Call):
    """A bidirectional stream: its messages are handed out as each one completes; `future` is its
    end (None when the server's trailers said OK, else the error)."""

    __slots__ = ("inbox", "partial", "reader")

    def __init__(self, future: asyncio.Future, send_window: int) -> None:
        super().__init__(future, send_window)
        self.inbox: deque[bytes | memoryview] = deque()  # complete messages not read yet
        self.partial = bytearray()  # the start of a message whose end has not come yet
        self.reader: asyncio.Future | None = None  # a read() waiting for the next message or the end

    def wake(self) -> None:
        reader = self.reader
        if reader is not None and not reader.done():
            reader.set_result(None)


def _status_error(call: _Call) -> GrpcError | None:
    """What an ended call's headers and trailers say: None for grpc-status 0, else the error."""
    status, message, http_status = None, b"", b""
    for name, value in call.headers:
        if name == b"grpc-status":
            status = value
        elif name == b"grpc-message":
            message = value
        elif name == b":status":
            http_status = value
    if status is None:
        if http_status and not (len(http_status) == 3 and http_status.isdigit()):
            return GrpcError("INTERNAL", f"the answer's :status {http_status!r} is not an HTTP status")
        code = "UNKNOWN" if http_status == b"200" else HTTP_STATUS.get(http_status, "UNKNOWN")
        return GrpcError(code, f"no grpc-status in the answer (HTTP status {http_status.decode() or 'none'})")
    if not status.isdigit():
        return GrpcError("INTERNAL", f"the answer's grpc-status {status!r} is not a number")
    if status != b"0":
        number = int(status)
        name = STATUS_NAMES[number] if number < len(STATUS_NAMES) else "UNKNOWN"
        return GrpcError(name, unquote(message.decode(errors="replace")))
    return None


def _says_ok(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a header block's last grpc-status is 0: the end of a call that went well, whatever
    came before it (the last grpc-status is the one `_status_error` reads)."""
    status = None
    for name, value in headers:
        if name == b"grpc-status":
            status = value
    return status == b"0"


def _outcome(call: _Call) -> tuple[GrpcError | None, memoryview | None]:
    """What a complete unary answer says: an error, or the serialized message."""
    error = _status_error(call)
    if error is not None:
        return error, None
    return _message(call)


def _message(call: _Call) -> tuple[GrpcError | None, memoryview | None]:
    """The serialized message of a unary answer whose status is OK (or the error its body is)."""
    body = call.body[0] if len(call.body) == 1 else b"".join(call.body)
    if len(body) < 5 or body[0] != 0:
        return GrpcError("INTERNAL", "the answer is not one uncompressed gRPC message"), None
    size = int.from_bytes(body[1:5], "big")
    if len(body) != 5 + size:
        return GrpcError("INTERNAL", f"the answer's message says {size} bytes but {len(body) - 5} came"), None
    return None, memoryview(body)[5:]


class _Connection(asyncio.Protocol):
    """One HTTP/2 connection; the calls of its client run on it as streams until it stops taking
    new ones (`closing`), then it closes once its last call has ended."""

    def __init__(self, owner: GrpcWireClient) -> None:
        self._owner = owner
        self.authority = owner.authority
        self.transport: asyncio.Transport | None = None
        self.closing = False  # no new streams here: ids ran out, GOAWAY, closed or failed
        self.dead = False  # lost or failed: no frame is read or written any more
        self.calls: dict[int, _Call] = {}
        self._next_id = 1
        self._max_stream_id = owner._max_stream_id
        self._decoder = hpack.Decoder()
        # block -> (its headers, whether it says grpc-status 0): see _on_headers
        self._header_cache: dict[bytes, tuple[list, bool]] = {}
        self._buffer = bytearray()
        self._block: tuple[int, int, bytearray] | None = None  # (stream, flags, fragments) until END_HEADERS
        self._received = 0
        self._peer_window = DEFAULT_WINDOW  # the server's initial stream window
        self._conn_window = DEFAULT_WINDOW  # what we may still send on the connection
        self._max_frame = DEFAULT_FRAME
        self._max_streams = MAX_WINDOW
        self._changed = asyncio.Event()  # a window opened, a stream slot freed, the connection closed
        self._waiters = 0  # coroutines waiting for _changed
        self._writable = True
        self._out: list[bytes | memoryview] = []  # frames waiting for the end of this loop turn
        self._loop: asyncio.AbstractEventLoop  # set by connection_made
        # keepalive: one timer, re-armed by itself
        self._keepalive: asyncio.TimerHandle | None = None
        self._heard_at = 0.0  # loop time of the last bytes received
        self._ping_sent_at: float | None = None  # our PING waiting for an answer
        self._last_ping_at = float("-inf")
        self._data_seen = True  # HEADERS came since our last PING: the server reset its ping strikes

    # -- asyncio.Protocol -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # Kept: asyncio.get_running_loop() makes a getpid() system call (fork safety) per use.
        self._loop = asyncio.get_running_loop()
        settings = struct.pack(">HIHIHI", SETTING_ENABLE_PUSH, 0, SETTING_INITIAL_WINDOW_SIZE, MAX_WINDOW,
                               SETTING_MAX_FRAME_SIZE, OUR_MAX_FRAME)
        self.transport.write(PREFACE + frame(SETTINGS, 0, 0, settings)
                             + frame(WINDOW_UPDATE, 0, 0, (MAX_WINDOW - DEFAULT_WINDOW).to_bytes(4, "big")))
        self._heard_at = self._loop.time()
        self._arm(self._owner._keepalive_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = self.dead = True
        self._stop_keepalive()
        self._fail_all("UNAVAILABLE", f"connection to {self.authority} lost" + (f": {exc}" if exc else ""))
        self._wake()
        self._owner._connections.discard(self)

    def pause_writing(self) -> None:
        self._writable = False

    def resume_writing(self) -> None:
        self._writable = True
        self._wake()

    def data_received(self, data: bytes) -> None:
        if self.dead:
            return
        self._heard_at = self._loop.time()
        if self._buffer:
            self._buffer += data
            view: bytes | bytearray = self._buffer
        else:
            view = data
        end, pos = len(view), 0
        unpack = HEAD.unpack_from
        try:
            # One copy per payload: a slice of bytes is one; of a bytearray, through a memoryview
            # (released before the buffer is cut: a bytearray with a view on it cannot be resized).
            frames = view if type(view) is bytes else memoryview(view)
            try:
                while end - pos >= 9:
                    high, low, kind, flags, stream_id = unpack(frames, pos)
                    length = (high << 16) | low
                    if end - pos < 9 + length:
                        break
                    payload = frames[pos + 9:pos + 9 + length]
                    if type(payload) is not bytes:
                        payload = bytes(payload)
                    pos += 9 + length
                    try:
                        self._on_frame(kind, flags, stream_id & LARGEST_STREAM_ID, payload)
                    except _StreamError as exc:
                        self._stream_error(exc.stream_id, exc.code, exc.reason)
            finally:
                if frames is not view:
                    frames.release()
        except _ProtocolError as exc:
            self._connection_error(exc.code, exc.reason)
            return
        except Exception as exc:  # a case not foreseen: it must not escape into the transport
            self._connection_error(INTERNAL_ERROR, f"unexpected {exc!r} while reading frames")
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
            raise _ProtocolError(PROTOCOL_ERROR, "a header block was interrupted by another frame")
        if kind == DATA:
            self._on_data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._on_headers_frame(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:  # one per request at least: asked before the rarer kinds
            self._on_window_update(stream_id, payload)
        elif kind == CONTINUATION:
            if self._block is None or self._block[0] != stream_id:
                raise _ProtocolError(PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
            self._block[2].extend(payload)
            if flags & FLAG_END_HEADERS:
                block_stream, block_flags, block = self._block
                self._block = None
                self._on_headers(block_stream, block_flags, bytes(block))
        elif kind == SETTINGS:
            self._on_settings(flags, stream_id, payload)
        elif kind == PING:
            _control(stream_id, payload, 8, "PING")
            if not flags & FLAG_ACK:
                self._write(frame(PING, FLAG_ACK, 0, payload))
            # an ACK needs nothing more: data_received noted that the server answers
        elif kind == RST_STREAM:
            self._on_reset(stream_id, payload)
        elif kind == GOAWAY:
            self._on_goaway(stream_id, payload)
        elif kind == PUSH_PROMISE:
            raise _ProtocolError(PROTOCOL_ERROR, "PUSH_PROMISE although push is disabled")
        # PRIORITY and unknown frame types are ignored, as HTTP/2 requires.

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        size = len(payload)
        self._received += size  # flow control counts the whole frame, padding included
        if self._received >= RECEIVE_REFILL:
            self._write(frame(WINDOW_UPDATE, 0, 0, self._received.to_bytes(4, "big")))
            self._received = 0
        if flags & FLAG_PADDED:
            if not size or payload[0] >= size:
                raise _StreamError(stream_id, PROTOCOL_ERROR,
                                   f"a DATA frame of {size} bytes cannot hold {payload[0] if size else 'its'} "
                                   "bytes of padding")
            payload = payload[1:size - payload[0]]
        call = self.calls.get(stream_id)
        if call is None:
            if stream_id == 0:
                raise _ProtocolError(PROTOCOL_ERROR, "DATA on stream 0")
            return  # a call given up on (deadline, cancel): its late data is dropped
        if type(call) is _StreamCall:
            self._stream_data(stream_id, call, payload)
        else:
            call.body.append(payload)
        if flags & FLAG_END_STREAM:
            self._complete(stream_id, call)

    def _stream_data(self, stream_id: int, call: _StreamCall, payload: bytes) -> None:
        """A stream's DATA: the gRPC messages it completes go to the stream's inbox."""
        self._data_seen = True  # the server sent data: its ping strikes start over (see keepalive)
        if not call.partial and len(payload) >= 5 and payload[0] == 0 \
                and int.from_bytes(payload[1:5], "big") == len(payload) - 5:
            call.inbox.append(memoryview(payload)[5:])  # the usual case: one whole message per frame
        else:
            partial = call.partial
            partial += payload
            while len(partial) >= 5:
                if partial[0] != 0:
                    raise _StreamError(stream_id, PROTOCOL_ERROR, "a stream message is compressed, or not a "
                                                                  "gRPC message")
                end = 5 + int.from_bytes(partial[1:5], "big")
                if len(partial) < end:
                    break
                call.inbox.append(bytes(partial[5:end]))
                del partial[:end]
        if call.inbox:
            call.wake()

    def _on_headers_frame(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise _ProtocolError(PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & FLAG_PADDED:
            if not payload or payload[0] >= len(payload):
                # Where the block ends is unknown, so the shared HPACK table cannot follow it.
                raise _ProtocolError(PROTOCOL_ERROR, f"a HEADERS frame of {len(payload)} bytes with more "
                                                       "padding than that")
            payload = payload[1:len(payload) - payload[0]]
        if flags & FLAG_PRIORITY:
            if len(payload) < 5:
                raise _ProtocolError(FRAME_SIZE_ERROR, "a HEADERS frame too short for its priority")
            payload = payload[5:]
        if flags & FLAG_END_HEADERS:
            self._on_headers(stream_id, flags, payload)
        else:
            self._block = (stream_id, flags, bytearray(payload))

    def _on_headers(self, stream_id: int, flags: int, block: bytes) -> None:
        cached = self._header_cache.get(block)
        if cached is None:
            try:
                headers = self._decoder.decode(block, raw=True)
            except Exception as exc:  # hpack.HPACKError and anything else: the shared table is lost
                raise _ProtocolError(COMPRESSION_ERROR, f"undecodable header block: {exc!r}") from None
            cached = (headers, _says_ok(headers))
            if all(byte & 0x80 for byte in block):
                # Only one-byte indexed fields: the table is untouched, the same bytes mean the
                # same headers until a block that adds to the table clears the cache.
                if len(self._header_cache) < _HEADER_CACHE_LIMIT:
                    self._header_cache[block] = cached
            else:
                self._header_cache.clear()
        headers, says_ok = cached
        self._data_seen = True
        call = self.calls.get(stream_id)
        if call is None:
            return  # decoded all the same: the HPACK table must see every block
        if not flags & FLAG_END_STREAM:
            call.headers.extend(headers)
        elif says_ok and type(call) is _Call:
            # The usual end of a unary call: trailers whose grpc-status 0 settles its status (the
            # last one counts), so the headers need not be kept and read again (per request).
            self._complete(stream_id, call, status_ok=True)
        else:
            call.headers.extend(headers)
            self._complete(stream_id, call)

    def _on_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise _ProtocolError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & FLAG_ACK:
            if payload:
                raise _ProtocolError(FRAME_SIZE_ERROR, "a SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise _ProtocolError(FRAME_SIZE_ERROR, f"a SETTINGS frame of {len(payload)} bytes")
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if key == SETTING_INITIAL_WINDOW_SIZE:
                self._set_initial_window(value)
            elif key == SETTING_MAX_FRAME_SIZE:
                if not DEFAULT_FRAME <= value <= OUR_MAX_FRAME:
                    raise _ProtocolError(PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value}")
                self._max_frame = value
            elif key == SETTING_MAX_CONCURRENT_STREAMS:
                self._max_streams = value
        self._write(frame(SETTINGS, FLAG_ACK, 0))
        self._wake()

    def _set_initial_window(self, value: int) -> None:
        """Every open stream's send window moves by the change; it may go below zero (RFC 9113
        section 6.9.2), and then the stream sends nothing until WINDOW_UPDATEs lift it."""
        if value > MAX_WINDOW:
            raise _ProtocolError(FLOW_CONTROL_ERROR, f"SETTINGS_INITIAL_WINDOW_SIZE {value} is above 2^31-1")
        delta, self._peer_window = value - self._peer_window, value
        for call in self.calls.values():
            call.send_window += delta
            if call.send_window > MAX_WINDOW:
                raise _ProtocolError(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE took a stream's send "
                                                           "window above 2^31-1")

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ProtocolError(FRAME_SIZE_ERROR, f"a WINDOW_UPDATE frame of {len(payload)} bytes")
        increment = int.from_bytes(payload, "big") & LARGEST_STREAM_ID
        if stream_id == 0:
            if not increment:
                raise _ProtocolError(PROTOCOL_ERROR, "a connection WINDOW_UPDATE of 0")
            self._conn_window += increment
            if self._conn_window > MAX_WINDOW:
                raise _ProtocolError(FLOW_CONTROL_ERROR, f"a WINDOW_UPDATE took the connection's send window "
                                                           f"to {self._conn_window}, above 2^31-1")
        else:
            call = self.calls.get(stream_id)
            if call is None:
                return  # a stream already closed: updates may still be on their way
            if not increment:
                raise _StreamError(stream_id, PROTOCOL_ERROR, "a stream WINDOW_UPDATE of 0")
            call.send_window += increment
            if call.send_window > MAX_WINDOW:
                raise _StreamError(stream_id, FLOW_CONTROL_ERROR, f"a WINDOW_UPDATE took the stream's send "
                                                                  f"window to {call.send_window}, above 2^31-1")
        self._wake()

    def _on_reset(self, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise _ProtocolError(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise _ProtocolError(FRAME_SIZE_ERROR, f"a RST_STREAM frame of {len(payload)} bytes")
        code = int.from_bytes(payload, "big")
        if code == REFUSED_STREAM:
            self._finish(stream_id, _Unprocessed("the server refused the stream (REFUSED_STREAM)"))
        else:
            self._finish(stream_id, GrpcError(RESET_STATUS.get(code, "INTERNAL"),
                                              f"stream reset by the server ({error_name(code)})"))

    def _on_goaway(self, stream_id: int, payload: bytes) -> None:
        """Graceful or not, streams up to the last id the server names run to their end here;
        the ones above it were never processed (RFC 9113 section 6.8) and go elsewhere."""
        _control(stream_id, payload, 8, "GOAWAY", exact=False)
        last = int.from_bytes(payload[:4], "big") & LARGEST_STREAM_ID
        code = int.from_bytes(payload[4:8], "big")
        debug = payload[8:]
        if code == ENHANCE_YOUR_CALM and debug == b"too_many_pings":
            self._owner._keepalive_s *= 2  # gRFC A8: the server wants fewer pings
        self._stop_new_streams()
        reason = f"the server is going away (GOAWAY {error_name(code)}" + (
            f" {debug[:200].decode(errors='replace')!r}" if debug else "") + f", last stream {last})"
        for call_id in [i for i in self.calls if i > last]:
            self._finish(call_id, _Unprocessed(reason))
        if not self.calls:
            self.close()

    # -- calls ----------------------------------------------------------------------------------
    def _complete(self, stream_id: int, call: _Call, status_ok: bool = False) -> None:
        """A call's last frame came (`status_ok`: its last header block said grpc-status 0)."""
        if type(call) is _StreamCall:
            error = _status_error(call)
            if error is None and call.partial:
                error = GrpcError("INTERNAL", f"the stream ended inside a message ({len(call.partial)} bytes of it)")
            self._finish(stream_id, error)
            return
        try:
            error, result = _message(call) if status_ok else _outcome(call)
        except Exception as exc:  # an answer that cannot be read fails its call, nothing else
            error, result = GrpcError("INTERNAL", f"unreadable answer: {exc!r}"), None
        self._finish(stream_id, error, result)

    def _forget(self, stream_id: int) -> _Call | None:
        """Take a call off the connection: its stream slot frees, and the last call of a
        connection that takes no new streams closes it."""
        call = self.calls.pop(stream_id, None)
        if call is not None:
            if call.timer is not None:
                call.timer.cancel()
            if self._waiters:
                self._changed.set()
            if self.closing and not self.calls and not self.dead:
                self.close()
        return call

    def _finish(self, stream_id: int, error: Exception | None, result: object = None) -> bool:
        call = self._forget(stream_id)
        if call is None:
            return False
        if not call.future.done():
            if error is None:
                call.future.set_result(result)
            else:
                call.future.set_exception(error)
        if type(call) is _StreamCall:
            call.wake()
        return True

    def _fail_all(self, code: str, message: str) -> None:
        for stream_id in list(self.calls):
            self._finish(stream_id, GrpcError(code, message))

    def _stream_error(self, stream_id: int, code: int, reason: str) -> None:
        """One answer is unusable: its call fails and its stream is reset; the rest go on."""
        if self._finish(stream_id, GrpcError("INTERNAL", f"HTTP/2 stream error {error_name(code)}: {reason}")):
            self._write(reset(stream_id, code))

    def _connection_error(self, code: int, reason: str) -> None:
        """The connection cannot go on (its HPACK table or flow control is out of step with the
        server's): GOAWAY with the reason, every call fails. UNAVAILABLE, as for a lost connection:
        the server may still be working on those calls."""
        self._fail(f"HTTP/2 connection error {error_name(code)} from {self.authority}: {reason}; "
                   "the connection was closed", goaway(code, reason.encode()[:200]))

    def _fail(self, message: str, last_frame: bytes | None) -> None:
        self.closing = self.dead = True
        self._stop_keepalive()
        self._fail_all("UNAVAILABLE", message)
        self._wake()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if last_frame is None:
            transport.abort()  # the peer does not answer: nothing would be read or flushed
        else:
            transport.write(last_frame)
            transport.close()
            # A peer that no longer reads would keep a closing transport open forever.
            self._loop.call_later(self._owner._keepalive_timeout_s, transport.abort)

    def _stop_new_streams(self) -> None:
        if not self.closing:
            self.closing = True
            self._wake()  # calls waiting here for a stream slot go to the client's next connection

    def _wake(self) -> None:
        if self._waiters:
            self._changed.set()

    async def _wait(self) -> None:
        """Until a window opens, a stream slot frees or the connection closes."""
        self._waiters += 1
        self._changed.clear()
        try:
            await self._changed.wait()
        finally:
            self._waiters -= 1

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

    def _cancel_stream(self, stream_id: int) -> None:
        """Tell the server a call is given up (RST_STREAM CANCEL), and forget it."""
        self._forget(stream_id)
        self._write(reset(stream_id, CANCEL))

    def _expire(self, stream_id: int) -> None:
        call = self.calls.get(stream_id)
        if call is not None:
            call.timer = None
            self._finish(stream_id, GrpcError("DEADLINE_EXCEEDED", "Deadline Exceeded"))
            self._write(reset(stream_id, CANCEL))

    # -- keepalive ------------------------------------------------------------------------------
    def _arm(self, delay: float) -> None:
        self._keepalive = self._loop.call_later(delay, self._keepalive_tick)

    def _stop_keepalive(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None

    def _keepalive_tick(self) -> None:
        """Is the server still there? Asked only while calls wait for it and it has been silent."""
        owner = self._owner
        now = self._loop.time()
        if self._ping_sent_at is not None:
            if self._heard_at < self._ping_sent_at:
                self._fail(f"the server at {self.authority} did not answer a keepalive PING within "
                           f"{owner._keepalive_timeout_s:g} s; the connection was dropped", None)
                return
            self._ping_sent_at = None
        due = self._heard_at + owner._keepalive_s
        if not self.calls or now < due:
            self._arm(due - now if self.calls else owner._keepalive_s)
            return
        allowed = self._last_ping_at + owner._ping_spacing_s
        if not self._data_seen and now < allowed:
            self._arm(allowed - now)
            return
        self._ping_sent_at = self._last_ping_at = now
        self._data_seen = False
        self._write(frame(PING, 0, 0, b"keepaliv"))
        self._arm(owner._keepalive_timeout_s)

    # -- sending --------------------------------------------------------------------------------
    async def call(self, headers: bytes, message: bytes | memoryview, timeout: float | None,
                   reroutes: int = 0) -> memoryview:
        if (self.closing or len(self.calls) >= self._max_streams) and not await self._slot():
            # never sent: another connection may take it
            return await self._owner._reroute(headers, message, timeout, reroutes,
                                              f"connection to {self.authority} is closing")
        stream_id = self._next_id
        self._next_id += 2
        if self._next_id > self._max_stream_id:
            self._stop_new_streams()  # ids ran out: new calls go to a new connection, this one drains
        loop = self._loop
        call = _Call(loop.create_future(), self._peer_window)
        self.calls[stream_id] = call
        block = headers
        if timeout is not None:
            call.timer = loop.call_later(timeout, self._expire, stream_id)
            block += timeout_header(timeout)
        size = len(message) + 5
        try:
            if size <= self._max_frame and size <= self._conn_window and size <= call.send_window \
                    and self._writable:
                self._conn_window -= size
                call.send_window -= size
                # Both frames' heads packed here, not through frame() and head(): this runs per request.
                length = len(block)
                frames = b"".join((HEAD.pack(length >> 16, length & 0xFFFF, HEADERS, FLAG_END_HEADERS, stream_id),
                                   block, DATA_MESSAGE_HEAD.pack(size >> 16, size & 0xFFFF, DATA, FLAG_END_STREAM,
                                                                 stream_id, 0, size - 5), message))
                if len(self.calls) == 1 and not self._out:
                    self.transport.write(frames)  # alone in flight: nothing to share a send() with
                else:
                    self._write(frames)
            else:
                self._write(frame(HEADERS, FLAG_END_HEADERS, stream_id, block))
                await self._send_large(stream_id, call, b"\x00" + (size - 5).to_bytes(4, "big"), memoryview(message))
            return await call.future
        except _Unprocessed as exc:
            # The server never processed this stream (HTTP/2 guarantees it for streams above a
            # GOAWAY's last-stream-id and for REFUSED_STREAM), so sending it again cannot run the
            # request twice: it goes to the client's current connection, within its deadline.
            if call.timer is not None:
                timeout = call.timer.when() - loop.time()
                if timeout <= 0:
                    raise GrpcError("DEADLINE_EXCEEDED", "Deadline Exceeded") from None
            return await self._owner._reroute(headers, message, timeout, reroutes, str(exc))
        except asyncio.CancelledError:
            if self.calls.get(stream_id) is call:
                self._cancel_stream(stream_id)
            elif call.future.done() and not call.future.cancelled():
                call.future.exception()  # failed while its request was still going out: seen
            raise

    async def _slot(self) -> bool:
        """Wait for a stream slot (MAX_CONCURRENT_STREAMS); False if this connection stopped
        taking new streams meanwhile."""
        while len(self.calls) >= self._max_streams and not self.closing:
            await self._wait()
        return not self.closing

    async def _send_large(self, stream_id: int, call: _Call, prefix: bytes, message: memoryview,
                          end_stream: bool = True) -> None:
        """DATA frames as the windows allow; other calls go on between them. A connection that
        takes no new streams still carries this one to its end."""
        pending: list[bytes | memoryview] = [prefix, message]
        while pending:
            if call.future.done() or self.dead or self.transport.is_closing():
                return  # the answer (an error) came already, or the connection is gone
            room = min(self._max_frame, self._conn_window, call.send_window)
            if room <= 0 or not self._writable:
                await self._wait()
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
            flags = FLAG_END_STREAM if end_stream and not pending else 0
            self._write(head(taken, DATA, flags, stream_id))
            for piece in chunk:
                self._write(piece)
            self._flush()  # now: what waits for a window must not hold the frames before it

    # -- streams ------------------------------------------------------------------------------
    async def open_stream(self, headers: bytes, timeout: float | None) -> tuple[int, _StreamCall] | None:
        """A new stream (its HEADERS queued, no message yet); None when this connection stopped
        taking new streams while the caller waited for a slot."""
        if (self.closing or len(self.calls) >= self._max_streams) and not await self._slot():
            return None
        stream_id = self._next_id
        self._next_id += 2
        if self._next_id > self._max_stream_id:
            self._stop_new_streams()
        call = _StreamCall(self._loop.create_future(), self._peer_window)
        call.future.add_done_callback(_seen)  # how a stream ended is read by read(), if anyone still reads
        self.calls[stream_id] = call
        if timeout is not None:
            call.timer = self._loop.call_later(timeout, self._expire, stream_id)
            headers += timeout_header(timeout)
        self._write(frame(HEADERS, FLAG_END_HEADERS, stream_id, headers))
        return stream_id, call

    async def send_message(self, stream_id: int, call: _StreamCall, message: bytes | memoryview) -> None:
        """One message on an open stream, as the windows allow."""
        size = len(message) + 5
        prefix = b"\x00" + (size - 5).to_bytes(4, "big")
        if size <= min(self._max_frame, self._conn_window, call.send_window) and self._writable:
            self._conn_window -= size
            call.send_window -= size
            frames = b"".join((head(size, DATA, 0, stream_id), prefix, message))
            if self._out:
                self._write(frames)  # behind frames queued this turn (this stream's HEADERS, maybe)
            else:
                self.transport.write(frames)
        else:
            await self._send_large(stream_id, call, prefix, memoryview(message), end_stream=False)

    def close(self) -> None:
        """Graceful: GOAWAY, then the transport closes once what is queued has left."""
        self.closing = True
        self._stop_keepalive()
        if self.transport is not None and not self.transport.is_closing():
            self._flush()
            self.transport.write(goaway(NO_ERROR))
            self.transport.close()
        self._wake()


def _seen(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


def _control(stream_id: int, payload: bytes, size: int, name: str, exact: bool = True) -> None:
    """A connection-level frame's checks: stream 0, and its payload size (at least `size` bytes
    where not `exact`)."""
    if stream_id:
        raise _ProtocolError(PROTOCOL_ERROR, f"{name} on stream {stream_id}")
    if len(payload) < size or exact and len(payload) != size:
        raise _ProtocolError(FRAME_SIZE_ERROR, f"a {name} frame of {len(payload)} bytes")


class GrpcStream:
    """A bidirectional gRPC stream of serialized messages (e.g. ModelStreamInfer): write() and read()
    in any order; read() gives None once the server has ended the stream with OK, and raises
    GrpcError when it ended with an error (or the connection did)."""

    __slots__ = ("_connection", "_stream_id", "_call", "_half_closed")

    def __init__(self, connection: _Connection, stream_id: int, call: _StreamCall) -> None:
        self._connection, self._stream_id, self._call = connection, stream_id, call
        self._half_closed = False

    @property
    def ended(self) -> bool:
        """The server ended the stream, or the client cancelled it (unread messages may remain)."""
        return self._call.future.done()

    def _end_error(self) -> GrpcError | None:
        future = self._call.future
        error = future.exception() if future.done() else None
        if isinstance(error, _Unprocessed):  # the server never saw it; a stream is not sent again
            return GrpcError("UNAVAILABLE", str(error))
        return error  # type: ignore[return-value]

    async def write(self, message: bytes | memoryview) -> None:
        if self._call.future.done() or self._half_closed:
            raise self._end_error() or GrpcError("FAILED_PRECONDITION", "write on a stream that has ended")
        await self._connection.send_message(self._stream_id, self._call, message)

    async def read(self) -> bytes | memoryview | None:
        call = self._call
        while True:
            if call.inbox:
                return call.inbox.popleft()
            if call.future.done():
                error = self._end_error()
                if error is not None:
                    raise error
                return None
            call.reader = self._connection._loop.create_future()
            try:
                await call.reader
            finally:
                call.reader = None

    def done_writing(self) -> None:
        """Half-close: no more messages; the server ends the stream once it has answered (the
        gentle end: no cancellation for the server to handle). One that has not ended within
        HALF_CLOSED_LINGER_S (a hung server) is reset then, as if its deadline had passed."""
        call = self._call
        if not self._half_closed and not call.future.done():
            self._half_closed = True
            connection = self._connection
            connection._write(head(0, DATA, FLAG_END_STREAM, self._stream_id))
            if call.timer is None:
                call.timer = connection._loop.call_later(HALF_CLOSED_LINGER_S, connection._expire, self._stream_id)

    def cancel(self) -> None:
        """Give the stream up (RST_STREAM CANCEL): a read() waiting now raises CANCELLED."""
        connection, call = self._connection, self._call
        if connection.calls.get(self._stream_id) is call:
            connection._cancel_stream(self._stream_id)
        if not call.future.done():
            call.future.set_exception(GrpcError("CANCELLED", "the stream was cancelled by the client"))
            call.wake()


class GrpcWireClient:
    """Unary gRPC calls and streams with raw (serialized) messages; one connection for new calls, opened on
    first use and again when it stops taking calls; the one it replaces finishes its own first."""

    # Private knobs (tests lower them): the stream ids a connection may use, and keepalive.
    _max_stream_id = LARGEST_STREAM_ID
    _keepalive_s = KEEPALIVE_S
    _keepalive_timeout_s = KEEPALIVE_TIMEOUT_S
    _ping_spacing_s = PING_SPACING_WITHOUT_DATA_S

    def __init__(self, url: str, connect_timeout: float = 10.0) -> None:
        host, _, port = url.rpartition(":")
        self.host, self.port = host or "127.0.0.1", int(port)
        self.authority = f"{self.host}:{self.port}"
        self._connect_timeout = connect_timeout
        self._connection: _Connection | None = None  # where new calls go
        self._connections: set[_Connection] = set()  # open ones: the current and those draining
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
                loop.create_connection(lambda: _Connection(self), self.host, self.port), self._connect_timeout)
        except (TimeoutError, OSError) as exc:
            raise GrpcError("UNAVAILABLE", f"failed to connect to {self.authority}: {exc!r}") from None
        old, self._connection = self._connection, protocol
        self._connections.add(protocol)
        if old is not None:
            # Beside the new one, the old connection finishes the calls it carries, then closes.
            old._stop_new_streams()
            if not old.calls:
                old.close()
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
                             timeout: float | None, reroutes: int = 0) -> memoryview:
        connection = await self._open()
        return await connection.call(headers, message, timeout, reroutes)

    async def _reroute(self, headers: bytes, message: bytes | memoryview, timeout: float | None,
                       reroutes: int, reason: str) -> memoryview:
        """A call no server has processed, on the current connection (a new one if need be); a
        server that keeps turning calls away ends it as UNAVAILABLE."""
        if reroutes >= MAX_REROUTES:
            raise GrpcError("UNAVAILABLE", reason)
        return await self._open_and_call(headers, message, timeout, reroutes + 1)

    async def stream(self, method: str, timeout: float | None = None) -> GrpcStream:
        """Open a bidirectional stream to `method`; `timeout` bounds the whole stream (grpc-timeout)."""
        headers = self._headers.get(method)
        if headers is None:
            headers = self._headers[method] = request_headers(method, self.authority)
        for _ in range(MAX_REROUTES + 1):
            connection = await self._open()
            opened = await connection.open_stream(headers, timeout)
            if opened is not None:
                return GrpcStream(connection, *opened)
        raise GrpcError("UNAVAILABLE", f"the connections to {self.authority} take no new streams")

    async def close(self) -> None:
        for connection in list(self._connections):
            connection.close()
        self._connections.clear()
        self._connection = None
