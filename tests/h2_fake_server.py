"""A frame-level fake HTTP/2 server for the lean gRPC client's tests (tests/test_wire_grpc_frames.py,
tests/test_wire_grpc_stream.py).

An asyncio TCP server on 127.0.0.1 (a free port) that reads the client's preface and frames and
lets each test script what it answers: a gRPC answer (HEADERS, DATA, trailers), GOAWAY,
RST_STREAM, PING, SETTINGS, WINDOW_UPDATE, raw bytes for malformed frames, or silence. Frames are
written by hand (hpack encodes the header blocks) so that a test controls every byte.

Each accepted connection is a FakeConnection; the server's `handler(connection)` runs once per
connection (by default: answer every request with its own message). What the client sent is kept:
`connection.frames` (every frame), `connection.requests` (complete requests, in order) and
`connection.messages` (each gRPC message as it completes, for streams).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE = 3, 4, 5
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x6, 0x7, 0x8, 0x9, 0xB
WAIT_S = 3.0  # the longest a test waits for the client to do something


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return struct.pack(">BHBBI", len(payload) >> 16, len(payload) & 0xFFFF, kind, flags, stream_id) + payload


def grpc_message(message: bytes) -> bytes:
    """A gRPC message on the wire: not compressed, 4 bytes of length, the bytes."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


@dataclass
class Frame:
    kind: int
    flags: int
    stream_id: int
    payload: bytes

    @property
    def code(self) -> int:
        """RST_STREAM's error code, or GOAWAY's."""
        return int.from_bytes(self.payload[4:8] if self.kind == GOAWAY else self.payload[:4], "big")


@dataclass
class Request:
    stream_id: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    parsed: int = 0  # bytes of the body already handed out as whole messages (streams)

    @property
    def message(self) -> bytes:
        return self.body[5:]


class FakeConnection:
    """One client connection as the server sees it; tests send frames with its methods."""

    def __init__(self, server: FakeServer, index: int, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.index = index  # 0 for the first connection the server accepted
        self.reader, self.writer = reader, writer
        self.frames: list[Frame] = []
        self.requests: asyncio.Queue[Request] = asyncio.Queue()
        self.messages: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()  # (stream, message) as each completes
        self.closed = asyncio.Event()  # the client closed its end (EOF or reset)
        self.silent = False  # a half-open peer: nothing is answered any more, not even PINGs
        self.auto_window = True  # every DATA frame is given back to the client's send windows
        self._arrived = asyncio.Event()
        self._open: dict[int, Request] = {}
        self._block: bytearray | None = None
        self._decoder = hpack.Decoder()
        self._encoder = hpack.Encoder()

    # -- what the client sent ----------------------------------------------------------------------
    async def read(self) -> None:
        try:
            if await self.reader.readexactly(len(PREFACE)) != PREFACE:
                raise AssertionError("the client did not open with the HTTP/2 preface")
            self.send(frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", key, value)
                                                     for key, value in self.server.settings.items())))
            while True:
                length_high, length_low, kind, flags, stream_id = struct.unpack(
                    ">BHBBI", await self.reader.readexactly(9))
                payload = await self.reader.readexactly((length_high << 16) | length_low)
                self._on_frame(Frame(kind, flags, stream_id & 0x7FFF_FFFF, payload))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed.set()
            self._arrived.set()

    def _on_frame(self, received: Frame) -> None:
        self.frames.append(received)
        self._arrived.set()
        kind, flags, stream_id, payload = received.kind, received.flags, received.stream_id, received.payload
        if kind == SETTINGS and not flags & ACK and not self.silent:
            self.send(frame(SETTINGS, ACK, 0))
        elif kind == PING and not flags & ACK and not self.silent:
            self.send(frame(PING, ACK, 0, payload))
        elif kind in (HEADERS, CONTINUATION):
            self._block = (self._block or bytearray()) + payload
            if flags & END_HEADERS:
                request = self._open.setdefault(stream_id, Request(stream_id))
                request.headers.update((k.decode(), v.decode()) for k, v in self._decoder.decode(bytes(self._block),
                                                                                             raw=True))
                self._block = None
        elif kind == DATA:
            request = self._open.setdefault(stream_id, Request(stream_id))
            request.body += payload
            while len(request.body) - request.parsed >= 5:  # whole gRPC messages, for the stream tests
                start = request.parsed
                end = start + 5 + int.from_bytes(request.body[start + 1:start + 5], "big")
                if len(request.body) < end:
                    break
                self.messages.put_nowait((stream_id, request.body[start + 5:end]))
                request.parsed = end
            if self.auto_window and payload and not self.silent:
                increment = len(payload).to_bytes(4, "big")
                self.send(frame(WINDOW_UPDATE, 0, 0, increment) + frame(WINDOW_UPDATE, 0, stream_id, increment))
        elif kind == RST_STREAM:
            self._open.pop(stream_id, None)
        if kind in (HEADERS, CONTINUATION, DATA) and flags & END_STREAM and stream_id in self._open:
            self.requests.put_nowait(self._open.pop(stream_id))

    async def request(self) -> Request:
        """The next complete request (END_STREAM seen)."""
        return await asyncio.wait_for(self.requests.get(), WAIT_S)

    def open_request(self, stream_id: int) -> Request:
        """A request whose stream the client has not ended yet (a stream's headers, its bytes so far)."""
        return self._open[stream_id]

    async def message(self) -> tuple[int, bytes]:
        """The next whole message the client wrote on any stream, as (stream id, message)."""
        return await asyncio.wait_for(self.messages.get(), WAIT_S)

    async def requests_of(self, count: int) -> list[Request]:
        return [await self.request() for _ in range(count)]

    async def frame(self, kind: int, match: Callable[[Frame], bool] = lambda _: True) -> Frame:
        """The first frame of `kind` the client sent (or sends within WAIT_S) that matches."""
        async def find() -> Frame:
            seen = 0
            while True:
                for received in self.frames[seen:]:
                    if received.kind == kind and match(received):
                        return received
                seen = len(self.frames)
                if self.closed.is_set():
                    raise AssertionError(f"the connection closed without a frame of type {kind}")
                self._arrived.clear()
                await self._arrived.wait()
        return await asyncio.wait_for(find(), WAIT_S)

    def frames_of(self, kind: int) -> list[Frame]:
        return [received for received in self.frames if received.kind == kind]

    async def wait_closed(self) -> None:
        await asyncio.wait_for(self.closed.wait(), WAIT_S)

    # -- what the server sends -----------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    def header_block(self, headers: list[tuple[str, str]]) -> bytes:
        return self._encoder.encode(headers)

    def answer(self, stream_id: int, message: bytes, status: int = 0, details: str = "") -> None:
        """A whole unary answer: headers, the message (when OK), trailers."""
        self.send(self.answer_headers(stream_id)
                  + (frame(DATA, 0, stream_id, grpc_message(message)) if status == 0 else b"")
                  + self.trailers(stream_id, str(status), details))

    def answer_headers(self, stream_id: int) -> bytes:
        return frame(HEADERS, END_HEADERS, stream_id,
                     self.header_block([(":status", "200"), ("content-type", "application/grpc")]))

    def trailers(self, stream_id: int, status: str = "0", message: str = "") -> bytes:
        fields = [("grpc-status", status)] + ([("grpc-message", message)] if message else [])
        return frame(HEADERS, END_HEADERS | END_STREAM, stream_id, self.header_block(fields))

    def stream_message(self, stream_id: int, message: bytes, end_stream: bool = False) -> None:
        """One message on an open stream (a DATA frame of its own)."""
        self.send(frame(DATA, END_STREAM if end_stream else 0, stream_id, grpc_message(message)))

    def echo(self, request: Request) -> None:
        self.answer(request.stream_id, request.message)

    def goaway(self, last_stream_id: int, code: int = NO_ERROR, debug: bytes = b"") -> None:
        self.send(frame(GOAWAY, 0, 0, last_stream_id.to_bytes(4, "big") + code.to_bytes(4, "big") + debug))

    def reset(self, stream_id: int, code: int) -> None:
        self.send(frame(RST_STREAM, 0, stream_id, code.to_bytes(4, "big")))

    def ping(self, payload: bytes) -> None:
        self.send(frame(PING, 0, 0, payload))

    def settings(self, **values: int) -> None:
        keys = {"max_concurrent_streams": MAX_CONCURRENT_STREAMS, "initial_window_size": INITIAL_WINDOW_SIZE,
                "max_frame_size": MAX_FRAME_SIZE}
        self.send(frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", keys[k], v) for k, v in values.items())))

    def window_update(self, stream_id: int, increment: int) -> None:
        self.send(frame(WINDOW_UPDATE, 0, stream_id, increment.to_bytes(4, "big")))

    def close(self) -> None:
        self.writer.close()


Handler = Callable[[FakeConnection], Awaitable[None]]


async def manual(connection: FakeConnection) -> None:
    """A handler that does nothing: the test answers (or not) through the connection."""


async def echo_all(connection: FakeConnection) -> None:
    """The default handler: every request is answered with its own message."""
    while True:
        connection.echo(await connection.requests.get())


class FakeServer:
    """`async with FakeServer(handler) as server:` then GrpcWireClient(server.url)."""

    def __init__(self, handler: Handler = echo_all, **settings: int) -> None:
        self.handler = handler
        self.settings = {{"max_concurrent_streams": MAX_CONCURRENT_STREAMS,
                          "initial_window_size": INITIAL_WINDOW_SIZE}[k]: v for k, v in settings.items()}
        self.connections: list[FakeConnection] = []
        self.url = ""
        self._server: asyncio.Server | None = None
        self._handlers: list[asyncio.Task] = []
        self._readers: list[asyncio.Future] = []
        self._accepted = asyncio.Event()

    async def __aenter__(self) -> FakeServer:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.url = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = FakeConnection(self, len(self.connections), reader, writer)
        self.connections.append(connection)
        self._accepted.set()
        self._handlers.append(asyncio.create_task(self.handler(connection)))
        reading = asyncio.ensure_future(connection.read())
        self._readers.append(reading)
        try:
            await reading
        finally:
            writer.close()

    async def connection(self, index: int) -> FakeConnection:
        """The index-th connection the client opened (0: the first), once it is open."""
        async def opened() -> FakeConnection:
            while len(self.connections) <= index:
                self._accepted.clear()
                await self._accepted.wait()
            return self.connections[index]
        return await asyncio.wait_for(opened(), WAIT_S)

    async def close(self) -> None:
        """Stop: connections closed, handlers ended; a handler's own failure is raised here."""
        if self._server is not None:
            self._server.close()
        for connection in self.connections:
            connection.close()
        for task in self._handlers:
            task.cancel()
        results = await asyncio.gather(*self._handlers, return_exceptions=True)
        # Closed transports end the readers; one that does not within WAIT_S is cancelled.
        _, late = await asyncio.wait(self._readers, timeout=WAIT_S) if self._readers else ((), ())
        for reading in late:
            reading.cancel()
        if self._server is not None:
            await self._server.wait_closed()
        for result in results:
            if isinstance(result, Exception) and not isinstance(result, asyncio.CancelledError):
                raise result
